"""Minutes (biên bản): draft, edit, final, .docx and print export, API, access — real server.

The server is the real ``conference serve`` subprocess (tests/test_webauth.py `Site`); the
meeting, its invitations and attendance are made with the services on the server's own
database; the recording is a manifest written and signed with the recorder's own helpers
(``seal`` with the server's key) in the server's recordings directory, as the recorder
leaves it after a meeting (recording real media is tests/recording/'s business).
"""

# ruff: noqa: F811 - the fixtures imported from test_webauth are parameters here

from __future__ import annotations

import html as html_module
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docx
import pytest
from sqlalchemy import select

from conference.domain import attendance, invitations, organisation
from conference.domain import meetings as svc
from conference.domain.meetings import ZONE, AgendaInput
from conference.domain.models import Minutes
from conference.recording.manifest import FORMAT, iso, read_manifest
from conference.recording.signing import load_or_create_key
from conference.recording.store import (
    meeting_directory,
    prune,
    recording_id,
    seal,
    verify_directory,
)
from conference.web.auth import SESSION_COOKIE

from .test_api import Client, client, is_error
from .test_webauth import Browser, Site, any_site, browsers, site  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def organisation_setup(site: Site) -> None:
    """Province > district Bảo Thắng (points p-a1, p-a2) and district B (p-b1); users."""
    site.add_unit("tinh-lc", "Tỉnh Lào Cai", "province")
    site.add_unit("huyen-a", "Huyện Bảo Thắng", "district", "tinh-lc")
    site.add_unit("xa-a1", "Xã Phú Nhuận", "commune", "huyen-a")
    site.add_unit("xa-a2", "Xã Sơn Hà", "commune", "huyen-a")
    site.add_unit("huyen-b", "Huyện Bắc Hà", "district", "tinh-lc")
    site.add_unit("xa-b1", "Xã Bản Phố", "commune", "huyen-b")
    for code, name, unit in (
        ("p-a1", "UBND xã Phú Nhuận", "xa-a1"),
        ("p-a2", "UBND xã Sơn Hà", "xa-a2"),
        ("p-b1", "UBND xã Bản Phố", "xa-b1"),
    ):
        site.db(
            lambda s, c=code, n=name, u=unit: organisation.create_point(
                s, code=c, name=n, unit=u, email=f"{c}@example.vn"
            )
        )
    site.add_user("qt-a", "admin", unit="huyen-a", display_name="Quản trị A")
    site.add_user("ct-a", "chair", unit="huyen-a", display_name="Nguyễn Văn Chủ")
    site.add_user("tk-a", "secretary", unit="huyen-a", display_name="Trần Thị Thư")
    site.add_user("tk-a2", "secretary", unit="huyen-a", display_name="Lê Thư Hai")
    site.add_user("vh-a1", "operator", point="p-a1")
    site.add_user("tk-b", "secretary", unit="huyen-b")


def past_meeting(site: Site, start: datetime, record: bool = True) -> int:
    """A meeting that happened: p-a1 came, p-a2 declined and never joined, the chair came."""

    def make(s: Any) -> int:
        result = svc.create_meeting(
            s,
            title="Giao ban tuần 48",
            unit="huyen-a",
            chair="ct-a",
            start=start,
            end=start + timedelta(minutes=60),
            points=("p-a1", "p-a2"),
            agenda=[
                AgendaInput("Báo cáo tình hình kinh tế - xã hội", "Văn phòng"),
                AgendaInput("Tình hình xã Phú Nhuận", "UBND xã Phú Nhuận"),
            ],
        )
        mid = result.meeting.id
        invitations.answer(s, mid, "p-a1", "accept")
        invitations.answer(s, mid, "p-a2", "decline")
        for identity, participant, role, name, joined, left in (
            ("p-a1", "x1", "point", "UBND xã Phú Nhuận", 1, 43),
            ("ct-a", "c1", "chair", "Nguyễn Văn Chủ", 0, 50),
        ):
            for kind, minute in (("join", joined), ("leave", left)):
                attendance.record_event(
                    s,
                    mid,
                    identity=identity,
                    participant_id=participant,
                    kind=kind,
                    at=start + timedelta(minutes=minute),
                    name=name,
                    role=role,
                )
        return mid

    return site.db(make)


def write_recording(
    site: Site, meeting_id: int, start: datetime, state: str = "complete", minute: int = 1
) -> Path:
    """A signed manifest with a speaker timeline, as the recorder leaves it."""
    root = site.server.data_dir.parent / "recordings"
    began = start + timedelta(minutes=minute)
    directory = meeting_directory(root, str(meeting_id), began.timestamp())
    directory.mkdir(parents=True, exist_ok=True)
    track = directory / "track-ct-a-microphone-1.webm"
    track.write_bytes(b"not really webm, hashed only")

    def at(seconds: float) -> str | None:
        return iso((began + timedelta(seconds=seconds)).timestamp())

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "meeting": str(meeting_id),
        "state": "recording",
        "started_at": at(0),
        "stopped_at": at(600) if state != "recording" else None,
        "updated_at": at(600),
        "tracks": [{"file": track.name, "identity": "ct-a", "name": "Nguyễn Văn Chủ"}],
        "speakers": [
            {"at": at(60), "participant": "c1", "identity": "ct-a"},
            {"at": at(180), "participant": "x1", "identity": "p-a1"},
            {"at": at(330), "participant": None, "identity": None},
            {"at": at(331), "participant": "c1", "identity": "ct-a"},
            {"at": at(331.5), "participant": "x1", "identity": "p-a1"},  # 0.5 s: noise
            {"at": at(332), "participant": "c1", "identity": "ct-a"},
        ],
        "events": [{"at": at(0), "type": "recording-start"}],
        "minutes_final": False,
    }
    path = directory / f"{began:%Y%m%dT%H%M%SZ}.manifest.json"
    key = load_or_create_key(site.server.data_dir / "recording.key")
    if state == "recording":
        from conference.recording.manifest import write_manifest

        write_manifest(path, manifest)
    else:
        seal(path, manifest, key, state)
    return path


def text_of(html: str) -> str:
    return html_module.unescape(re.sub(r"<[^>]+>", " ", html))


def version_of(html: str) -> str:
    match = re.search(r'name="version" value="(\d+)"', html)
    assert match, html[-2000:]
    return match.group(1)


def minutes_row(site: Site, meeting_id: int) -> Minutes:
    return site.db(
        lambda s: s.scalars(select(Minutes).where(Minutes.meeting_id == meeting_id)).one()
    )


async def signed_in(site: Site, browsers: list[Browser], username: str) -> Browser:
    browser = site.browser()
    browsers.append(browser)
    return await browser.signed_in(username)


def form_of(html: str, **changes: str) -> list[tuple[str, str]]:
    """The minutes form as the browser would send it, with ``changes``."""
    form = re.search(r'<form method="post" action="/meetings/\d+/minutes" .*?</form>', html, re.S)
    assert form, html[-2000:]
    pairs: list[tuple[str, str]] = []
    for match in re.finditer(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(0)):
        pairs.append((match.group(1), html_module.unescape(match.group(2))))
    for match in re.finditer(
        r'<textarea[^>]*name="([^"]+)"[^>]*>(.*?)</textarea>', form.group(0), re.S
    ):
        pairs.append((match.group(1), html_module.unescape(match.group(2))))
    return [(k, changes.get(k, v)) for k, v in pairs]


# --- the page: draft, edit, stale, final, exports ---------------------------------------------


async def test_minutes_draft_edit_final_and_exports(
    any_site: Site, browsers: list[Browser]
) -> None:
    site = any_site
    organisation_setup(site)
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)
    local = start.astimezone(ZONE)
    mid = past_meeting(site, start)
    manifest_path = write_recording(site, mid, start)
    rid = recording_id(
        manifest_path.relative_to(site.server.data_dir.parent / "recordings").as_posix()
    )

    secretary = await signed_in(site, browsers, "tk-a")
    status, html, _ = await secretary.get(f"/meetings/{mid}/minutes")
    assert status == 200, html[-2000:]
    page = text_of(html)
    # The administrative header, title, time, chair, secretary (the user who opened it).
    assert 'value="UBND TỈNH LÀO CAI"' in html and 'value="UBND HUYỆN BẢO THẮNG"' in html
    assert f"Bảo Thắng, ngày {local:%d} tháng {local:%m} năm {local:%Y}" in page
    assert 'value="Nguyễn Văn Chủ"' in html and 'value="Trần Thị Thư"' in html
    assert "Giao ban tuần 48" in page
    # Agenda with presenters and recording links: the presenter point spoke 3 min in.
    assert "Báo cáo tình hình kinh tế - xã hội (trình bày: Văn phòng)" in page
    assert f'href="/recordings/{rid}#t=0"' in html  # "Văn phòng" never spoke: the start
    assert f'href="/recordings/{rid}#t=180"' in html
    # Attendance: present with join/leave times, absent with the declined note.
    rows = dict(re.findall(r'<tr data-point="([^"]+)" data-present="(yes|no)"', html))
    assert rows == {"p-a1": "yes", "ct-a": "yes", "p-a2": "no"}
    joined = (start + timedelta(minutes=1)).astimezone(ZONE).strftime("%H:%M")
    left = (start + timedelta(minutes=43)).astimezone(ZONE).strftime("%H:%M")
    assert f'name="att_joined_0" value="{joined}"' in html
    assert f'name="att_left_0" value="{left}"' in html
    assert "Vắng mặt (có báo vắng)" in html
    assert "Có mặt 1/2 điểm cầu được mời." in page
    # Speaking from the recording: chair 2 min, p-a1 2 min 30 s, chair again (two 0.5 s turns dropped as noise).
    speaking = re.findall(r'<tr data-speaker="([^"]+)" data-seconds="(\d+)"', html)
    assert speaking == [("ct-a", "120"), ("p-a1", "150"), ("ct-a", "268")], speaking

    # Save an edit; then a save based on the old version is refused and writes nothing.
    version = version_of(html)
    edited = form_of(
        html, content="Đồng chí Chủ tịch phát biểu.\nCác xã báo cáo.", att_note_0="Đến muộn 1 phút"
    )
    status, body, response = await secretary.post(f"/meetings/{mid}/minutes", edited)
    assert status == 303 and response.headers["Location"].endswith("?saved=saved"), body[-500:]
    row = minutes_row(site, mid)
    assert row.content["content"] == "Đồng chí Chủ tịch phát biểu.\nCác xã báo cáo."
    assert row.content["attendance"][0]["note"] == "Đến muộn 1 phút"
    assert row.version == int(version) + 1
    stale = form_of(html, content="Bản cũ ghi đè")
    status, body, _ = await secretary.post(f"/meetings/{mid}/minutes", stale)
    assert status == 409 and "CHƯA được lưu" in body
    assert minutes_row(site, mid).content["content"].startswith("Đồng chí Chủ tịch")
    assert "Bản cũ ghi đè" not in body  # the form shows the current minutes

    # .docx: opens with python-docx; header table, attendance table with the right points.
    async with secretary.http.get(site.url + f"/meetings/{mid}/minutes.docx") as r:
        assert r.status == 200 and r.content_type == DOCX
        assert 'filename="bien-ban-' in r.headers["Content-Disposition"]
        document = docx.Document(io.BytesIO(await r.read()))
    header = document.tables[0]
    left_cell, right_cell = (c.text for c in header.rows[0].cells)
    assert "UBND TỈNH LÀO CAI" in left_cell and "UBND HUYỆN BẢO THẮNG" in left_cell
    assert "CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM" in right_cell
    assert "Độc lập - Tự do - Hạnh phúc" in right_cell
    texts = [p.text for p in document.paragraphs]
    assert "BIÊN BẢN" in texts and "Giao ban tuần 48" in texts
    assert "Đồng chí Chủ tịch phát biểu." in texts
    table = next(
        t for t in document.tables if t.rows[0].cells[0].text == "STT" and len(t.columns) == 5
    )
    assert [c.text for c in table.rows[0].cells] == [
        "STT",
        "Điểm cầu",
        "Vào lúc",
        "Rời lúc",
        "Ghi chú",
    ]
    cells = [[c.text for c in r.cells] for r in table.rows[1:]]
    assert cells[0] == ["1", "UBND xã Phú Nhuận", joined, left, "Đến muộn 1 phút"]
    assert cells[2][1] == "UBND xã Sơn Hà" and cells[2][4] == "Vắng mặt (có báo vắng)"
    speaking_table = document.tables[-2]
    assert [c.text for c in speaking_table.rows[0].cells][:2] == ["STT", "Người phát biểu"]
    assert speaking_table.rows[2].cells[1].text == "UBND xã Phú Nhuận"
    assert speaking_table.rows[2].cells[3].text == "2 phút 30 giây"
    signature = [c.text for c in document.tables[-1].rows[0].cells]
    assert (
        "THƯ KÝ" in signature[0] and "CHỦ TRÌ" in signature[1] and "Nguyễn Văn Chủ" in signature[1]
    )

    # The printable page: A4 print stylesheet, the document, no form.
    status, printed, _ = await secretary.get(f"/meetings/{mid}/minutes/print")
    assert status == 200 and "size: A4" in printed and "@media print" in printed
    assert "CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM" in printed and "<form" not in printed
    assert "UBND xã Sơn Hà" in printed and "(Dự thảo)" in printed

    # The chair edits but may not mark final; the secretary does.
    chair = await signed_in(site, browsers, "ct-a")
    status, html, _ = await chair.get(f"/meetings/{mid}/minutes")
    assert status == 200 and "/minutes/final" not in html
    token = await chair.csrf(f"/meetings/{mid}/minutes")
    version = version_of(html)
    status, body, _ = await chair.post(
        f"/meetings/{mid}/minutes/final", {"csrf_token": token, "version": version}
    )
    assert status == 403 and "thư ký hoặc quản trị viên" in body
    status, body, response = await secretary.post(
        f"/meetings/{mid}/minutes/final",
        {"csrf_token": await secretary.csrf(f"/meetings/{mid}/minutes"), "version": version},
    )
    assert status == 303 and response.headers["Location"].endswith("saved=final&marked=1")
    row = minutes_row(site, mid)
    assert row.state == "final" and row.finalized_at is not None
    # The manifest says minutes_final, still verifies, and prune may now delete it.
    assert read_manifest(manifest_path)["minutes_final"] is True
    ok, problems = verify_directory(manifest_path.parent)
    assert problems == [] and any("signature valid" in line for line in ok)
    actions = prune(
        site.server.data_dir.parent / "recordings", 0, dry_run=True, now=start.timestamp() + 86400
    )
    assert [a.delete for a in actions] == [True]

    # Final: read-only on the page; an edit is refused and writes nothing.
    status, html, _ = await secretary.get(f"/meetings/{mid}/minutes")
    assert (
        status == 200
        and 'data-state="final"' in html
        and 'action="/meetings/' + str(mid) + '/minutes"' not in html
    )
    assert "Đã hoàn tất" in html and "Đồng chí Chủ tịch phát biểu." in html
    status, body, _ = await secretary.post(f"/meetings/{mid}/minutes", edited)
    assert status == 409 and "không thể sửa" in body
    assert minutes_row(site, mid).version == row.version
    status, printed, _ = await secretary.get(f"/meetings/{mid}/minutes/print")
    assert "(Dự thảo)" not in printed


# --- the API ------------------------------------------------------------------------------------


async def test_minutes_api(site: Site, browsers: list[Browser]) -> None:
    organisation_setup(site)
    start = (datetime.now(UTC) - timedelta(hours=5)).replace(second=0, microsecond=0)
    mid = past_meeting(site, start)  # no recording: speaking from attendance only
    api = await client(site, browsers, "tk-a2")
    status, data, _ = await api.call("GET", f"/meetings/{mid}/minutes")
    assert status == 200, data
    assert data["state"] == "draft" and data["can_edit"] and data["can_finalize"]
    content = data["content"]
    assert content["secretary"] == "Lê Thư Hai" and content["speaking_source"] == "attendance"
    assert content["speaking"] == [] and content["recording_link"] is None
    assert [a["link"] for a in content["agenda"]] == [None, None]
    assert [r["code"] for r in content["attendance"]] == ["p-a1", "ct-a", "p-a2"]
    version = data["version"]

    status, data, _ = await api.call(
        "PUT",
        f"/meetings/{mid}/minutes",
        {
            "version": version,
            "conclusions": "Giao Văn phòng tổng hợp.",
            "attendance": [{"code": "p-a2", "note": "Báo vắng: họp tỉnh"}],
        },
    )
    assert status == 200 and data["version"] == version + 1, data
    assert data["content"]["conclusions"] == "Giao Văn phòng tổng hợp."
    assert data["content"]["attendance"][2]["note"] == "Báo vắng: họp tỉnh"
    status, data, _ = await api.call(
        "PUT", f"/meetings/{mid}/minutes", {"version": version, "conclusions": "cũ"}
    )
    assert status == 409 and is_error(data, "stale")
    for bad in (
        {"version": version + 1, "speaking": "x"},
        {"version": version + 1, "attendance": [{"code": "khong-co"}]},
        {"version": version + 1, "content": "x" * 50_001},
        {"conclusions": "no version"},
    ):
        status, data, _ = await api.call("PUT", f"/meetings/{mid}/minutes", bad)
        assert status == 422 and data["error"] == "invalid", (bad, data)
    status, data, _ = await api.call("PUT", f"/meetings/{mid}/minutes", raw=b"{not json")
    assert status == 400
    assert minutes_row(site, mid).content["conclusions"] == "Giao Văn phòng tổng hợp."
    version += 1

    # .docx through the API: opens, says the speaking was not measured.
    async with api.http.get(
        site.url + f"/api/v1/meetings/{mid}/minutes.docx",
        headers={"Authorization": f"Bearer {api.token}"},
    ) as r:
        assert r.status == 200 and r.content_type == DOCX
        document = docx.Document(io.BytesIO(await r.read()))
    assert any("không có bản ghi" in p.text for p in document.paragraphs)
    assert any(
        [c.text for c in t.rows[0].cells] == ["STT", "Điểm cầu", "Vào lúc", "Rời lúc", "Ghi chú"]
        for t in document.tables
    )

    # The recording appears later: refresh the draft; the text and the edited note stay.
    write_recording(site, mid, start)
    status, data, _ = await api.call(
        "POST", f"/meetings/{mid}/minutes/refresh", {"version": version - 1}
    )
    assert status == 409 and is_error(data, "stale")
    status, data, _ = await api.call(
        "POST", f"/meetings/{mid}/minutes/refresh", {"version": version}
    )
    assert status == 200, data
    content = data["content"]
    assert content["speaking_source"] == "recording" and len(content["speaking"]) == 3
    assert content["conclusions"] == "Giao Văn phòng tổng hợp."
    assert content["attendance"][2]["note"] == "Báo vắng: họp tỉnh"
    assert content["agenda"][1]["link"].endswith("#t=180")
    version = data["version"]

    # A recording still running: the minutes cannot be final yet.
    running = write_recording(site, mid, start, state="recording", minute=30)
    status, data, _ = await api.call("POST", f"/meetings/{mid}/minutes/final", {"version": version})
    assert status == 409 and is_error(data, "recording-active")
    running.unlink()
    chair = await client(site, browsers, "ct-a")
    status, data, _ = await chair.call(
        "POST", f"/meetings/{mid}/minutes/final", {"version": version}
    )
    assert status == 403 and is_error(data, "forbidden")
    status, data, _ = await api.call("POST", f"/meetings/{mid}/minutes/final", {"version": version})
    assert status == 200 and data["state"] == "final" and not data["can_edit"], data
    assert data["recordings_marked"] == 1
    status, data, _ = await api.call(
        "PUT", f"/meetings/{mid}/minutes", {"version": version + 1, "conclusions": "sau"}
    )
    assert status == 409 and is_error(data, "final")
    status, data, _ = await api.call(
        "POST", f"/meetings/{mid}/minutes/final", {"version": version + 1}
    )
    assert status == 409 and is_error(data, "final")

    # OpenAPI lists the operations.
    anonymous = Client(site)
    browsers.append(anonymous)  # type: ignore[arg-type]
    status, document_json, _ = await anonymous.call("GET", "/openapi.json")
    paths = document_json["paths"]
    assert set(paths["/meetings/{meeting_id}/minutes"]) == {"get", "put"}
    assert "post" in paths["/meetings/{meeting_id}/minutes/final"]
    assert "get" in paths["/meetings/{meeting_id}/minutes.docx"]


# --- access ---------------------------------------------------------------------------------------


async def test_minutes_access(site: Site, browsers: list[Browser]) -> None:
    organisation_setup(site)
    start = (datetime.now(UTC) - timedelta(hours=4)).replace(second=0, microsecond=0)
    mid = past_meeting(site, start)
    paths = (
        f"/meetings/{mid}/minutes",
        f"/meetings/{mid}/minutes/print",
        f"/meetings/{mid}/minutes.docx",
    )

    anonymous = site.browser()
    browsers.append(anonymous)
    for path in paths:
        status, _, response = await anonymous.get(path)
        assert status == 303 and response.headers["Location"].startswith("/login?next=")
    operator = await signed_in(site, browsers, "vh-a1")
    other = await signed_in(site, browsers, "tk-b")
    for path in paths:
        status, _, _ = await operator.get(path)
        assert status == 403, path
        status, _, _ = await other.get(path)
        assert status == 404, path
    status, _, _ = await other.get("/meetings/999999/minutes")
    assert status == 404
    # Refusals created nothing.
    assert site.db(lambda s: s.scalars(select(Minutes)).all()) == []
    # The meeting page links the minutes for the staff, not for the point operator.
    status, html, _ = await operator.get(f"/meetings/{mid}")
    assert status == 200 and f"/meetings/{mid}/minutes" not in html

    secretary = await signed_in(site, browsers, "tk-a")
    status, html, _ = await secretary.get(f"/meetings/{mid}")
    assert status == 200 and f'href="/meetings/{mid}/minutes"' in html
    status, html, _ = await secretary.get(f"/meetings/{mid}/minutes")
    assert status == 200
    version = version_of(html)
    # No CSRF token: refused, nothing written.
    status, _, _ = await secretary.post(
        f"/meetings/{mid}/minutes", {"version": version, "content": "x"}
    )
    assert status == 403 and minutes_row(site, mid).content["content"] == ""
    token = await other.csrf("/home")
    status, _, _ = await other.post(
        f"/meetings/{mid}/minutes", {"csrf_token": token, "version": version, "content": "x"}
    )
    assert status == 404 and minutes_row(site, mid).content["content"] == ""

    for username, expected in (("vh-a1", 403), ("tk-b", 404), (None, 401)):
        api = await client(site, browsers, username)
        for method, path, body in (
            ("GET", f"/meetings/{mid}/minutes", None),
            ("PUT", f"/meetings/{mid}/minutes", {"version": 1, "content": "x"}),
            ("POST", f"/meetings/{mid}/minutes/final", {"version": 1}),
            ("GET", f"/meetings/{mid}/minutes.docx", None),
        ):
            status, data, _ = await api.call(method, path, body)
            assert status == expected, (username, method, path, status, data)
    assert minutes_row(site, mid).content["content"] == ""


# --- printing in a real browser ---------------------------------------------------------------


async def test_minutes_print_in_chromium(
    site: Site, browsers: list[Browser], tmp_path: Path
) -> None:
    """Debian's chromium prints the page to A4 (PDF): the toolbar and links are not printed."""
    async_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
    if not Path(CHROMIUM).exists():  # pragma: no cover - .ci/run installs it
        pytest.skip("Debian's chromium is not installed")
    organisation_setup(site)
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)
    mid = past_meeting(site, start)
    write_recording(site, mid, start)
    secretary = await signed_in(site, browsers, "tk-a")
    cookie = secretary.session_cookie()
    async with async_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            context = await chromium.new_context()
            await context.add_cookies([{"name": SESSION_COOKIE, "value": cookie, "url": site.url}])
            page = await context.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            response = await page.goto(site.url + f"/meetings/{mid}/minutes/print")
            assert response is not None and response.status == 200
            assert "script-src 'self'" in response.headers["content-security-policy"]
            assert await page.locator(".toolbar").is_visible()
            # the print button works under the policy (bound by /static/forms.js)
            await page.evaluate("window.print = () => { window.printed = true; }")
            await page.click("[data-print]")
            assert await page.evaluate("window.printed === true")
            assert not [m for m in console if "Content Security Policy" in m], console
            await page.emulate_media(media="print")
            assert not await page.locator(".toolbar").is_visible()
            assert (
                await page.locator("[data-line=motto]").evaluate(
                    "e => getComputedStyle(e).textDecorationLine"
                )
                == "underline"
            )
            await page.screenshot(path=str(tmp_path / "minutes-print.png"), full_page=True)
            pdf = await page.pdf(format="A4", prefer_css_page_size=True)
        finally:
            await chromium.close()
    assert pdf.startswith(b"%PDF")
    (tmp_path / "minutes.pdf").write_bytes(pdf)
    pages = len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf))
    # A4 portrait boxes (595 x 842 points) and one or two sheets for this short meeting.
    boxes = re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", pdf)
    assert boxes and all(abs(float(w) - 595) < 1 and abs(float(h) - 842) < 1 for w, h in boxes)
    assert 1 <= pages <= 2, pages
