"""Meeting pages (lists, form, meeting page, actions) against the real server.

The server is the real ``conference serve`` subprocess (tests/test_webauth.py `Site`), on
SQLite and PostgreSQL where storage matters; e-mails go to a real aiosmtpd server.
"""

# ruff: noqa: F811 - the fixtures imported from test_webauth are parameters here

from __future__ import annotations

import html as html_module
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy.engine import URL

from conference.domain import attendance, invitations, organisation
from conference.domain import meetings as svc
from conference.domain.meetings import ZONE, AgendaInput
from conference.domain.models import Meeting

from .conftest import SECRET
from .domain.smtp_server import Mailbox, free_port
from .test_webauth import Browser, Site, _start, any_site, browsers, field_error, site  # noqa: F401

HTMLISH = '<script>alert("x")</script> Họp & "giao ban"'


def district(site: Site) -> None:
    """Districts A and B; points p-a1, p-a2 (A) and p-b1 (B); users of every role."""
    site.add_unit("huyen-a", "Huyện A")
    site.add_unit("xa-a1", "Xã A Một", "commune", "huyen-a")
    site.add_unit("xa-a2", "Xã A Hai", "commune", "huyen-a")
    site.add_unit("huyen-b", "Huyện B")
    site.add_unit("xa-b1", "Xã B Một", "commune", "huyen-b")
    for code, name, unit in (
        ("p-a1", "UBND xã A Một", "xa-a1"),
        ("p-a2", "UBND xã A Hai", "xa-a2"),
        ("p-b1", "UBND xã B Một", "xa-b1"),
    ):
        site.db(
            lambda s, c=code, n=name, u=unit: organisation.create_point(
                s, code=c, name=n, unit=u, email=f"{c}@example.vn"
            )
        )
    site.add_user("qt-a", "admin", unit="huyen-a", display_name="Quản trị A")
    site.add_user("ct-a", "chair", unit="huyen-a", display_name="Chủ tịch A")
    site.add_user("ct-a2", "chair", unit="huyen-a", display_name="Phó chủ tịch A")
    site.add_user("tk-a", "secretary", unit="huyen-a")
    site.add_user("vh-a1", "operator", point="p-a1")
    site.add_user("tk-b", "secretary", unit="huyen-b")
    site.add_user("ct-b", "chair", unit="huyen-b")


def schedule(
    site: Site,
    title: str,
    start: datetime,
    minutes: int = 60,
    chair: str = "ct-a",
    points: tuple[str, ...] = ("p-a1",),
    unit: str = "huyen-a",
) -> int:
    def make(session: object) -> int:
        result = svc.create_meeting(
            session,  # type: ignore[arg-type]
            title=title,
            unit=unit,
            chair=chair,
            start=start,
            end=start + timedelta(minutes=minutes),
            points=points,
            agenda=[AgendaInput("Báo cáo tình hình", "Văn phòng")],
        )
        return result.meeting.id

    return site.db(make)


def meeting(site: Site, meeting_id: int) -> Meeting:
    def load(session: object) -> Meeting:
        found = svc.get_meeting(session, meeting_id)  # type: ignore[arg-type]
        _ = found.agenda, found.chair, found.unit
        _ = [(a.presenter_user, i.point) for a in found.agenda for i in found.invitations]
        _ = [i.point for i in found.invitations]
        return found

    return site.db(load)


async def signed_in(site: Site, browsers: list[Browser], username: str) -> Browser:
    browser = site.browser()
    browsers.append(browser)
    return await browser.signed_in(username)


def form(token: str, **values: str | list[str]) -> list[tuple[str, str]]:
    base: dict[str, str | list[str]] = {
        "csrf_token": token,
        "title": "Giao ban tuần",
        "unit": "huyen-a",
        "chair": "ct-a",
        "start_date": "2030-01-07",
        "start_time": "08:00",
        "end_date": "2030-01-07",
        "end_time": "09:30",
        "recording_policy": "none",
        "notes": "",
        "agenda_title_0": "Báo cáo kinh tế - xã hội",
        "agenda_presenter_0": "Phòng Tài chính - Kế hoạch",
        "agenda_title_1": "",
        "agenda_presenter_1": "",
        "points": ["p-a1", "p-a2"],
        "repeat": "",
    }
    base.update(values)
    pairs: list[tuple[str, str]] = []
    for key, value in base.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((key, item))
    return pairs


def meeting_id_of(location: str) -> int:
    match = re.fullmatch(r"/meetings/(\d+)\?saved=\w+", location)
    assert match, location
    return int(match.group(1))


# --- the form -----------------------------------------------------------------------------------


async def test_create_form_validation_and_escaping(any_site: Site, browsers: list[Browser]) -> None:
    site = any_site
    district(site)
    chair = await signed_in(site, browsers, "ct-a")
    status, html, _ = await chair.get("/meetings/new")
    assert status == 200 and 'name="start_date"' in html and 'value="p-b1"' not in html
    chairs = html.split('<select name="chair">')[1].split("</select>")[0]
    assert 'value="p-a1"' in html and 'value="ct-a2"' not in chairs  # a chair chairs itself
    token = await chair.csrf("/meetings/new")

    # 31 February: a field message on the start, nothing written
    status, html, _ = await chair.post("/meetings/new", form(token, start_date="2030-02-31"))
    assert status == 400
    assert "Ngày giờ không hợp lệ" in (field_error(html, "start") or ""), html[-2000:]
    assert 'value="Giao ban tuần"' in html  # the values come back
    # end before start, missing title (two field messages at once where possible)
    status, html, _ = await chair.post("/meetings/new", form(token, title=" ", end_time="07:00"))
    assert status == 400 and field_error(html, "title") == "Chưa nhập tên cuộc họp."
    status, html, _ = await chair.post("/meetings/new", form(token, end_time="07:00"))
    assert status == 400 and field_error(html, "end") == "Giờ kết thúc phải sau giờ bắt đầu."
    # a point of another district, an agenda item without presenter, another chair
    status, html, _ = await chair.post("/meetings/new", form(token, points=["p-a1", "p-b1"]))
    assert status == 400 and field_error(html, "points") == "Không có điểm cầu p-b1."
    status, html, _ = await chair.post("/meetings/new", form(token, agenda_presenter_0=""))
    assert status == 400 and "Mục 1" in (field_error(html, "agenda") or "")
    status, html, _ = await chair.post("/meetings/new", form(token, chair="ct-a2"))
    assert status == 400 and "chính mình" in (field_error(html, "chair") or "")
    assert site.db(lambda s: s.query(Meeting).count()) == 0

    # an HTML-ish title is stored as text and escaped on every page
    status, _, response = await chair.post("/meetings/new", form(token, title=HTMLISH))
    assert status == 303, _
    first = meeting_id_of(response.headers["Location"])
    status, html, _ = await chair.get(response.headers["Location"])
    assert status == 200 and "Đã lưu cuộc họp." in html
    stored = meeting(site, first)
    assert stored.title == HTMLISH and stored.chair.username == "ct-a"
    assert stored.start_at == datetime(2030, 1, 7, 1, 0, tzinfo=UTC)  # 08:00 in Hanoi
    assert [(a.title, a.presenter) for a in stored.agenda] == [
        ("Báo cáo kinh tế - xã hội", "Phòng Tài chính - Kế hoạch")
    ]
    status, html, _ = await chair.get(f"/meetings/{first}")
    assert status == 200 and "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; Họp &amp; &#34;giao ban&#34;" in html
    assert "08:00–09:30 07/01/2030" in html
    assert 'data-point="p-a1" data-answer="pending"' in html and "chưa trả lời" in html
    assert "Báo cáo kinh tế - xã hội" in html
    status, html, _ = await chair.get(f"/meetings/{first}?lang=en")
    assert "Invited points and their answers" in html

    # a second meeting at the same time: saved, with a conflict warning
    status, _, response = await chair.post("/meetings/new", form(token, title="Họp trùng giờ"))
    assert status == 303
    second = meeting_id_of(response.headers["Location"])
    status, html, _ = await chair.get(f"/meetings/{second}?lang=vi")
    assert "Lưu ý trùng lịch" in html and "07/01/2030" in html
    assert "&lt;script&gt;" in html  # the other meeting's title, escaped in the warning

    # a weekly briefing from the builder: Mondays at the start time
    status, _, response = await chair.post(
        "/meetings/new",
        form(token, title="Giao ban thứ Hai", repeat="weekly", weekday="MO", points=["p-a2"]),
    )
    assert status == 303
    occurrence = meeting(site, meeting_id_of(response.headers["Location"]))
    assert occurrence.series_id is not None
    count = site.db(
        lambda s: s.query(Meeting).filter(Meeting.series_id == occurrence.series_id).count()
    )
    assert count >= 8
    status, html, _ = await chair.post(
        "/meetings/new", form(token, repeat="rrule", rrule="FREQ=SOMETIMES")
    )
    assert status == 400 and field_error(html, "rrule") == "Quy tắc lặp lại không hợp lệ."


async def test_agenda_rows_and_presenting_accounts(site: Site, browsers: list[Browser]) -> None:
    """Issue 15 item 7: any number of agenda rows (in the order of their numbers, gaps
    allowed; at most 100 items, else a clear message), and presenters who are accounts
    of the scheduler's units, checked on the server (the form names the wrong one)."""
    district(site)
    chair = await signed_in(site, browsers, "ct-a")
    status, html, _ = await chair.get("/meetings/new")
    offered = set(
        re.findall(
            r'<option value="([^"]*)"',
            html.split('name="agenda_presenter_user_0"')[1].split("</select>")[0],
        )
    )
    assert offered == {"", "qt-a", "ct-a", "ct-a2", "tk-a"}  # district A's staff, no operator
    assert "/static/agenda.js" in html and 'id="agenda-add" hidden' in html
    token = await chair.csrf("/meetings/new")

    # rows 0, 1, 7 and 12 (a page that added and removed rows): four items, in order
    rows = {
        "agenda_title_0": "Khai mạc",
        "agenda_presenter_0": "Văn phòng",
        "agenda_title_1": "",
        "agenda_presenter_1": "",
        "agenda_title_7": "Báo cáo tài chính",
        "agenda_presenter_7": "",
        "agenda_presenter_user_7": "tk-a",
        "agenda_title_12": "Kết luận",
        "agenda_presenter_12": "",
        "agenda_presenter_user_12": "ct-a",
        "agenda_title_3": "Ý kiến các xã",
        "agenda_presenter_3": "Các điểm cầu",
    }
    status, _, response = await chair.post("/meetings/new", form(token, **rows))
    assert status == 303, _
    made = meeting_id_of(response.headers["Location"])
    stored = meeting(site, made)
    assert [
        (a.title, a.presenter, a.presenter_user.username if a.presenter_user else None)
        for a in stored.agenda
    ] == [
        ("Khai mạc", "Văn phòng", None),
        ("Ý kiến các xã", "Các điểm cầu", None),
        ("Báo cáo tài chính", "", "tk-a"),
        ("Kết luận", "", "ct-a"),
    ]
    status, html, _ = await chair.get(f"/meetings/{made}")
    shown = site.user("tk-a").display_name  # the account's name on the meeting page
    assert f'<li>Báo cáo tài chính <span class="muted">— {shown}</span></li>' in html
    # the edit form shows the account chosen (not its name as text), and keeps it on save
    status, html, _ = await chair.get(f"/meetings/{made}/edit")
    row = html.split('name="agenda_presenter_user_2"')[1].split("</select>")[0]
    assert '<option value="tk-a" selected>' in row
    assert 'name="agenda_presenter_2" value=""' in html
    edit_token = await chair.csrf(f"/meetings/{made}/edit")
    values = {
        "version": str(stored.version),
        "agenda_title_0": "Báo cáo tài chính",
        "agenda_presenter_0": "",
        "agenda_presenter_user_0": "tk-a",
    }
    status, _, _ = await chair.post(f"/meetings/{made}/edit", form(edit_token, **values))
    assert status == 303
    assert [
        (a.title, a.presenter_user.username) for a in meeting(site, made).agenda if a.presenter_user
    ] == [("Báo cáo tài chính", "tk-a")]

    # an account of another district, an operator, one that does not exist: named, refused
    count = site.db(lambda s: s.query(Meeting).count())
    for who in ("tk-b", "vh-a1", "khong-co-ai"):
        status, html, _ = await chair.post(
            "/meetings/new",
            form(token, agenda_presenter_0="", agenda_presenter_user_0=who),
        )
        assert status == 400, who
        assert field_error(html, "agenda") == (
            f"Mục 1 của chương trình họp: không có tài khoản {who} để chọn làm người trình bày."
        )
    status, html, _ = await chair.post(
        "/meetings/new?lang=en", form(token, agenda_presenter_user_0="tk-b")
    )
    assert field_error(html, "agenda") == "Agenda item 1: there is no account tk-b to present it."

    # 100 items are fine, 101 are refused with the count, in the page's language
    many = {f"agenda_title_{n}": f"Mục {n + 1}" for n in range(101)}
    many |= {f"agenda_presenter_{n}": "Văn phòng" for n in range(101)}
    status, html, _ = await chair.post("/meetings/new?lang=vi", form(token, **many))
    assert status == 400
    assert field_error(html, "agenda") == "Chương trình họp có tối đa 100 nội dung (đang có 101)."
    assert 'name="agenda_title_100" value="Mục 101"' in html  # every row comes back
    assert site.db(lambda s: s.query(Meeting).count()) == count
    del many["agenda_title_100"], many["agenda_presenter_100"]
    status, _, response = await chair.post("/meetings/new", form(token, **many))
    assert status == 303
    assert len(meeting(site, meeting_id_of(response.headers["Location"])).agenda) == 100


async def test_stale_edit_reschedule_and_cancel(any_site: Site, browsers: list[Browser]) -> None:
    site = any_site
    district(site)
    start = datetime(2030, 3, 4, 14, 0, tzinfo=ZONE)
    the_id = schedule(site, "Họp chuyên đề", start)
    chair = await signed_in(site, browsers, "ct-a")
    status, html, _ = await chair.get(f"/meetings/{the_id}/edit")
    assert status == 200 and 'name="version" value="1"' in html
    token = await chair.csrf(f"/meetings/{the_id}/edit")
    # meanwhile an admin renames it
    site.db(lambda s: svc.update_meeting(s, the_id, version=1, title="Họp chuyên đề (đã sửa)"))
    edit = form(
        token,
        version="1",
        title="Tên của chủ trì",
        start_date="2030-03-04",
        start_time="14:00",
        end_date="2030-03-04",
        end_time="15:00",
    )
    status, html, _ = await chair.post(f"/meetings/{the_id}/edit", edit)
    assert status == 409
    assert "Cuộc họp đã thay đổi kể từ khi bạn mở trang này" in html
    assert 'value="Họp chuyên đề (đã sửa)"' in html and 'name="version" value="2"' in html
    assert meeting(site, the_id).title == "Họp chuyên đề (đã sửa)"  # nothing written

    # saved against the current version
    edit = [(k, "2" if k == "version" else v) for k, v in edit]
    status, _, response = await chair.post(f"/meetings/{the_id}/edit", edit)
    assert status == 303, _
    changed = meeting(site, the_id)
    assert changed.title == "Tên của chủ trì" and {
        i.point.code for i in changed.invitations if i.active
    } == {"p-a1", "p-a2"}

    # the other chair and the secretary see it but may not change it
    other = await signed_in(site, browsers, "ct-a2")
    status, html, _ = await other.get(f"/meetings/{the_id}")
    assert status == 200 and f"/meetings/{the_id}/edit" not in html
    status, html, _ = await other.get(f"/meetings/{the_id}/edit")
    assert status == 403
    other_token = await other.csrf(f"/meetings/{the_id}")
    status, _, _ = await other.post(
        f"/meetings/{the_id}/cancel", {"csrf_token": other_token, "version": "3"}
    )
    assert status == 403 and meeting(site, the_id).status == "scheduled"
    secretary = await signed_in(site, browsers, "tk-a")
    status, html, _ = await secretary.get(f"/meetings/{the_id}")
    assert status == 200 and "Tên của chủ trì" in html
    status, _, _ = await secretary.get(f"/meetings/{the_id}/edit")
    assert status == 403

    # reschedule (a bad date first), then cancel through the confirmation page
    version = str(meeting(site, the_id).version)
    move = {
        "csrf_token": token,
        "version": version,
        "start_date": "2030-03-05",
        "start_time": "25:00",
        "end_date": "2030-03-05",
        "end_time": "16:00",
    }
    status, html, _ = await chair.post(f"/meetings/{the_id}/reschedule", move)
    assert status == 400 and "Ngày giờ không hợp lệ" in html
    move["start_time"] = "15:00"
    status, _, response = await chair.post(f"/meetings/{the_id}/reschedule", move)
    assert status == 303 and response.headers["Location"].endswith("saved=rescheduled")
    moved = meeting(site, the_id)
    assert moved.start_at == datetime(2030, 3, 5, 8, 0, tzinfo=UTC) and moved.sequence >= 2
    status, html, _ = await chair.get(f"/meetings/{the_id}/cancel")
    assert status == 200 and "Bạn có chắc muốn hủy cuộc họp này?" in html
    status, html, _ = await chair.post(
        f"/meetings/{the_id}/cancel", {"csrf_token": token, "version": version}
    )
    assert status == 409 and "Cuộc họp đã thay đổi" in html  # the old version
    assert meeting(site, the_id).status == "scheduled"
    status, _, _ = await chair.post(
        f"/meetings/{the_id}/cancel", {"csrf_token": token, "version": str(moved.version)}
    )
    assert status == 303 and meeting(site, the_id).status == "cancelled"
    status, html, _ = await chair.post(
        f"/meetings/{the_id}/cancel", {"csrf_token": "wrong", "version": str(moved.version)}
    )
    assert status == 403  # CSRF
    status, html, _ = await chair.get(f"/meetings/{the_id}")
    assert 'data-status="cancelled"' in html and "Đã hủy" in html
    assert "Kết thúc cuộc họp" not in html  # only a live meeting has the button

    # issue 14 item 4: a live meeting nobody ended is ended from its page
    live_id = schedule(site, "Họp còn mở", datetime(2030, 3, 6, 8, 0, tzinfo=UTC))
    site.db(lambda s: svc.start_meeting(s, live_id))
    status, html, _ = await chair.get(f"/meetings/{live_id}")
    assert status == 200 and f'action="/meetings/{live_id}/end"' in html
    assert "Kết thúc cuộc họp cho tất cả các điểm cầu?" in html  # asked before it posts
    live_version = str(meeting(site, live_id).version)
    status, _, _ = await chair.post(
        f"/meetings/{live_id}/end", {"csrf_token": "wrong", "version": live_version}
    )
    assert status == 403 and meeting(site, live_id).status == "live"  # CSRF
    status, _, response = await chair.post(
        f"/meetings/{live_id}/end", {"csrf_token": token, "version": live_version}
    )
    assert status == 303 and response.headers["Location"].endswith("saved=ended")
    assert meeting(site, live_id).status == "ended"


# --- lists, the meeting page, access ------------------------------------------------------------


async def test_lists_join_and_access(site: Site, browsers: list[Browser]) -> None:
    district(site)
    now = datetime.now(UTC)
    current = schedule(site, "Giao ban sáng", now - timedelta(minutes=5), 60, "ct-a", ("p-a1",))
    deputy = schedule(
        site, "Họp của phó chủ tịch", now + timedelta(minutes=2), 30, "ct-a2", ("p-a2",)
    )
    later = datetime(2030, 5, 8, 9, 0, tzinfo=ZONE)  # a Wednesday
    future = schedule(site, "Họp tháng Năm", later, 60, "ct-a", ("p-a1", "p-a2"))
    district_b = schedule(
        site, "Họp huyện B", now - timedelta(minutes=5), 60, "ct-b", ("p-b1",), unit="huyen-b"
    )

    async def listed(username: str, path: str = "/meetings") -> tuple[set[int], set[int], str]:
        browser = await signed_in(site, browsers, username)
        status, html, _ = await browser.get(path)
        assert status == 200, html[-500:]
        today = html.split('data-section="today"', 1)[1].split('data-section="week"', 1)[0]
        ids = {int(x) for x in re.findall(r'data-meeting="(\d+)"', html)}
        return {int(x) for x in re.findall(r'data-meeting="(\d+)"', today)}, ids, html

    today, _, html = await listed("ct-a")
    assert today == {current} and "Giao ban sáng" in html  # only what this chair chairs
    assert f'href="/meetings/{current}/join"' in html
    today, _, _ = await listed("tk-a")
    assert today == {current, deputy}
    today, _, _ = await listed("qt-a")
    assert today == {current, deputy}
    today, _, html = await listed("vh-a1")
    assert today == {current} and f'href="/meetings/{current}/join"' in html
    # a commune's operator has no API token in its menu (issue 15 item 4); staff do
    assert 'href="/account/token"' not in html
    assert 'href="/account/token"' in (await listed("tk-a"))[2]
    today, _, _ = await listed("tk-b")
    assert today == {district_b}
    _, week, html = await listed("tk-a", "/meetings?day=2030-05-06")
    assert week == {future} and "06/05–12/05/2030" in html
    _, week, _ = await listed("vh-a1", "/meetings?day=2030-05-06&lang=en")
    assert week == {future}

    # join links: the operator gets its point's invitation token, the chair a chair token
    operator = await signed_in(site, browsers, "vh-a1")
    status, _, response = await operator.get(f"/meetings/{current}/join")
    assert status == 303
    location = response.headers["Location"]
    assert location.startswith(f"/m/{current}?token=")
    claims = jwt.decode(
        location.split("token=")[1], SECRET, algorithms=["HS256"], options={"verify_aud": False}
    )
    assert (
        claims["sub"] == "pt:p-a1"  # a point's identity
        and claims["role"] == "point"
        and claims["meeting"] == str(current)
    )
    chair = await signed_in(site, browsers, "ct-a")
    status, _, response = await chair.get(f"/meetings/{current}/join")
    claims = jwt.decode(
        response.headers["Location"].split("token=")[1],
        SECRET,
        algorithms=["HS256"],
        options={"verify_aud": False},
    )
    assert status == 303 and claims["sub"] == "u:ct-a" and claims["role"] == "chair"
    # the secretary of the unit watches from the chair's side: no moderation
    secretary = await signed_in(site, browsers, "tk-a")
    status, _, response = await secretary.get(f"/meetings/{current}/join")
    claims = jwt.decode(
        response.headers["Location"].split("token=")[1],
        SECRET,
        algorithms=["HS256"],
        options={"verify_aud": False},
    )
    assert status == 303 and claims["sub"] == "u:tk-a" and claims["role"] == "viewer"
    assert claims["grants"]["moderate"] is False
    status, html, _ = await chair.get(f"/meetings/{future}/join")
    assert status == 409 and "Phòng họp chưa mở" in html

    # the operator sees only meetings of its point; other districts get 404
    status, html, _ = await operator.get(f"/meetings/{current}")
    assert status == 200 and "Giao ban sáng" in html and "/edit" not in html
    for path in (f"/meetings/{deputy}", f"/meetings/{deputy}/join", f"/meetings/{current}/edit"):
        status, _, _ = await operator.get(path)
        assert status in (403, 404), path
    status, _, _ = await operator.get(f"/meetings/{deputy}")
    assert status == 404
    other = await signed_in(site, browsers, "tk-b")
    for path in (f"/meetings/{current}", f"/meetings/{current}/join", "/meetings/999999"):
        status, html, _ = await other.get(path)
        assert status == 404 and "Không tìm thấy cuộc họp" in html and "Giao ban sáng" not in html
    chair_b = await signed_in(site, browsers, "ct-b")
    status, _, _ = await chair_b.get(f"/meetings/{current}/edit")
    assert status == 404
    anonymous = site.browser()
    browsers.append(anonymous)
    status, _, response = await anonymous.get(f"/meetings/{current}")
    assert status == 303 and response.headers["Location"].startswith("/login?next=")

    # a live meeting: the form still edits its notes (its unchanged times are not a move)
    site.db(lambda s: svc.start_meeting(s, current))
    status, html, _ = await chair.get(f"/meetings/{current}/edit")
    version = re.search(r'name="version" value="(\d+)"', html)
    assert status == 200 and version
    token = await chair.csrf(f"/meetings/{current}/edit")
    values = re.findall(r'name="(start_date|start_time|end_date|end_time)" value="([^"]*)"', html)
    edit = form(
        token,
        version=version.group(1),
        title="Giao ban sáng",
        notes="Bổ sung khi đang họp",
        points=["p-a1"],
        **dict(values),
    )
    status, _, _ = await chair.post(f"/meetings/{current}/edit", edit)
    assert status == 303 and meeting(site, current).notes == "Bổ sung khi đang họp"
    now_version = str(meeting(site, current).version)
    moved = [(k, {"end_time": "23:00", "version": now_version}.get(k, v)) for k, v in edit]
    status, html, _ = await chair.post(f"/meetings/{current}/edit", moved)
    assert status == 409 and "đang diễn ra" in html


async def test_attendance_and_answers_on_the_page(any_site: Site, browsers: list[Browser]) -> None:
    site = any_site
    district(site)
    start = datetime.now(UTC) - timedelta(hours=2)
    the_id = schedule(site, "Họp đã qua", start, 60, "ct-a", ("p-a1", "p-a2"))

    def happened(session: object) -> None:
        s = session
        invitations.answer(s, the_id, "p-a1", "accept")  # type: ignore[arg-type]
        invitations.answer(s, the_id, "p-a2", "decline")  # type: ignore[arg-type]
        at = start + timedelta(minutes=1)
        attendance.record_event(
            s,
            the_id,
            identity="p-a1",
            participant_id="x1",
            kind="join",
            at=at,
            name="UBND xã A Một",
            role="point",  # type: ignore[arg-type]
        )
        attendance.record_event(
            s,
            the_id,
            identity="p-a1",
            participant_id="x1",
            kind="leave",
            at=at + timedelta(minutes=42),
            role="point",  # type: ignore[arg-type]
        )
        attendance.record_event(
            s,
            the_id,
            identity="ct-a",
            participant_id="c1",
            kind="join",
            at=at,
            name="Chủ tịch A",
            role="chair",  # type: ignore[arg-type]
        )
        attendance.record_event(
            s,
            the_id,
            identity="ct-a",
            participant_id="c1",
            kind="leave",
            at=at + timedelta(minutes=50),
            role="chair",  # type: ignore[arg-type]
        )
        svc.start_meeting(s, the_id, now=start)  # type: ignore[arg-type]
        svc.end_meeting(s, the_id, now=start + timedelta(minutes=55))  # type: ignore[arg-type]

    site.db(happened)
    chair = await signed_in(site, browsers, "ct-a")
    status, html, _ = await chair.get(f"/meetings/{the_id}")
    assert status == 200 and 'data-status="ended"' in html
    assert 'data-point="p-a1" data-answer="accepted"' in html
    assert 'data-point="p-a2" data-answer="declined"' in html
    assert 'data-identity="p-a1" data-minutes="42"' in html
    assert 'data-identity="ct-a" data-minutes="50"' in html
    assert 'data-identity="p-a2" data-minutes="0"' in html and "Vắng mặt" in html
    local_join = (start + timedelta(minutes=1)).astimezone(ZONE).strftime("%H:%M:%S")
    assert local_join in html
    assert f"/meetings/{the_id}/edit" not in html  # an ended meeting has no actions
    operator = await signed_in(site, browsers, "vh-a1")
    status, html, _ = await operator.get(f"/meetings/{the_id}")
    assert 'data-identity="p-a1"' in html and 'data-identity="ct-a"' not in html


# --- e-mails ------------------------------------------------------------------------------------


@pytest.fixture
def mail_site(tmp_path: Path) -> Iterator[tuple[Site, Mailbox, Controller]]:
    """A server on SQLite whose SMTP server is a real aiosmtpd on 127.0.0.1."""
    box = Mailbox("127.0.0.1", free_port())
    controller = Controller(box, hostname=box.host, port=box.port)
    controller.start()
    url = URL.create("sqlite", database=str(tmp_path / "data" / "conference.db"))
    try:
        for made in _start(tmp_path, box.settings_env(), url):
            yield made, box, controller
    finally:
        try:
            controller.stop()
        except (AssertionError, RuntimeError):
            pass  # stopped by the test


async def test_send_invitations_and_smtp_failure(
    mail_site: tuple[Site, Mailbox, Controller], browsers: list[Browser]
) -> None:
    site, box, controller = mail_site
    district(site)
    the_id = schedule(
        site,
        "Giao ban có giấy mời",
        datetime(2030, 6, 3, 8, 0, tzinfo=ZONE),
        60,
        "ct-a",
        ("p-a1", "p-a2"),
    )
    chair = await signed_in(site, browsers, "ct-a")
    token = await chair.csrf(f"/meetings/{the_id}")
    status, html, _ = await chair.post(f"/meetings/{the_id}/send", {"csrf_token": token})
    assert status == 200 and "Đã gửi 2 giấy mời" in html and 'data-send="ok"' in html
    messages = box.wait_for(2)
    assert sorted(m["To"].addresses[0].addr_spec for m in messages) == [
        "p-a1@example.vn",
        "p-a2@example.vn",
    ]
    status, html, _ = await chair.post(f"/meetings/{the_id}/send", {"csrf_token": token})
    assert "Đã gửi 0 giấy mời" in html  # idempotent

    # the mail server refuses one address: said in Vietnamese, the point named
    site.db(lambda s: svc.update_meeting(s, the_id, version=None, title="Giao ban (đổi giờ)"))
    box.refuse.add("p-a2@example.vn")
    status, html, _ = await chair.post(f"/meetings/{the_id}/send", {"csrf_token": token})
    assert status == 502 and "Đã gửi 1 giấy mời" in html
    failed = html_module.unescape(html.split('class="send-failed"', 1)[1].split("</ul>")[0])
    assert 'data-error="mail.err.recipient"' in failed and 'data-point="p-a2"' in failed
    assert "Máy chủ thư điện tử không nhận thư gửi tới p-a2@example.vn (mã 550)" in failed
    assert "mailbox unavailable" not in html and "Recipient" not in html  # no SMTP English
    box.refuse.clear()
    site.db(lambda s: svc.update_meeting(s, the_id, version=None, title="Giao ban (đổi giờ 2)"))

    # the mail server goes away: a clear message, no crash, the update stays pending
    controller.stop()
    status, html, _ = await chair.post(f"/meetings/{the_id}/send", {"csrf_token": token})
    assert status == 502 and 'data-send="failed"' in html and "Traceback" not in html
    failed = html_module.unescape(html.split('class="send-failed"', 1)[1].split("</ul>")[0])
    assert "Không gửi được thư" in html and failed.count("<li") == 1  # one reason, both points
    assert 'data-point="p-a1"' in failed and 'data-point="p-a2"' in failed
    assert f"Máy chủ thư điện tử 127.0.0.1:{box.port} từ chối kết nối" in failed
    assert "Connect call failed" not in html and "cannot connect" not in html
    # in English by choice
    status, html, _ = await chair.post(f"/meetings/{the_id}/send?lang=en", {"csrf_token": token})
    assert status == 502 and f"The mail server 127.0.0.1:{box.port} refused the connection" in html
    views = site.db(lambda s: invitations.list_invitations(s, the_id))
    assert all(v.last_error for v in views)  # the latest change is still to be sent to both
    assert {v.point: v.sent_sequence for v in views} == {"p-a1": 1, "p-a2": 0}
    assert all("cannot connect" in (v.last_error or "") for v in views)  # English, for IT


# --- in a real browser --------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
async def test_form_in_chromium(site: Site) -> None:
    """The form works in Chromium: date and time inputs, a checkbox, agenda rows added
    and removed in the page (issue 15 item 7), a presenting account chosen; a title that
    is markup is shown as text, never run."""
    playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
    district(site)
    title = '<img src=x onerror="window.__xss = 1"> Giao ban'
    async with playwright_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
                "--no-sandbox",
                "--disable-gpu",
            ],
        )
        try:
            page = await chromium.new_page(locale="vi-VN")
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(site.url + "/login?next=/meetings/new")
            await page.fill("input[name=username]", "ct-a")
            await page.fill("input[name=password]", "mat-khau-1")
            await page.click("button[type=submit]")
            await page.wait_for_url("**/meetings/new")
            await page.fill("input[name=title]", title)
            await page.fill("input[name=start_date]", "2030-01-07")
            await page.fill("input[name=start_time]", "08:00")
            await page.fill("input[name=end_date]", "2030-01-07")
            await page.fill("input[name=end_time]", "09:15")
            await page.fill("input[name=agenda_title_0]", "Báo cáo tuần")
            await page.fill("input[name=agenda_presenter_0]", "Văn phòng")
            # more agenda rows than the three blank ones: add three, remove one
            rows = page.locator("table.agenda-rows tbody tr")
            assert await rows.count() == 3
            for _ in range(3):
                await page.click("#agenda-add")
            assert await rows.count() == 6
            for index, (item, who) in enumerate(
                [("Ý kiến xã A Một", "UBND xã A Một"), ("Thừa", "x"), ("Tài chính", "")], 1
            ):
                await page.fill(f"input[name=agenda_title_{index}]", item)
                await page.fill(f"input[name=agenda_presenter_{index}]", who)
            await page.select_option("select[name=agenda_presenter_user_3]", "tk-a")
            for number in range(4, 6):
                await page.fill(f"input[name=agenda_title_{number}]", f"Mục {number}")
                await page.fill(f"input[name=agenda_presenter_{number}]", "Văn phòng")
            await rows.nth(2).locator("button.agenda-remove").click()  # "Thừa"
            assert await rows.count() == 5
            numbers = [await rows.nth(i).locator(".agenda-number").inner_text() for i in range(5)]
            assert numbers == ["1", "2", "3", "4", "5"]
            assert await rows.nth(2).locator("select").get_attribute("name") == (
                "agenda_presenter_user_2"
            )
            await page.check("input[name=points][value=p-a2]")
            await page.click("button.primary")
            await page.wait_for_url(re.compile(r".*/meetings/\d+\?saved=1$"))
            assert await page.text_content("h1.meeting-title") == title
            assert await page.evaluate("window.__xss") is None
            assert "08:00–09:15 07/01/2030" in (await page.text_content("[data-field=time]") or "")
            the_id = int(re.findall(r"/meetings/(\d+)", page.url)[0])
            stored = meeting(site, the_id)
            assert stored.title == title and [i.point.code for i in stored.invitations] == ["p-a2"]
            assert stored.end_at == datetime(2030, 1, 7, 2, 15, tzinfo=UTC)
            assert [
                (a.title, a.presenter, a.presenter_user.username if a.presenter_user else None)
                for a in stored.agenda
            ] == [
                ("Báo cáo tuần", "Văn phòng", None),
                ("Ý kiến xã A Một", "UBND xã A Một", None),
                ("Tài chính", "", "tk-a"),
                ("Mục 4", "Văn phòng", None),
                ("Mục 5", "Văn phòng", None),
            ]
            assert not errors, errors
            # cancel through the confirmation page
            await page.click(f"a[href='/meetings/{the_id}/cancel']")
            await page.click("button.primary")
            await page.wait_for_url(re.compile(r".*saved=cancelled$"))
            assert await page.get_attribute(".meeting-status", "data-status") == "cancelled"
            assert meeting(site, the_id).status == "cancelled"
        finally:
            await chromium.close()


def test_a_meeting_across_midnight_names_both_days() -> None:
    """Issue 15 item 7: "23:55–00:55 04/12/2026" read as a meeting ending before it began."""
    from types import SimpleNamespace

    import jinja2

    from .conftest import ROOT

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "web" / "templates"))
    when = env.from_string('{% import "meeting_macros.html" as mm %}{{ mm.when(m) }}')
    late = datetime(2026, 12, 4, 23, 55)
    night = SimpleNamespace(local_start=late, local_end=late + timedelta(hours=1))
    assert when.render(m=night) == "23:55 04/12/2026 – 00:55 05/12/2026"
    day = SimpleNamespace(local_start=late - timedelta(hours=2), local_end=late)
    assert when.render(m=day) == "21:55–23:55 04/12/2026"


async def test_the_points_links_without_e_mail(site: Site, browsers: list[Browser]) -> None:
    """Issue 15 item 1: the chair's side sees each invited point's own link (copy buttons,
    a message for a chat group), the same from the API and `conference meeting links`;
    other districts and operators do not; every showing is audited."""
    import json
    import subprocess
    import sys

    from .test_api import Client

    district(site)
    start = datetime.now(UTC) + timedelta(days=2)
    meeting_id = schedule(site, "Giao ban tuần", start, 60, "ct-a", ("p-a1", "p-a2"))
    chair = await signed_in(site, browsers, "ct-a")
    status, page, response = await chair.get(f"/meetings/{meeting_id}")
    assert f'href="/meetings/{meeting_id}/links"' in page
    status, page, response = await chair.get(f"/meetings/{meeting_id}/links")
    assert status == 200 and response.headers["Cache-Control"] == "no-store"
    page = html_module.unescape(page)
    links = dict(re.findall(r'<tr data-point="([^"]+)">.*?value="([^"]+)"', page, re.S))
    assert set(links) == {"p-a1", "p-a2"}
    for code, link in links.items():  # each is that point's own invitation link
        assert f"/m/{meeting_id}?token=" in link
        token = link.split("token=", 1)[1]
        claims = jwt.decode(
            token, SECRET, algorithms=["HS256"], options={"verify_nbf": False, "verify_iat": False}
        )
        assert claims["sub"] == f"pt:{code}" and claims["meeting"] == str(meeting_id)
    text = page.split('<textarea id="share-text"', 1)[1].split(">", 1)[1].split("</textarea>")[0]
    assert text.startswith("Giao ban tuần\nThời gian: ") and "1. Báo cáo tình hình" in text
    assert f"- UBND xã A Một: {links['p-a1']}" in text
    assert "/static/links.js" in page and "<script>" not in page  # no inline script

    # not for another district's secretary, nor for a point's operator
    for username in ("tk-b", "vh-a1"):
        other = await signed_in(site, browsers, username)
        status, page, _ = await other.get(f"/meetings/{meeting_id}/links")
        assert status in (403, 404) and links["p-a1"] not in page

    # the API, in English on request
    api = await Client(site).sign_in("tk-a")
    try:
        status, data, _ = await api.call("GET", f"/meetings/{meeting_id}/links?lang=en")
        assert status == 200, data
        assert {x["point"]: x["link"].split("token=")[0] for x in data["links"]} == {
            code: link.split("token=")[0] for code, link in links.items()
        }
        assert data["text"].startswith("Giao ban tuần\nTime: ")
    finally:
        await api.close()

    # the command line (the same links, signed with the same secret)
    done = subprocess.run(
        [sys.executable, "-m", "conference", "meeting", "links", str(meeting_id)],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "CONFERENCE_DATA_DIR": str(site.server.data_dir)},
        cwd=site.server.data_dir.parent,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines() if line.count("\t") == 2]
    assert sorted(row[0] for row in rows) == ["p-a1", "p-a2"]
    assert "Đường liên kết vào họp của từng điểm cầu" in done.stdout

    # the printable QR sheet: one card per point, its QR code reads back as its link
    status, page, response = await chair.get(f"/meetings/{meeting_id}/links")
    assert f'href="/meetings/{meeting_id}/links/qr"' in page and "In mã QR" in page
    status, page, response = await chair.get(f"/meetings/{meeting_id}/links/qr")
    assert status == 200 and response.headers["Cache-Control"] == "no-store"
    cards = qr_cards(page)
    assert set(cards) == {"p-a1", "p-a2"}
    for code, (svg, shown_link, card) in cards.items():
        assert read_qr(svg) == shown_link  # the code is the link printed under it
        # that point's own link (a new token each showing: another jti, the same claims)
        assert shown_link.split("token=")[0] == links[code].split("token=")[0]
        claims = jwt.decode(
            shown_link.split("token=", 1)[1],
            SECRET,
            algorithms=["HS256"],
            options={"verify_nbf": False, "verify_iat": False},
        )
        assert claims["sub"] == f"pt:{code}" and claims["meeting"] == str(meeting_id)
        assert "Giao ban tuần" in card
        assert ("Xã A Một" if code == "p-a1" else "Xã A Hai") in card  # the point's unit
    assert "<script>" not in page and "https://" not in page.split("<main", 1)[0]  # no CDN
    for username in ("tk-b", "vh-a1"):
        other = await signed_in(site, browsers, username)
        status, page, _ = await other.get(f"/meetings/{meeting_id}/links/qr")
        assert status in (403, 404) and links["p-a1"] not in page and "<svg" not in page
    anonymous = site.browser()
    browsers.append(anonymous)
    status, _, response = await anonymous.get(f"/meetings/{meeting_id}/links/qr")
    assert status in (302, 303) and "/login" in response.headers["Location"]

    # every showing is in the audit log: page, API, command line, QR sheet
    log = site.server.data_dir / "audit.log"
    shown = [json.loads(line) for line in log.read_text().splitlines()]
    shown = [r for r in shown if r["action"] == "links"]
    assert [(r["via"], r.get("username")) for r in shown if r["via"] != "cli"] == [
        ("page", "ct-a"),
        ("api", "tk-a"),
        ("page", "ct-a"),
        ("qr", "ct-a"),
    ]
    assert [r["via"] for r in shown].index("cli") == 2
    assert all(r["meeting"] == str(meeting_id) for r in shown)

    # "Gửi giấy mời" on a server without e-mail says so in Vietnamese and leads to the links
    token = await chair.csrf(f"/meetings/{meeting_id}")
    status, page, _ = await chair.post(f"/meetings/{meeting_id}/send", {"csrf_token": token})
    page = html_module.unescape(page)
    failed = page.split('class="send-failed"', 1)[1].split("</ul>")[0]
    assert status == 502 and failed.count("<li") == 1
    assert "chưa được cấu hình gửi thư điện tử" in failed
    assert f'href="/meetings/{meeting_id}/links"' in failed and "not configured" not in page

    # a cancelled meeting's links are not handed out, on paper neither
    site.db(lambda s: svc.cancel_meeting(s, meeting_id, version=None))
    status, _, _ = await chair.get(f"/meetings/{meeting_id}/links")
    assert status == 409
    status, page, _ = await chair.get(f"/meetings/{meeting_id}/links/qr")
    assert status == 409 and "<svg" not in page


def qr_cards(page: str) -> dict[str, tuple[str, str, str]]:
    """The QR sheet's cards: point -> (its <svg>, the link printed under it, the card)."""
    import html as html_module

    found = {}
    for code, card in re.findall(
        r'<article class="qr-card" data-point="([^"]+)">(.*?)</article>', page, re.S
    ):
        svg = re.search(r"<svg.*?</svg>", card, re.S)
        link = re.search(r'<p class="qr-link">([^<]+)</p>', card)
        assert svg and link, card
        found[code] = (
            svg.group(0),
            html_module.unescape(link.group(1)),
            html_module.unescape(card),
        )
    return found


def read_qr(svg: str) -> str:
    """Decode a QR code drawn as segno's SVG (horizontal strokes of one module, on a grid of
    one unit per module) with ZXing, as a phone would read the printed code."""
    import numpy
    import zxingcpp

    size = int(re.search(r'viewBox="0 0 (\d+) \1"', svg).group(1))  # type: ignore[union-attr]
    path = re.search(r'<path stroke="#000" d="([^"]+)"', svg)
    assert path, svg[:300]
    image = numpy.full((size, size), 255, numpy.uint8)
    x = y = 0.0
    for command, a, b in re.findall(r"([Mmh])(-?[\d.]+)(?: (-?[\d.]+))?", path.group(1)):
        if command == "M":
            x, y = float(a), float(b)
        elif command == "m":
            x, y = x + float(a), y + float(b)
        else:
            image[int(y), int(x) : int(x + float(a))] = 0
            x += float(a)
    image = numpy.kron(image, numpy.ones((6, 6), numpy.uint8))  # 6 pixels a module
    # a QR reader, as a phone's: ZXing's other formats once "found" a second code among
    # the modules of a good QR code (seen once in a full run)
    results = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(results) == 1 and results[0].format == zxingcpp.BarcodeFormat.QRCode, results
    return str(results[0].text)


async def test_copying_the_points_links_in_chromium(site: Site, tmp_path: Path) -> None:
    """Issue 15 item 1 as a secretary drives it: the meeting page leads to the links, the
    copy buttons put a point's link and the whole chat message on the clipboard; "In mã QR"
    opens the printable sheet, whose codes Chromium draws so that they read back as each
    point's link, four cards to an A4 page, none split across two pages."""
    playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
    district(site)
    for code, name, unit in (
        ("p-a3", "UBND thị trấn A Ba", "xa-a1"),
        ("p-a4", "Trạm Y tế xã A Bốn", "xa-a2"),
        ("p-a5", "Trường Tiểu học xã A Năm", "xa-a2"),
    ):
        site.db(
            lambda s, c=code, n=name, u=unit: organisation.create_point(s, code=c, name=n, unit=u)
        )
    points = ("p-a1", "p-a2", "p-a3", "p-a4", "p-a5")
    start = datetime.now(ZONE).replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(
        days=1
    )
    meeting_id = schedule(site, "Giao ban tuần", start, 90, points=points)
    async with playwright_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
                "--no-sandbox",
                "--disable-gpu",
            ],
        )
        try:
            context = await chromium.new_context(
                locale="vi-VN",
                permissions=["clipboard-read", "clipboard-write"],
                viewport={"width": 1000, "height": 760},
            )
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(site.url + f"/login?next=/meetings/{meeting_id}")
            await page.fill("input[name=username]", "tk-a")
            await page.fill("input[name=password]", "mat-khau-1")
            await page.click("button[type=submit]")
            await page.wait_for_url(f"**/meetings/{meeting_id}")
            await page.click("a.links-link")
            await page.wait_for_url(f"**/meetings/{meeting_id}/links")
            await doc_screenshot(page, tmp_path, "screenshot-links.png", full_page=True)
            link = await page.input_value('tr[data-point="p-a1"] input.link')
            await page.click('tr[data-point="p-a1"] button.copy')
            assert await page.evaluate("navigator.clipboard.readText()") == link
            assert await page.inner_text('tr[data-point="p-a1"] button.copy') == "Đã sao chép"
            await page.click("#copy-all")
            copied = await page.evaluate("navigator.clipboard.readText()")
            assert copied.startswith("Giao ban tuần\n") and f"UBND xã A Một: {link}" in copied

            # the QR sheet, as printed on A4
            await page.click("a.qr-link")
            await page.wait_for_url(f"**/meetings/{meeting_id}/links/qr")
            await page.set_viewport_size({"width": 794, "height": 1123})  # A4 at 96 dpi
            await page.emulate_media(media="print")
            cards = page.locator("article.qr-card")
            assert await cards.count() == len(points)
            for index in range(len(points)):
                card = cards.nth(index)
                code = await card.get_attribute("data-point")
                printed = (await card.locator(".qr-link").inner_text()).strip()
                assert f"/m/{meeting_id}?token=" in printed, printed
                claims = jwt.decode(
                    printed.split("token=", 1)[1],
                    SECRET,
                    algorithms=["HS256"],
                    options={"verify_nbf": False, "verify_iat": False},
                )
                assert claims["sub"] == f"pt:{code}"
                drawn = await card.locator(".qr svg").screenshot()
                assert read_png_qr(drawn) == printed, code
                style = await card.evaluate("e => getComputedStyle(e).breakInside")
                assert style == "avoid"
            # two rows of cards fit the A4 page's 277 mm (297 less the 10 mm margins)
            boxes = [await cards.nth(i).bounding_box() for i in range(len(points))]
            assert all(b is not None for b in boxes)
            assert {round(b["x"]) for b in boxes if b}.__len__() == 2  # two columns
            row_pitch = boxes[2]["y"] - boxes[0]["y"]  # type: ignore[index]
            assert 2 * row_pitch <= 277 / 25.4 * 96, row_pitch
            await page.evaluate("window.scrollTo(0, 0)")
            await doc_screenshot(  # the first row of cards
                page, tmp_path, "screenshot-qr-sheet.png", clip=(0, 0, 794, 470)
            )
            pdf = await page.pdf(format="A4", prefer_css_page_size=True, print_background=True)
            (tmp_path / "qr-sheet.pdf").write_bytes(pdf)
            pages = len(re.findall(rb"/Type\s*/Page\b", pdf))
            assert pages == 2, pages  # 5 cards: 4 on the first page, 1 on the second
            assert not errors, errors
        finally:
            await chromium.close()


async def doc_screenshot(
    page: object,
    tmp_path: Path,
    name: str,
    clip: tuple[int, int, int, int] | None = None,
    full_page: bool = False,
) -> Path:
    """A screenshot to the tmp dir and test-artifacts/, and to docs/ with
    ``UPDATE_SCREENSHOTS=1`` (as tests/test_browser.py `save_screenshot` does)."""
    import os
    import shutil

    from .conftest import ROOT

    path = tmp_path / name
    area = dict(zip(("x", "y", "width", "height"), clip, strict=True)) if clip else None
    await page.screenshot(path=str(path), clip=area, full_page=full_page)  # type: ignore[attr-defined]
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    shutil.copyfile(path, ROOT / "test-artifacts" / name)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, ROOT / "docs" / name)
    return path


def read_png_qr(png: bytes) -> str:
    """The text of the one QR code in a screenshot (ZXing, as a phone camera would)."""
    import io

    import numpy
    import zxingcpp
    from PIL import Image

    image = numpy.asarray(Image.open(io.BytesIO(png)).convert("L"))
    results = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(results) == 1 and results[0].format == zxingcpp.BarcodeFormat.QRCode, results
    return str(results[0].text)
