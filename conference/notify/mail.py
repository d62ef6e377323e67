"""E-mail: building invitation, update, cancellation and reminder messages; sending them.

Messages are Vietnamese by default (any language of the catalogue, `lang`): the texts are
``mail.*`` keys of web/static/i18n/meetings.json.  An invitation is multipart: the text, the
iCalendar object as a ``text/calendar; method=...`` alternative (what Outlook and Gmail show
as an invitation with answer buttons) and the same object attached as ``invite.ics``.

Sending uses aiosmtplib with the ``smtp_*`` settings: ``smtp_security`` "starttls" (the
default, port 587, certificate checked), "tls" (implicit TLS, port 465) or "none" (a
local relay on a trusted network).  `send_messages` opens one connection for a batch and
reports an error per message, so one bad address does not stop the others.

A failure is a `MailError`: a catalogue key (``mail.err.*``) with its values, which the pages
say in their language (a Vietnamese office reads "Máy chủ thư điện tử ... từ chối kết nối",
not aiosmtplib's English), and the English detail (``str()``) for the log, the command line,
the API and the invitation's stored ``last_error``.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    "MailError",
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


@dataclass(frozen=True)
class MailError:
    """Why an e-mail was not sent: ``key`` (``mail.err.*`` of web/static/i18n/meetings.json)
    with ``params``, said in the reader's language; ``detail`` in English for the logs."""

    key: str
    detail: str
    params: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.detail

    def said(self, lang: str = "vi") -> str:
        """The message in ``lang`` (the catalogue's text with its values)."""
        return text(self.key, lang, **self.params)


NOT_CONFIGURED = MailError("mail.err.not_configured", "e-mail is not configured (smtp_host)")


def mail_error(exc: BaseException, settings: Settings, prefix: str = "") -> MailError:
    """A `MailError` for what aiosmtplib (or the network under it) raised."""
    server = f"{settings.smtp_host}:{settings.smtp_port}"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    cause = exc.__cause__
    key, params = "mail.err.other", {"server": server}
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError) or "AUTH extension" in detail:
        key = "mail.err.auth"
    elif isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        key, params = "mail.err.recipient", {"address": first.recipient, "code": str(first.code)}
    elif isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        key, params = "mail.err.recipient", {"address": exc.recipient, "code": str(exc.code)}
    elif isinstance(exc, aiosmtplib.SMTPSenderRefused):
        key, params = "mail.err.sender", {"address": exc.sender, "code": str(exc.code)}
    elif isinstance(exc, TimeoutError):  # aiosmtplib's timeouts are TimeoutErrors too
        key = "mail.err.timeout"
    elif isinstance(exc, ssl.SSLError) or isinstance(cause, ssl.SSLError) or "STARTTLS" in detail:
        key = "mail.err.tls"
    elif isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        key = "mail.err.disconnected"
    elif isinstance(exc, ConnectionRefusedError) or isinstance(cause, ConnectionRefusedError):
        key = "mail.err.refused"
    elif isinstance(exc, socket.gaierror) or isinstance(cause, socket.gaierror):
        key = "mail.err.unknown_host"
    elif isinstance(exc, aiosmtplib.SMTPResponseException):
        key, params = "mail.err.rejected", {"code": str(exc.code), "server": server}
    elif isinstance(exc, OSError):
        key = "mail.err.connect"
    return MailError(key, (prefix + detail)[:500], params)


async def send_messages(
    settings: Settings, messages: Sequence[EmailMessage], timeout: float = 30
) -> list[MailError | None]:
    """Send `messages` over one SMTP connection; returns an error (or None) per message
    (counted for ``/metrics``: ``mail_sent``, ``mail_errors``)."""
    if not messages:
        return []
    if not mail_configured(settings):
        return [NOT_CONFIGURED] * len(messages)
    results = await _send(settings, messages, timeout)
    sent = results.count(None)
    events.count("mail_sent", sent)
    events.count("mail_errors", len(results) - sent)
    return results


async def _send(
    settings: Settings, messages: Sequence[EmailMessage], timeout: float
) -> list[MailError | None]:
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
        server = f"{settings.smtp_host}:{settings.smtp_port}"
        error = mail_error(exc, settings, f"cannot connect to {server}: ")
        log.warning("%s", error)
        return [error] * len(messages)
    results: list[MailError | None] = []
    try:
        for message in messages:
            try:
                await client.send_message(message)
                results.append(None)
            except aiosmtplib.SMTPServerDisconnected as exc:
                log.warning("the mail server closed the connection: %s", exc)
                error = mail_error(exc, settings)
                results += [error] * (len(messages) - len(results))
                break
            except (aiosmtplib.SMTPException, OSError) as exc:
                log.warning("sending to %s failed: %s", message["To"], exc)
                results.append(mail_error(exc, settings))
    finally:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass
    return results
