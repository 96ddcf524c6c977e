from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.support.fakeapi import FakeRegistry
from tests.support.smtp import SmtpServer
from tests.support.world import mg_world
from watcher.cli import cli

pytest_plugins = ["tests.support.services"]


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


def write_config(folder: Path, base_url: str, watches: str = WATCHES, extra: str = "") -> Path:
    path = folder / "watcher.toml"
    path.write_text(
        f"""
[ctgov]
base_url = "{base_url}"
retries = 2
backoff_s = 0
timeout_s = 5

[database]
url = "sqlite:///watcher.db"
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
        result = CliRunner().invoke(cli, ["--config", str(self.config), *args], env=env, catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, (result.exit_code, result.output)
        return result


@pytest.fixture
def run(config_file: Path) -> Runner:
    return Runner(config_file)


def dump_db(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every data table (not the sync-run log), to compare before/after."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table' and name != 'syncrun'")]
        return {t: sorted(conn.execute(f"select * from {t}").fetchall(), key=repr) for t in tables}
    finally:
        conn.close()


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
