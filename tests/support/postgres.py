"""A throwaway PostgreSQL cluster for tests: its own data folder and Unix socket in a temp folder, nothing on TCP.

initdb and postgres refuse to run as root, so when the tests run as root (as CI does) the server runs as an
unprivileged system account, created on first use. The superuser connects without a password; the `watcher`
role needs its password (SCRAM), so tests can exercise password authentication too.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import psycopg

SUPERUSER = "postgres"
APP_ROLE = "watcher"
SERVER_ACCOUNT = "watcher-test"  # runs the server when the tests run as root
FALLBACK_ACCOUNT = "nobody"
PORT = 5432  # only names the socket file (.s.PGSQL.5432): the server opens no TCP port
START_TIMEOUT_S = 60
DISCONNECT_TIMEOUT_S = 10
SETTINGS = {
    "listen_addresses": "''",
    "port": str(PORT),
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
# First match wins: the app role must give its password; the rest are trusted, as in any throwaway test cluster.
HBA = f"local all {APP_ROLE} scram-sha-256\nlocal all all trust\n"
# The cluster goes to memory when there is room: on this kind of disk CREATE DATABASE took 15-250 ms, in tmpfs 10 ms.
TMPFS = Path("/dev/shm")
TMPFS_MIN_FREE = 1 << 30
INSTALL_HINT = "install PostgreSQL's server (as root: apt-get install postgresql, or run .ci/install-services)"


def upgrade_to_head(url: str) -> None:
    """Bring the database at `url` to the head revision, as `watcher db upgrade` would."""
    from watcher import db, schema

    target = db.parse_database(url)
    with db.opened(target) as engine:
        schema.upgrade(engine, target)


class PostgresUnavailable(RuntimeError):
    """The cluster cannot be started here; the message says why."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def find_bindir() -> Path:
    """The folder with initdb, postgres and pg_ctl: $PG_BINDIR, pg_config's, Debian's newest, or on PATH."""
    candidates: list[Path] = []
    if env := os.environ.get("PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out:
            candidates.append(Path(out))
    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(debian, key=lambda p: int(p.parent.name), reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "postgres", "pg_ctl")):
            return folder
    raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, postgres, pg_ctl) found; {INSTALL_HINT}")


def base_dir() -> Path:
    """Where the cluster's folder goes: tmpfs if it has room (Docker gives 64 MiB by default), else /tmp."""
    try:
        stat = os.statvfs(TMPFS)
    except OSError:
        return Path("/tmp")
    world_writable = TMPFS.stat().st_mode & 0o1777 == 0o1777
    return TMPFS if world_writable and stat.f_bavail * stat.f_frsize >= TMPFS_MIN_FREE else Path("/tmp")


def _lookup(name: str) -> Account | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(name, entry.pw_uid, entry.pw_gid)


def server_account() -> Account | None:
    """Who runs the server: None for ourselves; as root an unprivileged account, since initdb refuses root."""
    if os.geteuid() != 0:
        return None
    if account := _lookup(SERVER_ACCOUNT):
        return account
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    # Another test process may create it at the same moment, so look again whatever useradd says.
    subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_ACCOUNT],
        capture_output=True,
        check=False,
    )
    account = _lookup(SERVER_ACCOUNT) or _lookup(FALLBACK_ACCOUNT)
    if account is None:
        raise PostgresUnavailable(f"running as root and could not create the account {SERVER_ACCOUNT!r} to run initdb")
    return account


class PostgresServer:
    """One cluster: start(), create_database() per test, url() to connect, stop() removes everything."""

    def __init__(self) -> None:
        self.folder: Path | None = None  # holds the data folder, the log and the socket
        self.account: Account | None = None
        self.bindir: Path | None = None
        self.app_role = APP_ROLE
        self.app_password = secrets.token_hex(12)
        self.superuser = SUPERUSER
        self._admin: psycopg.Connection[Any] | None = None

    @property
    def socket_dir(self) -> Path:
        if self.folder is None:
            raise RuntimeError("the PostgreSQL server is not started")
        return self.folder

    @property
    def data_dir(self) -> Path:
        return self.socket_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.socket_dir / "server.log"

    def start(self) -> PostgresServer:
        try:
            import psycopg  # checked first: the cluster is no use without it
        except ImportError as exc:
            raise PostgresUnavailable(f"psycopg is not installed ({exc}); pip install -e '.[postgres]'") from exc
        self.bindir = find_bindir()
        self.account = server_account()
        # A short path (socket paths are limited to ~107 bytes) whose parents the server account can reach: not
        # pytest's tmp_path, which sits in a folder only root may enter.
        self.folder = Path(tempfile.mkdtemp(prefix="wt-pg-", dir=base_dir()))
        try:
            self.folder.chmod(0o755)
            if self.account:
                os.chown(self.folder, self.account.uid, self.account.gid)
            self._initdb()
            self._configure()
            self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log_file))
            self._admin = self._connect("postgres", self.superuser)
            self._create_app_role()
        except (OSError, subprocess.SubprocessError, psycopg.Error) as exc:
            self.stop()
            raise PostgresUnavailable(f"PostgreSQL did not start: {exc}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self.folder is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            self._run(self._tool("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "immediate", "-w")
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def url(self, dbname: str, user: str | None = None, password: str | None = None) -> str:
        """An SQLAlchemy URL (psycopg 3) over the socket; the superuser's unless another user is given."""
        auth = quote(user or self.superuser, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql+psycopg://{auth}@/{quote(dbname, safe='')}?host={self.socket_dir}"

    def app_url(self, dbname: str) -> str:
        """The URL for the password-protected `watcher` role."""
        return self.url(dbname, self.app_role, self.app_password)

    def create_database(self, name: str | None = None, owner: str = APP_ROLE, template: str = "template0") -> str:
        """A new empty database, owned by the app role so it can create tables; returns its name."""
        from psycopg import sql

        name = name or f"test_{secrets.token_hex(6)}"
        # FILE_COPY: its checkpoints cost little with fsync off, and it skips WAL-logging the copy (as fast or up to 3x
        # faster than WAL_LOG, measured here).
        self._execute(
            sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(owner), sql.Identifier(template)
            )
        )
        return name

    def drop_database(self, name: str) -> None:
        """Drops it even if connections are still open (an engine's pool, say)."""
        from psycopg import sql

        self._disconnect_all(name)
        self._execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _disconnect_all(self, dbname: str) -> None:
        # DROP ... WITH (FORCE) alone waits in steps of 100 ms for the sessions it ends; ending them first and
        # watching them go is faster.
        assert self._admin is not None
        self._admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [dbname])
        deadline = time.monotonic() + DISCONNECT_TIMEOUT_S
        while time.monotonic() < deadline:
            row = self._admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [dbname]).fetchone()
            if not row or row[0] == 0:
                return
            time.sleep(0.002)

    def _execute(self, statement: Any) -> None:
        if self._admin is None:
            raise RuntimeError("the PostgreSQL server is not started")
        self._admin.execute(statement)

    def _connect(self, dbname: str, user: str, password: str | None = None) -> psycopg.Connection[Any]:
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir), port=PORT, dbname=dbname, user=user, password=password, autocommit=True
        )

    def _create_app_role(self) -> None:
        from psycopg import sql

        self._execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(self.app_role), sql.Literal(self.app_password)
            )
        )

    def _initdb(self) -> None:
        self._run_checked(
            self._tool("initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.superuser,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )

    def _configure(self) -> None:
        settings = {**SETTINGS, "unix_socket_directories": f"'{self.socket_dir}'"}
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        (self.data_dir / "pg_hba.conf").write_text(HBA)

    def _pg_ctl(self, *args: str) -> None:
        self._run_checked(self._tool("pg_ctl"), "-D", str(self.data_dir), *args)

    def _tool(self, name: str) -> str:
        assert self.bindir is not None
        return str(self.bindir / name)

    def _run_checked(self, *args: str) -> None:
        result = self._run(*args)
        if result.returncode != 0:
            log = ""
            with contextlib.suppress(OSError):
                log = self.log_file.read_text()[-2000:]
            raise PostgresUnavailable(
                f"{Path(args[0]).name} failed (exit {result.returncode}): {result.stderr.strip()}\n{log}".strip()
            )

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.account:
            kwargs = {"user": self.account.uid, "group": self.account.gid, "extra_groups": []}
        # cwd and a bare environment the server account can use: root's home and cwd may be closed to it.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        return subprocess.run(
            args,
            cwd=self.socket_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 30,
            check=False,
            **kwargs,
        )
