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
foreign keys and WAL journaling.

**A locked, slow or vanished database answers quickly, and only where it is used.**
`database_timeout` (5 s) bounds every wait: SQLite's busy timeout, PostgreSQL's connect,
lock and pool timeouts (statements: three times as long).  The server's database work
runs on a bounded thread pool of its own (`Database.run`: `THREADS` threads, at most
`MAX_WAITING` calls waiting), so a stuck database cannot take the threads that seal
recordings or export minutes, and `run` gives up after `3 x database_timeout`.  An
operational failure (locked, unreachable, timed out, the pool full) is
`DatabaseUnavailable`: the server answers 503 with ``Retry-After`` (conference/server.py)
and says so in ``/healthz``; meetings in progress and ad-hoc rooms never wait for the
database.  The SQLite file is watched: deleted or replaced while the server runs
(``rm conference.db``: SQLite would go on writing into the unlinked file, lost at the next
start), every use is refused (`DatabaseUnavailable`) until the server is restarted with
the file restored; the file's identity is checked before each transaction (one ``stat``).

Migrations live in `conference/domain/migrations/` (shipped inside the package, so a
plain `pip install .` can upgrade a database).  `upgrade(settings)` applies them; the
Alembic configuration is built here, no alembic.ini is needed at run time.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from sqlalchemy.orm import Session, sessionmaker

from conference.core import events
from conference.settings import Settings

__all__ = [
    "DB_FILE",
    "Database",
    "DatabaseError",
    "DatabaseUnavailable",
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

#: seconds any wait on the database may last (``database_timeout``'s default)
TIMEOUT = 5.0
#: the server's database threads, and how many calls may wait for one
THREADS = 4
MAX_WAITING = 64
#: a schema upgrade may rewrite whole tables: its waits are bounded more generously
MIGRATION_TIMEOUT = 300.0


class DatabaseError(ValueError):
    """The database is unreachable, misconfigured or not migrated; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class DatabaseUnavailable(DatabaseError):
    """Locked, unreachable, too slow or its file gone: try again later (HTTP 503)."""


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


def _sqlite_pragmas(timeout: float, dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _postgres_timeouts(timeout: float, dbapi_connection: Any, connection_record: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = {int(timeout * 1000)}")
        cursor.execute(f"SET statement_timeout = {int(timeout * 3000)}")
    dbapi_connection.commit()


def make_engine(url: URL | str, timeout: float = TIMEOUT) -> Engine:
    """An engine whose every wait is bounded by ``timeout`` seconds (see the module doc)."""
    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        # the driver's own timeout is SQLite's busy timeout too: set it for both
        engine = create_engine(url, connect_args={"timeout": timeout})
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas, timeout))
        return engine
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=THREADS,
        pool_timeout=timeout,
        connect_args={"connect_timeout": max(1, int(timeout))},
    )
    event.listen(engine, "connect", functools.partial(_postgres_timeouts, timeout))
    return engine


#: `Session.info` key: ids of the meetings changed in the session's transaction
CHANGED_MEETINGS = "conference_changed_meetings"


#: `Session.info` key: (meeting id, status) -> the event data of each meeting the
#: transaction started (``live``) or ended, announced once it is committed (webhooks)
MEETING_TRANSITIONS = "conference_meeting_transitions"


def _note_meetings(session: Session, flush_context: Any, instances: Any) -> None:
    """Remember which existing meetings this flush changes or deletes."""
    for obj in (*session.dirty, *session.deleted):
        if getattr(obj, "__tablename__", None) == "meetings" and getattr(obj, "id", None):
            session.info.setdefault(CHANGED_MEETINGS, set()).add(obj.id)
            _note_transition(session, obj)


def _note_transition(session: Session, meeting: Any) -> None:
    """A meeting going live or ended in this flush: its event (`events.emit` after the
    commit, ``meeting.started`` / ``meeting.ended``), from its columns alone."""
    history = inspect(meeting).attrs.status.history
    if not history.added or history.added[0] not in ("live", "ended"):
        return
    status = history.added[0]

    def iso(value: Any) -> str | None:
        if value is None:
            return None
        utc = value.astimezone(UTC) if value.tzinfo is not None else value
        return str(utc.strftime("%Y-%m-%dT%H:%M:%SZ"))

    session.info.setdefault(MEETING_TRANSITIONS, {})[(meeting.id, status)] = {
        "meeting": str(meeting.id),
        "title": meeting.title,
        "status": status,
        "previous": history.deleted[0] if history.deleted else None,
        "start_at": iso(meeting.start_at),
        "end_at": iso(meeting.end_at),
        "started_at": iso(meeting.started_at),
        "ended_at": iso(meeting.ended_at),
    }


class Database:
    """An engine, its session factory and the server's database threads."""

    def __init__(self, url: URL | str, timeout: float = TIMEOUT) -> None:
        self.url = make_url(url)
        self.timeout = timeout
        self.engine = make_engine(self.url, timeout)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        #: called (in the committing thread) with the ids of the meetings a committed
        #: transaction of this process changed: the lobby re-checks who waits for them
        self.meeting_listeners: list[Callable[[set[int]], None]] = []
        event.listen(self.sessions, "before_flush", _note_meetings)
        self._executor: ThreadPoolExecutor | None = None
        self._waiting = 0
        #: the SQLite file's identity (device, inode) when first seen; None: not a file
        self._file = Path(self.url.database or "") if _is_sqlite_file(self.url) else None
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()
        #: the last failure: (monotonic time, one line), cleared by a success
        self.failure: tuple[float, str] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(database_url(settings), float(settings.database_timeout))

    def _check_file(self) -> None:
        """Refuse to go on if the SQLite file was deleted or replaced since first seen."""
        if self._file is None:
            return
        try:
            stat = os.stat(self._file)
            identity: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            identity = None
        with self._lock:
            if self._identity is None and identity is not None:
                self._identity = identity
                return
        if identity != self._identity and self._identity is not None:
            what = "deleted" if identity is None else "replaced"
            raise DatabaseUnavailable(
                f"database {self._file} was {what} while the server runs: nothing is "
                "written; restore the file (docs/OPERATIONS.md, Backups) and restart"
            )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        self._check_file()
        try:
            with self.sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise DatabaseUnavailable(
                f"database {redacted(self.url)}: {_first_line(exc.orig)}"
            ) from exc
        except SQLAlchemyTimeout as exc:
            raise DatabaseUnavailable(f"database {redacted(self.url)}: {exc}") from exc
        for (_, status), data in session.info.pop(MEETING_TRANSITIONS, {}).items():
            events.emit("meeting.started" if status == "live" else "meeting.ended", data)
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
        """Run `function(session)` in a transaction, on one of the database's threads.

        `DatabaseUnavailable` when the database fails operationally, when `MAX_WAITING`
        calls already wait, or after three times its timeout (the thread finishes on its
        own: the database's own timeouts end it)."""
        if self._waiting >= MAX_WAITING:
            raise self._failed(DatabaseUnavailable("database: too many requests waiting"))
        if self._executor is None:
            self._executor = ThreadPoolExecutor(THREADS, thread_name_prefix="database")
        context = contextvars.copy_context()
        call = functools.partial(context.run, self.call, function)
        self._waiting += 1
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, call)
            result = await asyncio.wait_for(future, 3 * self.timeout)
        except TimeoutError:
            raise self._failed(
                DatabaseUnavailable(f"database: no answer in {3 * self.timeout:g} s")
            ) from None
        except DatabaseUnavailable as exc:
            raise self._failed(exc) from None
        finally:
            self._waiting -= 1
        self.failure = None
        return result

    def _failed(self, exc: DatabaseUnavailable) -> DatabaseUnavailable:
        self.failure = (time.monotonic(), str(exc))
        events.count("database_errors")
        return exc

    def problem(self) -> str | None:
        """What ``/healthz`` says of the database: its file gone, or a failure in the
        last 30 s (no query is made: a health check must not wait on a locked database)."""
        try:
            self._check_file()
        except DatabaseUnavailable as exc:
            return str(exc)
        if self.failure is not None and time.monotonic() - self.failure[0] < 30:
            return self.failure[1]
        return None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self.engine.dispose()


def _is_sqlite_file(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")


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
    engine = make_engine(url, MIGRATION_TIMEOUT)
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
