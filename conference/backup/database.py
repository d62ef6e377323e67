"""The database part of a backup: every table's rows as JSON lines, and back.

**Read in one snapshot, while the server runs.**  Every table is read inside one
transaction: on PostgreSQL ``REPEATABLE READ, READ ONLY`` (what ``pg_dump`` does: one
snapshot for the whole transaction, no lock that a writer waits on); on SQLite an
explicit ``BEGIN`` (the driver would otherwise run each ``SELECT`` on its own), which in
WAL mode (db.py turns it on) reads one snapshot while the server goes on writing.  Rows
committed by others after the first read are in no table of the dump, so it never holds
an invitation without its meeting.

**Portable.**  The tables and their columns are reflected from the database (not taken
from the models: an older schema dumps and restores as it is), values are written as
JSON (datetimes as ISO 8601, naive UTC as stored; binary as base64) and converted back
by the target column's type, so a dump of SQLite restores into PostgreSQL and back.

**Written back in one transaction.**  Restoring opens one transaction (SQLite: ``BEGIN
IMMEDIATE``, DDL included), refuses a target that holds rows unless forced, deletes
every row, moves the schema to the archive's revision (upgrade, or downgrade of the now
empty tables), inserts the rows table by table (parents first: `sorted_tables`, and rows
of a table that refers to itself parents first too), runs the migrations to this
version's head, and on PostgreSQL sets every id sequence past the largest id.  Any
failure rolls all of it back.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, MetaData, event, func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from conference.domain.db import MIGRATION_TIMEOUT, MIGRATIONS, make_engine, redacted
from conference.domain.models import Base

from .archive import BackupError

__all__ = ["dump_database", "load_database", "revisions"]

#: Alembic's own table: the revision travels in the header instead
SKIP = frozenset({"alembic_version"})
INSERT_CHUNK = 1000


def _config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def revisions() -> list[str]:
    """This version's schema revisions, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def _revision(connection: Connection) -> str | None:
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _engine(url: URL, begin: str) -> Engine:
    """An engine whose transactions are real ones on SQLite too (`begin` starts them)."""
    engine = make_engine(url, MIGRATION_TIMEOUT)
    if url.get_backend_name() == "sqlite":

        def manual(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None  # the driver starts no transaction

        def start(connection: Connection) -> None:
            connection.exec_driver_sql(begin)

        event.listen(engine, "connect", manual)
        event.listen(engine, "begin", start)
    return engine


def _failure(url: URL, exc: SQLAlchemyError) -> BackupError:
    origin = getattr(exc, "orig", None) or exc
    lines = str(origin).strip().splitlines()
    return BackupError(f"database {redacted(url)}: {lines[0] if lines else type(exc).__name__}")


def _tables(connection: Connection, also: Iterable[str] = ()) -> list[sa.Table]:
    """The database's tables of conference, parents first: those of the models, and `also`
    (an archive's: a table a later migration dropped).  Other tables in the same database
    or schema (another application's) are neither read nor touched."""
    ours = set(Base.metadata.tables) | set(also)
    metadata = MetaData()
    metadata.reflect(connection, only=lambda name, _: name in ours and name not in SKIP)
    return list(metadata.sorted_tables)


# --- dump -------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot write a {type(value).__name__} value")


def dump_database(
    url: URL, directory: Path, after_table: Callable[[str, int], None] | None = None
) -> tuple[str, dict[str, Path], dict[str, int]]:
    """Write every table to ``directory/<table>.jsonl`` from one snapshot.

    Returns (schema revision, {table: file}, {table: rows}); `after_table(name, rows)` is
    called after each table (the snapshot stays open meanwhile)."""
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        raise BackupError(f"database {url.database} does not exist: nothing to back up")
    engine = _engine(url, "BEGIN")
    files: dict[str, Path] = {}
    counts: dict[str, int] = {}
    try:
        with engine.connect() as connection:
            if url.get_backend_name() == "postgresql":
                connection = connection.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
            with connection.begin():
                revision = _revision(connection)
                if revision is None:
                    raise BackupError(f"database {redacted(url)} has no schema: nothing to back up")
                if revision not in revisions():
                    raise BackupError(
                        f"database {redacted(url)} is at schema revision {revision}, unknown "
                        "to this version: back it up with the version that upgraded it"
                    )
                for table in _tables(connection):
                    files[table.name] = path = directory / f"{table.name}.jsonl"
                    counts[table.name] = _dump_table(connection, table, path)
                    if after_table is not None:
                        after_table(table.name, counts[table.name])
    except SQLAlchemyError as exc:
        raise _failure(url, exc) from exc
    finally:
        engine.dispose()
    return revision, files, counts


def _dump_table(connection: Connection, table: sa.Table, path: Path) -> int:
    order = list(table.primary_key.columns) or list(table.columns)
    query = select(table).order_by(*order)
    count = 0
    with path.open("x", encoding="utf-8") as out:
        result = connection.execution_options(yield_per=INSERT_CHUNK).execute(query)
        for row in result.mappings():
            out.write(
                json.dumps(dict(row), default=_plain, ensure_ascii=False, separators=(",", ":"))
            )
            out.write("\n")
            count += 1
    return count


# --- load -------------------------------------------------------------------------------------


def _converter(column_type: Any) -> Callable[[Any], Any] | None:
    """How a JSON value becomes a value of `column_type` (None: as it is)."""
    if isinstance(column_type, sa.JSON):
        return None
    if isinstance(column_type, sa.DateTime):
        return datetime.fromisoformat
    if isinstance(column_type, sa.Date):
        return date.fromisoformat
    if isinstance(column_type, sa.Time):
        return time.fromisoformat
    if isinstance(column_type, sa.LargeBinary):
        return base64.b64decode
    if isinstance(column_type, sa.Boolean):
        return bool
    if isinstance(column_type, sa.Numeric) and not isinstance(column_type, sa.Float):
        return lambda value: Decimal(str(value))
    return None


def _rows(table: sa.Table, path: Path) -> Iterator[dict[str, Any]]:
    columns = {column.name: _converter(column.type) for column in table.columns}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            where = f"table {table.name}, row {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise BackupError(f"{where}: not JSON") from None
            if not isinstance(row, dict) or set(row) != set(columns):
                raise BackupError(
                    f"{where}: its columns do not match the table at the archive's revision"
                )
            for name, convert in columns.items():
                if convert is not None and row[name] is not None:
                    try:
                        row[name] = convert(row[name])
                    except (TypeError, ValueError):
                        raise BackupError(f"{where}: bad value for column {name}") from None
            yield row


def _parents_first(table: sa.Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` ordered so that a row referring to another row of its table comes after it."""
    links = [
        (key.parent.name, key.column.name)
        for key in table.foreign_keys
        if key.column.table is table
    ]
    if not links:
        return rows
    placed: set[tuple[str, Any]] = set()
    ordered: list[dict[str, Any]] = []
    pending = rows
    while pending:
        waiting = []
        for row in pending:
            if all(row[own] is None or (other, row[own]) in placed for own, other in links):
                ordered.append(row)
                placed.update((other, row[other]) for _, other in links)
            else:
                waiting.append(row)
        if len(waiting) == len(pending):
            raise BackupError(f"table {table.name}: rows refer to rows that are not in it")
        pending = waiting
    return ordered


def _delete_all(connection: Connection, tables: list[sa.Table]) -> None:
    for table in reversed(tables):
        for key in table.foreign_keys:  # a self reference: ON DELETE RESTRICT acts per row
            if key.column.table is table and key.parent.nullable:
                connection.execute(sa.update(table).values({key.parent.name: None}))
        connection.execute(sa.delete(table))


def _reset_sequences(connection: Connection, tables: list[sa.Table]) -> None:
    """PostgreSQL: every id sequence past the largest id (rows were inserted with ids)."""
    quote = connection.dialect.identifier_preparer.quote
    for table in tables:
        keys = list(table.primary_key.columns)
        if len(keys) != 1 or not isinstance(keys[0].type, sa.Integer):
            continue
        column = keys[0].name
        sequence = connection.execute(
            text("SELECT pg_get_serial_sequence(:table, :column)"),
            {"table": quote(table.name), "column": column},
        ).scalar()
        if sequence:
            connection.execute(
                text(
                    f"SELECT setval(:sequence, COALESCE((SELECT MAX({quote(column)}) "
                    f"FROM {quote(table.name)}), 0) + 1, false)"
                ),
                {"sequence": sequence},
            )


def load_database(
    url: URL, revision: str, files: dict[str, Path], force: bool = False
) -> dict[str, int]:
    """Replace the rows of the database at `url` with the dump `files` ({table: file})
    made at schema `revision`; returns rows per table.  See the module documentation."""
    from alembic import command

    known = revisions()
    engine = _engine(url, "BEGIN IMMEDIATE")
    counts: dict[str, int] = {}
    try:
        with engine.connect() as connection, connection.begin():
            current = _revision(connection)
            if current is not None and current not in known:
                raise BackupError(
                    f"database {redacted(url)} is at schema revision {current}, unknown to "
                    "this version: restore with the version that upgraded it"
                )
            tables = _tables(connection, files)
            held = {t.name: n for t in tables if (n := _count(connection, t))}
            if held and not force:
                where = ", ".join(f"{name}: {count}" for name, count in held.items())
                raise BackupError(
                    f"database {redacted(url)} is not empty (rows in {where}): restore into "
                    "an empty database, or add --force to replace everything in it"
                )
            _delete_all(connection, tables)
            if current is None or known.index(current) < known.index(revision):
                command.upgrade(_config(connection), revision)
            elif known.index(current) > known.index(revision):
                command.downgrade(_config(connection), revision)
            tables = _tables(connection, files)
            expected = {table.name for table in tables}
            if set(files) != expected:
                missing = ", ".join(sorted(expected - set(files))) or "none"
                extra = ", ".join(sorted(set(files) - expected)) or "none"
                raise BackupError(
                    f"the archive's tables do not match schema revision {revision} "
                    f"(missing: {missing}; unknown: {extra})"
                )
            for table in tables:
                rows = _parents_first(table, list(_rows(table, files[table.name])))
                for start in range(0, len(rows), INSERT_CHUNK):
                    connection.execute(table.insert(), rows[start : start + INSERT_CHUNK])
                counts[table.name] = len(rows)
            command.upgrade(_config(connection), "head")
            if url.get_backend_name() == "postgresql":
                _reset_sequences(connection, _tables(connection, files))
    except SQLAlchemyError as exc:
        raise _failure(url, exc) from exc
    finally:
        engine.dispose()
    return counts


def _count(connection: Connection, table: sa.Table) -> int:
    return int(connection.execute(select(func.count()).select_from(table)).scalar_one())
