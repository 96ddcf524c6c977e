"""Digests end to end: fake API → sync → digest → a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import WATCHES as MG_WATCH
from tests.conftest import Runner, ScratchDatabase, mail_config, write_config
from tests.support.fakeapi import FakeRegistry
from tests.support.smtp import SmtpServer, free_port
from tests.support.world import TARGET

pytestmark = pytest.mark.both_backends
WATCHES = f'{MG_WATCH}\n[[watch]]\nname = "lymphoma"\nnct_ids = ["NCT03934567"]\n'
ALICE, BOB = "alice@example.org", "bob@example.org"
SUBSCRIBERS = f"""
[[subscriber]]
email = "{ALICE}"
watches = ["mg-azathioprine"]
frequency = "immediate"

[[subscriber]]
email = "{BOB}"
watches = ["lymphoma"]
frequency = "immediate"
"""

ALICE_ONLY = f'[[subscriber]]\nemail = "{ALICE}"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n'


def configure(tmp_path: Path, fake: FakeRegistry, port: int | None, **kw: Any) -> Runner:
    extra = mail_config(port, kw.pop("subscribers", SUBSCRIBERS), **kw)
    return Runner(write_config(tmp_path, fake.base_url, watches=WATCHES, extra=extra))


def set_status(fake: FakeRegistry, nct_id: str, status: str, **more: Any) -> None:
    fake.edit(nct_id, lambda r: r["protocolSection"]["statusModule"].update(overallStatus=status, **more))


def change_both(run: Runner, fake: FakeRegistry) -> None:
    run("sync")
    set_status(fake, TARGET, "COMPLETED")
    set_status(fake, "NCT03934567", "COMPLETED")
    fake.refresh()
    run("sync")


def digests(database: ScratchDatabase) -> list[tuple[Any, ...]]:
    return database.rows("select email, status, attempts, last_error, message_id from digest order by id")


def test_each_subscriber_gets_only_their_watches(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> None:
    run = configure(tmp_path, fake, smtp.port)
    change_both(run, fake)
    out = run("digest", "send").stdout
    assert f"sent        {ALICE}  1 trial update: NCT01727193 completed (1 change) via 127.0.0.1:{smtp.port}" in out
    [alice], [bob] = smtp.recorder.to(ALICE), smtp.recorder.to(BOB)
    assert "NCT01727193" in alice.part("plain") and "NCT03934567" not in alice.part("plain")
    assert "NCT03934567" in bob.part("plain") and "NCT01727193" not in bob.part("plain")
    assert alice.recipients == [ALICE] and alice.sender == "watcher@example.org"
    assert run("digest", "send").stdout == "No digest is due.\n"
    assert len(smtp.received) == 2


def test_headers(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer, database: ScratchDatabase) -> None:
    run = configure(tmp_path, fake, smtp.port)
    change_both(run, fake)
    run("digest", "send")
    message = smtp.recorder.to(ALICE)[0].message
    assert message["Subject"] == "1 trial update: NCT01727193 completed"
    assert message["List-Unsubscribe"] == "<mailto:watcher@example.org?subject=unsubscribe>"
    assert message["List-Unsubscribe-Post"] is None
    assert message["Message-ID"].startswith("<digest.") and message["Message-ID"].endswith("@example.org>")
    assert message["Date"] and message.get_content_type() == "multipart/alternative"
    [stored] = [d for d in digests(database) if d[0] == ALICE]
    assert stored[1:] == ("sent", 1, None, message["Message-ID"])


def test_https_unsubscribe_gets_one_click_header(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> None:
    run = configure(tmp_path, fake, smtp.port, mail_extra='unsubscribe = "https://example.org/unsub"')
    change_both(run, fake)
    run("digest", "send")
    message = smtp.recorder.to(ALICE)[0].message
    assert message["List-Unsubscribe"] == "<https://example.org/unsub>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_451_then_success_is_sent_once_with_the_same_message_id(
    tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer, database: ScratchDatabase
) -> None:
    run = configure(tmp_path, fake, smtp.port, subscribers=ALICE_ONLY)
    change_both(run, fake)
    smtp.recorder.data_replies = ["451 4.3.0 try again later"]
    result = run("digest", "send", code=1)
    assert result.stderr == (
        f"error: {ALICE}: the mail server deferred the digest (451 4.3.0 try again later); "
        "it stays queued and will be retried.\n"
    )
    [(_, status, attempts, error, message_id)] = digests(database)
    assert (status, attempts) == ("pending", 1) and "451" in error
    run("digest", "send")
    [received] = smtp.received
    assert received.message["Message-ID"] == message_id
    assert digests(database)[0][1:3] == ("sent", 2)
    run("digest", "send")
    assert len(smtp.received) == 1


def test_server_down_then_up_loses_nothing(tmp_path: Path, fake: FakeRegistry) -> None:
    smtp = SmtpServer(port=free_port())  # not started: connection refused
    run = configure(tmp_path, fake, smtp.port)
    change_both(run, fake)
    result = run("digest", "send", code=1)
    assert f"error: {ALICE}: cannot reach the mail server 127.0.0.1:{smtp.port} (connection refused)" in result.stderr
    assert "Traceback" not in result.output
    set_status(fake, TARGET, "TERMINATED", whyStopped="Sponsor decision")  # more news while the server is down
    fake.refresh()
    run("sync")
    smtp.start()
    try:
        run("digest", "send")
        run("digest", "send")
    finally:
        smtp.stop()
    alice = smtp.recorder.to(ALICE)
    assert len(alice) == 2  # the queued digest, then one with the newer change
    assert "Unknown status → Completed" in alice[0].part("plain")
    assert "Completed → Terminated" in alice[1].part("plain") and '"Sponsor decision"' in alice[1].part("plain")
    assert len(smtp.recorder.to(BOB)) == 1


def test_550_marks_failed_and_does_not_block_others(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> None:
    run = configure(tmp_path, fake, smtp.port)
    change_both(run, fake)
    smtp.recorder.rcpt_replies[ALICE] = "550 5.1.1 no such user"
    result = run("digest", "send", code=1)
    assert result.stderr == (
        f"error: {ALICE}: the mail server refused the recipient (550 5.1.1 no such user); "
        "the digest is marked failed (see: watcher subscribers).\n"
    )
    assert [r.recipients for r in smtp.received] == [[BOB]]
    listing = json.loads(run("subscribers", "--json").stdout)
    alice = next(s for s in listing if s["email"] == ALICE)
    assert alice["failed_digests"][0]["error"] == "the mail server refused the recipient (550 5.1.1 no such user)"
    assert (
        "failed digest #1: the mail server refused the recipient (550 5.1.1 no such user)" in run("subscribers").stdout
    )
    del smtp.recorder.rcpt_replies[ALICE]
    assert run("digest", "send").stdout == "No digest is due.\n"  # failed stays failed...
    out = run("digest", "send", "--retry-failed").stdout  # ...until asked
    assert "1 failed digest queued again." in out
    assert len(smtp.recorder.to(ALICE)) == 1


def test_hostile_registry_text_is_escaped_and_injects_no_header(
    tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer
) -> None:
    run = configure(tmp_path, fake, smtp.port)
    run("sync")
    evil = "<script>alert(1)</script>\r\nBcc: victim@example.net\r\n"
    fake.edit(TARGET, lambda r: r["protocolSection"]["identificationModule"].update(briefTitle=f"Trial {evil}"))
    set_status(fake, TARGET, f"COMPLETED{evil}", whyStopped=evil)
    fake.refresh()
    run("sync")
    run("digest", "send")
    [received] = smtp.recorder.to(ALICE)
    assert received.recipients == [ALICE]
    message = received.message
    assert message["Bcc"] is None and "victim" not in str(message["To"])
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]
    html = received.part("html")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    headers = received.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in headers


def test_starttls_with_login(
    tmp_path: Path, fake: FakeRegistry, monkeypatch: pytest.MonkeyPatch, database: ScratchDatabase
) -> None:
    ca = trustme.CA()
    server_ctx = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    smtp = SmtpServer(tls=server_ctx, users={"watcher": "s3cret-Pa55"}).start()
    monkeypatch.setenv("WATCHER_SMTP_PASSWORD", "s3cret-Pa55")
    try:
        auth = 'username = "watcher"\npassword_env = "WATCHER_SMTP_PASSWORD"\nca_file = "ca.pem"\n'
        run = configure(tmp_path, fake, smtp.port, security="starttls", extra=auth)
        change_both(run, fake)
        result = run("--log-level", "debug", "digest", "send")
    finally:
        smtp.stop()
    assert len(smtp.received) == 2
    assert smtp.logins == ["watcher"]  # one session for both digests
    assert "s3cret-Pa55" not in result.output
    assert not database.holds(b"s3cret-Pa55")


def test_untrusted_certificate_is_deferred_not_sent(tmp_path: Path, fake: FakeRegistry) -> None:
    server_ctx = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_ctx)
    smtp = SmtpServer(tls=server_ctx).start()
    try:
        run = configure(tmp_path, fake, smtp.port, security="starttls")
        change_both(run, fake)
        result = run("digest", "send", code=1)
    finally:
        smtp.stop()
    assert "TLS with the mail server" in result.stderr and "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert smtp.received == []


def test_missing_password_is_one_line(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> None:
    auth = 'username = "watcher"\npassword_env = "WATCHER_TEST_NO_SUCH_VAR"\n'
    run = configure(tmp_path, fake, smtp.port, extra=auth)
    change_both(run, fake)
    result = run("digest", "send", code=2)
    assert result.stderr == "error: [smtp] password_env: environment variable WATCHER_TEST_NO_SUCH_VAR is not set\n"


def test_outbox_without_smtp(tmp_path: Path, fake: FakeRegistry) -> None:
    run = configure(tmp_path, fake, None)
    change_both(run, fake)
    out = run("digest", "send").stdout
    assert f"via the outbox folder {tmp_path / 'outbox'}" in out
    files = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 2 and [f.name.split("-", 2)[2] for f in files] == [f"{ALICE}.eml", f"{BOB}.eml"]
    run("digest", "send")
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 2


def test_dry_run_and_preview_send_and_mark_nothing(
    tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer, database: ScratchDatabase
) -> None:
    run = configure(tmp_path, fake, smtp.port)
    change_both(run, fake)
    out = run("digest", "send", "--dry-run").stdout
    assert f"would send  {ALICE}  1 trial update: NCT01727193 completed (1 change)" in out
    preview = run("digest", "preview", ALICE, "--html", str(tmp_path / "p.html")).stdout
    assert preview.startswith(f"Subject: 1 trial update: NCT01727193 completed\nTo: {ALICE}\n")
    assert "Status: Unknown status → Completed" in preview
    assert "<!DOCTYPE html>" in (tmp_path / "p.html").read_text()
    assert run("digest", "preview", ALICE, "--text").stdout.startswith("Trial watcher · your digest for")
    assert smtp.received == [] and digests(database) == []
    run("digest", "send")
    assert len(smtp.received) == 2
    assert run("digest", "preview", ALICE).stdout == f"Nothing new for {ALICE} since their last digest.\n"


def test_subscriber_kinds_filter(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> None:
    subs = f'[[subscriber]]\nemail = "{ALICE}"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\nkinds = ["results"]\n'
    run = configure(tmp_path, fake, smtp.port, subscribers=subs)
    change_both(run, fake)
    assert run("digest", "send").stdout == "No digest is due.\n"
    fake.edit(TARGET, lambda r: r.update(hasResults=True))
    fake.refresh()
    run("sync")
    run("digest", "send")
    [received] = smtp.received
    assert "Results posted" in received.part("plain") and "Completed" not in received.part("plain")


def test_test_email_has_every_kind(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> None:
    run = configure(tmp_path, fake, smtp.port)
    assert (
        run("test-email", "carol@example.org").stdout
        == f"Sample digest sent to carol@example.org via 127.0.0.1:{smtp.port}.\n"
    )
    text = smtp.received[0].part("plain")
    for words in ("Status: Unknown status → Completed", "New site recruiting: Huashan Hospital, Shanghai, China",
                  "Site removed", "Results posted", "New trial matching your search", "No longer matches the search",
                  "Primary completion moved from Jun 2025 to Mar 2026 (9 months later)", '"Sponsor decision"'):  # fmt: skip
        assert words in text, words
    assert run("test-email", "not-an-address", code=2).stderr == 'error: "not-an-address" is not an email address\n'


MAIL_CONFIG_ERRORS = [
    ('[[subscriber]]\nemail = "a@b"\nwatches = ["w"]\n', '[subscriber "a@b"] email: "a@b" is not an email address'),
    ('[[subscriber]]\nemail = "a@example.org"\nwatches = ["nope"]\n',
     '[subscriber "a@example.org"] watches: "nope" is not a watch in this file'),
    ('[[subscriber]]\nemail = "a@example.org"\nwatches = ["w"]\nfrequency = "hourly"\n',
     '[subscriber "a@example.org"] frequency: "hourly" is not one of immediate, daily, weekly'),
    ('[[subscriber]]\nemail = "a@example.org"\nwatches = ["w"]\nkinds = ["gossip"]\n',
     '[subscriber "a@example.org"] kinds: "gossip" is not one of status, sites, results, new_study, left_search, dates, enrollment, details'),
    ('[smtp]\nhost = "x"\nsecurity = "tls"\n', '[smtp] security: "tls" is not one of starttls, ssl, none'),
    ('[smtp]\nhost = "x"\npassword = "hunter2"\n', '[smtp] unknown key "password" (did you mean "password_env"?)'),
    ('[mail]\nfrom = "watcher"\n', '[mail] from: "watcher" is not an email address'),
    ('[mail]\nunsubscribe = "http://x"\n', '[mail] unsubscribe: "http://x" must be a mailto: address or an https:// URL'),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), MAIL_CONFIG_ERRORS)
def test_mail_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "w.toml"
    path.write_text(f'[[watch]]\nname = "w"\nnct_ids = ["NCT01727193"]\n{text}')
    result = Runner(path)("subscribers", code=2)
    assert result.stderr == f"error: {path}: {message}\n"


@pytest.fixture
def daily(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> Iterator[Runner]:
    # The commands read the real clock: the digest time is put 12 hours away so that no test straddles it.
    far = datetime.now(UTC) + timedelta(hours=12)
    subs = f'[[subscriber]]\nemail = "{ALICE}"\nwatches = ["mg-azathioprine"]\nfrequency = "daily"\n'
    schedule = f'\n[schedule]\ndigest_time = "{far:%H:%M}"\n'
    yield configure(tmp_path, fake, smtp.port, subscribers=subs + schedule)


def test_daily_subscriber_waits_for_the_digest_time(daily: Runner, fake: FakeRegistry, smtp: SmtpServer) -> None:
    change_both(daily, fake)
    assert daily("digest", "send").stdout == "No digest is due.\n"
    assert smtp.received == []
    daily("digest", "send", "--all")
    assert len(smtp.received) == 1


def test_digest_send_without_subscribers_says_so(run: Runner) -> None:
    assert (
        run("digest", "send").stdout == "No subscribers in watcher.toml: add [[subscriber]] tables to send digests.\n"
    )


def test_implicit_tls(tmp_path: Path, fake: FakeRegistry) -> None:
    import ssl

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    smtp = SmtpServer(tls=server_ctx, implicit_tls=True).start()
    try:
        run = configure(tmp_path, fake, smtp.port, security="ssl", extra='ca_file = "ca.pem"\n')
        change_both(run, fake)
        run("digest", "send")
    finally:
        smtp.stop()
    assert sorted(r.recipients[0] for r in smtp.received) == [ALICE, BOB]


def test_messages_use_crlf_line_ends_only(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> None:
    run = configure(tmp_path, fake, smtp.port)
    change_both(run, fake)
    run("digest", "send")
    raw = smtp.received[0].data
    assert b"\r\n" in raw and raw.replace(b"\r\n", b"").count(b"\n") == 0  # strict servers refuse bare LF
