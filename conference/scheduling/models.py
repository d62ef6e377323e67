"""Database models of the control plane (SQLAlchemy 2.0 typed declarative mapping).

Units form a tree (province → district → commune); a Point (điểm cầu) belongs to one Unit;
a User has one role scoped to a Unit (and, for a point operator, to one Point).

Times are stored as naive UTC in the database (`UTCDateTime`) and returned as aware UTC
datetimes, so SQLite (no time zone type) and PostgreSQL behave the same.  Any change to
these models needs a new Alembic revision in `conference/scheduling/migrations/versions/`;
`tests/scheduling/test_migrations.py` checks that the migrated schema matches the models.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    MetaData,
    String,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "BANDWIDTH_PROFILES",
    "ROLES",
    "UNIT_KINDS",
    "Base",
    "Point",
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

    unit: Mapped[Unit | None] = relationship()
    point: Mapped[Point | None] = relationship()

    def __repr__(self) -> str:
        return f"User({self.username!r}, {self.role})"
