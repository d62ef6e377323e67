"""Invitations: one per invited point per meeting; join links, answers, e-mails.

Join link
---------
``{public_url}/m/{meeting id}?token=JWT``: the token (conference/tokens.py) is scoped to the
meeting (``meeting`` = the meeting id) and the point (``sub`` = point code, ``name`` = point
name, role ``point``), valid from 30 minutes before the start (``nbf``; ``iat`` is the same
moment, so the ``exp - iat`` lifetime stays within the token module's 7-day limit however
early the e-mail goes out) to `Settings.link_hours_after_end` hours after the end (``exp``).
The room page /m/{id} (conference/web/site.py) verifies it with `conference.realtime.access.authenticate`
and keeps it in a cookie.  A meeting moved later gets new links in the update e-mail.

Answer link
-----------
``{public_url}/m/{id}/rsvp?token=...&answer=accept|decline`` (conference/domain/
rsvp_web.py) carries a separate token (audience ``rsvp``, no role or grants, so it can never
open the room) that is valid from the e-mail until the join window closes.

E-mails
-------
`send_pending` is idempotent: it sends what each invitation has not been told yet, and
records it: the invitation (METHOD:REQUEST) to new points, an update (same UID, higher
SEQUENCE) when the meeting changed after the last e-mail, and METHOD:CANCEL when the
meeting was cancelled or the point taken off it.  Points without an e-mail address are
reported and skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from conference.core.clock import local_time
from conference.domain import meetings as svc
from conference.domain.db import Database
from conference.domain.errors import SchedulingError
from conference.domain.models import Invitation, Meeting, Point, utcnow
from conference.notify.mail import MailError, MeetingText, build_message, send_messages
from conference.settings import Settings, load_secret
from conference.tokens import ISSUER, create_token

__all__ = [
    "PointLink",
    "point_links",
    "share_text",
    "ANSWERS",
    "EARLY_JOIN",
    "InvitationView",
    "SendReport",
    "answer",
    "invite_points",
    "join_link",
    "join_token",
    "join_window",
    "list_invitations",
    "public_base",
    "rsvp_link",
    "send_pending",
    "verify_rsvp_token",
]

EARLY_JOIN = timedelta(minutes=30)
ANSWERS = {"accept": "accepted", "decline": "declined"}
RSVP_AUDIENCE = "rsvp"


def join_window(meeting: Meeting, settings: Settings) -> tuple[datetime, datetime]:
    """(from, until): when the meeting's invitation links work."""
    return (
        meeting.start_at - EARLY_JOIN,
        meeting.end_at + timedelta(hours=settings.link_hours_after_end),
    )


def public_base(settings: Settings) -> str:
    """The server's address for links: `public_url`, else derived from host/port/TLS."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    scheme = "http" if settings.tls == "off" else "https"
    host = settings.public_ip or (
        "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    )
    port = "" if (scheme, settings.port) in (("https", 443), ("http", 80)) else f":{settings.port}"
    return f"{scheme}://{host}{port}"


def join_token(settings: Settings, meeting: Meeting, point: Point) -> str:
    not_before, expires = join_window(meeting, settings)
    return create_token(
        load_secret(settings),
        meeting=str(meeting.id),
        identity=point.code,
        kind="point",
        name=point.name,
        role="point",
        now=not_before,
        not_before=not_before,
        ttl=expires - not_before,
    )


def join_link(settings: Settings, meeting: Meeting, point: Point) -> str:
    return f"{public_base(settings)}/m/{meeting.id}?token={join_token(settings, meeting, point)}"


def rsvp_token(settings: Settings, meeting: Meeting, point: Point) -> str:
    _, expires = join_window(meeting, settings)
    payload = {
        "iss": ISSUER,
        "aud": RSVP_AUDIENCE,
        "sub": point.code,
        "meeting": str(meeting.id),
        "iat": int(datetime.now(UTC).timestamp()),
        "exp": int(expires.timestamp()),
    }
    return jwt.encode(payload, load_secret(settings).encode(), algorithm="HS256")


def rsvp_link(settings: Settings, meeting: Meeting, point: Point, answer: str) -> str:
    token = rsvp_token(settings, meeting, point)
    return f"{public_base(settings)}/m/{meeting.id}/rsvp?token={token}&answer={answer}"


def verify_rsvp_token(settings: Settings, token: str, meeting_id: str) -> str:
    """The point code an answer token speaks for; `SchedulingError` if it is not valid."""
    try:
        payload = jwt.decode(
            token,
            load_secret(settings).encode(),
            algorithms=["HS256"],
            audience=RSVP_AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "sub", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise SchedulingError("link-expired", "this link has expired", status=401) from None
    except jwt.InvalidTokenError:
        raise SchedulingError("bad-link", "this link is not valid", status=401) from None
    if payload.get("meeting") != meeting_id or not isinstance(payload.get("sub"), str):
        raise SchedulingError("bad-link", "this link is for another meeting", status=403)
    return str(payload["sub"])


# --- invitations and answers --------------------------------------------------------------------


@dataclass(frozen=True)
class InvitationView:
    point: str
    name: str
    email: str | None
    answer: str
    answered_at: datetime | None
    active: bool
    sent_sequence: int | None
    last_error: str | None


def list_invitations(
    session: Session, meeting_id: int | str, *, include_removed: bool = False
) -> list[InvitationView]:
    """The invited points of a meeting with their answers (what the chair sees)."""
    meeting = svc.get_meeting(session, meeting_id)
    return [
        InvitationView(
            point=inv.point.code,
            name=inv.point.name,
            email=inv.point.contact_email,
            answer=inv.answer,
            answered_at=inv.answered_at,
            active=inv.active,
            sent_sequence=inv.sent_sequence,
            last_error=inv.last_error,
        )
        for inv in meeting.invitations
        if inv.active or include_removed
    ]


def invite_points(
    session: Session, meeting_id: int | str, points: Sequence[str], *, version: int | None
) -> svc.MeetingResult:
    """Add points to a meeting (those already invited stay invited)."""
    meeting = svc.get_meeting(session, meeting_id)
    current = [inv.point.code for inv in meeting.invitations if inv.active]
    return svc.update_meeting(
        session, meeting.id, version=version, points=current + [p for p in points]
    )


def answer(
    session: Session,
    meeting_id: int | str,
    point: str,
    response: str,
    *,
    now: datetime | None = None,
) -> Invitation:
    """Record a point's answer: "accept" or "decline" (or "accepted"/"declined")."""
    value = ANSWERS.get(response, response)
    if value not in ANSWERS.values():
        raise SchedulingError(
            "bad-answer", f"answer {response!r} is not accept or decline", field="answer"
        )
    meeting = svc.get_meeting(session, meeting_id)
    if meeting.status in ("cancelled", "ended"):
        raise SchedulingError(
            "meeting-closed",
            f"the meeting is {meeting.status}",
            params={"status": meeting.status},
            status=409,
        )
    invitation = session.scalar(
        select(Invitation)
        .join(Point)
        .where(Invitation.meeting_id == meeting.id, Point.code == point, Invitation.active)
    )
    if invitation is None:
        raise SchedulingError(
            "not-invited",
            f"point {point} is not invited to meeting {meeting.id}",
            params={"point": point},
            status=403,
        )
    invitation.answer = value
    invitation.answered_at = now or utcnow()
    session.flush()
    return invitation


# --- e-mails ------------------------------------------------------------------------------------


@dataclass
class SendReport:
    """What `send_pending` did: point codes per outcome (``failed``: point -> why, a
    `MailError` the pages say in their language; ``str()`` of it is English)."""

    sent: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    no_email: list[str] = field(default_factory=list)
    failed: dict[str, MailError] = field(default_factory=dict)


def meeting_text(settings: Settings, meeting: Meeting, point: Point) -> MeetingText:
    return MeetingText(
        meeting_id=meeting.id,
        uid=meeting.uid,
        sequence=meeting.sequence,
        title=meeting.title,
        start=meeting.start_at,
        end=meeting.end_at,
        chair=meeting.chair.display_name,
        unit=meeting.unit.name,
        notes=meeting.notes,
        agenda=tuple((a.title, a.presenter_name) for a in meeting.agenda),
        point_name=point.name,
        email=point.contact_email or "",
        join_link=join_link(settings, meeting, point),
        accept_link=rsvp_link(settings, meeting, point, "accept"),
        decline_link=rsvp_link(settings, meeting, point, "decline"),
        link_hours_after_end=settings.link_hours_after_end,
    )


@dataclass(frozen=True)
class PointLink:
    """An invited point's personal join link (a secret: whoever holds it joins as the point)."""

    point: str
    name: str
    email: str | None
    link: str
    unit: str = ""  # the point's unit's name (the printed QR sheet names it)


def point_links(settings: Settings, meeting: Meeting) -> list[PointLink]:
    """Every invited point's join link, for offices that hand them out without e-mail (a
    chat group, paper); refused for a cancelled or ended meeting (``meeting-closed``)."""
    if meeting.status in ("cancelled", "ended"):
        raise SchedulingError("meeting-closed", f"the meeting is {meeting.status}", status=409)
    return [
        PointLink(
            inv.point.code,
            inv.point.name,
            inv.point.contact_email,
            join_link(settings, meeting, inv.point),
            inv.point.unit.name,
        )
        for inv in sorted(meeting.invitations, key=lambda i: i.point.name)
        if inv.active
    ]


def share_text(meeting: Meeting, links: Sequence[PointLink], strings: Mapping[str, str]) -> str:
    """The message to paste into a chat group: title, time, agenda, each point's link
    (``strings``: the catalogue of one language, keys ``mp.links.text.*``)."""
    start, end = local_time(meeting.start_at), local_time(meeting.end_at)
    when = (
        f"{start:%H:%M}–{end:%H:%M} {start:%d/%m/%Y}"
        if start.date() == end.date()
        else f"{start:%H:%M %d/%m/%Y} – {end:%H:%M %d/%m/%Y}"
    )
    lines = [meeting.title, strings["mp.links.text.when"].format(when=when)]
    agenda = sorted(meeting.agenda, key=lambda a: a.position)
    if agenda:
        lines.append(strings["mp.links.text.agenda"])
        for number, item in enumerate(agenda, 1):
            who = f" ({item.presenter_name})" if item.presenter_name else ""
            lines.append(f"{number}. {item.title}{who}")
    lines.append(strings["mp.links.text.links"])
    lines += [f"- {link.name}: {link.link}" for link in links]
    return "\n".join(lines)


@dataclass
class _Outgoing:
    invitation_id: int
    point: str
    kind: str
    sequence: int
    message: EmailMessage | None


def _pending(session: Session, settings: Settings, meeting_id: int | str) -> list[_Outgoing]:
    meeting = svc.get_meeting(session, meeting_id)
    out: list[_Outgoing] = []
    for inv in meeting.invitations:
        told = inv.sent_sequence is not None
        if meeting.status == "cancelled" or not inv.active:
            kind = "cancel" if told and not inv.cancel_sent else None
        elif meeting.status == "scheduled" and not told:
            kind = "invite"
        elif meeting.status == "scheduled" and (inv.sent_sequence or 0) < meeting.sequence:
            kind = "update"
        else:
            kind = None
        if kind is None:
            continue
        message = None
        if inv.point.contact_email:
            message = build_message(settings, meeting_text(settings, meeting, inv.point), kind)
        out.append(_Outgoing(inv.id, inv.point.code, kind, meeting.sequence, message))
    return out


def _record(
    session: Session,
    outgoing: list[_Outgoing],
    errors: Sequence[MailError | str | None],
    now: datetime,
) -> None:
    for item, error in zip(outgoing, errors, strict=True):
        inv = session.get(Invitation, item.invitation_id)
        if inv is None:
            continue
        if error is not None:
            inv.last_error = str(error)[:500]  # English, for the IT officer
            continue
        inv.last_error = None
        inv.sent_at = now
        if item.kind == "cancel":
            inv.cancel_sent = True
        else:
            inv.sent_sequence = item.sequence
    session.flush()


async def send_pending(database: Database, settings: Settings, meeting_id: int | str) -> SendReport:
    """E-mail every invitation of the meeting what it has not been told yet (see above)."""
    outgoing = await database.run(lambda s: _pending(s, settings, meeting_id))
    report = SendReport()
    with_mail = [o for o in outgoing if o.message is not None]
    report.no_email = [o.point for o in outgoing if o.message is None]
    errors = await send_messages(settings, [o.message for o in with_mail if o.message])
    now = utcnow()
    without = [o for o in outgoing if o.message is None]
    no_mail: list[MailError | str | None] = ["the point has no e-mail address"] * len(without)
    await database.run(lambda s: _record(s, with_mail + without, [*errors, *no_mail], now))
    for item, error in zip(with_mail, errors, strict=True):
        if error is not None:
            report.failed[item.point] = error
        elif item.kind == "cancel":
            report.cancelled.append(item.point)
        else:
            report.sent.append(item.point)
    return report
