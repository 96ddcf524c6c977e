"""The database schema's version: Alembic migrations shipped inside the package, run in-process.

No alembic.ini is needed at run time: the script folder is `watcher/migrations`, found next to
this module in a checkout or an installed wheel. A database made by trial watcher 0.1 (no
`alembic_version` table, `PRAGMA user_version = 1`) is adopted as revision 0001. Databases
migrated here carry `PRAGMA user_version = 2`, so that 0.1 refuses them instead of misreading.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, inspect, text

from watcher.db import Backend, Database, advisory_key, begin_write
from watcher.errors import StoreError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
LEGACY_REVISION = "0001"
LEGACY_USER_VERSION = 1  # trial watcher 0.1 wrote this and nothing else
MIGRATED_USER_VERSION = 2  # anything above 1 makes 0.1 refuse the file
UPGRADE_KEY = advisory_key("upgrade")


class SchemaState(StrEnum):
    EMPTY = "empty"  # no tables yet
    LEGACY = "legacy"  # made by trial watcher 0.1, before migrations
    BEHIND = "behind"  # migrations to run
    CURRENT = "current"
    NEWER = "newer"  # written by a newer trial watcher


@dataclass(frozen=True)
class Revision:
    id: str
    title: str


@dataclass(frozen=True)
class SchemaStatus:
    state: SchemaState
    current: str | None
    head: str
    pending: list[Revision] = field(default_factory=list)


@cache
def _alembic() -> tuple[AlembicConfig, ScriptDirectory]:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config, ScriptDirectory.from_config(config)


def head() -> str:
    revision = _alembic()[1].get_current_head()
    assert revision is not None
    return revision


def _pending(script: ScriptDirectory, current: str | None) -> list[Revision]:
    revisions = list(script.iterate_revisions(head(), current))
    return [Revision(r.revision, (r.doc or "").strip().splitlines()[0] if r.doc else "") for r in reversed(revisions)]


def read_status(conn: Connection, backend: Backend) -> SchemaStatus:
    script = _alembic()[1]
    current = MigrationContext.configure(conn).get_current_revision()
    if current is None:
        tables = set(inspect(conn).get_table_names())
        if not tables or tables == {"alembic_version"}:
            return SchemaStatus(SchemaState.EMPTY, None, head(), _pending(script, None))
        user_version = conn.exec_driver_sql("PRAGMA user_version").scalar() if backend is Backend.SQLITE else 0
        if user_version == LEGACY_USER_VERSION:
            return SchemaStatus(SchemaState.LEGACY, LEGACY_REVISION, head(), _pending(script, LEGACY_REVISION))
        if backend is Backend.SQLITE and (user_version or 0) > LEGACY_USER_VERSION:
            return SchemaStatus(SchemaState.NEWER, f"user_version {user_version}", head())
        raise StoreError("the database holds tables that are not trial watcher's (no schema version found)")
    try:
        script.get_revision(current)
    except CommandError:
        return SchemaStatus(SchemaState.NEWER, current, head())
    if current == head():
        return SchemaStatus(SchemaState.CURRENT, current, head())
    return SchemaStatus(SchemaState.BEHIND, current, head(), _pending(script, current))


def status(engine: Engine, database: Database) -> SchemaStatus:
    with engine.connect() as conn:
        return read_status(conn, database.backend)


def newer_error(database: Database, found: SchemaStatus) -> StoreError:
    return StoreError(
        f"{database.display}: this database was written by a newer trial watcher (revision {found.current}; "
        f"this one knows up to {found.head}); upgrade trial watcher to use it"
    )


def backup_path(database: Database, revision: str) -> Path:
    return database.path.with_name(f"{database.path.name}.bak-{revision}")


def _backup(database: Database, revision: str) -> Path:
    """A consistent copy of the SQLite file (SQLite's backup API: safe while others use WAL)."""
    target = backup_path(database, revision)
    source = sqlite3.connect(database.path)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()
    return target


@dataclass(frozen=True)
class UpgradeReport:
    before: SchemaStatus
    after: str
    backup: Path | None

    @property
    def changed(self) -> bool:
        return self.after != self.before.current


def upgrade(engine: Engine, database: Database, backup: bool = True, target: str = "head") -> UpgradeReport:
    """Bring the database to the head revision (or `target`) in one transaction (a backup first on SQLite).

    On PostgreSQL an advisory lock makes a second upgrade wait for the first, then find
    nothing left to do.
    """
    sqlite = database.backend is Backend.SQLITE
    with engine.connect() as conn:
        if sqlite:  # tables may be copied and renamed; this PRAGMA works only outside a transaction
            _pragma(conn, "foreign_keys=OFF")
        try:
            conn = conn.execution_options(write_lock=True)
            with conn.begin():
                if not sqlite:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_KEY})
                begin_write(conn, database.backend)
                before = read_status(conn, database.backend)
                if before.state is SchemaState.NEWER:
                    raise newer_error(database, before)
                if before.state is SchemaState.CURRENT or before.current == target:
                    return UpgradeReport(before, before.current or before.head, None)
                saved = _backup(database, before.current) if sqlite and backup and before.current else None
                config = _alembic()[0]
                config.attributes["connection"] = conn
                try:
                    if before.state is SchemaState.LEGACY:
                        command.stamp(config, LEGACY_REVISION)
                    command.upgrade(config, target)
                finally:
                    config.attributes.pop("connection", None)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise StoreError(f"{database.display}: the upgrade would break references ({broken[:3]})")
                    conn.exec_driver_sql(f"PRAGMA user_version={MIGRATED_USER_VERSION}")
        finally:
            if sqlite:
                _pragma(conn, "foreign_keys=ON")
    if before.current:
        log.warning(
            "upgraded the database %s from revision %s to %s%s",
            database.display, before.current, target if target != "head" else before.head,
            f" (backup: {saved})" if saved else "",
        )  # fmt: skip
    after = before.head if target == "head" else target
    return UpgradeReport(before, after, saved)


def _pragma(conn: Connection, setting: str) -> None:
    """A PRAGMA on the driver's connection itself, outside any transaction SQLAlchemy would begin."""
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute(f"PRAGMA {setting}")


def behind_error(database: Database, found: SchemaStatus) -> StoreError:
    if found.state is SchemaState.EMPTY:
        return StoreError(
            f"{database.display}: the database has no trial watcher tables yet; run `watcher db upgrade` to create them"
        )
    return StoreError(
        f"{database.display}: the database is at revision {found.current} and this trial watcher needs "
        f"{found.head}; run `watcher db upgrade`"
    )


def ensure(engine: Engine, database: Database, writing: bool) -> None:
    """Make sure the schema is the one this code knows, upgrading where that is the rule.

    SQLite: a new file is created at the head revision; a writing command upgrades an older
    database (after a backup), a reading command asks for `watcher db upgrade`. PostgreSQL:
    every command refuses a database that is behind and names `watcher db upgrade`.
    """
    found = status(engine, database)
    if found.state is SchemaState.CURRENT:
        return
    if found.state is SchemaState.NEWER:
        raise newer_error(database, found)
    sqlite = database.backend is Backend.SQLITE
    if sqlite and (found.state is SchemaState.EMPTY or writing):
        upgrade(engine, database)
        return
    raise behind_error(database, found)
