"""pytest fixtures for the services tests start themselves: PostgreSQL and a headless Chromium.

Where a service cannot start, its tests skip with the reason and how to install it; under CI=true they fail
instead, so CI never passes by skipping them. Registered as a plugin in tests/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NoReturn

import pytest

from tests.support.browser import BrowserUnavailable, ChromiumSession
from tests.support.postgres import PostgresServer, PostgresUnavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(service: str, reason: str) -> NoReturn:
    message = f"{service} unavailable: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: tests that need it must run)", pytrace=False)
    pytest.skip(message)


def start_or_give_up(service: str, start: Callable[[], object], error: type[Exception]) -> None:
    try:
        start()
        return
    except error as exc:
        reason = str(exc)
    # Outside the except block, so the report is the reason alone rather than a chain of tracebacks.
    unavailable(service, reason)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway cluster for the session; see PostgresServer for its URLs and the `watcher` role."""
    server = PostgresServer()
    start_or_give_up("PostgreSQL", server.start, PostgresUnavailable)
    yield server
    server.stop()


@pytest.fixture
def pg_database(postgres: PostgresServer) -> Iterator[str]:
    """The name of a new empty database (owned by `watcher`), dropped after the test."""
    name = postgres.create_database()
    yield name
    postgres.drop_database(name)


@pytest.fixture
def pg_url(postgres: PostgresServer, pg_database: str) -> str:
    """The superuser's SQLAlchemy URL to this test's database (postgres.app_url(pg_database) for `watcher`'s)."""
    return postgres.url(pg_database)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Playwright's Browser for Debian's Chromium, shared by the session: give each test its own context."""
    session = ChromiumSession()
    start_or_give_up("Chromium", session.start, BrowserUnavailable)
    yield session.browser
    session.stop()
