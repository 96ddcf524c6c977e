"""The service harness itself: a throwaway PostgreSQL reached over its socket, and Chromium on a local page."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from tests.support.browser import DESKTOP_WIDTH, PHONE_WIDTH, open_page, screenshot, static_server
from tests.support.postgres import PostgresServer
from tests.support.services import unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.mark.parametrize("ci", ["", "false"])
def test_a_missing_service_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL unavailable: no initdb"):
        unavailable("PostgreSQL", "no initdb")


def test_a_missing_service_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"PostgreSQL unavailable: no initdb \(CI=true"):
        unavailable("PostgreSQL", "no initdb")


def query(url: str, *statements: str) -> list[tuple[Any, ...]]:
    """Runs the statements in one transaction; returns the last one's rows, if it has any."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            result = None
            for statement in statements:
                result = conn.execute(sa.text(statement))
            return [tuple(row) for row in result] if result is not None and result.returns_rows else []
    finally:
        engine.dispose()


def test_a_fresh_database_stores_and_returns_rows(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+psycopg://postgres@/test_")
    query(pg_url, "CREATE TABLE trial (nct_id text PRIMARY KEY, title text NOT NULL)")
    query(pg_url, "INSERT INTO trial VALUES ('NCT01727193', 'Azathioprine in MG'), ('NCT00000001', 'Other')")

    rows = query(pg_url, "SELECT nct_id, title FROM trial ORDER BY nct_id")

    assert rows == [("NCT00000001", "Other"), ("NCT01727193", "Azathioprine in MG")]


def test_the_server_listens_on_its_socket_only(postgres: PostgresServer, pg_url: str) -> None:
    (row,) = query(pg_url, "SELECT current_setting('listen_addresses'), current_setting('fsync')")
    assert row == ("", "off")
    assert (postgres.socket_dir / ".s.PGSQL.5432").is_socket()
    assert len(str(postgres.socket_dir / ".s.PGSQL.5432")) < 100


def test_two_databases_do_not_share_tables(postgres: PostgresServer, pg_url: str) -> None:
    other = postgres.create_database()
    try:
        query(pg_url, "CREATE TABLE trial (nct_id text)", "INSERT INTO trial VALUES ('NCT01727193')")

        assert query(postgres.url(other), "SELECT to_regclass('trial') IS NULL")[0][0] is True
        assert query(pg_url, "SELECT count(*) FROM trial")[0][0] == 1
    finally:
        postgres.drop_database(other)


def test_the_watcher_role_logs_in_with_its_password(postgres: PostgresServer, pg_database: str) -> None:
    url = postgres.app_url(pg_database)
    assert url.startswith(f"postgresql+psycopg://watcher:{postgres.app_password}@/")

    # It owns the test database, so it can create tables there.
    rows = query(url, "CREATE TABLE t (x int)", "INSERT INTO t VALUES (1)", "SELECT current_user, count(*) FROM t")
    assert rows == [("watcher", 1)]


@pytest.mark.parametrize("password", ["wrong", None])
def test_the_watcher_role_is_refused_without_its_password(
    postgres: PostgresServer, pg_database: str, password: str | None
) -> None:
    url = postgres.url(pg_database, postgres.app_role, password)
    with pytest.raises(sa.exc.OperationalError, match="password"):
        query(url, "SELECT 1")


PAGE = """<!doctype html>
<html><head><meta name="viewport" content="width=device-width, initial-scale=1"><title>harness</title></head>
<body style="font-family: sans-serif; margin: 2rem">
  <h1 id="status">Not clicked yet</h1>
  <button id="go" onclick="document.getElementById('status').textContent = 'Clicked'">Click me</button>
</body></html>
"""


def png_width(path: Path) -> int:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int(struct.unpack(">I", header[16:20])[0])


def test_chromium_clicks_a_button_on_a_local_page(browser: Browser, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(PAGE)

    with static_server(site) as base_url, open_page(browser, base_url, PHONE_WIDTH) as page:
        assert page.text_content("#status") == "Not clicked yet"
        page.click("#go")
        assert page.text_content("#status") == "Clicked"


@pytest.mark.parametrize("width", [PHONE_WIDTH, DESKTOP_WIDTH])
def test_chromium_saves_screenshots_at_phone_and_desktop_widths(browser: Browser, tmp_path: Path, width: int) -> None:
    (tmp_path / "index.html").write_text(PAGE)

    with static_server(tmp_path) as base_url:
        shot = screenshot(browser, base_url, width, tmp_path / f"page-{width}.png")

    assert png_width(shot) == width
