"""Schema migrations and the database layer, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conference.domain import db
from conference.domain.models import Base, Point, Unit
from conference.settings import Settings, SettingsError, load_settings


def test_upgrade_creates_schema_on_empty_database(empty_url: URL) -> None:
    engine = db.make_engine(empty_url)
    try:
        assert db.table_names(engine) == []
        assert db.upgrade(empty_url) == db.head_revision()
        assert db.table_names(engine) == sorted(["alembic_version", *Base.metadata.tables])
        assert {"points", "units", "users", "meetings", "invitations"} <= set(Base.metadata.tables)
        assert db.current_revision(engine) == db.head_revision()
        # A second upgrade is a no-op.
        assert db.upgrade(empty_url) == db.head_revision()
    finally:
        engine.dispose()


def test_migrated_schema_matches_models(empty_url: URL) -> None:
    """The migrations, run on an empty database, make the models' schema."""
    assert db.upgrade(empty_url) == db.head_revision()
    engine = db.make_engine(empty_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_the_database_fixture_is_migrated(database: db.Database) -> None:
    """`database` is a copy of a migrated database (tests/domain/conftest.py)."""
    assert db.current_revision(database.engine) == db.head_revision()
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_downgrade_then_upgrade(empty_url: URL) -> None:
    db.upgrade(empty_url)
    from alembic import command

    engine = db.make_engine(empty_url)
    try:
        with engine.begin() as connection:
            command.downgrade(db._alembic_config(connection), "base")
        assert db.table_names(engine) == ["alembic_version"]
        db.upgrade(empty_url)
        assert "units" in db.table_names(engine)
    finally:
        engine.dispose()


def test_constraints_enforced(database: db.Database) -> None:
    with pytest.raises(IntegrityError):
        with database.session() as session:
            session.add(Unit(code="x", name="X", kind="hamlet"))
    with pytest.raises(IntegrityError):  # foreign keys are on, on SQLite too
        with database.session() as session:
            session.add(Point(code="p", name="P", unit_id=12345, bandwidth_profile="low"))
    with database.session() as session:
        assert session.scalars(select(Unit)).all() == []


def test_times_round_trip_as_utc(database: db.Database) -> None:
    moment = datetime(2026, 3, 2, 1, 0, 5, tzinfo=UTC)
    with database.session() as session:
        session.add(Unit(code="t", name="T", kind="province", created_at=moment))
    with database.session() as session:
        unit = session.scalars(select(Unit)).one()
        assert unit.created_at == moment and unit.created_at.tzinfo is UTC


async def test_run_in_thread(database: db.Database) -> None:
    def add(session: Session) -> int:
        unit = Unit(code="async", name="Tỉnh Lào Cai", kind="province")
        session.add(unit)
        session.flush()
        return unit.id

    unit_id = await database.run(add)
    name = await database.run(lambda s: s.get_one(Unit, unit_id).name)
    assert name == "Tỉnh Lào Cai"


def test_default_url_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    url = db.database_url(Settings(data_dir=tmp_path / "d"))
    assert url.get_backend_name() == "sqlite"
    assert url.database == str(tmp_path / "d" / "conference.db")


def test_postgres_url_uses_psycopg() -> None:
    for scheme in ("postgresql", "postgres"):
        settings = load_settings(env={"CONFERENCE_DATABASE_URL": f"{scheme}://u:pw@db/conf"})
        url = db.database_url(settings)
        assert url.drivername == "postgresql+psycopg"
        assert "pw" not in db.redacted(url)
        assert "pw" not in repr(settings)


@pytest.mark.parametrize("value", ["mysql://x/y", "conference.db", "sqlite:"])
def test_bad_database_url(value: str) -> None:
    with pytest.raises(SettingsError, match="CONFERENCE_DATABASE_URL: expected sqlite"):
        load_settings(env={"CONFERENCE_DATABASE_URL": value})


def test_unreachable_database_is_one_line_error() -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"
    with pytest.raises(db.DatabaseError) as info:
        db.upgrade(url)
    assert "\n" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


def test_missing_sqlite_directory(tmp_path: Path) -> None:
    with pytest.raises(db.DatabaseError, match="does not exist"):
        db.upgrade(URL.create("sqlite", database=str(tmp_path / "no" / "conference.db")))
