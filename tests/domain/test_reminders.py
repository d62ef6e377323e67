"""Reminders: sent once per lead time, across restarts, caught up after an outage."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from conference.domain import db
from conference.domain.invitations import answer
from conference.domain.meetings import ZONE, create_meeting, update_meeting
from conference.domain.models import ReminderLog
from conference.domain.reminders import Reminders
from conference.settings import Settings

from .meeting_setup import make_org
from .smtp_server import Mailbox, mailbox_fixture  # noqa: F401 - fixture
from .test_invitations import check_headers

START = datetime(2030, 1, 7, 8, 0, tzinfo=ZONE)
SECRET = "reminder-test-secret-" + "z" * 32


def settings_for(box: Mailbox) -> Settings:
    return Settings(
        token_secret=SECRET,
        public_url="https://hop.example.vn",
        smtp_host=box.host,
        smtp_port=box.port,
        smtp_security="none",
        mail_from="hop@huyen-a.example.vn",
        reminders=["24h", "15m"],
    )


def schedule(database: db.Database) -> int:
    with database.session() as session:
        make_org(session)
        meeting = create_meeting(
            session,
            title="Giao ban thứ Hai",
            unit="huyen-a",
            chair="chu-tich",
            start=START,
            end=START + timedelta(hours=1),
            points=["ubnd-xa-01", "ubnd-xa-02", "ubnd-xa-03"],
        ).meeting
        answer(session, meeting.id, "ubnd-xa-03", "decline")  # no reminders for a refusal
        return meeting.id


def recipients(box: Mailbox) -> list[str]:
    return sorted(str(m["To"].addresses[0].addr_spec) for m in box.messages())


async def test_each_reminder_once_across_a_restart(database: db.Database, mailbox: Mailbox) -> None:
    settings = settings_for(mailbox)
    meeting_id = schedule(database)
    reminders = Reminders(database, settings)
    assert (await reminders.tick(START - timedelta(hours=25))).sent == []
    report = await reminders.tick(START - timedelta(hours=23))
    assert sorted(report.sent) == [
        ("ubnd-xa-01", meeting_id, 86400),
        ("ubnd-xa-02", meeting_id, 86400),
    ]
    assert recipients(mailbox) == ["vanphong01@xa01.example.vn", "vanphong02@xa02.example.vn"]
    message = mailbox.messages()[0]
    check_headers(message)
    assert message["Subject"].startswith("[Nhắc lịch họp] Giao ban thứ Hai - 08:00 ngày 07/01/2030")
    body = message.get_body(("plain",))
    assert (
        body is not None and f"https://hop.example.vn/m/{meeting_id}?token=" in body.get_content()
    )
    assert (await reminders.tick(START - timedelta(hours=22))).sent == []

    # "Restart": a new engine and scheduler on the same database.
    database.close()
    restarted = db.Database(database.url)
    try:
        again = Reminders(restarted, settings)
        assert (await again.tick(START - timedelta(hours=20))).sent == []
        assert len(mailbox.messages()) == 2
        report = await again.tick(START - timedelta(minutes=14))
        assert sorted(p for p, _, lead in report.sent if lead == 900) == [
            "ubnd-xa-01",
            "ubnd-xa-02",
        ]
        assert (await again.tick(START - timedelta(minutes=5))).sent == []
        assert (await again.tick(START + timedelta(minutes=1))).sent == []
        assert len(mailbox.messages()) == 4
        with restarted.session() as session:
            states = sorted((r.lead_seconds, r.state) for r in session.scalars(select(ReminderLog)))
            assert states == [(900, "sent"), (900, "sent"), (86400, "sent"), (86400, "sent")]
    finally:
        restarted.close()


async def test_missed_reminders_are_caught_up_once(database: db.Database, mailbox: Mailbox) -> None:
    """The server was down through the 24 h mark: one reminder (15 min), not two."""
    settings = settings_for(mailbox)
    meeting_id = schedule(database)
    reminders = Reminders(database, settings)
    report = await reminders.tick(START - timedelta(minutes=10))
    assert sorted(report.sent) == [("ubnd-xa-01", meeting_id, 900), ("ubnd-xa-02", meeting_id, 900)]
    assert sorted(report.skipped) == [
        ("ubnd-xa-01", meeting_id, 86400),
        ("ubnd-xa-02", meeting_id, 86400),
    ]
    assert len(mailbox.messages()) == 2
    assert (await reminders.tick(START - timedelta(minutes=9))).sent == []
    # After the start, nothing is sent any more.
    fresh = Reminders(database, settings_for(mailbox))
    assert (await fresh.tick(START + timedelta(seconds=1))).sent == []


async def test_moved_meeting_gets_new_reminders(database: db.Database, mailbox: Mailbox) -> None:
    settings = settings_for(mailbox)
    meeting_id = schedule(database)
    reminders = Reminders(database, settings)
    await reminders.tick(START - timedelta(hours=23))
    assert len(mailbox.messages()) == 2
    with database.session() as session:
        update_meeting(
            session,
            meeting_id,
            version=None,
            start=START + timedelta(days=2),
            end=START + timedelta(days=2, hours=1),
        )
    mailbox.clear()
    assert (await reminders.tick(START - timedelta(hours=22))).sent == []
    report = await reminders.tick(START + timedelta(days=1, hours=1))
    assert len(report.sent) == 2 and all(lead == 86400 for _, _, lead in report.sent)
    assert "09/01/2030" in mailbox.messages()[0]["Subject"]


async def test_failed_reminder_is_retried_later(database: db.Database, mailbox: Mailbox) -> None:
    settings = settings_for(mailbox)
    schedule(database)
    reminders = Reminders(database, settings)
    mailbox.refuse.add("vanphong02@xa02.example.vn")
    at = START - timedelta(hours=23)
    report = await reminders.tick(at)
    assert [p for p, _, _ in report.sent] == ["ubnd-xa-01"]
    assert [p for p, _, _ in report.failed] == ["ubnd-xa-02"]
    mailbox.refuse.clear()
    assert (await reminders.tick(at + timedelta(minutes=5))).sent == []  # not yet
    report = await reminders.tick(at + timedelta(minutes=11))
    assert [p for p, _, _ in report.sent] == ["ubnd-xa-02"]
    assert recipients(mailbox) == ["vanphong01@xa01.example.vn", "vanphong02@xa02.example.vn"]
