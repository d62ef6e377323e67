"""Meetings as a user sees them: who sees and who edits, and the scoped services.

Shared by the meeting pages (conference/web/pages/meetings.py) and the JSON API
(conference/web/api/meetings.py).

* **See** a meeting: an admin, secretary or chair whose unit scope
  (:func:`conference.domain.permissions.visible_unit_ids`) contains the meeting's unit, and the
  meeting's own chair; a point operator only when their point is invited (an active
  invitation).  Anything else is reported as *not found* (404), so meetings of another
  district do not leak.
* **Edit** (form, reschedule, cancel, send the invitations): an admin whose scope contains
  the meeting's unit, and the meeting's chair.  Other chairs and secretaries of the unit
  see the meeting but get 403 on the edit pages.  (Choice: the chair answers for the
  briefing; a secretary prepares it by asking the chair or an admin.  Widening it is one
  line in :func:`~conference.domain.permissions.can_edit_meeting`.)
* **Create**: admins (any chair in their scope) and chairs (themselves as the chair only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from conference.core.errors import Forbidden, NotFound
from conference.domain import meetings as svc
from conference.domain import recurrence
from conference.domain.errors import SchedulingError
from conference.domain.meetings import AgendaInput, local_time
from conference.domain.models import Meeting, Point, Unit, User
from conference.domain.permissions import (
    CurrentUser,
    can_edit_meeting,
    can_view_meeting,
    visible_unit_ids,
)

VIEW_ROLES = ("admin", "chair", "secretary", "operator")
EDIT_ROLES = ("admin", "chair")


class MeetingNotFound(NotFound):
    """No such meeting, or not one the user may see (404)."""

    message = "no such meeting in your units"


class NotAllowed(Forbidden):
    """The user sees the meeting but may not change it (403)."""

    message = "only the meeting's chair or an admin of its unit may change it"


class FormErrors(Exception):
    """Field -> SchedulingError, found before calling a service (nothing written)."""

    def __init__(self, errors: Mapping[str, SchedulingError]) -> None:
        super().__init__(", ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = dict(errors)


# --- views ------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return local_time(value).isoformat() if value is not None else None


@dataclass(frozen=True)
class InvitedPoint:
    code: str
    name: str
    answer: str
    answered_at: datetime | None


@dataclass(frozen=True)
class MeetingView:
    """A snapshot of a meeting (usable after the session closed); times are UTC."""

    id: int
    title: str
    unit: str
    unit_name: str
    chair: str
    chair_name: str
    start: datetime
    end: datetime
    status: str
    version: int
    sequence: int
    recording_policy: str
    notes: str
    series_id: int | None
    agenda: tuple[tuple[str, str], ...]
    points: tuple[InvitedPoint, ...]
    can_edit: bool = False
    #: each agenda item's presenting account (username), or None: parallel to ``agenda``
    presenter_users: tuple[str | None, ...] = ()

    @classmethod
    def of(cls, meeting: Meeting, editable: bool = False) -> MeetingView:
        return cls(
            id=meeting.id,
            title=meeting.title,
            unit=meeting.unit.code,
            unit_name=meeting.unit.name,
            chair=meeting.chair.username,
            chair_name=meeting.chair.display_name,
            start=meeting.start_at,
            end=meeting.end_at,
            status=meeting.status,
            version=meeting.version,
            sequence=meeting.sequence,
            recording_policy=meeting.recording_policy,
            notes=meeting.notes,
            series_id=meeting.series_id,
            agenda=tuple((a.title, a.presenter_name) for a in meeting.agenda),
            points=tuple(
                InvitedPoint(inv.point.code, inv.point.name, inv.answer, inv.answered_at)
                for inv in meeting.invitations
                if inv.active
            ),
            can_edit=editable,
            presenter_users=tuple(
                a.presenter_user.username if a.presenter_user else None for a in meeting.agenda
            ),
        )

    @property
    def local_start(self) -> datetime:
        return local_time(self.start)

    @property
    def local_end(self) -> datetime:
        return local_time(self.end)

    def to_dict(self) -> dict[str, Any]:
        """The API form (times with the +07:00 offset)."""
        return {
            "id": self.id,
            "title": self.title,
            "unit": self.unit,
            "unit_name": self.unit_name,
            "chair": self.chair,
            "chair_name": self.chair_name,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "status": self.status,
            "version": self.version,
            "sequence": self.sequence,
            "recording_policy": self.recording_policy,
            "notes": self.notes,
            "series_id": self.series_id,
            "agenda": [
                {"title": t, "presenter": p, "presenter_user": u}
                for (t, p), u in zip(
                    self.agenda,
                    self.presenter_users or (None,) * len(self.agenda),
                    strict=True,
                )
            ],
            "points": [{"code": p.code, "name": p.name, "answer": p.answer} for p in self.points],
        }


# --- scope ------------------------------------------------------------------------------------


def load_meeting(
    session: Session, actor: CurrentUser, meeting_id: int | str, *, edit: bool = False
) -> Meeting:
    """The meeting if `actor` may see it (else `MeetingNotFound`) and, with `edit`, change
    it (else `NotAllowed`)."""
    try:
        meeting = svc.get_meeting(session, meeting_id)
    except SchedulingError:
        raise MeetingNotFound(str(meeting_id)) from None
    if not can_view_meeting(session, actor, meeting):
        raise MeetingNotFound(str(meeting_id))
    if edit and not can_edit_meeting(session, actor, meeting):
        raise NotAllowed(str(meeting_id))
    return meeting


def briefings(
    session: Session,
    actor: CurrentUser,
    start: datetime,
    end: datetime,
    unit: str | None = None,
    include_cancelled: bool = False,
) -> list[MeetingView]:
    """The meetings overlapping [start, end) that `actor` sees, per role (module docstring):
    chairs get the meetings they chair, operators those of their point, secretaries and
    admins those of their units."""
    if unit is not None:
        scope = visible_unit_ids(session, actor)
        known = session.scalar(select(Unit).where(Unit.code == unit))
        if known is None or (scope is not None and known.id not in scope):
            raise SchedulingError(
                "unknown-unit", f"unknown unit {unit!r}", field="unit", params={"unit": unit}
            )
    found = svc.list_meetings(
        session, start=start, end=end, unit=unit, include_cancelled=include_cancelled
    )
    if actor.role == "chair":
        chosen = [m for m in found if m.chair_id == actor.id]
    else:
        chosen = [m for m in found if can_view_meeting(session, actor, m)]
    return [MeetingView.of(m, can_edit_meeting(session, actor, m)) for m in chosen]


def visible_points(session: Session, actor: CurrentUser) -> list[Point]:
    """The active points in `actor`'s scope, by name (the ones it may invite)."""
    scope = visible_unit_ids(session, actor)
    points = session.scalars(select(Point).where(Point.active.is_(True)).order_by(Point.name))
    return [p for p in points if scope is None or p.unit_id in scope]


def chairs_for(session: Session, actor: CurrentUser) -> list[User]:
    """The chairs `actor` may name: itself for a chair; chairs in scope for an admin."""
    if actor.role == "chair":
        user = session.get(User, actor.id)
        return [user] if user is not None else []
    scope = visible_unit_ids(session, actor)
    users = session.scalars(
        select(User).where(User.role == "chair", User.active.is_(True)).order_by(User.display_name)
    )
    return [u for u in users if scope is None or u.unit_id in scope]


PRESENTER_ROLES = ("admin", "chair", "secretary")


def presenters_for(session: Session, actor: CurrentUser) -> list[User]:
    """The accounts `actor` may name as an agenda item's presenter: the active chairs,
    secretaries and admins of its units (a point's operator presents nothing), by name."""
    scope = visible_unit_ids(session, actor)
    users = session.scalars(
        select(User)
        .where(User.role.in_(PRESENTER_ROLES), User.active.is_(True))
        .order_by(User.display_name, User.username)
    )
    return [u for u in users if scope is None or u.unit_id in scope]


def units_for(session: Session, actor: CurrentUser) -> list[Unit]:
    """The units in `actor`'s scope (where it may hold a meeting)."""
    scope = visible_unit_ids(session, actor)
    units = session.scalars(select(Unit).order_by(Unit.name))
    return [u for u in units if scope is None or u.id in scope]


# --- input ------------------------------------------------------------------------------------


@dataclass
class MeetingData:
    """A meeting as the form or the API gives it (checked by the services)."""

    title: str
    unit: str
    chair: str
    start: datetime | str
    end: datetime | str
    points: list[str] = field(default_factory=list)
    agenda: list[AgendaInput] = field(default_factory=list)
    recording_policy: str = "none"
    notes: str = ""

    def arguments(self) -> dict[str, Any]:
        """The fields as keyword arguments of the meeting services (create, update)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_scope(
    session: Session,
    actor: CurrentUser,
    *,
    unit: str | None,
    chair: str | None,
    points: Sequence[str] | None,
    agenda: Sequence[AgendaInput] | None = None,
    kept: Sequence[str] = (),
) -> None:
    """Refuse a unit, chair, point or presenting account outside the actor's scope (as
    the service would refuse an unknown one: nothing of another district leaks)."""
    scope = visible_unit_ids(session, actor)
    if unit is not None:
        known = session.scalar(select(Unit).where(Unit.code == unit.strip()))
        if known is None or (scope is not None and known.id not in scope):
            raise SchedulingError(
                "unknown-unit", f"unknown unit {unit!r}", field="unit", params={"unit": unit}
            )
    if chair is not None and actor.role == "chair" and chair.strip() != actor.username:
        raise SchedulingError(
            "chair-not-self", "a chair schedules meetings they chair", field="chair"
        )
    if chair is not None and actor.role != "chair":
        user = session.scalar(select(User).where(User.username == chair.strip()))
        if user is not None and scope is not None and user.unit_id not in scope:
            raise SchedulingError(
                "unknown-user", f"unknown user {chair!r}", field="chair", params={"user": chair}
            )
    if agenda and any(item.presenter_user for item in agenda):
        # ``kept``: presenters the meeting already has stay valid (someone else chose them)
        allowed = {u.username for u in presenters_for(session, actor)} | set(kept)
        for index, item in enumerate(agenda, start=1):
            if item.presenter_user and item.presenter_user.strip() not in allowed:
                raise svc.unknown_presenter(index, item.presenter_user)
    if points:
        codes = [c.strip() for c in points if c and c.strip()]
        rows = session.scalars(select(Point).where(Point.code.in_(codes)))
        visible = {p.code for p in rows if scope is None or p.unit_id in scope}
        for code in codes:
            if code not in visible:
                raise SchedulingError(
                    "unknown-point",
                    f"unknown point {code!r}",
                    field="points",
                    params={"point": code},
                )


def _creation(session: Session, actor: CurrentUser, data: MeetingData) -> dict[str, Any]:
    """The arguments of a create service for `data`, once `actor` may create it there."""
    if actor.role not in EDIT_ROLES:
        raise NotAllowed("create")
    _check_scope(
        session, actor, unit=data.unit, chair=data.chair, points=data.points, agenda=data.agenda
    )
    return data.arguments()


def create_for(session: Session, actor: CurrentUser, data: MeetingData) -> svc.MeetingResult:
    """`meetings.create_meeting` with the scope and role checks of this module."""
    return svc.create_meeting(session, **_creation(session, actor, data))


def create_series_for(
    session: Session, actor: CurrentUser, data: MeetingData, rrule: str
) -> recurrence.SeriesResult:
    """`recurrence.create_series` with the scope and role checks of this module."""
    return recurrence.create_series(session, rrule=rrule, **_creation(session, actor, data))


def stale(meeting: Meeting, version: int | None) -> SchedulingError:
    return SchedulingError(
        "conflict-stale",
        f"the meeting changed since it was opened (version {version}, now {meeting.version})",
        params={"version": str(meeting.version)},
        status=409,
    )


def update_for(
    session: Session,
    actor: CurrentUser,
    meeting_id: int | str,
    version: int,
    changes: Mapping[str, Any],
) -> svc.MeetingResult:
    """`meetings.update_meeting` (keys of `changes`: its keyword arguments) with the scope
    checks; a version other than the current one is ``conflict-stale``."""
    meeting = load_meeting(session, actor, meeting_id, edit=True)
    if meeting.version != version:
        raise stale(meeting, version)
    _check_scope(
        session,
        actor,
        unit=changes.get("unit"),
        chair=changes.get("chair"),
        points=changes.get("points"),
        agenda=changes.get("agenda"),
        kept=[a.presenter_user.username for a in meeting.agenda if a.presenter_user],
    )
    return svc.update_meeting(session, meeting.id, version=version, **changes)
