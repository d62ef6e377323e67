"""Database models of the control plane (SQLAlchemy 2.0 typed declarative mapping).

Units form a tree (province → district → commune); a Point (điểm cầu) belongs to one Unit;
a User has one role scoped to a Unit (and, for a point operator, to one Point).

Times are stored as naive UTC in the database (`UTCDateTime`) and returned as aware UTC
datetimes, so SQLite (no time zone type) and PostgreSQL behave the same.  Any change to
these models needs a new Alembic revision in `conference/domain/migrations/versions/`;
`tests/domain/test_migrations.py` checks that the migrated schema matches the models.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "BANDWIDTH_PROFILES",
    "ROLES",
    "UNIT_KINDS",
    "Base",
    "LoginFailure",
    "Point",
    "RevokedToken",
    "UTCDateTime",
    "Unit",
    "User",
    "utcnow",
]

#: Unit kinds, from the top of the tree down.  A unit's parent must be of a higher level.
UNIT_KINDS = ("province", "district", "commune")
UNIT_LEVEL = {kind: level for level, kind in enumerate(UNIT_KINDS)}

#: Bandwidth profile of a point -> what it is for (the media plane may cap video by it).
BANDWIDTH_PROFILES = {
    "low": "weak link (shared 4G, under 1 Mbit/s): low-resolution video",
    "standard": "ordinary link (1-4 Mbit/s): 720p video",
    "high": "good link (fibre, over 4 Mbit/s): full quality",
}
DEFAULT_BANDWIDTH = "standard"

#: User roles: admin (quản trị), chair (chủ trì), secretary (thư ký), operator (điểm cầu).
ROLES = ("admin", "chair", "secretary", "operator")

# Named constraints, so that migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime, stored as naive UTC (the same on SQLite and PostgreSQL)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


def _quoted(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Unit(Base):
    """An administrative unit: a province, a district or a commune."""

    __tablename__ = "units"
    __table_args__ = (CheckConstraint(f"kind IN ({_quoted(UNIT_KINDS)})", name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Short stable code, e.g. the official administrative code ("08101") or a slug.
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("units.id", ondelete="RESTRICT"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    parent: Mapped[Unit | None] = relationship(remote_side=[id], back_populates="children")
    children: Mapped[list[Unit]] = relationship(back_populates="parent")
    points: Mapped[list[Point]] = relationship(back_populates="unit")

    def __repr__(self) -> str:
        return f"Unit({self.code!r}, {self.kind}, {self.name!r})"


class Point(Base):
    """A meeting point (điểm cầu): a hall or room that joins meetings."""

    __tablename__ = "points"
    __table_args__ = (
        CheckConstraint(
            f"bandwidth_profile IN ({_quoted(list(BANDWIDTH_PROFILES))})", name="bandwidth"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Stable identifier, e.g. "xa-tan-lap"; used as the participant identity in tokens.
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="RESTRICT"), index=True)
    contact_email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(32))
    bandwidth_profile: Mapped[str] = mapped_column(String(16), default=DEFAULT_BANDWIDTH)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    unit: Mapped[Unit] = relationship(back_populates="points")

    def __repr__(self) -> str:
        return f"Point({self.code!r}, {self.name!r})"


class User(Base):
    """An account: one role, scoped to a unit (and to a point for an operator)."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(f"role IN ({_quoted(ROLES)})", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    #: argon2id hash in PHC string format ($argon2id$v=19$...).
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    #: The unit whose subtree the user sees; None only for an admin of the whole installation.
    unit_id: Mapped[int | None] = mapped_column(
        ForeignKey("units.id", ondelete="RESTRICT"), index=True
    )
    #: The point an operator runs.
    point_id: Mapped[int | None] = mapped_column(
        ForeignKey("points.id", ondelete="RESTRICT"), index=True
    )
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Written into its session cookies and API tokens (claim ``ver``; none: 0): raised
    #: (`accounts.end_sessions`) when the account is disabled or enabled, its password
    #: changes or it signs out everywhere, which ends every token made before.
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    unit: Mapped[Unit | None] = relationship()
    point: Mapped[Point | None] = relationship()

    def __repr__(self) -> str:
        return f"User({self.username!r}, {self.role})"


class RevokedToken(Base):
    """A token refused before its expiry: a signed-out session cookie (``session``), a
    point's meeting token after the chair removed it (``meeting``).  Loaded at start into
    the in-memory lists (conference/domain/authstate.py); deleted once expired."""

    __tablename__ = "revoked_tokens"

    #: the token's ``jti``
    token_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class LoginFailure(Base):
    """Failed sign-ins of one username (``user:NAME``) or client address (``addr:IP``),
    and the lockout they earned (conference/domain/authstate.py `LoginThrottle`)."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


# --- meetings, series, invitations, reminders, attendance ---------------------------------------
#
# A Meeting is one briefing at one time.  A Series (a recurring briefing) holds an RFC 5545
# RRULE and the template of its meetings; its occurrences are *materialized* as Meeting rows
# (linked by series_id, keyed by occurrence_start = the start the rule gives) up to a horizon,
# so that every occurrence has its own id, invitations, tokens, .ics UID and attendance.  A
# change to one occurrence is a SeriesException keyed by that original start (unique: a
# second exception for the same occurrence is refused).

MEETING_STATUSES = ("scheduled", "live", "ended", "cancelled")
RECORDING_POLICIES = ("none", "auto", "ask")
RSVP_ANSWERS = ("pending", "accepted", "declined")
EXCEPTION_KINDS = ("cancelled", "modified")
ATTENDANCE_KINDS = ("join", "leave")
REMINDER_STATES = ("sent", "skipped", "failed")


class Series(Base):
    """A recurring briefing: an RRULE in local time and the template of its meetings."""

    __tablename__ = "series"
    __table_args__ = (
        CheckConstraint(
            f"recording_policy IN ({_quoted(RECORDING_POLICIES)})", name="recording_policy"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="RESTRICT"), index=True)
    chair_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    #: RFC 5545 RRULE value without "RRULE:", e.g. "FREQ=WEEKLY;BYDAY=MO".
    rrule: Mapped[str] = mapped_column(String(500))
    #: First start, as a wall-clock time in `timezone` ("2026-12-07T08:00:00").
    first_start_local: Mapped[str] = mapped_column(String(32))
    timezone: Mapped[str] = mapped_column(String(64))
    duration_minutes: Mapped[int] = mapped_column(Integer)
    recording_policy: Mapped[str] = mapped_column(String(8), default="none")
    notes: Mapped[str] = mapped_column(Text, default="")
    #: Template agenda: [{"title": ..., "presenter": ..., "presenter_user": username|null}].
    agenda: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: Occurrences are materialized up to here (UTC).
    materialized_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    unit: Mapped[Unit] = relationship()
    chair: Mapped[User] = relationship()
    points: Mapped[list[Point]] = relationship(secondary="series_points", order_by="Point.id")
    meetings: Mapped[list[Meeting]] = relationship(
        back_populates="series", order_by="Meeting.start_at"
    )
    exceptions: Mapped[list[SeriesException]] = relationship(
        back_populates="series", cascade="all, delete-orphan"
    )


class SeriesPoint(Base):
    """A point invited to every occurrence of a series."""

    __tablename__ = "series_points"

    series_id: Mapped[int] = mapped_column(
        ForeignKey("series.id", ondelete="CASCADE"), primary_key=True
    )
    point_id: Mapped[int] = mapped_column(
        ForeignKey("points.id", ondelete="RESTRICT"), primary_key=True
    )


class SeriesException(Base):
    """One occurrence of a series cancelled or changed, keyed by its original start."""

    __tablename__ = "series_exceptions"
    __table_args__ = (
        UniqueConstraint("series_id", "original_start", name="uq_series_exceptions_occurrence"),
        CheckConstraint(f"kind IN ({_quoted(EXCEPTION_KINDS)})", name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    original_start: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    series: Mapped[Series] = relationship(back_populates="exceptions")


class Meeting(Base):
    """A scheduled briefing (or one occurrence of a series)."""

    __tablename__ = "meetings"
    __table_args__ = (
        CheckConstraint(f"status IN ({_quoted(MEETING_STATUSES)})", name="status"),
        CheckConstraint(
            f"recording_policy IN ({_quoted(RECORDING_POLICIES)})", name="recording_policy"
        ),
        CheckConstraint("end_at > start_at", name="times"),
        UniqueConstraint("series_id", "occurrence_start", name="uq_meetings_occurrence"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Stable iCalendar UID (the same in every update and cancellation e-mail).
    uid: Mapped[str] = mapped_column(String(128), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="RESTRICT"), index=True)
    chair_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    start_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    end_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recording_policy: Mapped[str] = mapped_column(String(8), default="none")
    notes: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="scheduled", index=True)
    #: Optimistic concurrency: every UPDATE of the row checks and increments it.
    version: Mapped[int] = mapped_column(Integer, default=1)
    #: iCalendar SEQUENCE: increases with every change that invitees are told about.
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    series_id: Mapped[int | None] = mapped_column(
        ForeignKey("series.id", ondelete="RESTRICT"), index=True
    )
    #: For an occurrence: the start the series rule gives (its RECURRENCE-ID), UTC.
    occurrence_start: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    unit: Mapped[Unit] = relationship()
    chair: Mapped[User] = relationship()
    series: Mapped[Series | None] = relationship(back_populates="meetings")
    agenda: Mapped[list[AgendaItem]] = relationship(
        back_populates="meeting", order_by="AgendaItem.position", cascade="all, delete-orphan"
    )
    invitations: Mapped[list[Invitation]] = relationship(
        back_populates="meeting", order_by="Invitation.id", cascade="all, delete-orphan"
    )

    __mapper_args__ = {"version_id_col": version}

    def __repr__(self) -> str:
        return f"Meeting({self.id}, {self.title!r}, {self.start_at.isoformat()}, {self.status})"


class AgendaItem(Base):
    """One item of a meeting's agenda, in order, with its presenter."""

    __tablename__ = "agenda_items"
    __table_args__ = (UniqueConstraint("meeting_id", "position", name="uq_agenda_items_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    meeting_id: Mapped[int] = mapped_column(
        ForeignKey("meetings.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(300))
    #: Free-text presenter ("Phòng Tài chính - Kế hoạch"), or empty when a user presents.
    presenter: Mapped[str] = mapped_column(String(200), default="")
    presenter_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )

    meeting: Mapped[Meeting] = relationship(back_populates="agenda")
    presenter_user: Mapped[User | None] = relationship()

    @property
    def presenter_name(self) -> str:
        if self.presenter_user is not None:
            return self.presenter_user.display_name
        return self.presenter


class Invitation(Base):
    """One point invited to one meeting: its answer and what was e-mailed to it."""

    __tablename__ = "invitations"
    __table_args__ = (
        UniqueConstraint("meeting_id", "point_id", name="uq_invitations_meeting_point"),
        CheckConstraint(f"answer IN ({_quoted(RSVP_ANSWERS)})", name="answer"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    meeting_id: Mapped[int] = mapped_column(
        ForeignKey("meetings.id", ondelete="CASCADE"), index=True
    )
    point_id: Mapped[int] = mapped_column(ForeignKey("points.id", ondelete="RESTRICT"), index=True)
    answer: Mapped[str] = mapped_column(String(16), default="pending")
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: False once the point was taken off the meeting (a cancellation is then e-mailed).
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    #: The meeting SEQUENCE last e-mailed (None = never); METHOD:CANCEL sent when cancel_sent.
    sent_sequence: Mapped[int | None] = mapped_column(Integer)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_sent: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    meeting: Mapped[Meeting] = relationship(back_populates="invitations")
    point: Mapped[Point] = relationship()


class ReminderLog(Base):
    """A reminder of one invitation for one lead time: claimed before it is sent, once."""

    __tablename__ = "reminders"
    __table_args__ = (
        UniqueConstraint("invitation_id", "lead_seconds", name="uq_reminders_invitation_lead"),
        CheckConstraint(f"state IN ({_quoted(REMINDER_STATES)})", name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invitation_id: Mapped[int] = mapped_column(
        ForeignKey("invitations.id", ondelete="CASCADE"), index=True
    )
    lead_seconds: Mapped[int] = mapped_column(Integer)
    #: The meeting start this reminder was for (a moved meeting gets new reminders).
    meeting_start: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    error: Mapped[str | None] = mapped_column(String(500))


class AttendanceEvent(Base):
    """A participant joined or left a meeting's room."""

    __tablename__ = "attendance_events"
    __table_args__ = (CheckConstraint(f"kind IN ({_quoted(ATTENDANCE_KINDS)})", name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    meeting_id: Mapped[int] = mapped_column(
        ForeignKey("meetings.id", ondelete="CASCADE"), index=True
    )
    #: The token identity: a point code, a username, "recorder", a guest id.
    identity: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(16), default="")
    participant_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(8))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    #: The point the participant joined from (None for the chair's side or a guest).
    point_id: Mapped[int | None] = mapped_column(
        ForeignKey("points.id", ondelete="SET NULL"), index=True
    )
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )

    point: Mapped[Point | None] = relationship()


# --- minutes (biên bản) of a meeting -----------------------------------------------------------

MINUTES_STATES = ("draft", "final")


class Minutes(Base):
    """The minutes of one meeting: the draft document (JSON) the secretary edits, then final.

    ``content`` is the whole document (header, times, attendance, speaking, text sections:
    see :mod:`conference.domain.minutes`); a final minutes is never changed again.
    """

    __tablename__ = "minutes"
    __table_args__ = (CheckConstraint(f"state IN ({_quoted(MINUTES_STATES)})", name="state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    meeting_id: Mapped[int] = mapped_column(
        ForeignKey("meetings.id", ondelete="CASCADE"), unique=True
    )
    #: The user who created the minutes (the secretary, thư ký).
    secretary_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    content: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(8), default="draft")
    #: Optimistic concurrency: every UPDATE of the row checks and increments it.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finalized_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    meeting: Mapped[Meeting] = relationship()
    secretary: Mapped[User | None] = relationship(foreign_keys=[secretary_id])
    finalized_by: Mapped[User | None] = relationship(foreign_keys=[finalized_by_id])

    __mapper_args__ = {"version_id_col": version}


__all__ += [
    "MINUTES_STATES",
    "Minutes",
    "ATTENDANCE_KINDS",
    "EXCEPTION_KINDS",
    "MEETING_STATUSES",
    "RECORDING_POLICIES",
    "RSVP_ANSWERS",
    "AgendaItem",
    "AttendanceEvent",
    "Invitation",
    "Meeting",
    "ReminderLog",
    "Series",
    "SeriesException",
    "SeriesPoint",
]
