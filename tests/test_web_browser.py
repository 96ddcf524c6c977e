"""The pages in a real browser (Playwright driving Debian's Chromium) and a real server (uvicorn):
a person subscribes, confirms, gets a digest, unsubscribes and gets no more; screenshots of every
page at 375 and 1280 px wide; then the daemon serving the pages, posted to as a mail provider does."""

from __future__ import annotations

import http.client
import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import FakeClock, Runner, ScratchDatabase
from tests.support.browser import DESKTOP_WIDTH, PHONE_WIDTH
from tests.support.fakeapi import FakeRegistry
from tests.support.smtp import free_port
from tests.support.web import ALICE, CONFIG_ALICE, link, mails, set_status, web_config
from tests.support.world import TARGET
from tests.test_daemon import Daemon, wait_for
from watcher.config import load_config
from watcher.db import database_of
from watcher.store import Store

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

DANA = "dana@example.org"
pytestmark = pytest.mark.slow


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: $WATCHER_SCREENSHOTS (to look at them), else the test's folder."""
    folder = Path(os.environ.get("WATCHER_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def served(tmp_path: Path, fake: FakeRegistry) -> Iterator[tuple[Path, str]]:
    """A synced config served by uvicorn on 127.0.0.1, its public_url the server's own address."""
    from watcher.web.app import serve

    port = free_port()
    path = web_config(tmp_path, fake, public_url=f"http://127.0.0.1:{port}", web=f'listen = "127.0.0.1:{port}"')
    Runner(path)("sync")
    config = load_config(path)
    store = Store(database_of(config))
    server = serve(config, store)
    try:
        yield path, server.url
    finally:
        server.stop()
        store.close()


def shoot(page: Page, folder: Path, name: str) -> None:
    """Screenshots of the page at phone and desktop widths; neither may scroll sideways."""
    for width in (PHONE_WIDTH, DESKTOP_WIDTH):
        page.set_viewport_size({"width": width, "height": 800})
        page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} scrolls sideways at {width} px"
    page.set_viewport_size({"width": PHONE_WIDTH, "height": 800})


def test_a_person_subscribes_confirms_gets_a_digest_and_unsubscribes(
    browser: Browser, served: tuple[Path, str], fake: FakeRegistry, shots: Path, tmp_path: Path
) -> None:
    config, base = served
    run = Runner(config)
    set_status(fake, "NCT90000001", "COMPLETED")  # something on the pages before Dana comes
    run("sync")
    context = browser.new_context(viewport={"width": PHONE_WIDTH, "height": 800})
    page = context.new_page()
    try:
        page.goto(f"{base}/")
        shoot(page, shots, "home")
        page.goto(f"{base}/trial/NCT90000001")
        assert page.get_by_role("heading", name="Low-dose Azathioprine in Ocular Myasthenia Gravis").is_visible()
        shoot(page, shots, "trial")
        page.goto(f"{base}/watch/mg-azathioprine")
        assert page.get_by_role("heading", name="mg-azathioprine", exact=True).is_visible()
        shoot(page, shots, "watch")
        page.get_by_label("Your email address").fill(DANA)
        page.get_by_label("As soon as something changes").check()
        page.get_by_role("button", name="Subscribe").click()
        assert page.get_by_role("heading", name="Check your inbox").is_visible()
        shoot(page, shots, "check-inbox")

        wait_for(lambda: mails(tmp_path, DANA), what="the confirmation in the outbox")
        [confirmation] = mails(tmp_path, DANA)
        page.goto(base + link(confirmation, "confirm"))
        shoot(page, shots, "confirm")
        page.get_by_role("button", name="Confirm").click()
        assert page.get_by_role("heading", name="You are subscribed").is_visible()
        shoot(page, shots, "confirmed")

        set_status(fake, TARGET, "COMPLETED")  # news in the registry
        run("sync")
        run("digest", "send")
        digest = mails(tmp_path, DANA)[-1]
        assert "Status: Unknown status → Completed" in digest.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        page.goto(base + link(digest, "digest"))  # "View in browser"
        assert page.get_by_text("Status: Unknown status → Completed").is_visible()
        shoot(page, shots, "digest")
        page.goto(base + link(digest, "manage"))
        shoot(page, shots, "manage")

        page.goto(base + link(digest, "unsubscribe"))
        shoot(page, shots, "unsubscribe")
        page.get_by_role("button", name="Unsubscribe").click()
        assert page.get_by_role("heading", name="You are unsubscribed").is_visible()
        assert page.get_by_text("You will get no more digests for mg-azathioprine.").is_visible()
        shoot(page, shots, "unsubscribed")
    finally:
        context.close()

    received = len(mails(tmp_path, DANA))
    set_status(fake, TARGET, "TERMINATED")
    run("sync")
    run("digest", "send")
    assert len(mails(tmp_path, DANA)) == received  # no further digest
    assert "(immediate, unsubscribed) follows mg-azathioprine · web" in run("subscribers").stdout
    assert len(list(shots.glob("*.png"))) == 2 * 10


@pytest.mark.both_backends
def test_a_trial_page_with_its_registry_story_reads_at_both_widths(
    browser: Browser, served: tuple[Path, str], fake: FakeRegistry, shots: Path, paced_clock: FakeClock
) -> None:
    config, base = served
    run = Runner(config)
    for day, status in (("2026-11-18", "SUSPENDED"), ("2026-11-21", "RECRUITING")):
        fake.add_version("NCT90000001", day, lambda r, s=status: r["protocolSection"]["statusModule"].update(
            overallStatus=s))  # fmt: skip
    fake.refresh("2026-11-26T09:00:05")  # two days of data at once: the missed versions are replayed
    run("sync")
    run("history", "NCT90000001", "--registry")  # every version read: the page tells what each changed
    page = browser.new_page()
    try:
        page.goto(f"{base}/trial/NCT90000001")
        story = page.get_by_role("region", name="Its story in the registry")
        assert "version 1" in story.inner_text() and "Status: Recruiting → Suspended" in story.inner_text()
        shoot(page, shots, "trial-registry-story")  # and it never scrolls sideways
    finally:
        page.close()


def test_the_daemon_serves_the_pages_and_honours_a_mail_providers_one_click_post(
    tmp_path: Path, fake: FakeRegistry, database: ScratchDatabase
) -> None:
    port = free_port()
    web = f'listen = "127.0.0.1:{port}"'
    config = web_config(tmp_path, fake, public_url=f"http://127.0.0.1:{port}", web=web, subscribers=CONFIG_ALICE)
    text = config.read_text() + '\n[schedule]\nsync_every = "1h"\n'
    config.write_text(text)
    Runner(config)("sync")
    set_status(fake, TARGET, "COMPLETED")  # news for the daemon's first sync: an immediate digest for Alice
    daemon = Daemon(config)
    try:
        wait_for(lambda: mails(tmp_path, ALICE), what="Alice's digest")
        assert f"web pages on http://127.0.0.1:{port}\n" in daemon.output
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            health = json.loads(response.read())
        assert health["status"] == "ok" and health["last_sync"]["outcome"] == "ok"
        path = link(mails(tmp_path, ALICE)[-1], "unsubscribe")
        for body in (b"List-Unsubscribe=One-Click", b""):  # as providers post it; and again, empty: harmless
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("POST", path, body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
            answer = connection.getresponse()
            page = answer.read().decode()
            connection.close()
            assert answer.status == 200 and answer.getheader("Location") is None
            assert "You will get no more digests" in page
        assert database.rows("select state from subscriber where key = :k", k=ALICE) == [("unsubscribed",)]
    finally:
        code, _ = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.output
    assert "Traceback" not in daemon.output and "daemon stopped" in daemon.output
    assert path.rsplit("/", 1)[1] not in daemon.output  # tokens never reach the log
