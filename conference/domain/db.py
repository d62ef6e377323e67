"""Database engine, sessions and schema migrations.

**Synchronous SQLAlchemy, run in a worker thread from async code.**  The control plane's
database work is small (a few queries per page or API call, never on the media path), and
the same code serves three callers: the CLI (synchronous), Alembic migrations (synchronous
by design) and the aiohttp server.  One synchronous code path with one driver per database
(the standard library's sqlite3, psycopg 3) keeps models, services and tests identical
everywhere; async callers use `Database.run`, which runs a function in a session inside
`asyncio.to_thread`.  The async engine would add aiosqlite/asyncpg, a second set of
drivers, and `AsyncSession` rules about lazy loading, for no gain at this scale (aiosqlite
is itself a thread per connection).

URLs: `database_url` unset means `sqlite:///{data_dir}/conference.db`.  `postgresql://`
and `postgres://` URLs are sent through psycopg 3 (`postgresql+psycopg://`); libpq options
such as `?options=-csearch_path%3Dconference` pass through.  SQLite connections enable
foreign keys, WAL journaling and a 30 s busy timeout.

Migrations live in `conference/domain/migrations/` (shipped inside the package, so a
plain `pip install .` can upgrade a database).  `upgrade(settings)` applies them; the
Alembic configuration is built here, no alembic.ini is needed at run time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from conference.settings import Settings

__all__ = [
    "DB_FILE",
    "Database",
    "DatabaseError",
    "current_revision",
    "database_url",
    "head_revision",
    "make_engine",
    "redacted",
    "upgrade",
]

DB_FILE = "conference.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

logger = logging.getLogger(__name__)

T = TypeVar("T")


class DatabaseError(ValueError):
    """The database is unreachable, misconfigured or not migrated; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def database_url(settings: Settings) -> URL:
    """The database URL of `settings` (SQLite in the data directory by default)."""
    if settings.database_url is None:
        return URL.create("sqlite", database=str(Path(settings.data_dir) / DB_FILE))
    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        raise DatabaseError("database_url: not a valid database URL") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseError(
            f"database_url: unsupported database {url.get_backend_name()!r} "
            "(use sqlite:///FILE or postgresql://USER@HOST/DB)"
        )
    return url


def redacted(url: URL) -> str:
    """The URL without its password, for messages and logs."""
    return url.render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def make_engine(url: URL | str) -> Engine:
    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


#: `Session.info` key: ids of the meetings changed in the session's transaction
CHANGED_MEETINGS = "conference_changed_meetings"


def _note_meetings(session: Session, flush_context: Any, instances: Any) -> None:
    """Remember which existing meetings this flush changes or deletes."""
    for obj in (*session.dirty, *session.deleted):
        if getattr(obj, "__tablename__", None) == "meetings" and getattr(obj, "id", None):
            session.info.setdefault(CHANGED_MEETINGS, set()).add(obj.id)


class Database:
    """An engine and its session factory."""

    def __init__(self, url: URL | str) -> None:
        self.url = make_url(url)
        self.engine = make_engine(self.url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        #: called (in the committing thread) with the ids of the meetings a committed
        #: transaction of this process changed: the lobby re-checks who waits for them
        self.meeting_listeners: list[Callable[[set[int]], None]] = []
        event.listen(self.sessions, "before_flush", _note_meetings)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(database_url(settings))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        try:
            with self.sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise DatabaseError(f"database {redacted(self.url)}: {_first_line(exc.orig)}") from exc
        changed = session.info.pop(CHANGED_MEETINGS, None)
        if changed:
            for listener in list(self.meeting_listeners):
                try:
                    listener(changed)
                except Exception:  # a listener's failure never undoes a commit
                    logger.exception("a meeting listener failed")

    def call(self, function: Callable[[Session], T]) -> T:
        with self.session() as session:
            return function(session)

    async def run(self, function: Callable[[Session], T]) -> T:
        """Run `function(session)` in a transaction, in a worker thread."""
        return await asyncio.to_thread(self.call, function)

    def close(self) -> None:
        self.engine.dispose()


def _first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration revision shipped with this version."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(target: Settings | URL | str, revision: str = "head") -> str:
    """Create or upgrade the schema to `revision`; returns the revision now in place."""
    from alembic import command

    url = database_url(target) if isinstance(target, Settings) else make_url(target)
    if url.get_backend_name() == "sqlite" and url.database:
        parent = Path(url.database).parent
        if not parent.is_dir():
            raise DatabaseError(f"database {redacted(url)}: directory {parent} does not exist")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), revision)
        now = current_revision(engine)
    except OperationalError as exc:
        raise DatabaseError(f"database {redacted(url)}: {_first_line(exc.orig)}") from exc
    finally:
        engine.dispose()
    return now or "base"


def table_names(engine: Engine) -> list[str]:
    return sorted(inspect(engine).get_table_names())
