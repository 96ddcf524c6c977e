"""Digests to chat channels (Apprise) and signed webhooks, end to end: fake API → sync → outbox →
a real HTTP receiver on 127.0.0.1 standing in for the services (json://, form://, the webhook)."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Runner, ScratchDatabase, mail_config, write_config
from tests.support.fakeapi import FakeRegistry
from tests.support.receiver import Receiver, Request
from tests.support.smtp import SmtpServer
from tests.support.world import TARGET
from tests.test_daemon import Clock, Daemon, wait_for
from tests.test_digest import check_golden
from watcher import webhooks
from watcher.config import load_config
from watcher.db import database_of
from watcher.scheduler import Worker
from watcher.store import Store

ALICE = "alice@example.org"
TOKEN = "chan-T0KEN-8f3a9c"  # in the json:// URL's path, through {env:WATCHER_TEST_CHANNEL_TOKEN}
SECRET = "hook-s3cret-41d7e2"  # the webhook's signing key, through secret_env


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHER_TEST_CHANNEL_TOKEN", TOKEN)
    monkeypatch.setenv("WATCHER_TEST_HOOK_SECRET", SECRET)


def channels_config(
    tmp_path: Path,
    fake: FakeRegistry,
    receiver: Receiver,
    smtp_port: int | None = None,
    chat: str = "/chat/{env:WATCHER_TEST_CHANNEL_TOKEN}",
    form: bool = True,
    email: bool | None = None,
    subscriber: bool = True,
    webhook: bool = True,
    hook: str = "",
    more: str = "",
) -> Path:
    """A subscriber "mg-group" (a json:// and a form:// channel, and alice's email when there is a mail
    server) and a webhook, all immediate."""
    notify = [receiver.url("json", chat)] + ([receiver.url("form", "/form")] if form else [])
    extra = ""
    email = smtp_port is not None if email is None else email
    if subscriber:
        extra += f'[[subscriber]]\nname = "mg-group"\n{f"email = {json.dumps(ALICE)}" if email else ""}\n'
        extra += f'notify = {json.dumps(notify)}\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n'
    if webhook:
        extra += (
            f'[[webhook]]\nurl = "{receiver.url("http", "/hooks")}"\nwatches = ["mg-azathioprine"]\n'
            f'secret_env = "WATCHER_TEST_HOOK_SECRET"\n{hook}'
        )
    return write_config(tmp_path, fake.base_url, extra=mail_config(smtp_port, extra) + more)


def complete_target(fake: FakeRegistry, status: str = "COMPLETED") -> None:
    fake.edit(TARGET, lambda r: r["protocolSection"]["statusModule"].update(overallStatus=status))
    fake.refresh()


def news(run: Runner, fake: FakeRegistry) -> None:
    run("sync")
    complete_target(fake)
    run("sync")


def signed(request: Request) -> bool:
    return webhooks.verify(SECRET, request.body, request.headers["X-Watcher-Signature"])


def rows(database: ScratchDatabase) -> list[tuple[Any, ...]]:
    return database.rows("select email, channel, status, attempts from digest order by id")


def normalised(body: dict[str, Any]) -> dict[str, Any]:
    """A webhook body with what differs from run to run (ids, times) replaced by placeholders."""
    return {
        **body,
        "delivery_id": "DELIVERY-ID",
        "sent_at": "SENT-AT",
        "changes": [{**c, "id": 0, "detected_at": "DETECTED-AT"} for c in body["changes"]],
    }


# --- the compact message and the webhook body (pure) ----------------------------------------------


def compact(markdown: bool = True, body_max: int = 32768, title_max: int = 250, split: bool = False) -> list[Any]:
    from tests.test_digest import sample_digest
    from watcher.channels import ChatDigest, chat_digest, render

    chat = ChatDigest.from_json(chat_digest(sample_digest()).to_json())  # as stored, then read back
    return render(chat, markdown, body_max, title_max, split)


def test_the_compact_digest_reads_like_the_email_in_markdown_or_plain_text() -> None:
    [message] = compact()
    assert message.title == "Trial updates · mg-azathioprine (8)"
    check_golden("channel-digest.md", message.body + "\n")
    [plain] = compact(markdown=False, title_max=0)  # a service without Markdown nor titles
    assert plain.title == "" and plain.body.startswith("Trial updates · mg-azathioprine (8)\n\nNCT01727193 · ")
    assert "**" not in plain.body and "](" not in plain.body
    assert "• Status: Unknown status → Completed\n• Site completed: " in plain.body
    assert "(actual)\nhttps://clinicaltrials.gov/study/NCT01727193\n\n" in plain.body


def test_too_long_for_the_service_ends_with_what_is_left_and_where() -> None:
    [message] = compact(body_max=1000)
    assert len(message.body) <= 1000
    assert message.body.endswith(
        "\n\n…and 15 more changes in 6 trials: [on ClinicalTrials.gov](https://clinicaltrials.gov/search?term="
        "NCT90000006%20OR%20NCT90000007%20OR%20NCT90000001%20OR%20NCT90000003%20OR%20NCT90000004%20OR%20NCT90000005)"
    )
    parts = compact(body_max=1000, split=True)  # ?overflow=split: whole trials in each part
    assert [p.title for p in parts] == [f"Trial updates · mg-azathioprine (8) · {n}/{len(parts)}" for n in range(1, 4)]
    assert all(len(p.body) <= 1000 for p in parts) and "…and" not in "".join(p.body for p in parts)
    assert sum(p.body.count("\n• ") for p in parts) == 22  # every change once


def test_registry_text_is_neither_markup_nor_a_mention() -> None:
    from watcher.channels import ChatDigest, ChatItem, ChatTrial, render

    evil = "@room <script>alert(1)</script> [click](https://evil.example) *loud* @everyone"
    trial = ChatTrial("NCT01727193", evil, "https://clinicaltrials.gov/study/NCT01727193", "", False,
                      (ChatItem(f"Status: Recruiting → {evil}", strong=True),))  # fmt: skip
    [message] = render(ChatDigest("Trial updates · w", (trial,)), True, 4000, 250, False)
    assert "@room" not in message.body and "@everyone" not in message.body
    assert "<script>" not in message.body and "[click](" not in message.body and "*loud*" not in message.body
    assert "\\[click\\]" in message.body and "‹script›" in message.body


def test_the_readme_shows_how_to_verify_a_signature() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = readme.split("<!-- verify-signature -->\n```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 5
    data = webhooks.body("d-1", datetime(2026, 11, 25, tzinfo=UTC), b"[]")
    exec(code, {"body": data, "signature": webhooks.signature(SECRET, data), "secret": SECRET})
    with pytest.raises(PermissionError):
        exec(
            code,
            {"body": data.replace(b"d-1", b"d-2"), "signature": webhooks.signature(SECRET, data), "secret": SECRET},
        )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "matrix://{env:MATRIX_TOKEN}@matrix.example.org/#mg-trials",
            "matrix://{env:MATRIX_TOKEN}@matrix.example.org/#mg-trials",
        ),
        (
            "matrix://bot:{env:MATRIX_PASSWORD}@matrix.example.org/#r",
            "matrix://bot:{env:MATRIX_PASSWORD}@matrix.example.org/#r",
        ),
        ("jsons://user:literal-pw@example.org/hook", "jsons://user:****@example.org/hook"),
        (f"json://example.org/{TOKEN}", "json://example.org/****"),  # a value read from the environment
    ],
)
def test_urls_are_shown_as_written_with_no_secret(url: str, shown: str) -> None:
    from watcher import masking

    masking.remember(TOKEN)
    assert masking.shown_url(url) == shown


def test_a_webhook_is_known_by_its_host_and_a_digest_never_by_a_password(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    url = "https://user:hunter2-pw@hooks.example.org/x"
    path.write_text(
        f'[[watch]]\nname = "w"\nnct_ids = ["NCT01727193"]\n[[webhook]]\nurl = "{url}"\nsecret_env = "S"\nwatches = ["w"]\n'
    )
    [hook] = load_config(path).webhooks
    assert re.fullmatch(r"webhook:hooks\.example\.org:[0-9a-f]{10}", hook.key)
    assert hook.shown == "https://user:****@hooks.example.org/x"


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.both_backends
def test_a_digest_arrives_once_by_email_on_each_channel_and_at_the_webhook(
    tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer, receiver: Receiver, database: ScratchDatabase
) -> None:
    run = Runner(channels_config(tmp_path, fake, receiver, smtp.port))
    news(run, fake)
    out = run("digest", "send").stdout
    chat_url = receiver.url("json", "/chat/{env:WATCHER_TEST_CHANNEL_TOKEN}")
    assert re.search(
        rf"\nsent +mg-group +1 trial update: NCT01727193 completed \(1 change\) via {re.escape(chat_url)}\n", out
    )
    assert re.search(
        rf"\nsent +webhook {re.escape(receiver.url('http', '/hooks'))} +changes in mg-azathioprine \(1 change\)\n", out
    )
    [mail] = smtp.received
    [chat] = receiver.to(f"/chat/{TOKEN}")  # the token, read from the environment, reaches the service
    [form] = receiver.to("/form")
    [hook] = receiver.to("/hooks")
    # the channel: the compact digest, Markdown, with the words and links of the email
    message = chat.json()
    assert message["title"] == "Trial updates · mg-azathioprine (1)" and message["type"] == "info"
    check_golden("channel-message.md", message["message"] + "\n")
    assert "Status: Unknown status → Completed" in mail.part("plain")
    assert form.form()["title"] == message["title"] and "Status: Unknown status → Completed" in form.form()["message"]
    # the webhook: exactly `watcher changes --json`, plus the delivery's id and time, signed
    body = hook.json()
    assert body["changes"] == json.loads(run("changes", "--json").stdout)
    assert hook.headers["X-Watcher-Delivery"] == body["delivery_id"] and signed(hook)
    assert hook.headers["Content-Type"] == "application/json"
    assert re.fullmatch(r"python-requests/\S+ trial-watcher/\S+", hook.headers["User-Agent"])
    check_golden("webhook-body.json", json.dumps(normalised(body), indent=2, ensure_ascii=False) + "\n")
    # once: nothing more on the next runs; each of the subscriber's rows covers the same change
    assert run("digest", "send").stdout == "No digest is due.\n"
    assert len(receiver.requests) == 3 and len(smtp.received) == 1
    assert [r[1:] for r in rows(database)] == [("email", "sent", 1), ("channel", "sent", 1), ("channel", "sent", 1),
                                               ("webhook", "sent", 1)]  # fmt: skip
    covered = database.rows("select digest_id, change_id from digestchange order by digest_id")
    assert len({change for _, change in covered}) == 1 and len(covered) == 4
    status = run("status").stdout.splitlines()
    assert status[1] == "Digests     0 queued · 0 failed · 4 sent"
    assert status[2] == "  by kind   email 1 sent · channel 2 sent · webhook 1 sent"
    assert json.loads(run("status", "--json").stdout)["digests_by_channel"]["webhook"] == {
        "pending": 0, "failed": 0, "sent": 1,
    }  # fmt: skip


def test_a_channel_only_subscriber_and_a_later_webhook_hear_only_news(
    tmp_path: Path, fake: FakeRegistry, receiver: Receiver, database: ScratchDatabase
) -> None:
    config = channels_config(tmp_path, fake, receiver, email=False, webhook=False)
    run = Runner(config)
    news(run, fake)
    run("digest", "send")
    assert len(receiver.requests) == 2  # json and form: the subscriber has no email
    assert [r[:2] for r in rows(database)] == [("mg-group", "channel"), ("mg-group", "channel")]
    database.execute("update change set detected_at = :t", t=datetime.now(UTC) - timedelta(hours=1))  # old news
    channels_config(tmp_path, fake, receiver, email=False)  # a webhook added now hears only of what comes next
    assert run("digest", "send").stdout == "No digest is due.\n"
    complete_target(fake, "TERMINATED")
    run("sync")
    run("digest", "send")
    [hook] = receiver.to("/hooks")
    assert [c["new"] for c in hook.json()["changes"]] == ["TERMINATED"]


# --- failures ------------------------------------------------------------------------------------


@pytest.mark.both_backends
def test_a_500_then_recovery_delivers_once_with_the_same_delivery_id(
    tmp_path: Path, fake: FakeRegistry, receiver: Receiver, database: ScratchDatabase
) -> None:
    run = Runner(channels_config(tmp_path, fake, receiver))
    news(run, fake)
    receiver.script.replies = [500, 500, 500]  # json, form, the webhook
    result = run("digest", "send", code=1)
    hook_url = receiver.url("http", "/hooks")
    assert (
        f"error: webhook {hook_url}: the webhook {hook_url} answered 500 Internal Server Error; "
        "it stays queued and will be retried.\n"
    ) in result.stderr
    assert f"error: mg-group: {receiver.url('form', '/form')} did not take the message: " in result.stderr
    assert [r[2:] for r in rows(database)] == [("pending", 1)] * 3
    waits = database.rows("select next_attempt_at, created_at from digest")
    assert all(timedelta(minutes=1) < _aware(n) - _aware(c) <= timedelta(minutes=3) for n, c in waits)
    run("digest", "send")  # by hand: everything pending now, whatever its wait
    assert [r[2:] for r in rows(database)] == [("sent", 2)] * 3
    first, second = receiver.to("/hooks")
    assert first.headers["X-Watcher-Delivery"] == second.headers["X-Watcher-Delivery"] == second.json()["delivery_id"]
    assert signed(first) and signed(second) and first.json()["changes"] == second.json()["changes"]
    assert len(receiver.to(f"/chat/{TOKEN}")) == 2 and len(receiver.to("/form")) == 2
    run("digest", "send")
    assert len(receiver.requests) == 6


def _aware(value: Any) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def test_a_timeout_is_temporary(
    tmp_path: Path, fake: FakeRegistry, receiver: Receiver, database: ScratchDatabase
) -> None:
    config = channels_config(tmp_path, fake, receiver, chat="/chat?rto=0.5", form=False, hook="timeout_s = 0.5\n")
    run = Runner(config)
    news(run, fake)
    receiver.script.delay_s = 3
    result = run("digest", "send", code=1)
    assert f"the webhook {receiver.url('http', '/hooks')} did not answer within 0.5 s" in result.stderr
    assert f"error: mg-group: {receiver.url('json', '/chat?rto=0.5')} did not take the message" in result.stderr
    assert [r[2] for r in rows(database)] == ["pending"] * 2
    receiver.script.delay_s = 0
    run("digest", "send")
    assert [r[2] for r in rows(database)] == ["sent"] * 2


def test_a_410_is_permanent_and_blocks_nobody(
    tmp_path: Path, fake: FakeRegistry, receiver: Receiver, database: ScratchDatabase
) -> None:
    run = Runner(channels_config(tmp_path, fake, receiver))
    news(run, fake)
    receiver.script.replies = [200, 200, 410]  # json, form, then the webhook is gone
    result = run("digest", "send", code=1)
    hook_url = receiver.url("http", "/hooks")
    assert result.stderr == (
        f"error: webhook {hook_url}: the webhook {hook_url} answered 410 Gone; "
        "the digest is marked failed (see: watcher subscribers).\n"
    )
    assert [r[1:3] for r in rows(database)] == [("channel", "sent"), ("channel", "sent"), ("webhook", "failed")]
    listing = run("subscribers").stdout
    assert f"webhook {hook_url}  (immediate) follows mg-azathioprine" in listing
    assert f"failed digest #3: the webhook {hook_url} answered 410 Gone" in listing
    assert run("digest", "send").stdout == "No digest is due.\n"  # failed stays failed ...
    run("digest", "send", "--retry-failed")  # ... until asked
    assert len(receiver.to("/hooks")) == 2 and rows(database)[2][2] == "sent"


def test_a_redirect_to_another_host_is_not_followed(
    tmp_path: Path, fake: FakeRegistry, receiver: Receiver, database: ScratchDatabase
) -> None:
    run = Runner(channels_config(tmp_path, fake, receiver))
    news(run, fake)
    receiver.script.replies = [200, 200, 307]
    receiver.script.location = "http://evil.invalid/steal"
    assert "redirects to another host (307); not followed" in run("digest", "send", code=1).stderr
    assert rows(database)[2][1:3] == ("webhook", "failed")


# --- the daemon: backoff with injected time, and kill -9 ------------------------------------------


def test_the_daemon_retries_with_growing_waits(tmp_path: Path, fake: FakeRegistry, receiver: Receiver) -> None:
    clock = Clock("2026-11-25T10:00:00")
    config = load_config(channels_config(tmp_path, fake, receiver))
    worker = Worker(config, Store(database_of(config)), clock)
    worker.sync_job()
    complete_target(fake)
    receiver.script.replies = [500, 500, 500]
    clock.set("2026-11-25T11:00:00")
    worker.sync_job()  # finds the change; every message is deferred
    assert len(receiver.requests) == 3
    clock.set("2026-11-25T11:01:00")
    worker.resend_job()
    worker.digest_job()  # the daemon's other jobs respect the wait too
    assert len(receiver.requests) == 3
    receiver.script.replies = [500]  # the json channel fails once more
    clock.set("2026-11-25T11:02:00")  # the first wait (2 minutes) is over: tried within 5 minutes
    worker.resend_job()
    assert len(receiver.requests) == 6 and len(receiver.to("/hooks")) == 2
    clock.set("2026-11-25T11:05:00")
    worker.resend_job()  # the second wait is 4 minutes
    assert len(receiver.requests) == 6
    clock.set("2026-11-25T11:06:00")
    worker.resend_job()
    assert len(receiver.to(f"/chat/{TOKEN}")) == 3
    clock.set("2026-11-25T12:00:00")
    worker.resend_job()
    worker.sync_job()
    assert len(receiver.requests) == 7


@pytest.mark.both_backends
@pytest.mark.slow
def test_kill_9_during_a_webhook_send_sends_at_most_once_more_with_the_same_id(
    tmp_path: Path, fake: FakeRegistry, receiver: Receiver, database: ScratchDatabase
) -> None:
    config = channels_config(tmp_path, fake, receiver, subscriber=False, more='\n[schedule]\nsync_every = "1h"\n')
    run = Runner(config)
    run("sync")
    complete_target(fake)
    receiver.script.delay_s = 3
    daemon = Daemon(config)
    wait_for(lambda: receiver.to("/hooks"), what="the webhook POST to start")
    daemon.stop(signal.SIGKILL)
    receiver.script.delay_s = 0
    daemon = Daemon(config)
    try:
        wait_for(lambda: "1 sent" in daemon.output, what="the resend")
    finally:
        assert daemon.stop()[0] == 0
    hooks = receiver.to("/hooks")
    assert 1 <= len(hooks) <= 2 and len({h.headers["X-Watcher-Delivery"] for h in hooks}) == 1
    assert all(signed(h) for h in hooks)
    assert database.rows("select channel, status, attempts from digest") == [("webhook", "sent", 1)]


# --- size limits ---------------------------------------------------------------------------------


def test_a_long_digest_is_split_for_a_small_service_and_resumes_where_it_stopped(
    tmp_path: Path, fake: FakeRegistry, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, database: ScratchDatabase
) -> None:
    from apprise.plugins.custom_json import NotifyJSON

    monkeypatch.setattr(NotifyJSON, "body_maxlen", 700)  # a service with a small limit
    config = channels_config(tmp_path, fake, receiver, chat="/chat?overflow=split", form=False, webhook=False)
    run = Runner(config)
    run("sync")
    sites = [{"facility": f"Hospital number {n}", "status": "RECRUITING", "city": "Guangzhou", "country": "China"}
             for n in range(25)]  # fmt: skip
    fake.edit(TARGET, lambda r: r["protocolSection"]["contactsLocationsModule"]["locations"].extend(sites))
    fake.refresh()
    run("sync")
    receiver.script.replies = [200, 500]  # the second part fails: the first is not sent again
    run("digest", "send", code=1)
    assert database.rows("select parts_sent, status from digest") == [(1, "pending")]
    run("digest", "send")
    parts = [r.json() for r in receiver.to("/chat")]
    total = len(parts) - 1  # the failed part arrived twice
    assert total >= 3
    assert [p["title"] for p in parts] == [
        f"Trial updates · mg-azathioprine (1) · {n}/{total}" for n in (1, 2, *range(2, total + 1))
    ]
    assert all(len(p["message"]) <= 700 for p in parts)
    text = "\n".join(p["message"] for p in parts[:1] + parts[2:])
    assert all(text.count(f"Hospital number {n}, Guangzhou") == 1 for n in range(25))
    assert database.rows("select status from digest") == [("sent",)]


# --- masking, config, test-notify, operator alerts ---------------------------------------------------


def test_no_secret_in_logs_output_or_database(
    tmp_path: Path,
    fake: FakeRegistry,
    receiver: Receiver,
    database: ScratchDatabase,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    run = Runner(channels_config(tmp_path, fake, receiver))
    news(run, fake)
    caplog.set_level(logging.DEBUG, logger="urllib3")  # it logs each request line, the URL's path included
    receiver.script.replies = [500, 500, 500]
    outputs = [run("--log-level", "debug", "digest", "send", code=1), run("--log-level", "debug", "digest", "send")]
    outputs += [run("subscribers"), run("subscribers", "--json"), run("status", "--json")]
    assert receiver.to(f"/chat/{TOKEN}")  # it was used
    logged = caplog.text + "".join(r.output for r in outputs)
    assert "channel message 1 to mg-group deferred" in caplog.text
    assert '"POST /chat/**** HTTP/1.1" 500' in caplog.text  # urllib3's request line, masked
    for secret in (TOKEN, SECRET):
        assert secret not in logged
        assert not database.holds(secret.encode())
    assert "channel " + receiver.url("json", "/chat/{env:WATCHER_TEST_CHANNEL_TOKEN}") in outputs[2].stdout


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "w.toml"
    path.write_text(f'[[watch]]\nname = "w"\nnct_ids = ["NCT01727193"]\n{text}')
    result = Runner(path)("subscribers", code=2)
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.removeprefix(f"error: {path}: ").rstrip("\n")


CONFIG_ERRORS = [
    ('[[subscriber]]\nname = "g"\nnotify = ["matrx://tok@matrix.example.org/#room"]\nwatches = ["w"]\n',
     '[subscriber "g"] notify: "matrx://" is not a kind of URL Apprise knows (did you mean "matrix"?)'),
    ('[[subscriber]]\nname = "g"\nnotify = ["json://"]\nwatches = ["w"]\n',
     '[subscriber "g"] notify: Apprise cannot parse this json:// URL (Unparseable JSON URL json://...)'),
    ('[[subscriber]]\nname = "g"\nnotify = ["ntfy://a b"]\nwatches = ["w"]\n',
     '[subscriber "g"] notify: "ntfy://a b" must be a single URL, without spaces'),
    ('[[subscriber]]\nname = "g"\nnotify = ["json://h/{env:NO-SUCH}"]\nwatches = ["w"]\n',
     '[subscriber "g"] notify: "{env:NO-SUCH}" does not name an environment variable'),
    ('[[subscriber]]\nname = "g"\nwatches = ["w"]\n',
     '[subscriber "g"] email: a subscriber needs an email address, notify URLs, or both'),
    ('[[subscriber]]\nnotify = ["ntfy://ntfy.example.org/t"]\nwatches = ["w"]\n',
     "[[subscriber]] #1 name: is required when there is no email"),
    ('[[subscriber]]\nname = "a@b"\nnotify = ["ntfy://ntfy.example.org/t"]\nwatches = ["w"]\n',
     '[subscriber "a@b"] name: "a@b" is not a valid name (letters, digits, "-", "_" and ".")'),
    ('[[webhook]]\nurl = "ftp://x"\nsecret_env = "S"\nwatches = ["w"]\n',
     '[webhook "ftp://x"] url: "ftp://x" is not an http(s) URL'),
    ('[[webhook]]\nurl = "https://h.example.org/x"\nwatches = ["w"]\n',
     '[webhook "https://h.example.org/x"] secret_env: is required'),
    ('[[webhook]]\nurl = "https://u:pw@h.example.org/x"\nsecret_env = "S"\nwatches = ["nope"]\n',
     '[webhook "https://u:****@h.example.org/x"] watches: "nope" is not a watch in this file'),
    ('[alerts]\nnotify = ["ntfyy://h/t"]\n', '[alerts] notify: "ntfyy://" is not a kind of URL Apprise knows (did you mean "ntfy"?)'),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), CONFIG_ERRORS)
def test_config_errors_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    assert config_error(tmp_path, text) == message


def test_an_unparseable_url_names_the_subscriber_and_the_scheme_not_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHER_TEST_BAD", "not a token")
    error = config_error(
        tmp_path, '[[subscriber]]\nname = "g"\nnotify = ["tgram://{env:WATCHER_TEST_BAD}/"]\nwatches = ["w"]\n'
    )
    assert error.startswith('[subscriber "g"] notify: Apprise cannot parse this tgram:// URL')
    assert "not a token" not in error


def test_test_notify_sends_a_sample_through_one_url(tmp_path: Path, receiver: Receiver) -> None:
    run = Runner(tmp_path / "none.toml")  # needs no config
    url = receiver.url("json", "/test/{env:WATCHER_TEST_CHANNEL_TOKEN}")
    assert run("test-notify", url).stdout == f"Sample digest sent through {url}.\n"
    [sample] = receiver.to(f"/test/{TOKEN}")
    message = sample.json()["message"]
    for words in ("**Status: Unknown status → Completed**", "New site recruiting: Huashan Hospital, Shanghai, China",
                  "Results posted", "New trial · [NCT90000004]", "No longer matches the search",
                  '"Sponsor decision"'):  # fmt: skip
        assert words in message, words
    receiver.script.replies = [503]
    failed = run("test-notify", url, code=1).stderr
    assert failed.startswith(f"error: {url} did not take the message: ") and failed.count("\n") == 1
    assert run("test-notify", "json://", code=2).stderr.startswith(
        "error: test-notify: Apprise cannot parse this json://"
    )


def test_operator_alerts_go_to_the_alert_channels(tmp_path: Path, fake: FakeRegistry, receiver: Receiver) -> None:
    alerts = f'[alerts]\nnotify = ["{receiver.url("json", "/ops")}"]\n[schedule]\nalert_after_failures = 2\n'
    config = load_config(write_config(tmp_path, fake.base_url, extra=alerts))
    worker = Worker(config, Store(database_of(config)), Clock("2026-11-25T10:00:00"))
    fake.faults.version_down = True
    for _ in range(3):
        worker.sync_job()
    [alert] = receiver.to("/ops")
    assert alert.json()["title"] == "trial watcher: syncing has failed 2 times in a row"
    assert "This goes to the operator only" in alert.json()["message"]
    fake.faults.version_down = False
    worker.sync_job()
    assert receiver.to("/ops")[-1].json()["title"] == "trial watcher: syncing recovered"
