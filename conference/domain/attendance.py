"""Attendance: who joined and left a meeting's room, when, and from which point.

The media plane reports joins and leaves (`record_event`); the minutes and the meeting page
read them back (`list_events`, `presence`).  The identity is the participant's key
(conference/core/identity.py): ``pt:CODE`` for a point (then `point_id` is that point),
``u:USERNAME`` for an account (then `user_id`), ``g:``/``t:`` for a guest or a hand-made
token.  Events stored before identity kinds hold a bare identity: `event_key` gives it the
kind its point, account or role implies, so old and new events of one point add up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from conference.core.identity import identity_key, legacy_kind, split_identity
from conference.domain import meetings as svc
from conference.domain.errors import SchedulingError
from conference.domain.models import ATTENDANCE_KINDS, AttendanceEvent, Point, User, utcnow

__all__ = ["Presence", "event_key", "list_events", "presence", "record_event"]


def record_event(
    session: Session,
    meeting_id: int | str,
    *,
    identity: str,
    participant_id: str,
    kind: str,
    at: datetime | None = None,
    name: str = "",
    role: str = "",
) -> AttendanceEvent:
    """Store one join or leave of a participant."""
    if kind not in ATTENDANCE_KINDS:
        raise SchedulingError(
            "bad-attendance", f"attendance event {kind!r} is not join or leave", field="kind"
        )
    identity = (identity or "").strip()
    participant_id = (participant_id or "").strip()
    if not identity or len(identity) > 128 or not participant_id or len(participant_id) > 128:
        raise SchedulingError(
            "bad-attendance", "an attendance event needs an identity and a participant id"
        )
    meeting = svc.get_meeting(session, meeting_id)
    whose, subject = split_identity(identity)
    point = None
    if whose == "point" or (whose is None and role in ("point", "viewer", "")):
        point = session.scalar(select(Point).where(Point.code == subject))
    if whose is None:  # a bare identity (before kinds): a point, else an account
        whose = "point" if point is not None else "account"
    user = (
        session.scalar(select(User).where(User.username == subject)) if whose == "account" else None
    )
    event = AttendanceEvent(
        meeting_id=meeting.id,
        identity=identity,
        name=(name or "")[:200],
        role=(role or "")[:16],
        participant_id=participant_id,
        kind=kind,
        at=svc.parse_time(at, "at") if at is not None else utcnow(),
        point_id=point.id if point else None,
        user_id=user.id if user else None,
    )
    session.add(event)
    session.flush()
    return event


def list_events(session: Session, meeting_id: int | str) -> list[AttendanceEvent]:
    """The meeting's joins and leaves in time order."""
    meeting = svc.get_meeting(session, meeting_id)
    return list(
        session.scalars(
            select(AttendanceEvent)
            .where(AttendanceEvent.meeting_id == meeting.id)
            .order_by(AttendanceEvent.at, AttendanceEvent.id)
        )
    )


@dataclass(frozen=True)
class Presence:
    """One identity's attendance: first join, last leave, time connected (summed).
    ``identity`` is what people see (a point's code, a username: no kind prefix)."""

    identity: str
    name: str
    point: str | None
    invited: bool
    first_join: datetime | None
    last_leave: datetime | None
    connected: timedelta
    #: point, account, guest or token (conference/core/identity.py)
    kind: str = "point"


def event_key(event: AttendanceEvent) -> str:
    """The participant key of an event (a bare identity of before kinds gets the kind of
    its point, its account, else its role)."""
    kind, subject = split_identity(event.identity)
    if kind is not None:
        return event.identity
    if event.point_id is not None:
        return identity_key("point", subject)
    if event.user_id is not None:
        return identity_key("account", subject)
    return identity_key(legacy_kind(event.role), subject)


def presence(
    session: Session, meeting_id: int | str, *, until: datetime | None = None
) -> list[Presence]:
    """Every invited point (present or not) and every other identity that joined.

    A participant still connected counts until `until` (default: the meeting's end or now).
    """
    meeting = svc.get_meeting(session, meeting_id)
    end = until or meeting.ended_at or min(utcnow(), meeting.end_at)
    events = list_events(session, meeting.id)
    open_since: dict[str, datetime] = {}
    session_of: dict[str, str] = {}  # participant id -> identity
    totals: dict[str, timedelta] = {}
    first: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    names: dict[str, str] = {}
    order: list[str] = []
    for event in events:
        who = event_key(event)
        if who not in names:
            order.append(who)
        names[who] = event.name or names.get(who, "")
        if event.kind == "join":
            first.setdefault(who, event.at)
            # a point has one session of a kind at a time: a join while an earlier one of
            # the same identity and transport is still open (its node died before
            # recording the leave, or a crash) ends that one here, so the rejoin counts
            # once, without a gap (participant ids are "TRANSPORT:ID", see lobby.py)
            kind = _transport(event.participant_id)
            for participant, since in list(open_since.items()):
                if (
                    participant != event.participant_id
                    and session_of[participant] == who
                    and _transport(participant) == kind
                ):
                    del open_since[participant]
                    totals[who] = totals.get(who, timedelta()) + max(timedelta(), event.at - since)
            session_of[event.participant_id] = who
            open_since.setdefault(event.participant_id, event.at)
        else:
            last[who] = event.at
            joined = open_since.pop(event.participant_id, None)
            if joined is not None:
                totals[who] = totals.get(who, timedelta()) + (event.at - joined)
    for participant, joined in open_since.items():
        who = session_of[participant]
        totals[who] = totals.get(who, timedelta()) + max(timedelta(), end - joined)
    invited = {
        identity_key("point", inv.point.code): inv.point
        for inv in meeting.invitations
        if inv.active
    }
    result = [
        Presence(
            point.code,
            names.get(key) or point.name,
            point.code,
            True,
            first.get(key),
            last.get(key),
            totals.get(key, timedelta()),
        )
        for key, point in invited.items()
    ]
    for who in order:
        if who in invited:
            continue
        whose, subject = split_identity(who)
        result.append(
            Presence(
                subject,
                names[who],
                None,
                False,
                first.get(who),
                last.get(who),
                totals.get(who, timedelta()),
                whose or "token",
            )
        )
    return result


def _transport(participant_id: str) -> str:
    """The transport part of a recorded participant id ("websocket:PA_x"), "" if none."""
    return participant_id.partition(":")[0] if ":" in participant_id else ""
