"""Never broken by the registry, a subscriber or a slow network: hostile data, stalls, bad
addresses and overlapping runs. Each test here failed before the fix it covers."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Runner, ScratchDatabase, mail_config, write_config
from tests.support.fakeapi import FakeRegistry
from tests.support.smtp import SmtpServer
from tests.support.world import TARGET
from tests.test_daemon import Daemon, wait_for

S = "protocolSection.statusModule"
ALICE = "alice@example.org"
ONLY_TARGET = '\n[[watch]]\nname = "target"\nnct_ids = ["NCT01727193"]\n'


def host(fake: FakeRegistry) -> str:
    return fake.base_url.split("/")[2]


def changes(run: Runner, *args: str) -> list[dict[str, Any]]:
    return json.loads(run("changes", "--json", *args).stdout)


def edit(fake: FakeRegistry, nct_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    fake.edit(nct_id, change)
    fake.refresh()


def alert_text(path: Path) -> str:
    from email import message_from_bytes, policy

    body = message_from_bytes(path.read_bytes(), policy=policy.default).get_body()
    assert body is not None
    return str(body.get_content())


def status_module(record: dict[str, Any]) -> dict[str, Any]:
    return record["protocolSection"]["statusModule"]


# --- registry data that is not what the API promises -------------------------------------------------

BAD_RECORDS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("status 7", lambda r: status_module(r).update(overallStatus=7), f"{S}.overallStatus is 7 (a number), not a string"),
    ("status {}", lambda r: status_module(r).update(overallStatus={}), f"{S}.overallStatus is {{}} (an object), not a string"),
    ("numeric date", lambda r: status_module(r)["startDateStruct"].update(date=2012), f"{S}.startDateStruct.date is 2012, not a date"),
    ("title []", lambda r: r["protocolSection"]["identificationModule"].update(briefTitle=[]),
     "protocolSection.identificationModule.briefTitle is [] (a list), not a string"),
    ("locations {}", lambda r: r["protocolSection"]["contactsLocationsModule"].update(locations={}),
     "protocolSection.contactsLocationsModule.locations is {} (an object), not a list of sites"),
    ("status module null", lambda r: r["protocolSection"].update(statusModule=[]), "protocolSection.statusModule is []"),
    ("enrollment '100'", lambda r: r["protocolSection"]["designModule"]["enrollmentInfo"].update(count="100"),
     "protocolSection.designModule.enrollmentInfo.count is '100', not a whole number"),
    ("enrollment 1.5", lambda r: r["protocolSection"]["designModule"]["enrollmentInfo"].update(count=1.5),
     "protocolSection.designModule.enrollmentInfo.count is 1.5, not a whole number"),
    ("date 'May 2024'", lambda r: status_module(r)["startDateStruct"].update(date="May 2024"),
     f"{S}.startDateStruct.date is 'May 2024', not a date (YYYY, YYYY-MM or YYYY-MM-DD)"),
    ("month 13", lambda r: status_module(r)["completionDateStruct"].update(date="2024-13"),
     f"{S}.completionDateStruct.date is '2024-13', not a date (YYYY, YYYY-MM or YYYY-MM-DD)"),
    ("site not an object", lambda r: r["protocolSection"]["contactsLocationsModule"].update(locations=[1]),
     "protocolSection.contactsLocationsModule.locations site 1 is 1, not an object"),
    ("site city a list", lambda r: r["protocolSection"]["contactsLocationsModule"]["locations"][0].update(city=["x"]),
     "protocolSection.contactsLocationsModule.locations site 1 city is ['x'], not a string"),
    ("hasResults 'yes'", lambda r: r.update(hasResults="yes"), "hasResults is 'yes', not true or false"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("breaking", "reason"), [(b, r) for _, b, r in BAD_RECORDS], ids=[n for n, _, _ in BAD_RECORDS]
)
def test_a_malformed_record_is_skipped_named_and_the_rest_of_the_sync_goes_on(
    run: Runner, fake: FakeRegistry, breaking: Callable[[dict[str, Any]], None], reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    run("sync")
    good = json.loads(json.dumps(fake.records[TARGET]))
    fake.bump(TARGET)
    fake.edit(TARGET, breaking, bump=False)
    edit(fake, "NCT90000001", lambda r: status_module(r).update(overallStatus="COMPLETED"))
    result = run("sync")  # exit 0: one bad record never stops the others
    assert f"! {TARGET} skipped: its record is malformed ({reason}" in result.stdout
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "watcher.sync"]
    [line] = logged  # and in the log, once
    assert line.startswith(f"{TARGET} skipped: its record is not what the API promises ({reason}")
    assert [(c["nct_id"], c["new"]) for c in changes(run)] == [("NCT90000001", "COMPLETED")]
    for command in (("changes",), ("show", TARGET), ("history", TARGET), ("status",)):
        assert "Traceback" not in run(*command).output  # the last good state is what is stored
    assert json.loads(run("show", TARGET, "--json").stdout)[0]["status"] == "Unknown status"
    # the registry fixes the record: the real change is recorded once, nothing false
    fixed = json.loads(json.dumps(good))
    status_module(fixed)["overallStatus"] = "COMPLETED"
    fake.put(fixed)
    fake.bump(TARGET)
    fake.refresh()
    assert "skipped" not in run("sync").stdout
    assert [(c["nct_id"], c["field"], c["new"]) for c in changes(run, "--nct", TARGET)] == [
        (TARGET, f"{S}.overallStatus", "COMPLETED")
    ]


def test_listing_entries_with_null_sections_do_not_break_the_sync(run: Runner, fake: FakeRegistry) -> None:
    fake.faults.extra_listing_entries = [{"protocolSection": None}, {"protocolSection": {"statusModule": None}}, 7]
    result = run("sync")
    assert "Traceback" not in result.output and "baseline stored" in result.stdout
    assert "listing entries without an NCT ID skipped" in result.stdout


def test_reading_commands_and_digests_word_values_stored_by_an_older_release(
    tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer, database: ScratchDatabase
) -> None:
    subscribers = f'[[subscriber]]\nemail = "{ALICE}"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n'
    run = Runner(write_config(tmp_path, fake.base_url, extra=mail_config(smtp.port, subscribers)))
    run("sync")
    edit(fake, TARGET, lambda r: status_module(r).update(overallStatus="COMPLETED"))
    run("sync")
    # what 0.1 stored when the registry sent a number: a record and a change it cannot word
    database.execute("update change set new_json = '7', old_json = '{\"a\": [1]}'")
    from watcher.config import load_config
    from watcher.db import database_of
    from watcher.store import Store, save_records

    store = Store(database_of(load_config(run.config)))
    record = json.loads(json.dumps(fake.records[TARGET]))
    status_module(record).update(overallStatus=7, startDateStruct={"date": 2012})
    record["protocolSection"]["contactsLocationsModule"]["locations"] = {"not": "a list"}
    with store.write() as session:
        save_records(session, [record], None, datetime.now(UTC))
    store.close()
    outputs = [run(*c) for c in (("changes",), ("changes", "--json"), ("show", TARGET), ("show", TARGET, "--json"),
                                  ("history", TARGET), ("digest", "send"))]  # fmt: skip
    assert all("Traceback" not in o.output for o in outputs)
    assert "Status: {'a': [1]} → 7" in outputs[0].stdout  # a value it cannot word is shown as it is
    [received] = smtp.received
    assert "{'a': [1]} → 7" in received.part("plain")


def test_a_record_that_keeps_failing_reaches_the_operator(tmp_path: Path, fake: FakeRegistry) -> None:
    from tests.test_daemon import Clock, make_worker

    clock = Clock("2026-11-25T10:00:00")
    worker = make_worker(tmp_path, fake, None, "daily", "alert_after_failures = 2", clock,
                         operator='operator = "ops@example.org"')  # fmt: skip
    worker.sync_job()
    fake.edit(TARGET, lambda r: status_module(r).update(overallStatus=7))
    for _ in range(3):
        fake.refresh()
        worker.sync_job()
    alerts = [alert_text(p) for p in (tmp_path / "outbox").glob("*-operator.eml")]
    assert len(alerts) == 1 and "NCT01727193 has been skipped 2 syncs in a row" in alerts[0]


def test_syncs_run_by_hand_count_towards_the_alert_which_comes_once_per_streak(
    tmp_path: Path, fake: FakeRegistry
) -> None:
    from tests.test_daemon import Clock, make_worker

    worker = make_worker(tmp_path, fake, None, "daily", "alert_after_failures = 2", Clock("2026-11-25T10:00:00"),
                         operator='operator = "ops@example.org"')  # fmt: skip
    run = Runner(tmp_path / "watcher.toml")
    run("sync")
    fake.edit(TARGET, lambda r: status_module(r).update(overallStatus=7))
    for _ in range(2):  # two syncs by hand: skipped twice, the count passes the threshold unseen
        fake.refresh()
        run("sync")
    for _ in range(2):
        fake.refresh()
        worker.sync_job()
    alerts = [alert_text(p) for p in (tmp_path / "outbox").glob("*-operator.eml")]
    assert len(alerts) == 1 and "NCT01727193 has been skipped 3 syncs in a row" in alerts[0]
    fake.edit(TARGET, lambda r: status_module(r).update(overallStatus="COMPLETED"))  # fixed: the streak ends
    fake.refresh()
    worker.sync_job()
    fake.edit(TARGET, lambda r: status_module(r).update(overallStatus=7))  # a new streak: told again
    for _ in range(2):
        fake.refresh()
        worker.sync_job()
    assert len(list((tmp_path / "outbox").glob("*-operator.eml"))) == 2


# --- a watched trial that disappears --------------------------------------------------------------


def test_an_explicitly_watched_trial_that_disappears_and_comes_back(
    tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer
) -> None:
    subscribers = f'[[subscriber]]\nemail = "{ALICE}"\nwatches = ["target"]\nfrequency = "immediate"\n'
    run = Runner(write_config(tmp_path, fake.base_url, watches=ONLY_TARGET, extra=mail_config(smtp.port, subscribers)))
    run("sync")
    record = fake.records[TARGET]
    fake.remove(TARGET)
    fake.refresh()
    assert "1 no longer listed" in run("sync").stdout
    run("digest", "send")
    assert f"{TARGET} is no longer listed on ClinicalTrials.gov" in smtp.received[-1].part("plain")
    fake.refresh()
    run("sync")  # still gone: said once
    fake.put(record)
    fake.refresh()
    assert "1 listed again" in run("sync").stdout
    assert [c["kind"] for c in changes(run)] == ["delisted", "relisted"]  # never "new trial matching your search"
    run("digest", "send")
    assert "is listed on ClinicalTrials.gov again" in smtp.received[-1].part("plain")
    assert "New trial" not in smtp.received[-1].part("plain")


# --- two syncs at once ------------------------------------------------------------------------------


def test_a_second_sync_waits_or_says_one_is_running(
    run: Runner, fake: FakeRegistry, database: ScratchDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watcher import db, sync
    from watcher.config import load_config
    from watcher.db import database_of
    from watcher.store import Store

    run("sync")
    monkeypatch.setattr(sync, "SYNC_WAIT_S", 0.2)
    store = Store(database_of(load_config(run.config)))
    before = database.dump()
    with db.exclusive(store.engine, store.database, "sync"):
        fake.refresh()
        result = run("sync", code=1)
    store.close()
    assert result.stderr.startswith("error: a sync is already running on ")
    assert database.dump() == before


@pytest.mark.both_backends
@pytest.mark.slow
def test_two_overlapping_syncs_record_each_change_once(run: Runner, fake: FakeRegistry) -> None:
    from tests.support.world import new_mg_study

    run("sync")
    fake.put(new_mg_study())
    fake.refresh()
    fake.faults.latency_s = 0.3
    command = [sys.executable, "-m", "watcher", "--config", str(run.config), "sync"]
    syncs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [s.communicate(timeout=60) for s in syncs]
    assert [s.returncode for s in syncs] == [0, 0], results
    assert [(c["nct_id"], c["kind"]) for c in changes(run)] == [("NCT90000004", "new_study")]


# --- a slow or unfriendly registry ------------------------------------------------------------------


@pytest.mark.slow
def test_a_slow_registry_never_holds_the_database(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> None:
    subscribers = f'[[subscriber]]\nemail = "{ALICE}"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n'
    config = write_config(tmp_path, fake.base_url, extra=mail_config(smtp.port, subscribers))
    config.write_text(config.read_text().replace("timeout_s = 5\n", "timeout_s = 30\n", 1))
    run = Runner(config)
    run("sync")
    edit(fake, TARGET, lambda r: status_module(r).update(overallStatus="COMPLETED"))
    fake.faults.fetch_latency_s = 10
    sync = subprocess.Popen([sys.executable, "-m", "watcher", "--config", str(run.config), "sync"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: any("fields" not in s.params for s in fake.requests_to("/studies")), what="the full fetch")
        started = time.monotonic()
        run("digest", "send")  # writes (queues) while the sync waits on the registry
        run("changes")
        took = time.monotonic() - started
    finally:
        _, err = sync.communicate(timeout=60)
    assert took < 5, took  # it did not wait for the sync's 10 s fetch
    assert sync.returncode == 0, err
    assert [c["new"] for c in changes(run)] == ["COMPLETED"]


def test_retry_after_beyond_the_cap_fails_at_once_with_one_line(run: Runner, fake: FakeRegistry) -> None:
    fake.faults.rate_limit_next, fake.faults.retry_after = 1, "3600"
    started = time.monotonic()
    result = run("sync", code=1)
    assert time.monotonic() - started < 5
    assert result.stderr.startswith(
        f"error: {host(fake)} asked us to wait 3600 s before trying again (more than max_wait_s = 120); "
        "nothing was changed: try again after "
    )
    assert result.stderr.count("\n") == 1


def test_a_body_that_trickles_in_does_not_outlive_the_timeout(tmp_path: Path, fake: FakeRegistry) -> None:
    config = write_config(tmp_path, fake.base_url)
    config.write_text(
        config.read_text().replace("timeout_s = 5", "timeout_s = 2").replace("retries = 2", "retries = 0")
    )
    run = Runner(config)
    fake.faults.trickle_next, fake.faults.trickle_s = 100, 0.2  # 64 bytes every 0.2 s: never idle for 2 s
    started = time.monotonic()
    result = run("sync", code=1)
    took = time.monotonic() - started
    assert result.stderr == f"error: {host(fake)} sent its answer too slowly (over 2 s)\n"
    assert took < 10, took  # the whole body would take about a minute


def test_each_retry_says_why_and_the_error_names_the_host_without_credentials(
    tmp_path: Path, fake: FakeRegistry
) -> None:
    address = host(fake)
    fake.stop()
    config = write_config(tmp_path, f"http://reader:s3cret@{address}/api/v2")
    run = Runner(config)
    result = subprocess.run([sys.executable, "-m", "watcher", "--config", str(config), "sync"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ", 1)[1] for line in lines[:2]] == [
        f"{address}: connection refused; try 2 of 3 now",
        f"{address}: connection refused; try 3 of 3 now",
    ]
    assert lines[-1] == f"error: {address} did not answer after 3 tries (connection refused)"
    assert "s3cret" not in result.stderr and result.returncode == 1
    assert "s3cret" not in run("status").stdout and "s3cret" not in run("status", "--json").stdout


def test_redirects_only_to_the_same_host(run: Runner, fake: FakeRegistry) -> None:
    fake.faults.redirect_next, fake.faults.redirect_to = 1, "http://elsewhere.example/api/v2/version"
    result = run("sync", code=1)
    assert result.stderr == (
        f"error: {host(fake)} redirected to http://elsewhere.example/api/v2/version, another host; not followed\n"
    )
    secure = fake.base_url.replace("http://", "https://")  # the same host, another scheme
    fake.faults.redirect_next, fake.faults.redirect_to = 1, f"{secure}/version"
    result = run("sync", code=1)
    assert result.stderr == (
        f"error: {host(fake)} redirected to https://127.0.0.1/api/v2/version, https instead of http; not followed\n"
    )
    fake.faults.redirect_next, fake.faults.redirect_to = 1, f"{fake.base_url}/version"
    assert "baseline stored" in run("sync").stdout


@pytest.mark.slow
@pytest.mark.parametrize("how", ["cli", "daemon"])
def test_sigterm_during_a_wait_stops_within_a_second(tmp_path: Path, fake: FakeRegistry, how: str) -> None:
    config = write_config(tmp_path, fake.base_url, extra='[schedule]\nsync_every = "1h"\n')
    fake.faults.rate_limit_next, fake.faults.retry_after = 5, "60"  # honoured: under max_wait_s
    if how == "daemon":
        process = Daemon(config)
        wait_for(lambda: "try 2 of 3 in 60 s" in process.output, what="the wait")
        code, took = process.stop(signal.SIGTERM)
        output = process.output
    else:
        log = tmp_path / "cli.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen([sys.executable, "-m", "watcher", "--config", str(config), "sync"],
                                    stdout=handle, stderr=subprocess.STDOUT)  # fmt: skip
            wait_for(lambda: "try 2 of 3 in 60 s" in log.read_text(), what="the wait")
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code, took = proc.wait(10), time.monotonic() - started
        output = log.read_text()
    assert took < 5, took  # not the 60 s the registry asked for, nor the 8 s grace before a hard exit
    assert "Traceback" not in output
    assert code == (0 if how == "daemon" else 130), output


# --- subscribers and mail -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "shown", "message"),
    [
        ("zoë@ex.org", "zoë@ex.org", '"zoë@ex.org" has characters outside ASCII; international addresses are not supported'),
        ("bell\\u0007@ex.org", "bell@ex.org", "'bell\\x07@ex.org' holds control characters; it is not an email address"),
    ],
)  # fmt: skip
def test_addresses_a_mail_server_may_choke_on_are_refused_at_load(
    tmp_path: Path, written: str, shown: str, message: str
) -> None:
    path = tmp_path / "w.toml"
    path.write_text(
        f'[[watch]]\nname = "w"\nnct_ids = ["NCT01727193"]\n[[subscriber]]\nemail = "{written}"\nwatches = ["w"]\n'
    )
    result = Runner(path)("subscribers", code=2)
    assert result.stderr.startswith(f'error: {path}: [subscriber "{shown}"] email: {message}')
    assert result.stderr.count("\n") == 1


@pytest.mark.both_backends
def test_a_message_that_cannot_be_sent_is_marked_failed_and_the_others_go_out(
    tmp_path: Path, fake: FakeRegistry, database: ScratchDatabase
) -> None:
    from watcher.config import load_config
    from watcher.db import database_of
    from watcher.delivery import Couriers, queue_due
    from watcher.outbox import SendStatus, send_pending
    from watcher.store import Store
    from watcher.subscribers import enroll_subscribers

    people = ["a@example.org", "b@example.org", "c@example.org"]
    subs = "".join(
        f'[[subscriber]]\nemail = "{p}"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n' for p in people
    )
    run = Runner(write_config(tmp_path, fake.base_url, extra=mail_config(None, subs)))
    run("sync")
    edit(fake, TARGET, lambda r: status_module(r).update(overallStatus="COMPLETED"))
    run("sync")
    config = load_config(run.config)
    store = Store(database_of(config))
    enroll_subscribers(config, store, datetime.now(UTC))
    queue_due(config, store, datetime.now(UTC))

    sent: list[str] = []

    class Choking(Couriers):
        """The real couriers, with a mail transport that chokes on one address."""

        def deliver(self, claimed: Any) -> None:
            if claimed.email == "a@example.org":
                raise UnicodeEncodeError("ascii", "ë", 0, 1, "ordinal not in range(128)")
            sent.append(claimed.email)

    outcomes = send_pending(store, lambda: Choking(config), lambda: datetime.now(UTC))
    store.close()
    assert [(o.recipient, o.status) for o in outcomes] == [
        ("a@example.org", SendStatus.FAILED), ("b@example.org", SendStatus.SENT), ("c@example.org", SendStatus.SENT)
    ]  # fmt: skip
    assert "UnicodeEncodeError" in outcomes[0].detail and sent == people[1:]


@pytest.mark.both_backends
def test_a_digest_that_cannot_be_built_does_not_roll_back_the_others(
    tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer, database: ScratchDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watcher import delivery

    people = ["a@example.org", "b@example.org"]
    subs = "".join(
        f'[[subscriber]]\nemail = "{p}"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n' for p in people
    )
    run = Runner(write_config(tmp_path, fake.base_url, extra=mail_config(smtp.port, subs)))
    run("sync")
    edit(fake, TARGET, lambda r: status_module(r).update(overallStatus="COMPLETED"))
    run("sync")
    render = delivery._render

    def choke_on_a(digest: Any) -> Any:
        if digest.email == "a@example.org":
            raise ValueError("a value the template cannot take")
        return render(digest)

    monkeypatch.setattr(delivery, "_render", choke_on_a)
    result = run("digest", "send", code=1)
    assert "a@example.org" in result.stderr and "could not be built" in result.stderr
    assert [r.recipients for r in smtp.received] == [["b@example.org"]]
    monkeypatch.setattr(delivery, "_render", render)
    run("digest", "send")  # a's changes are still pending for a
    assert sorted(r.recipients[0] for r in smtp.received) == people


def test_registry_text_is_cleaned_in_subjects_plain_text_and_lines(
    tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer
) -> None:
    subscribers = f'[[subscriber]]\nemail = "{ALICE}"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n'
    run = Runner(write_config(tmp_path, fake.base_url, extra=mail_config(smtp.port, subscribers)))
    run("sync")
    hostile = "Trial\x1b[31m red\x00 \u202eevil\u202c\r\nsecond line\x07"
    edit(fake, TARGET, lambda r: r["protocolSection"]["identificationModule"].update(briefTitle=hostile))
    edit(fake, TARGET, lambda r: status_module(r).update(overallStatus=f"COMPLETED{hostile}"))
    run("sync")
    run("digest", "send")
    [received] = smtp.received
    plain, subject = received.part("plain"), received.message["Subject"]
    for text in (plain, subject, run("changes").stdout, run("history", TARGET).stdout):
        assert not any(c in text for c in "\x1b\x00\x07\u202e\u202c\r"), repr(text)
    assert "Trial[31m red evil second line" in plain
    lines = run("changes").stdout.splitlines()
    assert all(line.startswith("#") for line in lines)  # a line break in a title never splits a line
    title, *events = run("history", TARGET).stdout.splitlines()
    assert title.startswith("NCT01727193  Trial") and all(line.startswith("  20") for line in events)


def test_a_new_watch_brings_only_its_news_from_then_on_and_leaving_forgets(
    tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer
) -> None:
    watches = '\n[[watch]]\nname = "target"\nnct_ids = ["NCT01727193"]\n[[watch]]\nname = "other"\nnct_ids = ["NCT90000001"]\n'

    def configure(follows: list[str], kinds: str = "") -> Runner:
        subscriber = (
            f'[[subscriber]]\nemail = "{ALICE}"\nwatches = {json.dumps(follows)}\nfrequency = "immediate"\n{kinds}'
        )
        return Runner(write_config(tmp_path, fake.base_url, watches=watches, extra=mail_config(smtp.port, subscriber)))

    run = configure(["target"])
    run("sync")
    edit(fake, "NCT90000001", lambda r: status_module(r).update(overallStatus="SUSPENDED"))
    run("sync")  # news in "other", which Alice does not follow yet
    run = configure(["target", "other"])
    assert run("digest", "send").stdout == "No digest is due.\n"  # not the old news of the watch she just added
    edit(fake, "NCT90000001", lambda r: status_module(r).update(overallStatus="RECRUITING"))
    run("sync")
    run("digest", "send")
    assert "Suspended → Recruiting" in smtp.received[-1].part("plain")
    run = configure(["target"])  # she leaves "other" ...
    run("sync")
    edit(fake, "NCT90000001", lambda r: status_module(r).update(overallStatus="COMPLETED"))
    run("sync")
    run = configure(["target", "other"])  # ... and comes back: what happened meanwhile is not hers
    assert run("digest", "send").stdout == "No digest is due.\n"
    assert len(smtp.received) == 1
    edit(fake, TARGET, lambda r: status_module(r).update(overallStatus="COMPLETED"))
    run = configure(["target", "other"], 'kinds = ["results"]\n')
    run("sync")
    listing = json.loads(run("subscribers", "--json").stdout)
    assert listing[0]["pending_changes"] == 0  # her filter leaves nothing: nothing is pending


# --- the daemon never goes quiet ---------------------------------------------------------------------


def test_any_failure_in_a_job_is_logged_counted_and_digests_still_go_out(
    tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, database: ScratchDatabase,
) -> None:  # fmt: skip
    from tests.test_daemon import Clock, make_worker
    from watcher import sync

    clock = Clock("2026-11-25T10:00:00")
    worker = make_worker(tmp_path, fake, smtp.port, "immediate", 'sync_every = "6h"', clock)
    worker.sync_job()
    edit(fake, TARGET, lambda r: status_module(r).update(overallStatus="COMPLETED"))
    smtp.recorder.data_replies = ["451 4.3.0 later"]  # the digest waits in the outbox
    worker.sync_job()
    assert smtp.received == []

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(sync, "_sync", broken)
    clock.set("2026-11-25T16:00:00")
    worker.sync_job()  # must not raise
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "sync failed" in r.getMessage()]
    assert len(errors) == 1 and "unexpected error: KeyError" in errors[0].getMessage()
    assert database.rows("select outcome from syncrun order by id desc limit 1") == [("failed",)]
    assert len(smtp.received) == 1  # the queued digest still went out after the failed sync
    assert worker.next_retry is not None and (worker.next_retry - clock()).total_seconds() == 300


@pytest.mark.parametrize("job", ["digest_job", "resend_job"])
def test_any_failure_in_the_mail_jobs_is_one_error_line_with_the_details_at_debug(
    tmp_path: Path, fake: FakeRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, job: str
) -> None:
    from tests.test_daemon import Clock, make_worker
    from watcher import delivery, outbox

    worker = make_worker(tmp_path, fake, None, "immediate", "", Clock("2026-11-25T10:00:00"))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(delivery, "send_due", broken)
    monkeypatch.setattr(delivery, "resend_due", broken)
    monkeypatch.setattr(outbox, "pending_due", lambda *args: True)
    caplog.set_level(logging.DEBUG, logger="watcher.scheduler")
    getattr(worker, job)()  # must not raise
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "unexpected error: KeyError: 'a bug'" in errors[0].getMessage()
    assert any(r.levelname == "DEBUG" and r.exc_info for r in caplog.records)  # the traceback, at DEBUG


def test_a_failed_sync_is_retried_sooner_doubling_up_to_the_interval(tmp_path: Path, fake: FakeRegistry) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    from tests.test_daemon import Clock, make_worker

    clock = Clock("2026-11-25T10:00:00")
    worker = make_worker(tmp_path, fake, None, "daily", 'sync_every = "30m"', clock)
    worker.scheduler = BackgroundScheduler(timezone="UTC")
    worker.scheduler.start(paused=True)  # jobs are kept, never run
    try:
        fake.faults.version_down = True
        waits = []
        for _ in range(4):
            worker.sync_job()
            job = worker.scheduler.get_job("sync-retry")
            waits.append((job.trigger.run_date - clock()).total_seconds() / 60)
        assert waits == [5, 10, 20, 30]  # doubling, up to the 30-minute interval
        fake.faults.version_down = False
        worker.sync_job()
        assert worker.scheduler.get_job("sync-retry") is None
    finally:
        worker.scheduler.shutdown(wait=False)


def test_the_alert_fires_when_failures_jump_past_the_threshold(tmp_path: Path, fake: FakeRegistry) -> None:
    from tests.test_daemon import Clock, make_worker
    from watcher.runs import record_failure

    clock = Clock("2026-11-25T10:00:00")
    worker = make_worker(tmp_path, fake, None, "daily", "alert_after_failures = 2", clock,
                         operator='operator = "ops@example.org"')  # fmt: skip
    record_failure(worker.store, None, clock(), "a one-off `watcher sync` failed", clock)  # 1 ...
    record_failure(worker.store, None, clock(), "and another", clock)  # ... 2: by commands, not the daemon
    fake.faults.version_down = True
    worker.sync_job()  # 3: past the threshold without the daemon seeing it reached
    worker.sync_job()
    alerts = list((tmp_path / "outbox").glob("*-operator.eml"))
    assert len(alerts) == 1


@pytest.mark.slow
def test_the_single_daemon_lock_holds_through_a_hard_link(tmp_path: Path, fake: FakeRegistry) -> None:
    first = write_config(tmp_path, fake.base_url, extra='[schedule]\nsync_every = "1h"\n')
    Runner(first)("sync")
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.link(tmp_path / "watcher.db", other / "linked.db")
    second = write_config(other, fake.base_url, extra='[schedule]\nsync_every = "1h"\n')
    second.write_text(second.read_text().replace("sqlite:///watcher.db", "sqlite:///linked.db"))
    daemon = Daemon(first)
    try:
        wait_for(lambda: "daemon started" in daemon.output, what="the daemon")
        twin = subprocess.run([sys.executable, "-m", "watcher", "--config", str(second), "daemon"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    finally:
        daemon.stop()
    assert twin.returncode == 1
    assert twin.stderr.strip() == f"error: another watcher daemon is already running on {other / 'linked.db'}"


def test_a_failed_outbox_write_leaves_no_stray_file(tmp_path: Path) -> None:
    from watcher.mailer import Deferred, OutboxTransport

    folder = tmp_path / "outbox"
    (folder / "blocked.eml").mkdir(parents=True)  # the target name is taken by a folder: the rename fails
    with pytest.raises(Deferred):
        OutboxTransport(folder).send(b"message", "a@example.org", "b@example.org", "blocked")
    assert [p.name for p in folder.iterdir()] == ["blocked.eml"]


# --- new-user paper cuts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "has no [[watch]] table: add one to say what to watch (see config.example.toml)"),
        ('[ctgov]\ntimeout_s = 10\n', "has no [[watch]] table: add one to say what to watch (see config.example.toml)"),
        ('[[watch]]\nname = "w"\nnct_ids = ["NCT01727193"]\n[smtp]\nhost = "mail.example.org"\n',
         "[mail] from: is required with [smtp]: the address digests come from (never watcher@localhost)"),
    ],
)  # fmt: skip
def test_configs_that_would_do_nothing_or_send_as_localhost_are_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "w.toml"
    path.write_text(text)
    result = Runner(path)("sync", code=2)
    assert result.stderr == f"error: {path}: {message}\n"


def test_since_takes_the_durations_of_the_config(run: Runner, fake: FakeRegistry) -> None:
    run("sync")
    edit(fake, TARGET, lambda r: status_module(r).update(overallStatus="COMPLETED"))
    run("sync")
    for age in ("10m", "6h", "7d", "2w", "1h30m"):
        assert len(changes(run, "--since", age)) == 1, age
    assert run("changes", "--since", "soon", code=2).stderr.startswith('error: --since: "soon" is not a date')


def test_digest_send_says_an_error_once(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> None:
    subscribers = f'[[subscriber]]\nemail = "{ALICE}"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n'
    config = write_config(tmp_path, fake.base_url, extra=mail_config(smtp.port, subscribers))
    run = Runner(config)
    run("sync")
    edit(fake, TARGET, lambda r: status_module(r).update(overallStatus="COMPLETED"))
    run("sync")
    smtp.recorder.data_replies = ["451 4.3.0 try again later"]
    result = subprocess.run([sys.executable, "-m", "watcher", "--config", str(config), "digest", "send"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("451 4.3.0 try again later") == 1, result.stderr


def test_preview_to_a_folder_that_does_not_exist_is_one_line(tmp_path: Path, fake: FakeRegistry) -> None:
    subscribers = f'[[subscriber]]\nemail = "{ALICE}"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n'
    run = Runner(write_config(tmp_path, fake.base_url, extra=mail_config(None, subscribers)))
    run("sync")
    edit(fake, TARGET, lambda r: status_module(r).update(overallStatus="COMPLETED"))
    run("sync")
    missing = tmp_path / "no" / "such" / "folder" / "p.html"
    result = run("digest", "preview", ALICE, "--html", str(missing), code=1)
    assert result.stderr == f"error: {missing}: cannot write the HTML part (No such file or directory)\n"


def test_make_demo_starts_from_a_fresh_folder(tmp_path: Path, fake: FakeRegistry) -> None:
    from tests.support import demo

    folder = tmp_path / "demo-run"
    folder.mkdir()
    (folder / "watcher.db").write_text("yesterday's database, against yesterday's registry")
    config = demo.prepare(folder, fake.base_url)
    assert not (folder / "watcher.db").exists()
    assert fake.base_url in config.read_text()
