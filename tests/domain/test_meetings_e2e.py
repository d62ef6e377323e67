"""End to end: 20 points, a weekly briefing, invitations e-mailed, a link opened on the real
server, an answer given through the answer link, reminders sent by the server's task."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
from sqlalchemy.engine import URL, make_url

from conference.domain import db
from conference.domain.invitations import list_invitations, send_pending
from conference.domain.meetings import ZONE, AgendaInput
from conference.domain.recurrence import create_series
from conference.settings import Settings

from ..conftest import SECRET, check_clean_exit, start_server
from .meeting_setup import make_org
from .smtp_server import Mailbox, mailbox_fixture  # noqa: F401 - fixture
from .test_cli import env  # noqa: F401 - fixture

WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


def url_of(values: dict[str, str]) -> URL:
    if values.get("CONFERENCE_DATABASE_URL"):
        return make_url(values["CONFERENCE_DATABASE_URL"])
    data_dir = Path(values["CONFERENCE_DATA_DIR"])
    return URL.create("sqlite", database=str(data_dir / "conference.db"))


def plain(message: object) -> str:
    body = message.get_body(("plain",))  # type: ignore[attr-defined]
    return str(body.get_content())


async def test_weekly_briefing_end_to_end(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
    mailbox: Mailbox,
) -> None:
    Path(env["CONFERENCE_DATA_DIR"]).mkdir(parents=True)
    url = url_of(env)
    db.upgrade(url)
    database = db.Database(url)
    start = (datetime.now(ZONE) + timedelta(minutes=10)).replace(second=0, microsecond=0)
    with database.session() as session:
        org = make_org(session, n_points=20)
        result = create_series(
            session,
            title="Giao ban <tuần> của huyện",
            unit="huyen-a",
            chair="chu-tich",
            rrule=f"FREQ=WEEKLY;BYDAY={WEEKDAYS[start.weekday()]}",
            start=start,
            end=start + timedelta(hours=1),
            points=org.points,
            agenda=[AgendaInput("Tình hình tuần qua", "Văn phòng UBND")],
        )
        first = result.series.meetings[0]
        assert first.start_at == start and len(first.invitations) == 20
        meeting_id = first.id

    server = start_server(
        tmp_path,
        env={
            **env,
            **mailbox.settings_env(),
            "CONFERENCE_PUBLIC_URL": "https://hop.example.vn",
            "CONFERENCE_REMINDER_INTERVAL": "1",
        },
    )
    try:
        settings = Settings(
            token_secret=SECRET,
            public_url=server.url,
            smtp_host=mailbox.host,
            smtp_port=mailbox.port,
            smtp_security="none",
            mail_from="hop@huyen-a.example.vn",
        )
        report = await send_pending(database, settings, meeting_id)
        assert len(report.sent) == 20 and report.failed == {}
        # The server's reminder task sends the 15-minute reminder (the start is 10 min away).
        messages = mailbox.wait_for(40)
        subjects = [str(m["Subject"]) for m in messages]
        assert sum(s.startswith("[Giấy mời]") for s in subjects) == 20
        assert sum(s.startswith("[Nhắc lịch họp]") for s in subjects) == 20, subjects
        invitation = next(
            m
            for m in messages
            if str(m["Subject"]).startswith("[Giấy mời]")
            and m["To"].addresses[0].addr_spec == "vanphong07@xa07.example.vn"
        )
        body = plain(invitation)
        link = re.search(re.escape(server.url) + r"/m/\d+\?token=\S+", body)
        accept = re.search(re.escape(server.url) + r"/m/\d+/rsvp\?token=\S+&answer=accept", body)
        assert link is not None and accept is not None

        jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(link[0], allow_redirects=False) as response:
                assert response.status == 303
                assert response.headers["Location"] == f"/m/{meeting_id}"
            async with http.get(link[0]) as response:
                assert response.status == 200
                assert str(response.url) == f"{server.url}/m/{meeting_id}"
                page = await response.text()
                assert "room" in page.lower()
            async with http.get(f"{server.url}/m/{meeting_id}/session") as response:
                assert response.status == 200
                session_info = await response.json()
                assert session_info["identity"] == "pt:ubnd-xa-07"  # a point's identity
                assert session_info["role"] == "point"
                assert session_info["meeting"] == str(meeting_id)

            # The answer link: GET asks, POST records.
            async with http.get(accept[0]) as response:
                assert response.status == 200
                page = await response.text()
                assert "UBND xã số 7" in page and "Giao ban &lt;tuần&gt; của huyện" in page
            with database.session() as session:
                views = {v.point: v.answer for v in list_invitations(session, meeting_id)}
                assert views["ubnd-xa-07"] == "pending"
            token = accept[0].split("token=")[1].split("&")[0]
            async with http.post(
                f"{server.url}/m/{meeting_id}/rsvp", data={"token": token, "answer": "accept"}
            ) as response:
                assert response.status == 200
                assert 'data-answer="accepted"' in await response.text()
            with database.session() as session:
                views = {v.point: v.answer for v in list_invitations(session, meeting_id)}
                assert views["ubnd-xa-07"] == "accepted"
                assert sum(a == "accepted" for a in views.values()) == 1
            # A forged or foreign answer link: a Vietnamese error page, no traceback.
            async with http.post(
                f"{server.url}/m/{meeting_id}/rsvp", data={"token": "x.y.z", "answer": "accept"}
            ) as response:
                assert response.status == 401
                assert "Đường link không hợp lệ" in await response.text()
            async with http.get(
                f"{server.url}/m/{meeting_id + 1}/rsvp?token={token}&answer=decline"
            ) as response:
                assert response.status == 403
        # Reminders went out once: no second batch on later ticks.
        mailbox.clear()
        assert mailbox.wait_for(1, timeout=2.5) == []
    finally:
        database.close()
        check_clean_exit(server)
