"""The web pages under test: a config with [web] on the test's database, the app in Starlette's TestClient
with an injected clock, and the emails it queues (the outbox folder: no [smtp])."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from tests.conftest import WATCHES, Runner, write_config
from tests.support.fakeapi import FakeRegistry
from tests.support.world import TARGET
from watcher.config import Config, load_config
from watcher.db import database_of
from watcher.store import Store

WEB_WATCHES = f'{WATCHES}\n[[watch]]\nname = "lymphoma"\nnct_ids = ["NCT03934567"]\n'
ALICE = "alice@example.org"  # a subscriber from the config
CONFIG_ALICE = f'[[subscriber]]\nemail = "{ALICE}"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n'


class Clock:
    """The app's clock: the real time (the syncs' clock) plus whatever a test moved it on by."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC).replace(microsecond=0) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


def web_config(
    folder: Path,
    fake: FakeRegistry,
    public_url: str = "http://127.0.0.1:8080",
    web: str = "",
    subscribers: str = "",
    extra: str = "",
) -> Path:
    """A config with [web] (its other keys in `web`), [mail], `subscribers` and any `extra` tables."""
    tables = (
        f'[mail]\nfrom = "Trial Watcher <watcher@example.org>"\n\n{subscribers}\n'
        f'[web]\npublic_url = "{public_url}"\n{web}\n{extra}\n'
    )
    return write_config(folder, fake.base_url, watches=WEB_WATCHES, extra=tables)


def set_status(fake: FakeRegistry, nct_id: str, status: str) -> None:
    fake.edit(nct_id, lambda r: r["protocolSection"]["statusModule"].update(overallStatus=status))
    fake.refresh()


def mails(folder: Path, to: str | None = None) -> list[EmailMessage]:
    """The messages in the outbox folder, oldest first (optionally only those to `to`)."""
    found = []
    for path in sorted((folder / "outbox").glob("*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        if to is None or str(message["To"]).lower() == to.lower():
            found.append(message)
    return found  # type: ignore[return-value]


def page_text(page: str) -> str:
    """What a reader of an HTML page sees, on one line: tags dropped, entities read, spaces collapsed."""
    import html
    import re

    body = page.split("<main", 1)[-1]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def html_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("html",))
    assert body is not None
    return str(body.get_content())


def link(message: EmailMessage, kind: str) -> str:
    """The path of the first `/{kind}/TOKEN` link in a message's text part."""
    match = re.search(rf"https?://[^/\s]+(/{kind}/[A-Za-z0-9_-]+)", text_of(message))
    assert match, f"no /{kind}/ link in:\n{text_of(message)}"
    return match[1]


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match[1]


@dataclass
class Site:
    folder: Path
    fake: FakeRegistry
    config_path: Path
    clock: Clock
    stores: list[Store] = field(default_factory=list)
    client: TestClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = self.new_client()

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    @property
    def run(self) -> Runner:
        return Runner(self.config_path)

    def new_client(self, send_at_once: bool = True) -> TestClient:
        from watcher.web.app import create_app

        config = self.config
        store = Store(database_of(config))
        self.stores.append(store)
        return TestClient(create_app(config, store, self.clock, send_at_once), follow_redirects=False)

    def close(self) -> None:
        for store in self.stores:
            store.close()

    def form(self, path: str = "/subscribe", client: TestClient | None = None) -> str:
        """A page's CSRF token (the client keeps the cookie it goes with)."""
        response = (client or self.client).get(path)
        assert response.status_code == 200, response.text
        return csrf_of(response.text)

    def subscribe(
        self,
        email: str,
        watches: tuple[str, ...] = ("mg-azathioprine",),
        frequency: str = "immediate",
        client: TestClient | None = None,
        **extra: Any,
    ) -> Any:
        client = client or self.client
        data = {"email": email, "watch": list(watches), "frequency": frequency, "csrf": self.form(client=client)}
        return client.post("/subscribe", data={**data, **extra})

    def confirm(self, email: str) -> str:
        """Subscribe `email` and confirm it; returns the confirm path."""
        self.subscribe(email)
        path = link(mails(self.folder, email)[-1], "confirm")
        response = self.client.post(path, data={"csrf": self.form(path)})
        assert response.status_code == 200 and "You are subscribed" in response.text, response.text
        return path

    def change(self, status: str = "COMPLETED", nct_id: str = TARGET) -> None:
        set_status(self.fake, nct_id, status)
        self.run("sync")


@contextmanager
def site_for(folder: Path, fake: FakeRegistry, **kwargs: Any) -> Iterator[Site]:
    """A synced site: the baseline stored, so that the next change is news."""
    path = web_config(folder, fake, **kwargs)
    Runner(path)("sync")
    site = Site(folder, fake, path, Clock())
    try:
        yield site
    finally:
        site.close()
