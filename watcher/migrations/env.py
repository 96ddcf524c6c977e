"""Alembic's entry point. Trial watcher runs it in-process with its own connection
(`config.attributes["connection"]`), so no alembic.ini is needed at run time. A developer
can also run the `alembic` command with `-x url=sqlite:///some.db` (see README)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlmodel import SQLModel

import watcher.models  # noqa: F401  (registers the tables)


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database: alembic -x url=sqlite:///watcher.db ...")
    with create_engine(url).connect() as conn:
        run(conn)
        conn.commit()
