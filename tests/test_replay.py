"""Replay on sync: versions missed between two polls are read from the registry's version history
and recorded one by one, with their dates; any trouble with the history falls back to the plain
comparison, and the sync still succeeds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FakeClock, Runner, ScratchDatabase, mail_config, write_config
from tests.support.fakeapi import FakeRegistry
from watcher.config import load_config
from watcher.db import database_of
from watcher.registry import Registry
from watcher.states import RunOutcome
from watcher.store import Store
from watcher.sync import SyncReport, run_sync

OCULAR = "NCT90000001"  # a related MG trial in the watch's search, recruiting
GENERALIZED = "NCT90000002"  # another, active, not recruiting
TWO_DAYS_LATER = "2026-11-26T09:00:05"  # the registry's data moved by more than a daily refresh
ALICE = '[[subscriber]]\nemail = "alice@example.org"\nwatches = ["mg-azathioprine"]\nfrequency = "daily"\n'


def status(value: str) -> Callable[[dict[str, Any]], None]:
    return lambda r: r["protocolSection"]["statusModule"].update(overallStatus=value)


def enrollment(count: int) -> Callable[[dict[str, Any]], None]:
    return lambda r: r["protocolSection"]["designModule"]["enrollmentInfo"].update(count=count)


def history_requests(fake: FakeRegistry) -> list[str]:
    return [s.path.removeprefix("/api/int/studies/") for s in fake.log if s.path.startswith("/api/int/")]


def changes(run: Runner, nct_id: str) -> list[tuple[Any, ...]]:
    found = json.loads(run("changes", "--json", "--nct", nct_id).stdout)
    return [(c["summary"], c["effective_date"], c["registry_version"]) for c in found]


def sync_with_budget(run: Runner, budget: int) -> SyncReport:
    """One sync in this process with a smaller cap on history reads than the real 200."""
    config = load_config(run.config)
    store = Store(database_of(config))
    try:
        with Registry(config.ctgov) as registry:
            return run_sync(config, store, registry, history_budget=budget)
    finally:
        store.close()


@pytest.fixture
def gaps(tmp_path: Path, fake: FakeRegistry, paced_clock: FakeClock) -> Runner:
    """The default history mode, with the registry's pace on a fake clock; baseline synced."""
    runner = Runner(write_config(tmp_path, fake.base_url, extra=mail_config(None, ALICE)))
    runner("sync")
    fake.log.clear()
    return runner


@pytest.mark.both_backends
def test_three_versions_missed_during_downtime_are_three_dated_changes(
    gaps: Runner, fake: FakeRegistry, database: ScratchDatabase
) -> None:
    fake.add_version(OCULAR, "2026-11-18", status("ACTIVE_NOT_RECRUITING"))
    fake.add_version(OCULAR, "2026-11-19", enrollment(42))
    fake.add_version(OCULAR, "2026-11-20", status("COMPLETED"))
    fake.refresh(TWO_DAYS_LATER)
    out = gaps("sync").stdout
    assert changes(gaps, OCULAR) == [
        ("Status: Recruiting → Active, not recruiting", "2026-11-18", 1),
        ("Enrollment: 75 → 42", "2026-11-19", 2),
        ("Status: Active, not recruiting → Completed", "2026-11-20", 3),
    ]
    # the index, then versions 1 and 2; version 3 is the record the sync fetched
    assert history_requests(fake) == [f"{OCULAR}/history", f"{OCULAR}/history/1", f"{OCULAR}/history/2"]
    assert "Registry history: 1 trial told version by version, 3 changes dated (2 versions read)" in out
    # versions 1 and 2 as read, and 3: the record the sync fetched
    assert database.rows("select count(*) from registryversion where nct_id = :n and record is not null", n=OCULAR) == [
        (3,)
    ]


def test_the_trials_own_history_names_the_version_and_date_of_replayed_changes(
    gaps: Runner, fake: FakeRegistry
) -> None:
    fake.add_version(OCULAR, "2026-11-18", status("ACTIVE_NOT_RECRUITING"))
    fake.add_version(OCULAR, "2026-11-20", status("COMPLETED"))
    fake.refresh(TWO_DAYS_LATER)
    gaps("sync")
    lines = gaps("history", OCULAR).stdout.splitlines()
    today = lines[1].split()[0]  # first stored: the baseline
    assert lines[2:] == [
        f"  {today}  Status: Recruiting → Active, not recruiting (registry version 1 of 2026-11-18)",
        f"  {today}  Status: Active, not recruiting → Completed (registry version 2 of 2026-11-20)",
    ]


def test_the_digest_tells_each_step_with_its_date(gaps: Runner, fake: FakeRegistry) -> None:
    fake.add_version(OCULAR, "2026-11-18", status("ACTIVE_NOT_RECRUITING"))
    fake.add_version(OCULAR, "2026-11-20", status("COMPLETED"))
    fake.refresh(TWO_DAYS_LATER)
    gaps("sync")
    text = " ".join(gaps("digest", "preview", "alice@example.org", "--text").stdout.split())  # unwrapped
    assert (
        "Status changed to Active, not recruiting on 18 Nov 2026, then to Completed on 20 Nov 2026 (was Recruiting)"
        in text
    )


def test_a_change_made_and_reverted_between_polls_is_both(gaps: Runner, fake: FakeRegistry) -> None:
    fake.add_version(OCULAR, "2026-11-18", status("SUSPENDED"))
    fake.add_version(OCULAR, "2026-11-21", status("RECRUITING"))
    fake.refresh(TWO_DAYS_LATER)
    gaps("sync")
    assert changes(gaps, OCULAR) == [
        ("Status: Recruiting → Suspended", "2026-11-18", 1),
        ("Status: Suspended → Recruiting", "2026-11-21", 2),
    ]
    text = " ".join(gaps("digest", "preview", "alice@example.org", "--text").stdout.split())  # unwrapped
    assert "Status changed to Suspended on 18 Nov 2026, back to Recruiting on 21 Nov 2026" in text


def test_a_quiet_poll_an_ordinary_day_and_a_first_sync_ask_no_history(
    tmp_path: Path, fake: FakeRegistry, paced_clock: FakeClock
) -> None:
    run = Runner(write_config(tmp_path, fake.base_url))
    run("sync")  # the baseline
    fake.add_version(OCULAR, "2026-11-24", status("ACTIVE_NOT_RECRUITING"))
    fake.add_version(OCULAR, "2026-11-24", status("COMPLETED"))
    run("sync")  # the data did not move: nothing is fetched
    fake.refresh()  # the next daily refresh
    run("sync")
    assert history_requests(fake) == []
    assert changes(run, OCULAR) == [("Status: Recruiting → Completed", None, None)]  # one flattened change, as before


def test_always_asks_on_an_ordinary_day_and_dates_a_single_version_for_free(
    tmp_path: Path, fake: FakeRegistry, paced_clock: FakeClock
) -> None:
    run = Runner(write_config(tmp_path, fake.base_url, ctgov='history = "always"'))
    run("sync")
    fake.log.clear()
    fake.add_version(OCULAR, "2026-11-24", status("ACTIVE_NOT_RECRUITING"))
    fake.refresh()
    run("sync")
    assert changes(run, OCULAR) == [("Status: Recruiting → Active, not recruiting", "2026-11-24", 1)]
    assert history_requests(fake) == [f"{OCULAR}/history"]  # one version: the index says which it is


def test_off_never_asks(tmp_path: Path, fake: FakeRegistry, paced_clock: FakeClock) -> None:
    run = Runner(write_config(tmp_path, fake.base_url, ctgov='history = "off"'))
    run("sync")
    fake.add_version(OCULAR, "2026-11-18", status("ACTIVE_NOT_RECRUITING"))
    fake.add_version(OCULAR, "2026-11-20", status("COMPLETED"))
    fake.refresh(TWO_DAYS_LATER)
    run("sync")
    assert history_requests(fake) == []
    assert changes(run, OCULAR) == [("Status: Recruiting → Completed", None, None)]


def test_markdown_and_html_text_make_no_false_change_in_a_replay(gaps: Runner, fake: FakeRegistry) -> None:
    def markdown(r: dict[str, Any]) -> None:
        r["protocolSection"]["identificationModule"]["briefTitle"] = (
            "Low-dose AZA \\[LOW-AZA\\] & Prednisone \\<in OMG\\>"
        )
        r["protocolSection"]["sponsorCollaboratorsModule"]["leadSponsor"]["name"] = "Sun Yat-sen University & Partners"

    fake.add_version(OCULAR, "2026-11-17", markdown)
    fake.refresh()
    gaps("sync")  # an ordinary day: the Markdown record is stored as the API v2 gives it
    fake.add_version(OCULAR, "2026-11-18", status("SUSPENDED"))
    fake.add_version(OCULAR, "2026-11-19", lambda r: r["protocolSection"]["statusModule"].update(
        overallStatus="TERMINATED", whyStopped="Sponsor's *decision*: funding \\& drug supply"))  # fmt: skip
    fake.refresh("2026-11-28T09:00:05")
    gaps("sync")
    assert [c[0] for c in changes(gaps, OCULAR)] == [
        "Title: Low-dose Azathioprine in Ocular Myasthenia Gravis → Low-dose AZA [LOW-AZA] & Prednisone <in OMG>",
        "Lead sponsor: Ascentage Pharma Group Inc. → Sun Yat-sen University & Partners",
        "Status: Recruiting → Suspended",
        "Status: Suspended → Terminated",
        "Reason for stopping given",
    ]  # the title and sponsor once (the ordinary day), not again from the versions' HTML


FALLBACKS = [
    (
        {"history_status": 404},
        "! NCT90000001: {host} has no version history for this trial (404); "
        "its changes were found by comparing records",
    ),
    (
        {"history_status": 429},
        "! NCT90000001: {host} is rate limiting history requests (429) and kept doing so; its version history "
        "was not read; for 1 trial, changes were found by comparing records",
    ),
    (
        {"history_html": True},
        "! NCT90000001: {host} sent a web page instead of its version history; for 1 trial, changes were found by "
        "comparing records",
    ),
    (
        {"history_wrong_shape": True},
        "! NCT90000001: the registry's version history has an unexpected shape (no list of versions); its changes "
        "were found by comparing records",
    ),
    (
        {"history_wrong_shape": True, "history_fault_on": "versions"},
        "! NCT90000001: the registry's version history has an unexpected shape (version 1 holds no study record); "
        "its changes were found by comparing records",
    ),
]


@pytest.mark.parametrize(("fault", "said"), FALLBACKS)
def test_history_trouble_falls_back_to_the_plain_comparison(
    gaps: Runner, fake: FakeRegistry, fault: dict[str, Any], said: str
) -> None:
    fake.add_version(OCULAR, "2026-11-18", status("ACTIVE_NOT_RECRUITING"))
    fake.add_version(OCULAR, "2026-11-20", status("COMPLETED"))
    for key, value in fault.items():
        setattr(fake.faults, key, value)
    fake.faults.retry_after = None
    fake.refresh(TWO_DAYS_LATER)
    result = gaps("sync")  # exit 0: history never fails a sync
    host = fake.base_url.split("/")[2]
    assert said.format(host=host) in result.stdout.splitlines()
    assert changes(gaps, OCULAR) == [("Status: Recruiting → Completed", None, None)]  # the flattened change, once


def test_a_service_failure_stops_the_asking_for_the_rest_of_the_sync(gaps: Runner, fake: FakeRegistry) -> None:
    for nct_id in (OCULAR, GENERALIZED):
        fake.add_version(nct_id, "2026-11-18", status("SUSPENDED"))
        fake.add_version(nct_id, "2026-11-20", status("TERMINATED"))
    fake.faults.history_status = 403
    fake.refresh(TWO_DAYS_LATER)
    out = gaps("sync").stdout
    assert history_requests(fake) == [f"{OCULAR}/history"]  # the first refusal ends the asking
    host = fake.base_url.split("/")[2]
    assert (
        f"! NCT90000001: {host} refused the request for its version history (403); for 2 trials, changes were found "
        "by comparing records" in out.splitlines()
    )
    assert changes(gaps, GENERALIZED) == [("Status: Active, not recruiting → Terminated", None, None)]


@pytest.mark.both_backends
def test_the_cap_leaves_a_trial_whole_for_the_next_sync_which_goes_on(
    gaps: Runner, fake: FakeRegistry, database: ScratchDatabase
) -> None:
    for day, value in (("2026-11-16", "SUSPENDED"), ("2026-11-17", "RECRUITING"), ("2026-11-18", "COMPLETED")):
        fake.add_version(OCULAR, day, status(value))  # needs versions 1 and 2
    for day, count in (("2026-11-16", 70), ("2026-11-17", 80), ("2026-11-18", 90), ("2026-11-19", 100)):
        fake.add_version(GENERALIZED, day, enrollment(count))  # needs versions 1, 2 and 3
    fake.refresh(TWO_DAYS_LATER)
    first = sync_with_budget(gaps, 3)
    assert (first.history.replayed, first.history.fetched, first.history.deferred) == (1, 3, [GENERALIZED])
    assert [c[0] for c in changes(gaps, GENERALIZED)] == []  # left whole: no change, its old record stays
    assert len(changes(gaps, OCULAR)) == 3
    fake.log.clear()
    second = sync_with_budget(gaps, 3)  # a fresh process, as after a restart
    third = sync_with_budget(gaps, 3)
    # the data did not move, but the trial left over does not wait for the registry's next refresh
    assert second.outcome is RunOutcome.OK
    assert history_requests(fake) == [f"{GENERALIZED}/history", f"{GENERALIZED}/history/2", f"{GENERALIZED}/history/3"]
    assert (second.history.replayed, second.history.fetched, second.history.from_store) == (1, 2, 1)
    assert third.outcome is RunOutcome.UNCHANGED  # nothing left over: a quiet poll again
    assert changes(gaps, GENERALIZED) == [
        ("Enrollment: 87 → 70", "2026-11-16", 1),
        ("Enrollment: 70 → 80", "2026-11-17", 2),
        ("Enrollment: 80 → 90", "2026-11-18", 3),
        ("Enrollment: 90 → 100", "2026-11-19", 4),
    ]


def test_a_check_while_the_history_is_read_records_each_change_once(
    gaps: Runner, fake: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watcher import sync

    fake.add_version(OCULAR, "2026-11-18", status("SUSPENDED"))
    fake.add_version(OCULAR, "2026-11-20", status("TERMINATED"))
    fake.refresh(TWO_DAYS_LATER)
    read_history = sync.gather

    def meanwhile(*args: Any, **kwargs: Any) -> Any:
        work = read_history(*args, **kwargs)
        gaps("check", OCULAR)  # stores the new record and its change before the sync writes
        return work

    monkeypatch.setattr(sync, "gather", meanwhile)
    gaps("sync")
    assert changes(gaps, OCULAR) == [("Status: Recruiting → Terminated", None, None)]  # once, by the check


def test_a_version_that_is_not_the_shape_the_api_promises_is_a_fallback(gaps: Runner, fake: FakeRegistry) -> None:
    fake.add_version(OCULAR, "2026-11-18", enrollment("about forty"))  # type: ignore[arg-type]
    fake.add_version(OCULAR, "2026-11-20", enrollment(40))
    fake.refresh(TWO_DAYS_LATER)
    out = gaps("sync").stdout
    assert (
        "! NCT90000001: version 1 is malformed (protocolSection.designModule.enrollmentInfo.count is 'about forty', "
        "not a whole number); its changes were found by comparing records" in out.splitlines()
    )
    assert changes(gaps, OCULAR) == [("Enrollment: 75 → 40", None, None)]


def test_a_record_with_a_null_status_module_never_fails_a_sync_that_reads_history(
    gaps: Runner, fake: FakeRegistry
) -> None:
    fake.add_version(OCULAR, "2026-11-18", enrollment(40))
    fake.records[OCULAR]["protocolSection"]["statusModule"] = None  # null: read as absent by the API's rules
    fake.refresh(TWO_DAYS_LATER)
    gaps("sync")  # exit 0
    assert ("Enrollment: 75 → 40", None, None) in changes(gaps, OCULAR)


def test_a_sync_reads_at_most_its_budget_of_indexes_and_compares_the_rest_plainly(
    gaps: Runner, fake: FakeRegistry
) -> None:
    for nct_id in (OCULAR, GENERALIZED):
        fake.add_version(nct_id, "2026-11-18", status("SUSPENDED"))
        fake.add_version(nct_id, "2026-11-20", status("TERMINATED"))
    fake.refresh(TWO_DAYS_LATER)
    report = sync_with_budget(gaps, 1)
    assert (report.history.asked, report.history.unasked, report.history.replayed) == (1, 1, 1)
    assert [c[1] for c in changes(gaps, OCULAR)] == ["2026-11-18", "2026-11-20"]
    assert changes(gaps, GENERALIZED) == [("Status: Active, not recruiting → Terminated", None, None)]
