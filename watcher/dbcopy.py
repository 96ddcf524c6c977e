"""`watcher db copy`: every table of one database into another, empty one (SQLite → PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, Table, func, insert, inspect, select, text
from sqlalchemy import exc as sa_exc
from sqlmodel import SQLModel

from watcher import db, schema
from watcher.db import Backend, Database
from watcher.errors import StoreError
from watcher.store import Store

BATCH = 500

Progress = Callable[[str, int], None]  # (table, rows copied so far)


@dataclass
class CopyReport:
    source: str
    target: str
    tables: list[tuple[str, int]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.tables)


def _tables() -> list[Table]:
    return list(SQLModel.metadata.sorted_tables)  # parents before children


def _refuse_non_empty(conn: Connection, target: Database) -> None:
    present = set(inspect(conn).get_table_names())
    for table in _tables():
        if table.name in present:
            count = conn.execute(select(func.count()).select_from(table)).scalar_one()
            if count:
                raise StoreError(
                    f"{target.display}: the target is not empty ({count:,} rows in {table.name}); "
                    "copy only into an empty database"
                )


def _copy_table(source: Connection, target: Connection, table: Table, progress: Progress | None) -> int:
    copied = 0
    order = list(table.primary_key.columns)
    result = source.execution_options(yield_per=BATCH).execute(select(table).order_by(*order))
    for rows in result.partitions(BATCH):
        target.execute(insert(table), [row._asdict() for row in rows])
        copied += len(rows)
        if progress:
            progress(table.name, copied)
    return copied


def _reset_sequences(conn: Connection) -> None:
    """After rows were copied with their ids, new rows must get ids after them."""
    for table in _tables():
        for column in table.primary_key.columns:
            sequence = conn.execute(
                text("SELECT pg_get_serial_sequence(:table, :column)"), {"table": table.name, "column": column.name}
            ).scalar()
            if sequence:
                conn.execute(
                    text(f"SELECT setval(:sequence, COALESCE(MAX({column.name}), 0) + 1, false) FROM {table.name}"),
                    {"sequence": sequence},
                )


def copy_database(source: Store, target: Database, progress: Progress | None = None) -> CopyReport:
    """Copy everything from `source` into the empty `target`, in one transaction on the target,
    with the row counts of every table compared before it commits."""
    if target.url == source.database.url:
        raise StoreError("the target is the database in use; give another one")
    started = time.monotonic()
    report = CopyReport(source.database.display, target.display)
    engine = db.create(target)
    try:
        with engine.connect() as conn:
            found = schema.read_status(conn, target.backend)
            if found.state is schema.SchemaState.NEWER:
                raise schema.newer_error(target, found)
            _refuse_non_empty(conn, target)
        schema.upgrade(engine, target, backup=False)  # the schema first (its own transaction)
        with source.read() as reading, engine.connect() as conn:
            conn.execution_options(write_lock=True)
            with conn.begin():
                db.begin_write(conn, target.backend)
                _refuse_non_empty(conn, target)  # nobody wrote in between
                source_conn = reading.connection()
                for table in _tables():
                    report.tables.append((table.name, _copy_table(source_conn, conn, table, progress)))
                if target.backend is Backend.POSTGRESQL:
                    _reset_sequences(conn)
                for table in _tables():
                    there = conn.execute(select(func.count()).select_from(table)).scalar_one()
                    here = source_conn.execute(select(func.count()).select_from(table)).scalar_one()
                    if there != here:
                        raise StoreError(
                            f"{table.name}: {here:,} rows here but {there:,} in the target; nothing was copied"
                        )
    except sa_exc.DBAPIError as exc:
        raise StoreError(f"{target.display}: {db.describe_error(target, exc)}; nothing was copied") from None
    finally:
        engine.dispose()
    report.seconds = time.monotonic() - started
    return report
