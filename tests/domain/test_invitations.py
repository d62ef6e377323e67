"""Invitations e-mailed through a real SMTP server (aiosmtpd on 127.0.0.1), parsed back."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import icalendar
import jwt
import pytest

from conference.domain import db
from conference.domain.errors import SchedulingError
from conference.domain.invitations import (
    answer,
    invite_points,
    list_invitations,
    rsvp_link,
    send_pending,
    verify_rsvp_token,
)
from conference.domain.meetings import (
    ZONE,
    AgendaInput,
    cancel_meeting,
    create_meeting,
    get_meeting,
    update_meeting,
)
from conference.domain.organisation import create_point
from conference.settings import Settings
from conference.tokens import verify_token

from .meeting_setup import make_org
from .smtp_server import Mailbox, mailbox_fixture  # noqa: F401 - fixture

SECRET = "invitation-test-secret-" + "y" * 32
LINK = re.compile(r"https://hop\.example\.vn/m/(\d+)\?token=(\S+)")


def mail_settings(box: Mailbox) -> Settings:
    return Settings(
        token_secret=SECRET,
        public_url="https://hop.example.vn",
        smtp_host=box.host,
        smtp_port=box.port,
        smtp_security="none",
        mail_from="Văn phòng UBND huyện Bắc Hà <hop@huyen-a.example.vn>",
    )


def calendar_of(message: EmailMessage) -> icalendar.Calendar:
    parts = [p for p in message.walk() if p.get_content_type() == "text/calendar"]
    assert len(parts) == 1
    attachments = [p for p in message.iter_attachments() if p.get_filename() == "invite.ics"]
    assert len(attachments) == 1
    inline = parts[0].get_content()
    attached = attachments[0].get_content()
    assert inline.encode() == attached
    method = parts[0].get_param("method")
    calendar = icalendar.Calendar.from_ical(attached)
    assert calendar["METHOD"] == method
    return calendar


def event_of(calendar: icalendar.Calendar) -> icalendar.Event:
    events = list(calendar.walk("VEVENT"))
    assert len(events) == 1
    return events[0]


def body_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def by_recipient(box: Mailbox) -> dict[str, EmailMessage]:
    messages = box.messages()
    for message in messages:
        check_headers(message)
    return {str(m["To"].addresses[0].addr_spec): m for m in messages}


def check_headers(message: EmailMessage) -> None:
    """Every header a mail server and a spam filter look at, once each (RFC 5322)."""
    for name in ("Date", "From", "To", "Subject", "Message-ID", "MIME-Version", "Content-Type"):
        assert len(message.get_all(name) or []) == 1, (name, message.keys())
    sent = parsedate_to_datetime(str(message["Date"]))
    assert abs((datetime.now(UTC) - sent).total_seconds()) < 300
    assert sent.utcoffset() == timedelta(hours=7)  # the halls' time zone
    assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", str(message["Message-ID"]))
    assert str(message["From"].addresses[0].addr_spec).endswith("example.vn")
    assert message["To"].addresses[0].addr_spec
    assert str(message["Subject"]).strip() and "\n" not in str(message["Subject"])
    assert message["X-Conference-Meeting"] and str(message["X-Conference-Meeting"]).isdigit()


async def test_invitations_sent_and_parsed(database: db.Database, mailbox: Mailbox) -> None:
    settings = mail_settings(mailbox)
    start = (datetime.now(UTC) + timedelta(minutes=20)).replace(second=0, microsecond=0)
    with database.session() as session:
        make_org(session)
        create_point(session, code="ubnd-no-mail", name="UBND xã Không Thư", unit="xa-01")
        meeting = create_meeting(
            session,
            title="Giao ban <tuần> & 'Q4'",
            unit="huyen-a",
            chair="chu-tich",
            start=start,
            end=start + timedelta(hours=2),
            points=["ubnd-xa-01", "ubnd-xa-02", "ubnd-xa-03", "ubnd-no-mail"],
            agenda=[AgendaInput("Báo cáo kinh tế", "Phòng TC-KH")],
        ).meeting
        meeting_id, uid = meeting.id, meeting.uid

    report = await send_pending(database, settings, meeting_id)
    assert sorted(report.sent) == ["ubnd-xa-01", "ubnd-xa-02", "ubnd-xa-03"]
    assert report.no_email == ["ubnd-no-mail"] and report.failed == {}
    received = by_recipient(mailbox)
    assert sorted(received) == [f"vanphong0{i}@xa0{i}.example.vn" for i in (1, 2, 3)]

    message = received["vanphong02@xa02.example.vn"]
    local = start.astimezone(ZONE)
    assert message["Subject"] == (
        f"[Giấy mời] Giao ban <tuần> & 'Q4' - {local:%H:%M} ngày {local:%d/%m/%Y}"
    )
    assert message["From"].addresses[0].addr_spec == "hop@huyen-a.example.vn"
    body = body_of(message)
    assert "Kính gửi: UBND xã số 2" in body
    assert "1. Báo cáo kinh tế (Phòng TC-KH)" in body
    assert f"{local:%H:%M} - {(local + timedelta(hours=2)):%H:%M}" in body
    assert "(giờ Việt Nam)" in body

    # The join link: this meeting, this point, valid 30 min before start to 3 h after end.
    match = LINK.search(body)
    assert match is not None and match[1] == str(meeting_id)
    claims = verify_token(SECRET, match[2], meeting=str(meeting_id))
    assert (claims.identity, claims.role, claims.name) == ("pt:ubnd-xa-02", "point", "UBND xã số 2")
    assert claims.not_before == start - timedelta(minutes=30)
    assert claims.expires_at == start + timedelta(hours=2 + 3)
    assert claims.grants.publish and not claims.grants.moderate

    calendar = calendar_of(message)
    assert calendar["METHOD"] == "REQUEST"
    assert list(calendar.walk("VTIMEZONE"))[0]["TZID"] == "Asia/Ho_Chi_Minh"
    event = event_of(calendar)
    assert str(event["UID"]) == uid and int(event["SEQUENCE"]) == 0
    assert event["DTSTART"].params["TZID"] == "Asia/Ho_Chi_Minh"
    assert event.decoded("DTSTART") == start
    assert event.decoded("DTSTART").utcoffset() == timedelta(hours=7)
    assert event.decoded("DTEND") == start + timedelta(hours=2)
    assert str(event["SUMMARY"]) == "Giao ban <tuần> & 'Q4'"
    assert str(event["STATUS"]) == "CONFIRMED"
    assert str(event["ATTENDEE"]) == "mailto:vanphong02@xa02.example.vn"
    assert str(event["ORGANIZER"]) == "mailto:hop@huyen-a.example.vn"

    # Idempotent: nothing new to tell.
    mailbox.clear()
    again = await send_pending(database, settings, meeting_id)
    assert again.sent == [] and again.cancelled == [] and mailbox.messages() == []
    with database.session() as session:
        views = {v.point: v for v in list_invitations(session, meeting_id)}
        assert views["ubnd-xa-01"].sent_sequence == 0
        assert views["ubnd-no-mail"].last_error == "the point has no e-mail address"


async def test_update_removal_and_cancellation(database: db.Database, mailbox: Mailbox) -> None:
    settings = mail_settings(mailbox)
    start = datetime(2030, 1, 7, 8, 0, tzinfo=ZONE)
    with database.session() as session:
        make_org(session)
        meeting = create_meeting(
            session,
            title="Giao ban",
            unit="huyen-a",
            chair="chu-tich",
            start=start,
            end=start + timedelta(hours=1),
            points=["ubnd-xa-01", "ubnd-xa-02"],
        ).meeting
        meeting_id, uid = meeting.id, meeting.uid
    await send_pending(database, settings, meeting_id)
    assert len(mailbox.messages()) == 2
    mailbox.clear()

    # Move it to 14:00 and take ubnd-xa-02 off, add ubnd-xa-03.
    with database.session() as session:
        update_meeting(
            session,
            meeting_id,
            version=1,
            start=start + timedelta(hours=6),
            end=start + timedelta(hours=7),
            points=["ubnd-xa-01", "ubnd-xa-03"],
        )
    report = await send_pending(database, settings, meeting_id)
    assert sorted(report.sent) == ["ubnd-xa-01", "ubnd-xa-03"]
    assert report.cancelled == ["ubnd-xa-02"]
    received = by_recipient(mailbox)
    update = received["vanphong01@xa01.example.vn"]
    assert update["Subject"].startswith("[Thay đổi] Giao ban - 14:00")
    event = event_of(calendar_of(update))
    assert str(event["UID"]) == uid and int(event["SEQUENCE"]) == 1
    assert event.decoded("DTSTART") == start + timedelta(hours=6)
    new = received["vanphong03@xa03.example.vn"]
    assert new["Subject"].startswith("[Giấy mời]")  # first e-mail for this point
    assert int(event_of(calendar_of(new))["SEQUENCE"]) == 1
    removed = calendar_of(received["vanphong02@xa02.example.vn"])
    assert removed["METHOD"] == "CANCEL"
    assert str(event_of(removed)["STATUS"]) == "CANCELLED"
    assert str(event_of(removed)["UID"]) == uid
    mailbox.clear()

    with database.session() as session:
        cancel_meeting(session, meeting_id, version=get_meeting(session, meeting_id).version)
    report = await send_pending(database, settings, meeting_id)
    assert sorted(report.cancelled) == ["ubnd-xa-01", "ubnd-xa-03"]  # not xa-02 again
    for message in mailbox.messages():
        check_headers(message)
        assert message["Subject"].startswith("[Hủy họp]")
        calendar = calendar_of(message)
        event = event_of(calendar)
        assert calendar["METHOD"] == "CANCEL" and str(event["STATUS"]) == "CANCELLED"
        assert str(event["UID"]) == uid and int(event["SEQUENCE"]) == 2
    mailbox.clear()
    assert (await send_pending(database, settings, meeting_id)).cancelled == []
    assert mailbox.messages() == []


async def test_refused_recipient_is_retried(database: db.Database, mailbox: Mailbox) -> None:
    settings = mail_settings(mailbox)
    start = datetime(2030, 1, 7, 8, 0, tzinfo=ZONE)
    with database.session() as session:
        make_org(session)
        meeting_id = create_meeting(
            session,
            title="Giao ban",
            unit="huyen-a",
            chair="chu-tich",
            start=start,
            end=start + timedelta(hours=1),
            points=["ubnd-xa-01", "ubnd-xa-02"],
        ).meeting.id
    mailbox.refuse.add("vanphong02@xa02.example.vn")
    report = await send_pending(database, settings, meeting_id)
    assert report.sent == ["ubnd-xa-01"] and list(report.failed) == ["ubnd-xa-02"]
    refused = report.failed["ubnd-xa-02"]
    assert "550" in str(refused) and refused.key == "mail.err.recipient"
    assert refused.said("vi") == (
        "Máy chủ thư điện tử không nhận thư gửi tới vanphong02@xa02.example.vn (mã 550): "
        "hãy kiểm tra địa chỉ thư điện tử của điểm cầu."
    )
    mailbox.refuse.clear()
    mailbox.clear()
    report = await send_pending(database, settings, meeting_id)
    assert report.sent == ["ubnd-xa-02"]
    assert [str(m["To"].addresses[0].addr_spec) for m in mailbox.messages()] == [
        "vanphong02@xa02.example.vn"
    ]


async def test_unreachable_smtp_server_is_reported(database: db.Database, mailbox: Mailbox) -> None:
    settings = mail_settings(mailbox)
    settings.smtp_port = 1  # nothing listens there
    start = datetime(2030, 1, 7, 8, 0, tzinfo=ZONE)
    with database.session() as session:
        make_org(session)
        meeting_id = create_meeting(
            session,
            title="Giao ban",
            unit="huyen-a",
            chair="chu-tich",
            start=start,
            end=start + timedelta(hours=1),
            points=["ubnd-xa-01"],
        ).meeting.id
    report = await send_pending(database, settings, meeting_id)
    error = report.failed["ubnd-xa-01"]
    assert report.sent == [] and "cannot connect" in str(error)
    assert error.key == "mail.err.refused" and "từ chối kết nối" in error.said("vi")
    with database.session() as session:
        view = list_invitations(session, meeting_id)[0]
        assert view.sent_sequence is None and "cannot connect" in (view.last_error or "")


def test_answers_and_rsvp_tokens(database: db.Database) -> None:
    settings = Settings(token_secret=SECRET, public_url="https://hop.example.vn")
    start = datetime(2030, 1, 7, 8, 0, tzinfo=ZONE)
    with database.session() as session:
        make_org(session)
        meeting = create_meeting(
            session,
            title="Giao ban",
            unit="huyen-a",
            chair="chu-tich",
            start=start,
            end=start + timedelta(hours=1),
            points=["ubnd-xa-01", "ubnd-xa-02"],
        ).meeting
        point = meeting.invitations[0].point
        link = rsvp_link(settings, meeting, point, "accept")
        token = link.split("token=")[1].split("&")[0]
        assert verify_rsvp_token(settings, token, str(meeting.id)) == "ubnd-xa-01"
        with pytest.raises(SchedulingError) as info:
            verify_rsvp_token(settings, token, str(meeting.id + 1))
        assert info.value.code == "bad-link"
        with pytest.raises(SchedulingError):
            verify_rsvp_token(settings, token[:-2] + "xx", str(meeting.id))
        # A join token is not an answer token, nor the reverse.
        assert jwt.decode(token, options={"verify_signature": False})["aud"] == "rsvp"
        with pytest.raises(Exception) as join_error:
            verify_token(SECRET, token, meeting=str(meeting.id))
        assert "invalid-claims" in str(join_error.value)

        answer(session, meeting.id, "ubnd-xa-01", "accept")
        answer(session, meeting.id, "ubnd-xa-02", "decline")
        answer(session, meeting.id, "ubnd-xa-02", "accept")  # changed their mind
        views = {v.point: v.answer for v in list_invitations(session, meeting.id)}
        assert views == {"ubnd-xa-01": "accepted", "ubnd-xa-02": "accepted"}
        for args, code in [
            (("ubnd-xa-03", "accept"), "not-invited"),
            (("ubnd-xa-01", "maybe"), "bad-answer"),
        ]:
            with pytest.raises(SchedulingError) as info:
                answer(session, meeting.id, *args)
            assert info.value.code == code
        result = invite_points(session, meeting.id, ["ubnd-xa-03"], version=meeting.version)
        assert [i.point.code for i in result.meeting.invitations] == [
            "ubnd-xa-01",
            "ubnd-xa-02",
            "ubnd-xa-03",
        ]
        answer(session, meeting.id, "ubnd-xa-03", "decline")
