"""Database fixtures: every storage test runs on SQLite (a temp file) and PostgreSQL.

PostgreSQL is expected on 127.0.0.1:5432, database `test`, trust authentication (user
`postgres`, else `root`; override with CONFERENCE_TEST_POSTGRES_URL).  Each test gets its
own schema (dropped afterwards), so tests are independent and can run repeatedly.  Where
PostgreSQL is unreachable the PostgreSQL variants are skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

from conference.domain import db

_CANDIDATES = [
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
]
_postgres: tuple[URL | None, str] | None = None


def postgres_base_url() -> tuple[URL | None, str]:
    """(URL, "") of a reachable PostgreSQL, or (None, why not)."""
    global _postgres
    if _postgres is None:
        candidates = (
            [os.environ["CONFERENCE_TEST_POSTGRES_URL"]]
            if os.environ.get("CONFERENCE_TEST_POSTGRES_URL")
            else _CANDIDATES
        )
        errors = []
        for candidate in candidates:
            url = make_url(candidate)
            engine = create_engine(url, connect_args={"connect_timeout": 3})
            try:
                with engine.connect() as connection:
                    connection.execute(text("select 1"))
                _postgres = (url, "")
                break
            except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
                errors.append(f"{url.username}: {str(exc).strip().splitlines()[0]}")
            finally:
                engine.dispose()
        else:
            _postgres = (
                None,
                "PostgreSQL on 127.0.0.1:5432/test unreachable: " + "; ".join(errors),
            )
    return _postgres


def _postgres_schema_url() -> Iterator[URL]:
    base, why = postgres_base_url()
    if base is None:
        pytest.skip(why)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield base.update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """The URL of an empty database (no tables), SQLite or PostgreSQL."""
    if request.param == "sqlite":
        yield URL.create("sqlite", database=str(tmp_path / "conference.db"))
    else:
        yield from _postgres_schema_url()


@pytest.fixture
def database(empty_url: URL) -> Iterator[db.Database]:
    """A migrated database."""
    db.upgrade(empty_url)
    database = db.Database(empty_url)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def session(database: db.Database) -> Iterator[Session]:
    """A session whose work is committed at the end of the test (if it did not fail)."""
    with database.session() as session:
        yield session
