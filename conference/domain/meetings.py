"""Meetings: create, edit, reschedule, cancel, start and end; conflict detection.

Every function takes an open `Session` and plain values (codes, usernames, times) and leaves
committing to the caller (`Database.session`), so a refused operation writes nothing.  Every
refusal is a `SchedulingError` (conference/domain/errors.py) with a machine code, a
translation key and the form field it belongs to.

Times
-----
Meetings are planned in Asia/Ho_Chi_Minh (`ZONE`) and stored in UTC.  A time is an aware
`datetime` or an ISO 8601 string *with* an offset ("2026-12-07T08:00+07:00", "...Z"); a
time without a zone is refused (``time-no-zone``) rather than guessed, and an impossible
date such as 31 February is ``invalid-time``.  Front ends that show a local-time form attach
`ZONE` themselves (see `local_time`).

Concurrency
-----------
`Meeting.version` is SQLAlchemy's version counter: an edit names the version it was based
on; if the meeting changed since (another edit, a start, a cancellation) the edit is
refused with ``conflict-stale`` ("the meeting changed"), and the UPDATE itself is guarded by
``WHERE version = ...``, so two edits racing in two transactions cannot both win.

Conflicts
---------
A chair or a point booked in overlapping scheduled or live meetings is a *warning*
(`Conflict` objects in `MeetingResult.warnings`), not an error: a district may decide that
a commune attends two things.  Starting a meeting while one of its points is in another
live meeting is an error (``point-busy-live``): a hall cannot be in two rooms at once.

Size: over 600 lines: every change of a meeting's life (create, edit, reschedule, cancel,
start, end) with its checks, so that each transition's rules sit beside the others'.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import and_, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from conference.core.clock import TIMEZONE, ZONE, local_time
from conference.domain.errors import SchedulingError
from conference.domain.models import (
    RECORDING_POLICIES,
    AgendaItem,
    Invitation,
    Meeting,
    Point,
    SeriesException,
    Unit,
    User,
    utcnow,
)
from conference.domain.organisation import subtree_ids

__all__ = [
    "MAX_DURATION",
    "TIMEZONE",
    "ZONE",
    "AgendaInput",
    "Conflict",
    "MeetingResult",
    "cancel_meeting",
    "clean_text",
    "create_meeting",
    "end_meeting",
    "find_conflicts",
    "get_meeting",
    "list_meetings",
    "local_time",
    "parse_time",
    "reschedule_meeting",
    "start_meeting",
    "update_meeting",
]

MAX_DURATION = timedelta(hours=24)
MAX_TITLE = 300
MAX_PRESENTER = 200
MAX_NOTES = 20_000
MAX_AGENDA = 100
#: Statuses that occupy a chair and its points (for conflict warnings).
ACTIVE_STATUSES = ("scheduled", "live")


@dataclass(frozen=True)
class AgendaInput:
    """One agenda item as given by a form: a title and a presenter (free text or a user)."""

    title: str
    presenter: str = ""
    #: Username of a presenting user (then `presenter` may stay empty).
    presenter_user: str | None = None


@dataclass(frozen=True)
class Conflict:
    """A warning: the chair or a point is also booked in another meeting at that time."""

    kind: str  # "chair" or "point"
    meeting_id: int
    title: str
    start: datetime
    end: datetime
    point: str | None = None  # the point code, for kind == "point"

    @property
    def key(self) -> str:
        return f"sched.warning.{self.kind}-busy"

    def __str__(self) -> str:
        who = f"point {self.point}" if self.kind == "point" else "the chair"
        when = local_time(self.start).strftime("%d/%m/%Y %H:%M")
        return f"{who} is also in meeting {self.meeting_id} ({self.title}) at {when}"


@dataclass
class MeetingResult:
    """A saved meeting and the conflicts it has (warnings, nothing was refused)."""

    meeting: Meeting
    warnings: list[Conflict] = field(default_factory=list)


# --- values -------------------------------------------------------------------------------------


def clean_text(value: str, what: str, limit: int, *, required: bool = True) -> str:
    """NFC-normalise and trim a one-line text; any character but control characters is kept
    verbatim (SQL-ish or HTML-ish text is just text: it is escaped where it is shown)."""
    if not isinstance(value, str):
        raise SchedulingError("invalid-text", f"{what} must be text", field=what)
    text = " ".join(unicodedata.normalize("NFC", value).split())
    if not text:
        if required:
            raise SchedulingError(f"{what}-empty", f"{what} is empty", field=what)
        return ""
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise SchedulingError("invalid-text", f"{what} contains control characters", field=what)
    if len(text) > limit:
        raise SchedulingError(
            "text-too-long",
            f"{what} is longer than {limit} characters",
            field=what,
            params={"limit": str(limit)},
        )
    return text


def _clean_notes(value: str) -> str:
    notes = unicodedata.normalize("NFC", value).strip()
    if len(notes) > MAX_NOTES:
        raise SchedulingError(
            "text-too-long",
            f"notes are longer than {MAX_NOTES} characters",
            field="notes",
            params={"limit": str(MAX_NOTES)},
        )
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t\r" for ch in notes):
        raise SchedulingError("invalid-text", "notes contain control characters", field="notes")
    return notes


def parse_time(value: datetime | str, what: str = "start") -> datetime:
    """An aware time (datetime or ISO 8601 string with an offset) as UTC."""
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise SchedulingError(
                "invalid-time",
                f"{what}: {text!r} is not a valid date and time ({exc})",
                field=what,
                params={"value": text},
            ) from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise SchedulingError("invalid-time", f"{what}: not a date and time", field=what)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise SchedulingError(
            "time-no-zone",
            f"{what}: the time has no time zone (give it as 2026-12-07T08:00+07:00)",
            field=what,
        )
    return parsed.astimezone(UTC)


def _check_times(start: datetime, end: datetime) -> None:
    if end <= start:
        raise SchedulingError(
            "end-before-start", "the end must be after the start", field="end", status=400
        )
    if end - start > MAX_DURATION:
        raise SchedulingError(
            "too-long", "a meeting lasts at most 24 hours", field="end", params={"hours": "24"}
        )


def _policy(value: str) -> str:
    policy = (value or "").strip().lower()
    if policy not in RECORDING_POLICIES:
        raise SchedulingError(
            "bad-recording-policy",
            f"recording policy {value!r} is not one of {', '.join(RECORDING_POLICIES)}",
            field="recording_policy",
        )
    return policy


def _unit(session: Session, code: str) -> Unit:
    unit = session.scalar(select(Unit).where(Unit.code == (code or "").strip()))
    if unit is None:
        raise SchedulingError(
            "unknown-unit", f"unknown unit {code!r}", field="unit", params={"unit": code}
        )
    return unit


def _user(session: Session, username: str, what: str) -> User:
    user = session.scalar(select(User).where(User.username == (username or "").strip()))
    if user is None or not user.active:
        raise SchedulingError(
            "unknown-user", f"unknown user {username!r}", field=what, params={"user": username}
        )
    return user


def unknown_presenter(item: int, username: str) -> SchedulingError:
    """Agenda item ``item`` (from 1) names a presenting account that does not exist, is
    disabled or is outside the scheduler's units."""
    return SchedulingError(
        "unknown-presenter",
        f"agenda item {item}: unknown presenting user {username!r}",
        field="agenda",
        params={"item": str(item), "user": username},
    )


def _chair(session: Session, username: str, unit: Unit) -> User:
    user = _user(session, username, "chair")
    if user.role != "chair":
        raise SchedulingError(
            "not-chair",
            f"{user.username} is a {user.role}, not a chair",
            field="chair",
            params={"user": user.username},
        )
    if user.unit_id is not None and unit.id not in subtree_ids(session, user.unit_id):
        raise SchedulingError(
            "chair-out-of-scope",
            f"{user.username} cannot chair a meeting of {unit.code} (outside their unit)",
            field="chair",
            params={"user": user.username, "unit": unit.code},
        )
    return user


def _points(session: Session, codes: Sequence[str]) -> list[Point]:
    wanted: list[str] = []
    for code in codes:
        code = (code or "").strip()
        if code and code not in wanted:
            wanted.append(code)
    found = {p.code: p for p in session.scalars(select(Point).where(Point.code.in_(wanted)))}
    for code in wanted:
        point = found.get(code)
        if point is None or not point.active:
            raise SchedulingError(
                "unknown-point",
                f"unknown point {code!r}",
                field="points",
                params={"point": code},
            )
    return [found[code] for code in wanted]


def _agenda(session: Session, items: Sequence[AgendaInput]) -> list[tuple[str, str, User | None]]:
    if len(items) > MAX_AGENDA:
        raise SchedulingError(
            "too-many-items",
            f"at most {MAX_AGENDA} agenda items ({len(items)} given)",
            field="agenda",
            params={"limit": str(MAX_AGENDA), "count": str(len(items))},
        )
    cleaned = []
    for index, item in enumerate(items, start=1):
        title = clean_text(item.title, "agenda", MAX_TITLE)
        presenter = clean_text(item.presenter or "", "agenda", MAX_PRESENTER, required=False)
        user = None
        if item.presenter_user:
            try:
                user = _user(session, item.presenter_user, "agenda")
            except SchedulingError:
                raise unknown_presenter(index, item.presenter_user) from None
        if user is None and not presenter:
            raise SchedulingError(
                "presenter-empty",
                f"agenda item {index} has no presenter",
                field="agenda",
                params={"item": str(index)},
            )
        cleaned.append((title, presenter, user))
    return cleaned


RowT = TypeVar("RowT")

# --- queries ------------------------------------------------------------------------------------


def get_row(session: Session, model: type[RowT], row_id: int | str, what: str) -> RowT:
    """The row of `model` with this id (an int, or its decimal string from a URL);
    `SchedulingError` ``unknown-<what>`` (404) when there is none."""
    try:
        key = int(row_id)
    except (TypeError, ValueError):
        key = -1
    row = session.get(model, key) if key > 0 else None
    if row is None:
        raise SchedulingError(
            f"unknown-{what}", f"no {what} {row_id}", params={what: str(row_id)}, status=404
        )
    return row


def get_meeting(session: Session, meeting_id: int | str) -> Meeting:
    """The meeting with this id (an int, or its decimal string from a URL)."""
    return get_row(session, Meeting, meeting_id, "meeting")


def list_meetings(
    session: Session,
    *,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    unit: str | None = None,
    include_cancelled: bool = False,
) -> list[Meeting]:
    """Meetings overlapping [start, end) in start order; `unit` limits to that subtree."""
    query = select(Meeting)
    if start is not None:
        query = query.where(Meeting.end_at > parse_time(start, "start"))
    if end is not None:
        query = query.where(Meeting.start_at < parse_time(end, "end"))
    if unit is not None:
        query = query.where(Meeting.unit_id.in_(subtree_ids(session, _unit(session, unit).id)))
    if not include_cancelled:
        query = query.where(Meeting.status != "cancelled")
    return list(session.scalars(query.order_by(Meeting.start_at, Meeting.id)))


def active_point_ids(meeting: Meeting) -> list[int]:
    return [inv.point_id for inv in meeting.invitations if inv.active]


def find_conflicts(session: Session, meeting: Meeting) -> list[Conflict]:
    """Other scheduled or live meetings overlapping `meeting` with its chair or a point."""
    if meeting.status not in ACTIVE_STATUSES:
        return []
    overlapping = and_(
        Meeting.id != meeting.id,
        Meeting.status.in_(ACTIVE_STATUSES),
        Meeting.start_at < meeting.end_at,
        Meeting.end_at > meeting.start_at,
    )
    conflicts = [
        Conflict("chair", other.id, other.title, other.start_at, other.end_at)
        for other in session.scalars(
            select(Meeting)
            .where(overlapping, Meeting.chair_id == meeting.chair_id)
            .order_by(Meeting.start_at, Meeting.id)
        )
    ]
    points = active_point_ids(meeting)
    if points:
        rows = session.execute(
            select(Meeting, Point.code)
            .join(Invitation, Invitation.meeting_id == Meeting.id)
            .join(Point, Point.id == Invitation.point_id)
            .where(overlapping, Invitation.active.is_(True), Invitation.point_id.in_(points))
            .order_by(Meeting.start_at, Meeting.id, Point.code)
        )
        for other, code in rows:
            conflicts.append(
                Conflict("point", other.id, other.title, other.start_at, other.end_at, code)
            )
    return conflicts


# --- changes ------------------------------------------------------------------------------------


def _set_agenda(meeting: Meeting, items: list[tuple[str, str, User | None]]) -> None:
    """Update items in place by position (no delete-and-insert on the unique position)."""
    existing = list(meeting.agenda)
    for position, (title, presenter, user) in enumerate(items, start=1):
        if position <= len(existing):
            item = existing[position - 1]
            item.title, item.presenter, item.presenter_user = title, presenter, user
        else:
            meeting.agenda.append(
                AgendaItem(position=position, title=title, presenter=presenter, presenter_user=user)
            )
    for item in existing[len(items) :]:
        meeting.agenda.remove(item)


def _set_points(meeting: Meeting, points: list[Point]) -> bool:
    """Invite exactly `points`; returns whether anything changed."""
    changed = False
    wanted = {p.id for p in points}
    by_point = {inv.point_id: inv for inv in meeting.invitations}
    for inv in meeting.invitations:
        if inv.active and inv.point_id not in wanted:
            inv.active = False
            changed = True
    for point in points:
        known = by_point.get(point.id)
        if known is None:
            meeting.invitations.append(Invitation(point=point, answer="pending", active=True))
            changed = True
        elif not known.active:
            known.active, known.cancel_sent, known.sent_sequence = True, False, None
            known.answer, known.answered_at = "pending", None
            changed = True
    return changed


def _note_exception(session: Session, meeting: Meeting, kind: str) -> None:
    """An occurrence of a series changed or cancelled: keep the series' exception record.

    (`recurrence.change_occurrence`/`cancel_occurrence` create it first and refuse a
    duplicate; an edit made directly on the occurrence's meeting records it here.)
    """
    if meeting.series_id is None or meeting.occurrence_start is None:
        return
    existing = session.scalar(
        select(SeriesException).where(
            SeriesException.series_id == meeting.series_id,
            SeriesException.original_start == meeting.occurrence_start,
        )
    )
    if existing is None:
        session.add(
            SeriesException(
                series_id=meeting.series_id, original_start=meeting.occurrence_start, kind=kind
            )
        )
    elif kind == "cancelled":
        existing.kind = "cancelled"


def _flush(session: Session) -> None:
    try:
        session.flush()
    except StaleDataError:
        raise SchedulingError(
            "conflict-stale",
            "the meeting changed since it was opened; reload it and try again",
            status=409,
        ) from None


def create_meeting(
    session: Session,
    *,
    title: str,
    unit: str,
    chair: str,
    start: datetime | str,
    end: datetime | str,
    points: Sequence[str] = (),
    agenda: Sequence[AgendaInput] = (),
    recording_policy: str = "none",
    notes: str = "",
    series_id: int | None = None,
    occurrence_start: datetime | None = None,
) -> MeetingResult:
    """Schedule a meeting; `unit` is a unit code, `chair` a username, `points` point codes."""
    title = clean_text(title, "title", MAX_TITLE)
    start_at, end_at = parse_time(start, "start"), parse_time(end, "end")
    _check_times(start_at, end_at)
    owner = _unit(session, unit)
    chair_user = _chair(session, chair, owner)
    invited = _points(session, points)
    items = _agenda(session, agenda)
    now = utcnow()
    meeting = Meeting(
        uid=f"{uuid.uuid4()}@conference",
        title=title,
        unit=owner,
        chair=chair_user,
        start_at=start_at,
        end_at=end_at,
        recording_policy=_policy(recording_policy),
        notes=_clean_notes(notes),
        status="scheduled",
        sequence=0,
        series_id=series_id,
        occurrence_start=occurrence_start,
        created_at=now,
        updated_at=now,
    )
    session.add(meeting)
    _set_agenda(meeting, items)
    _set_points(meeting, invited)
    session.flush()
    return MeetingResult(meeting, find_conflicts(session, meeting))


def _editable(meeting: Meeting, version: int | None) -> None:
    if version is not None and meeting.version != version:
        raise SchedulingError(
            "conflict-stale",
            f"the meeting changed since it was opened (version {version}, now "
            f"{meeting.version}); reload it and try again",
            params={"version": str(meeting.version)},
            status=409,
        )
    if meeting.status in ("ended", "cancelled"):
        raise SchedulingError(
            "meeting-closed",
            f"the meeting is {meeting.status} and can no longer be changed",
            params={"status": meeting.status},
            status=409,
        )


def update_meeting(
    session: Session,
    meeting_id: int | str,
    *,
    version: int | None,
    title: str | None = None,
    unit: str | None = None,
    chair: str | None = None,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    points: Sequence[str] | None = None,
    agenda: Sequence[AgendaInput] | None = None,
    recording_policy: str | None = None,
    notes: str | None = None,
) -> MeetingResult:
    """Change a meeting; arguments left None stay as they are.

    `version` is the version the edit was based on (None only for internal callers that
    just read the meeting in the same transaction).  A change invitees should hear about
    raises the iCalendar SEQUENCE by one (e-mailed by `invitations.send_pending`).
    """
    meeting = get_meeting(session, meeting_id)
    _editable(meeting, version)
    if meeting.status == "live" and (start is not None or end is not None):
        raise SchedulingError(
            "meeting-live", "a live meeting cannot be rescheduled", field="start", status=409
        )
    new_title = clean_text(title, "title", MAX_TITLE) if title is not None else meeting.title
    start_at = parse_time(start, "start") if start is not None else meeting.start_at
    end_at = parse_time(end, "end") if end is not None else meeting.end_at
    _check_times(start_at, end_at)
    owner = _unit(session, unit) if unit is not None else meeting.unit
    if chair is not None or unit is not None:
        chair_user = _chair(session, chair or meeting.chair.username, owner)
    else:
        chair_user = meeting.chair
    invited = _points(session, points) if points is not None else None
    items = _agenda(session, agenda) if agenda is not None else None
    policy = _policy(recording_policy) if recording_policy is not None else None
    new_notes = _clean_notes(notes) if notes is not None else None

    changed = (
        new_title != meeting.title
        or start_at != meeting.start_at
        or end_at != meeting.end_at
        or owner.id != meeting.unit_id
        or chair_user.id != meeting.chair_id
        or (new_notes is not None and new_notes != meeting.notes)
    )
    if items is not None:
        old = [(a.title, a.presenter, a.presenter_user_id) for a in meeting.agenda]
        new = [(t, p, u.id if u else None) for t, p, u in items]
        changed = changed or old != new
        _set_agenda(meeting, items)
    meeting.title, meeting.start_at, meeting.end_at = new_title, start_at, end_at
    meeting.unit, meeting.chair = owner, chair_user
    if new_notes is not None:
        meeting.notes = new_notes
    if policy is not None:
        meeting.recording_policy = policy
    if invited is not None and _set_points(meeting, invited):
        changed = True
    if changed:
        meeting.sequence += 1
        _note_exception(session, meeting, "modified")
    meeting.updated_at = utcnow()  # always an UPDATE, so the version check always runs
    _flush(session)
    return MeetingResult(meeting, find_conflicts(session, meeting))


def reschedule_meeting(
    session: Session,
    meeting_id: int | str,
    *,
    version: int | None,
    start: datetime | str,
    end: datetime | str,
) -> MeetingResult:
    """Move a meeting to new times (an `update_meeting` of the times only)."""
    return update_meeting(session, meeting_id, version=version, start=start, end=end)


def cancel_meeting(session: Session, meeting_id: int | str, *, version: int | None) -> Meeting:
    """Cancel a scheduled meeting (invitees are then sent METHOD:CANCEL)."""
    meeting = get_meeting(session, meeting_id)
    _editable(meeting, version)
    if meeting.status == "live":
        raise SchedulingError("meeting-live", "a live meeting is ended, not cancelled", status=409)
    meeting.status = "cancelled"
    meeting.sequence += 1
    meeting.updated_at = utcnow()
    _note_exception(session, meeting, "cancelled")
    _flush(session)
    return meeting


def start_meeting(
    session: Session, meeting_id: int | str, *, now: datetime | None = None
) -> Meeting:
    """The chair opens the room: the meeting becomes live.

    Refused when an invited point is live in another meeting (``point-busy-live``).
    """
    meeting = get_meeting(session, meeting_id)
    if meeting.status == "live":
        return meeting
    _editable(meeting, None)
    points = active_point_ids(meeting)
    if points:
        busy = session.execute(
            select(Point.code, Meeting.id, Meeting.title)
            .join(Invitation, Invitation.point_id == Point.id)
            .join(Meeting, Meeting.id == Invitation.meeting_id)
            .where(
                Meeting.status == "live",
                Meeting.id != meeting.id,
                Invitation.active.is_(True),
                Invitation.point_id.in_(points),
            )
            .order_by(Point.code)
        ).first()
        if busy is not None:
            code, other_id, other_title = busy
            raise SchedulingError(
                "point-busy-live",
                f"point {code} is live in meeting {other_id} ({other_title})",
                field="points",
                params={"point": code, "meeting": str(other_id), "title": other_title},
                status=409,
            )
    meeting.status = "live"
    meeting.started_at = now or utcnow()
    meeting.updated_at = utcnow()
    _flush(session)
    return meeting


def end_meeting(session: Session, meeting_id: int | str, *, now: datetime | None = None) -> Meeting:
    """The chair ends a live meeting (or closes a scheduled one that never started)."""
    meeting = get_meeting(session, meeting_id)
    if meeting.status == "ended":
        return meeting
    if meeting.status == "cancelled":
        raise SchedulingError("meeting-closed", "the meeting was cancelled", status=409)
    meeting.status = "ended"
    meeting.ended_at = now or utcnow()
    meeting.updated_at = utcnow()
    _flush(session)
    return meeting
