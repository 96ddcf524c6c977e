"""Where the data lives and how to reach it: SQLite or PostgreSQL, engines, and locks between processes.

SQLite runs in WAL mode with a busy timeout, so readers never wait for a writer; a writer
takes the write lock up front (BEGIN IMMEDIATE). On PostgreSQL a writer takes one
transaction-level advisory lock instead, so writers queue exactly as they do on SQLite
and the code above this module never has to know which one it runs on.

Locks between processes (one daemon, one sync at a time) are OS file locks next to a
SQLite file, and session-level advisory locks on PostgreSQL; both die with their process.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url, text
from sqlalchemy import exc as sa_exc

from watcher.config import Config, resolve_sqlite_path
from watcher.errors import ConfigError, StoreError

BUSY_TIMEOUT_S = 120


class Backend(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


@dataclass(frozen=True)
class Database:
    """A database trial watcher uses: its URL (never with a password in it) and where its password is."""

    url: URL
    password_env: str | None = None

    @property
    def backend(self) -> Backend:
        return Backend.SQLITE if self.url.get_backend_name() == "sqlite" else Backend.POSTGRESQL

    @property
    def path(self) -> Path:
        """The SQLite file (only for SQLite)."""
        assert self.backend is Backend.SQLITE and self.url.database
        return Path(self.url.database)

    @property
    def display(self) -> str:
        """How to name it to a person: the file, or the URL without any password."""
        if self.backend is Backend.SQLITE:
            return str(self.path)
        return self.url.render_as_string(hide_password=True)

    def connect_url(self) -> URL:
        """The URL to connect with: the password, if any, read from the environment now."""
        if not self.password_env:
            return self.url
        password = os.environ.get(self.password_env)
        if not password:
            raise ConfigError(f"[database] password_env: environment variable {self.password_env} is not set")
        return self.url.set(password=password)


def sqlite_database(path: Path) -> Database:
    return Database(URL.create("sqlite", database=str(path)))


def parse_database(url: str, password_env: str | None = None, folder: Path | None = None) -> Database:
    """A database from a URL as written in the config or on the command line."""
    if url.startswith("sqlite:"):
        return sqlite_database(resolve_sqlite_path(url, folder or Path.cwd(), "the database URL"))
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise ConfigError(
            f'"{url}" is not a database URL (sqlite:///FILE or postgresql+psycopg://USER@HOST/DB)'
        ) from None
    if parsed.password is not None:
        raise ConfigError("a database URL must not hold the password: put it in an environment variable")
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername != "postgresql+psycopg":
        raise ConfigError(f'"{parsed.drivername}" databases are not supported (use SQLite or PostgreSQL)')
    return Database(parsed, password_env)


def database_of(config: Config) -> Database:
    path = config.database_path
    if path is not None:
        return sqlite_database(path)
    return parse_database(config.database.url, config.database.password_env)


# --- engines -----------------------------------------------------------------------------


def create(database: Database) -> Engine:
    if database.backend is Backend.SQLITE:
        return _sqlite_engine(database.path)
    return _postgres_engine(database)


@contextmanager
def opened(database: Database) -> Iterator[Engine]:
    """An engine for one piece of work on a database (not the store's own), disposed after it."""
    engine = create(database)
    try:
        yield engine
    finally:
        engine.dispose()


def _sqlite_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" hook below emits BEGIN
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write_lock") else "BEGIN")

    return engine


def _postgres_engine(database: Database) -> Engine:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigError("PostgreSQL needs the psycopg driver: pip install 'trial-watcher[postgres]'") from None
    connect_args = {"connect_timeout": 10, "application_name": "trial-watcher"}
    return create_engine(database.connect_url(), connect_args=connect_args, pool_pre_ping=True)


def advisory_key(name: str) -> int:
    """A stable 64-bit key for a PostgreSQL advisory lock named `name`."""
    return int.from_bytes(hashlib.sha256(f"trial-watcher:{name}".encode()).digest()[:8], "big", signed=True)


WRITER_KEY = advisory_key("writer")


def begin_write(conn: Connection, backend: Backend) -> None:
    """Called at the start of every write transaction: writers queue, as on SQLite."""
    if backend is Backend.POSTGRESQL:
        conn.execute(text(f"SET LOCAL lock_timeout = '{BUSY_TIMEOUT_S}s'"))
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITER_KEY})


def is_busy(error: sa_exc.DBAPIError) -> bool:
    """The database stayed locked by another writer for too long."""
    text_ = str(error.orig)
    return "database is locked" in text_ or getattr(error.orig, "sqlstate", None) == "55P03"


def describe_error(database: Database, error: sa_exc.DBAPIError) -> str:
    """One line for a database error, never holding a password."""
    first = str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else type(error.orig).__name__
    if database.password_env:
        secret = os.environ.get(database.password_env)
        if secret:
            first = first.replace(secret, "***")
    return first


# --- locks between processes ----------------------------------------------------------------


class LockHeld(StoreError):
    """Another process holds the lock."""


@dataclass
class _FileLock:
    handle: IO[str]

    def release(self) -> None:
        self.handle.close()  # closing releases the lock; the file stays, harmlessly


def _flock(path: Path, wait_s: float) -> _FileLock | None:
    handle = path.open("a+")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return _FileLock(handle)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.05)


@contextmanager
def exclusive(engine: Engine, database: Database, name: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the lock `name` for this database while the block runs; LockHeld if another process
    holds it for longer than `wait_s`. A lock on SQLite named "daemon" is taken on the database
    file itself, so that it holds whatever path (or hard link) the database is reached by."""
    if database.backend is Backend.SQLITE:
        path = database.path if name == "daemon" else database.path.with_name(f"{database.path.name}.{name}.lock")
        if not path.exists() and name == "daemon":
            path.touch()
        lock = _flock(path, wait_s)
        if lock is None:
            raise LockHeld(f"{name} lock on {database.display} is held by another process")
        try:
            yield
        finally:
            lock.release()
        return
    key = advisory_key(name)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        deadline = time.monotonic() + wait_s
        while not conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar():
            if time.monotonic() >= deadline:
                raise LockHeld(f"{name} lock on {database.display} is held by another process")
            time.sleep(0.2)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


class SessionLock:
    """A PostgreSQL session-level advisory lock on a connection of its own (never pooled): held
    until released or until the connection dies, which it does with its process, kill -9 included."""

    def __init__(self, database: Database, name: str) -> None:
        from sqlalchemy.pool import NullPool

        self.key = advisory_key(name)
        self.engine = create_engine(database.connect_url(), poolclass=NullPool, connect_args={"connect_timeout": 10})
        self.conn: Connection | None = None

    def try_acquire(self) -> bool:
        if self.conn is None:
            self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return bool(self.conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}).scalar())

    def alive(self) -> bool:
        """Whether the connection holding the lock still works (the lock dies with it)."""
        try:
            assert self.conn is not None
            self.conn.execute(text("SELECT 1"))
            return True
        except (sa_exc.DBAPIError, AssertionError):
            return False

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()  # ends the session: the lock goes with it
            except sa_exc.DBAPIError:
                pass
            self.conn = None
        self.engine.dispose()


def lock_is_held(engine: Engine, database: Database, name: str) -> bool:
    """Whether some process holds the lock `name` right now (without taking it)."""
    if database.backend is Backend.SQLITE:
        path = database.path if name == "daemon" else database.path.with_name(f"{database.path.name}.{name}.lock")
        if not path.exists():
            return False
        with path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False
    key = advisory_key(name) & 0xFFFFFFFFFFFFFFFF  # as pg_locks shows it: two unsigned 32-bit halves
    query = text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND classid = CAST(:high AS oid) AND objid = CAST(:low AS oid)"
    )
    with engine.connect() as conn:
        return bool(conn.execute(query, {"high": key >> 32, "low": key & 0xFFFFFFFF}).scalar())


def this_process() -> str:
    """Who holds a claim: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def process_alive(holder: str) -> bool | None:
    """Whether the process named by `this_process()` still runs; None when it ran on another host."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
