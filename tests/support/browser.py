"""Headless Debian Chromium driven by Playwright, and a static file server on 127.0.0.1 for it to load.

Playwright's own browser builds cannot be downloaded here, so this never runs `playwright install`: it launches
/usr/bin/chromium. Chromium's background traffic (updates, sync, QUIC probes) is switched off, since this
network refuses it and tests must never reach the internet.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # the tests run as root in CI, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAUNCH_TIMEOUT_MS = 60_000
INSTALL_HINT = "install Debian's Chromium (as root: apt-get install chromium, or run .ci/install-services)"
PHONE_WIDTH = 375
DESKTOP_WIDTH = 1280


class BrowserUnavailable(RuntimeError):
    """Chromium cannot be launched here; the message says why."""


class ChromiumSession:
    """Playwright and one Chromium for a whole test session: start(), then .browser; stop() closes both."""

    def __init__(self, executable: Path = CHROMIUM) -> None:
        self.executable = executable
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    @property
    def browser(self) -> Browser:
        if self._browser is None:
            raise RuntimeError("Chromium is not started")
        return self._browser

    def start(self) -> ChromiumSession:
        if not self.executable.is_file():
            raise BrowserUnavailable(f"{self.executable} is missing; {INSTALL_HINT}")
        try:
            from playwright.sync_api import Error, sync_playwright
        except ImportError as exc:
            raise BrowserUnavailable(f"playwright is not installed ({exc}); pip install -e '.[test]'") from exc
        try:
            self._playwright = sync_playwright().start()
            # Playwright gives each launch a fresh, empty profile folder of its own and removes it on close.
            self._browser = self._playwright.chromium.launch(
                executable_path=str(self.executable), args=CHROMIUM_ARGS, timeout=LAUNCH_TIMEOUT_MS
            )
        except Error as exc:
            self.stop()
            raise BrowserUnavailable(f"Chromium did not start: {exc}") from exc
        return self

    def stop(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None


@contextmanager
def open_page(browser: Browser, url: str, width: int, height: int = 800) -> Iterator[Page]:
    """A page at `url` in a fresh context (no cookies or storage shared with other pages) `width` CSS px wide."""
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        page.goto(url)
        yield page
    finally:
        context.close()


def screenshot(browser: Browser, url: str, width: int, path: Path, full_page: bool = True) -> Path:
    """Saves a PNG of `url` as seen `width` CSS px wide (375 for a phone, 1280 for a desktop)."""
    with open_page(browser, url, width) as page:
        page.screenshot(path=str(path), full_page=full_page)
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """Serves `folder` over HTTP on 127.0.0.1 (a free port) and yields its base URL, ending in '/'."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, name="static-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
