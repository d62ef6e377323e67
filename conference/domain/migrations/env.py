"""Alembic environment: the connection comes from `conference.domain.db.upgrade`.

Developers write a new revision with the `alembic` command and a throwaway config, e.g.
`printf '[alembic]\nscript_location = conference/domain/migrations\nsqlalchemy.url =
sqlite:///data/conference.db\n' > /tmp/a.ini && alembic -c /tmp/a.ini revision --autogenerate
-m "..."` (then rename the file to vNNNN_name.py); the URL then comes from `sqlalchemy.url`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from conference.domain.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # ALTER TABLE on SQLite goes through a table copy
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"),
            target_metadata=target_metadata,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url for the migrations")
    with create_engine(url).begin() as connection:
        _run(connection)


run()
