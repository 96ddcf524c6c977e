from __future__ import annotations

from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, inspect, select, text

from tests.support.fakeapi import FakeRegistry
from tests.support.postgres import PostgresServer, upgrade_to_head
from tests.support.smtp import SmtpServer
from tests.support.world import mg_world
from watcher.cli import cli

pytest_plugins = ["tests.support.services"]

# A test is `slow` when it starts a real process: PostgreSQL, Chromium, the daemon, a command, a build.
# `pytest -m "not slow"` is the quick loop: SQLite and in-process servers only.
BACKENDS = ("sqlite", pytest.param("postgresql", marks=pytest.mark.slow))
SLOW_FIXTURES = {"postgres", "pg_database", "pg_url", "browser"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_backends` run once on SQLite and once on a real PostgreSQL server."""
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_backends"):
        metafunc.parametrize("backend", BACKENDS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def measured(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Notes a measurement (how long the daemon took to stop, say) for the summary at the end of the run."""
    return lambda text: request.node.user_properties.append(("measured", text))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    notes = [value for report in terminalreporter.stats.get("passed", [])
             for name, value in getattr(report, "user_properties", ()) if name == "measured"]  # fmt: skip
    if notes:
        terminalreporter.section("measured")
        for note in notes:
            terminalreporter.write_line(note)


@pytest.fixture
def backend() -> str:
    return "sqlite"


@dataclass(frozen=True)
class ScratchDatabase:
    """The database a test's config points at, and ways to look inside it."""

    backend: str
    url: str  # as written in the config
    folder: Path

    @property
    def path(self) -> Path:
        """The SQLite file (SQLite only)."""
        assert self.backend == "sqlite"
        return self.folder / "watcher.db"

    @property
    def engine_url(self) -> str:
        return f"sqlite:///{self.path}" if self.backend == "sqlite" else self.url

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        engine = create_engine(self.engine_url)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql), params)]
        finally:
            engine.dispose()

    def execute(self, sql: str, **params: Any) -> None:
        engine = create_engine(self.engine_url)
        try:
            with engine.begin() as conn:
                conn.execute(text(sql), params)
        finally:
            engine.dispose()

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every data table (not the sync-run log), to compare before/after."""
        from sqlmodel import SQLModel

        import watcher.models  # noqa: F401  (the tables, to read values through their types)

        engine = create_engine(self.engine_url)
        try:
            with engine.connect() as conn:
                tables = [t for t in inspect(conn).get_table_names() if t != "syncrun"]
                found = {}
                for name in tables:
                    model = SQLModel.metadata.tables.get(name)
                    query = select(model) if model is not None else text(f"select * from {name}")
                    found[name] = sorted((tuple(_plain(v) for v in r) for r in conn.execute(query)), key=repr)
                return found
        finally:
            engine.dispose()

    def holds(self, secret: bytes) -> bool:
        """Whether `secret` appears anywhere in the stored data."""
        if self.backend == "sqlite":
            return any(secret in p.read_bytes() for p in self.folder.glob("watcher.db*"))
        return secret.decode() in repr(self.dump())


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value


CURRENT_DATABASE: ContextVar[ScratchDatabase | None] = ContextVar("CURRENT_DATABASE", default=None)


@pytest.fixture(scope="session")
def pg_head_template(postgres: PostgresServer) -> str:
    """A database upgraded to the head revision once per session (0.1 s of Alembic): tests get copies of it."""
    name = postgres.create_database()
    upgrade_to_head(postgres.url(name))
    return name


@pytest.fixture(autouse=True)
def database(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> Iterator[ScratchDatabase]:
    """This test's database: a SQLite file in tmp_path, or a fresh database on the test PostgreSQL server.
    `write_config` points configs at it."""
    if backend == "sqlite":
        found = ScratchDatabase("sqlite", "sqlite:///watcher.db", tmp_path)
    elif request.node.get_closest_marker("empty_database"):
        found = ScratchDatabase("postgresql", request.getfixturevalue("pg_url"), tmp_path)
    else:  # a copy of the session's upgraded database: what an operator does once, `watcher db upgrade`
        server = request.getfixturevalue("postgres")
        name = server.create_database(template=request.getfixturevalue("pg_head_template"))
        request.addfinalizer(lambda: server.drop_database(name))
        found = ScratchDatabase("postgresql", server.url(name), tmp_path)
    token = CURRENT_DATABASE.set(found)
    yield found
    CURRENT_DATABASE.reset(token)


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    with FakeRegistry(mg_world().values()) as registry:
        yield registry


WATCHES = """
[[watch]]
name = "mg-azathioprine"
nct_ids = ["NCT01727193"]
condition = "myasthenia gravis"
intervention = "azathioprine"
"""


def write_config(folder: Path, base_url: str, watches: str = WATCHES, extra: str = "", ctgov: str = "") -> Path:
    """A config for the fake registry at `base_url`, on this test's database (see `database`);
    `ctgov` adds lines to its [ctgov] table."""
    current = CURRENT_DATABASE.get()
    url = current.url if current is not None and current.folder == folder else "sqlite:///watcher.db"
    path = folder / "watcher.toml"
    path.write_text(
        f"""
[ctgov]
base_url = "{base_url}"
retries = 2
backoff_s = 0
timeout_s = 5
{ctgov}
[database]
url = "{url}"
{watches}
{extra}
"""
    )
    return path


@pytest.fixture
def config_file(tmp_path: Path, fake: FakeRegistry) -> Path:
    return write_config(tmp_path, fake.base_url)


class Runner:
    def __init__(self, config: Path) -> None:
        self.config = config

    def __call__(self, *args: str, code: int | None = 0, env: dict[str, str] | None = None) -> Result:
        result = CliRunner().invoke(
            cli, ["--config", str(self.config), *args], env=env, catch_exceptions=False, prog_name="watcher"
        )
        if code is not None:
            assert result.exit_code == code, (result.exit_code, result.output)
        return result


@pytest.fixture
def run(config_file: Path) -> Runner:
    return Runner(config_file)


def dump_db(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every data row of the SQLite file at `path`."""
    return ScratchDatabase("sqlite", "sqlite:///watcher.db", path.parent).dump()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


def mail_config(
    smtp_port: int | None, subscribers: str, security: str = "none", extra: str = "", mail_extra: str = ""
) -> str:
    smtp = (
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsecurity = "{security}"\ntimeout_s = 5\n{extra}'
        if smtp_port
        else ""
    )
    return f'[mail]\nfrom = "Trial Watcher <watcher@example.org>"\n{mail_extra}\n{smtp}\n{subscribers}'


class FakeClock:
    """Monotonic time for the registry's pacing: it moves only when the code waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False


@pytest.fixture
def paced_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The internal API's one-request-a-second pace on a fake clock: nothing really waits."""
    from watcher import registry

    clock = FakeClock()
    monkeypatch.setattr(
        registry, "int_pacer", lambda cancel=None: registry.Pacer(clock=clock, wait=clock.wait, cancel=cancel)
    )
    return clock
