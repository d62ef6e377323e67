"""E-mail: building invitation, update, cancellation and reminder messages; sending them.

Messages are Vietnamese by default (any language of the catalogue, `lang`): the texts are
``mail.*`` keys of web/static/i18n/meetings.json.  An invitation is multipart: the text, the
iCalendar object as a ``text/calendar; method=...`` alternative (what Outlook and Gmail show
as an invitation with answer buttons) and the same object attached as ``invite.ics``.

Sending uses aiosmtplib with the ``smtp_*`` settings: ``smtp_security`` "starttls" (the
default, port 587, certificate checked), "tls" (implicit TLS, port 465) or "none" (a
local relay on a trusted network).  `send_messages` opens one connection for a batch and
reports an error per message, so one bad address does not stop the others.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid, parseaddr

import aiosmtplib

from conference.core import events
from conference.core.clock import local_time
from conference.core.i18n import load_catalogue, web_dir
from conference.notify.ics import EventView, build_ics
from conference.settings import Settings

__all__ = [
    "MeetingText",
    "build_message",
    "catalogue",
    "mail_configured",
    "send_messages",
    "text",
]

log = logging.getLogger(__name__)
KINDS = ("invite", "update", "cancel", "reminder")


@functools.cache
def catalogue() -> dict[str, dict[str, str]]:
    """The interface's translation catalogue (the e-mails' texts are in it)."""
    return load_catalogue(web_dir())


def text(key: str, lang: str = "vi", **params: object) -> str:
    entry = catalogue().get(key)
    if entry is None:
        return key
    template = entry.get(lang) or entry["vi"]
    return template.format(**params) if params else template


def mail_configured(settings: Settings) -> bool:
    return bool(settings.smtp_host)


def sender(settings: Settings) -> tuple[str, str]:
    """(display name, address) of the sender."""
    name, address = parseaddr(settings.mail_from or "")
    if not address:
        address = settings.smtp_user if settings.smtp_user and "@" in settings.smtp_user else ""
    if not address:
        address = f"conference@{settings.smtp_host or 'localhost'}"
    return name or text("mail.sender"), address


@dataclass(frozen=True)
class MeetingText:
    """A snapshot of a meeting for one recipient (no database session needed)."""

    meeting_id: int
    uid: str
    sequence: int
    title: str
    start: datetime
    end: datetime
    chair: str
    unit: str
    notes: str
    agenda: tuple[tuple[str, str], ...]
    point_name: str
    email: str
    join_link: str
    accept_link: str
    decline_link: str
    link_hours_after_end: int


def _when(meeting: MeetingText, lang: str) -> str:
    start, end = local_time(meeting.start), local_time(meeting.end)
    return text(
        "mail.when",
        lang,
        start=start.strftime("%H:%M"),
        end=end.strftime("%H:%M"),
        weekday=text(f"mail.weekday.{start.weekday()}", lang),
        date=start.strftime("%d/%m/%Y"),
    )


def _body(meeting: MeetingText, kind: str, lang: str) -> str:
    lines = [text("mail.greeting", lang, point=meeting.point_name), ""]
    lines.append(text(f"mail.lead.{kind}", lang, unit=meeting.unit, point=meeting.point_name))
    lines.append("")
    lines.append(f"{text('mail.title', lang)}: {meeting.title}")
    lines.append(f"{text('mail.time', lang)}: {_when(meeting, lang)}")
    lines.append(f"{text('mail.chair', lang)}: {meeting.chair}")
    if kind != "cancel":
        if meeting.agenda:
            lines += ["", f"{text('mail.agenda', lang)}:"]
            for number, (title, presenter) in enumerate(meeting.agenda, start=1):
                lines.append(f"  {number}. {title}" + (f" ({presenter})" if presenter else ""))
        if meeting.notes:
            lines += ["", f"{text('mail.notes', lang)}: {meeting.notes}"]
        lines += ["", f"{text('mail.join', lang)}:", meeting.join_link]
        lines.append(text("mail.join.window", lang, hours=meeting.link_hours_after_end))
        if kind in ("invite", "update"):
            lines += ["", f"{text('mail.accept', lang)}: {meeting.accept_link}"]
            lines.append(f"{text('mail.decline', lang)}: {meeting.decline_link}")
    lines += ["", text("mail.signature", lang, unit=meeting.unit)]
    return "\n".join(lines) + "\n"


def build_message(
    settings: Settings, meeting: MeetingText, kind: str, lang: str = "vi"
) -> EmailMessage:
    """The e-mail of `kind` (invite, update, cancel, reminder) for one point."""
    if kind not in KINDS:
        raise ValueError(f"unknown mail kind {kind!r}")
    from_name, from_address = sender(settings)
    start = local_time(meeting.start)
    message = EmailMessage()
    message["Subject"] = text(
        f"mail.subject.{kind}",
        lang,
        title=meeting.title,
        date=start.strftime("%d/%m/%Y"),
        time=start.strftime("%H:%M"),
    )
    message["From"] = formataddr((from_name, from_address))
    message["To"] = formataddr((meeting.point_name, meeting.email))
    message["Message-ID"] = make_msgid(domain=from_address.rpartition("@")[2] or None)
    # RFC 5322 requires the origination date (spam filters count its absence)
    message["Date"] = format_datetime(local_time(datetime.now().astimezone()))
    message["X-Conference-Meeting"] = str(meeting.meeting_id)
    message.set_content(_body(meeting, kind, lang))
    if kind == "reminder":
        return message
    method = "CANCEL" if kind == "cancel" else "REQUEST"
    description = "\n".join(
        [f"{n}. {t}" + (f" ({p})" if p else "") for n, (t, p) in enumerate(meeting.agenda, 1)]
        + ([f"\n{meeting.join_link}"] if kind != "cancel" else [])
    )
    ics = build_ics(
        EventView(
            uid=meeting.uid,
            sequence=meeting.sequence,
            title=meeting.title,
            start=meeting.start,
            end=meeting.end,
            description=description,
            url=meeting.join_link if kind != "cancel" else "",
            organizer_email=from_address,
            organizer_name=from_name,
            attendee_email=meeting.email,
            attendee_name=meeting.point_name,
            cancelled=kind == "cancel",
        ),
        method,
    )
    message.add_alternative(
        ics.decode("utf-8"), subtype="calendar", params={"method": method}, charset="utf-8"
    )
    message.add_attachment(ics, maintype="application", subtype="ics", filename="invite.ics")
    return message


async def send_messages(
    settings: Settings, messages: Sequence[EmailMessage], timeout: float = 30
) -> list[str | None]:
    """Send `messages` over one SMTP connection; returns an error text (or None) per message
    (counted for ``/metrics``: ``mail_sent``, ``mail_errors``)."""
    if not messages:
        return []
    if not mail_configured(settings):
        return ["e-mail is not configured (smtp_host)"] * len(messages)
    results = await _send(settings, messages, timeout)
    sent = results.count(None)
    events.count("mail_sent", sent)
    events.count("mail_errors", len(results) - sent)
    return results


async def _send(
    settings: Settings, messages: Sequence[EmailMessage], timeout: float
) -> list[str | None]:
    client = aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_user,
        password=settings.smtp_password,
        use_tls=settings.smtp_security == "tls",
        start_tls=True if settings.smtp_security == "starttls" else False,
        timeout=timeout,
    )
    try:
        await client.connect()
    except (aiosmtplib.SMTPException, OSError) as exc:
        error = f"cannot connect to {settings.smtp_host}:{settings.smtp_port}: {exc}"
        log.warning("%s", error)
        return [error[:500]] * len(messages)
    results: list[str | None] = []
    try:
        for message in messages:
            try:
                await client.send_message(message)
                results.append(None)
            except aiosmtplib.SMTPServerDisconnected as exc:
                results.append(str(exc)[:500])
                results += [str(exc)[:500]] * (len(messages) - len(results))
                break
            except (aiosmtplib.SMTPException, OSError) as exc:
                log.warning("sending to %s failed: %s", message["To"], exc)
                results.append(str(exc)[:500])
    finally:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass
    return results
