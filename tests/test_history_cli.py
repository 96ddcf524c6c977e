"""`watcher history NCT… --registry` against the fake API's history routes: the timeline as a user
reads it, the JSON, what it costs, and one-line errors when the registry's history fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FakeClock, Runner, ScratchDatabase, write_config
from tests.support.fakeapi import FakeRegistry
from tests.support.world import HISTORY_STUDY, TARGET, history_versions
from watcher import history
from watcher.config import load_config
from watcher.db import database_of
from watcher.registry import Registry
from watcher.store import Store, load_records
from watcher.versions import fetch_versions

TIMELINE = """\
NCT03690141  An Open-label Study Examining the Effect of Tomivosertib (eFT508) in Patients With
             Advanced Castrate-resistant Prostate Cancer (CRPC)
  10 registry versions since 2018-09-27 (dates are submission dates, usually a few days before posting)

  2018-09-27  v0  First submitted · Not yet recruiting · 30 participants planned · 1 site
  2018-10-16  v1  Status: Not yet recruiting → Recruiting
                  New site: Northwestern University, Chicago, United States
                  Start is now actual (was estimated)
  2018-11-15  v2  New site: Kimmel Center at Johns Hopkins, Baltimore, United States
                  New site: Karmanos Cancer Institute, Detroit, United States
                  Title: An Open-label Study Examining the Effect of eFT508 in Patients With Advanced
                    Castrate-resistant Prostate Cancer (CRPC) → An Open-label Study Examining the Effect
                    of Tomivosertib (eFT508) in Patients With Advanced Castrate-resistant Prostate
                    Cancer (CRPC)
  2018-11-16  v3  New site: Washington University, Saint Louis, United States
  2018-12-11  v4  New site: Comprehensive Cancer Centers of Nevada, Las Vegas, United States
                  New site: The Urology Group, Cincinnati, United States
  2019-01-18  v5  New site: Lancaster Urology, Lancaster, United States
                  New site: Carolina Urologic Research Center, Myrtle Beach, United States
  2019-01-22  v6  New site: University of Washington, Seattle, United States
  2019-07-16  v7  Status: Recruiting → Active, not recruiting
                  Enrollment: 30 (estimated) → 16 (actual)
  2019-12-04  v8  Primary completion moved from Jun 2020 to Apr 2020 (2 months earlier)
                  Completion moved from Dec 2020 to Apr 2020 (8 months earlier)
  2020-04-27  v9  Status: Active, not recruiting → Completed
                  Primary completion is now actual (was estimated)
                  Completion is now actual (was estimated)

  11 requests (the index and 10 versions, now stored)
  https://clinicaltrials.gov/study/NCT03690141?tab=history
"""


@pytest.fixture
def story(fake: FakeRegistry) -> FakeRegistry:
    """The fake registry, also holding NCT03690141 with its ten versions (see fixtures/README.md)."""
    fake.set_history(HISTORY_STUDY, history_versions())
    return fake


def int_requests(fake: FakeRegistry) -> list[str]:
    return [s.path for s in fake.log if s.path.startswith("/api/int/")]


@pytest.mark.both_backends
def test_the_whole_story_then_the_second_call_costs_one_request(
    run: Runner, story: FakeRegistry, paced_clock: FakeClock, database: ScratchDatabase
) -> None:
    assert run("history", HISTORY_STUDY, "--registry").stdout == TIMELINE
    assert len(int_requests(story)) == 11 and not [s for s in story.log if s.path.startswith("/api/v2")]
    assert paced_clock.waits == [1.0] * 10  # one request a second: the first waits for nothing
    story.log.clear()
    again = run("history", HISTORY_STUDY, "--registry").stdout
    assert int_requests(story) == [f"/api/int/studies/{HISTORY_STUDY}/history"]
    assert again == TIMELINE.replace(
        "11 requests (the index and 10 versions, now stored)", "1 request (the index); 10 versions read from the store"
    )
    assert database.rows("select count(*) from registryversion where record is not null") == [(10,)]


def test_the_json_lists_statuses_and_each_versions_changes(
    run: Runner, story: FakeRegistry, paced_clock: FakeClock
) -> None:
    data = json.loads(run("history", HISTORY_STUDY, "--registry", "--json").stdout)
    assert (data["nct_id"], data["versions"], data["first_submitted"], data["dates"]) == (
        HISTORY_STUDY, 10, "2018-09-27", "submission")  # fmt: skip
    assert data["first"] == {
        "version": 0, "date": "2018-09-27", "status": "NOT_YET_RECRUITING",
        "summary": "First submitted · Not yet recruiting · 30 participants planned · 1 site",
    }  # fmt: skip
    assert [(s["version"], s["date"], s["label"]) for s in data["statuses"]] == [
        (0, "2018-09-27", "Not yet recruiting"), (1, "2018-10-16", "Recruiting"),
        (7, "2019-07-16", "Active, not recruiting"), (9, "2020-04-27", "Completed"),
    ]  # fmt: skip
    assert [e["version"] for e in data["events"]] == list(range(1, 10))
    last = data["events"][-1]
    assert last["summary"][0] == "Status: Active, not recruiting → Completed"
    status = last["changes"][0]
    assert status == {
        "nct_id": HISTORY_STUDY, "kind": "changed", "field": "protocolSection.statusModule.overallStatus",
        "old": "ACTIVE_NOT_RECRUITING", "new": "COMPLETED", "site": None, "title": data["title"],
        "summary": "Status: Active, not recruiting → Completed", "effective_date": "2020-04-27", "registry_version": 9,
    }  # fmt: skip
    logged = json.loads(run("changes", "--json").stdout)
    assert logged == []  # reading the story records nothing in the change log
    assert (data["requests"], data["fetched"], data["from_store"]) == (11, 10, 0)


def test_edits_become_versions_the_story_tells(run: Runner, fake: FakeRegistry, paced_clock: FakeClock) -> None:
    fake.add_version(
        TARGET,
        "2019-03-01",
        lambda r: r["protocolSection"]["statusModule"].update(overallStatus="ACTIVE_NOT_RECRUITING"),
    )
    fake.add_version(
        TARGET, "2019-06-01", lambda r: r["protocolSection"]["designModule"]["phases"].append("PHASE4")
    )  # untracked? no: phases are tracked
    fake.add_version(  # the registry's labels for an edit of the eligibility criteria alone
        TARGET,
        "2019-09-01",
        lambda r: r["protocolSection"]["eligibilityModule"].update(minimumAge="16 Years"),
        labels=["Eligibility"],
    )
    out = run("history", TARGET, "--registry").stdout
    assert "  2019-03-01  v1  Status: Unknown status → Active, not recruiting\n" in out
    assert "  2019-06-01  v2  Phase: Phase 3 → Phase 3 / Phase 4\n" in out
    assert "v3" not in out  # eligibility only: not fetched, nothing to tell
    assert int_requests(fake) == [f"/api/int/studies/{TARGET}/history"] + [
        f"/api/int/studies/{TARGET}/history/{n}" for n in (0, 1, 2)
    ]


def test_off_refuses_registry_history_before_any_request(tmp_path: Path, fake: FakeRegistry) -> None:
    run = Runner(write_config(tmp_path, fake.base_url, extra="").with_name("watcher.toml"))
    config = tmp_path / "watcher.toml"
    config.write_text(config.read_text().replace("timeout_s = 5", 'timeout_s = 5\nhistory = "off"'))
    result = run("history", TARGET, "--registry", code=2)
    assert result.stderr == (
        'error: watcher.toml: [ctgov] history is "off", so the registry\'s version history is not read; '
        'set it to "gaps" or "always" to use --registry\n'
    )
    assert fake.log == []
    run("history", TARGET, code=1)  # without --registry: what is recorded here (nothing yet)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"history_status": 404}, "NCT03690141: ClinicalTrials.gov has no version history for this trial (404)"),
        ({"history_status": 403}, "NCT03690141: ClinicalTrials.gov refused the request for its version history (403)"),
        ({"history_status": 429}, "NCT03690141: ClinicalTrials.gov is rate limiting history requests (429) and kept doing so; its version history was not read"),
        ({"history_html": True}, "NCT03690141: ClinicalTrials.gov sent a web page instead of its version history"),
        ({"history_gap": True}, "NCT03690141: the registry's version history has an unexpected shape (version 1 is missing from versions 0 to 9)"),
        ({"history_wrong_shape": True}, "NCT03690141: the registry's version history has an unexpected shape (no list of versions)"),
        ({"history_wrong_shape": True, "history_fault_on": "versions"},
         "NCT03690141: the registry's version history has an unexpected shape (version 0 holds no study record)"),
        ({"history_status": 503, "history_fault_on": "versions"}, "NCT03690141: ClinicalTrials.gov kept answering 503 to the request for version 0"),
    ],
)  # fmt: skip
def test_history_failures_are_one_line_exit_1(
    run: Runner, story: FakeRegistry, paced_clock: FakeClock, fault: dict, message: str
) -> None:
    for key, value in fault.items():
        setattr(story.faults, key, value)
    story.faults.retry_after = None
    result = run("history", HISTORY_STUDY, "--registry", code=1)
    message = message.replace("ClinicalTrials.gov", story.base_url.split("/")[2])  # errors name the host asked
    assert result.stderr == f"error: {message}\n" and "Traceback" not in result.output
    assert all(s >= 1.0 for s in paced_clock.waits)  # retries to /api/int keep its pace too
    if fault.get("history_status") == 429:
        assert len(int_requests(story)) == 3 and len(paced_clock.waits) == 2  # retries = 2 in the test config


def test_the_unknown_trial_is_one_line(run: Runner, fake: FakeRegistry, paced_clock: FakeClock) -> None:
    result = run("history", "NCT09999999", "--registry", code=1)
    host = fake.base_url.split("/")[2]
    assert result.stderr == f"error: NCT09999999: {host} has no version history for this trial (404)\n"
    assert run("history", "NCT123", "--registry", code=2).stderr.startswith('error: "NCT123" is not an NCT ID')


# --- what the replay on sync will build on --------------------------------------------------


def test_a_stored_api_v2_record_and_its_html_version_make_no_change(
    run: Runner, fake: FakeRegistry, config_file: Path
) -> None:
    def markdown_text(r: dict) -> None:
        s = r["protocolSection"]
        s["identificationModule"]["briefTitle"] = "Leflunomide and/or Azathioprine \\[LEAP\\] & Thymectomy \\<in MG\\>"
        s["statusModule"].update(overallStatus="TERMINATED", whyStopped="Sponsor's *decision*: funding \\& drug supply")
        s["sponsorCollaboratorsModule"]["leadSponsor"]["name"] = "Sun Yat-sen University & Partners"

    fake.edit(TARGET, markdown_text)
    run("sync")  # stores the API v2 record (Markdown)
    config = load_config(config_file)
    store = Store(database_of(config))
    try:
        with store.read() as session:
            stored = load_records(session, [TARGET])[TARGET]
        with Registry(config.ctgov) as registry:
            index = registry.version_index(TARGET)
            latest = registry.version(TARGET, index.latest.number)  # the same content, as HTML
    finally:
        store.close()
    title = latest["protocolSection"]["identificationModule"]["briefTitle"]
    assert "&amp;" in title and "&#x2F;" in title and "&lt;in MG&gt;" in title  # really HTML
    assert history.diff_versions(stored, latest) == []
    assert history.version_of(index, stored) == index.latest  # the stored record is the latest version


def test_the_version_of_the_stored_record_and_the_versions_missed_since(
    run: Runner, fake: FakeRegistry, config_file: Path, paced_clock: FakeClock
) -> None:
    run("sync")
    for day, status in (
        ("2026-11-02", "RECRUITING"),
        ("2026-11-03", "ACTIVE_NOT_RECRUITING"),
        ("2026-11-04", "COMPLETED"),
    ):
        fake.add_version(TARGET, day, lambda r, s=status: r["protocolSection"]["statusModule"].update(overallStatus=s))
    config = load_config(config_file)
    store = Store(database_of(config))
    try:
        with store.read() as session:
            stored = load_records(session, [TARGET])[TARGET]
        with Registry(config.ctgov) as registry:
            index = registry.version_index(TARGET)
    finally:
        store.close()
    found = history.version_of(index, stored)
    assert found is not None and found.number == 0
    assert history.versions_to_fetch(index, after=found.number) == [1, 2, 3]
    assert [(v.date, v.status) for v in index.versions[1:]] == [
        ("2026-11-02", "RECRUITING"),
        ("2026-11-03", "ACTIVE_NOT_RECRUITING"),
        ("2026-11-04", "COMPLETED"),
    ]


def test_a_cap_on_versions_fetched_carries_over_to_the_next_call(
    fake: FakeRegistry, config_file: Path, paced_clock: FakeClock
) -> None:
    fake.set_history(HISTORY_STUDY, history_versions())
    config = load_config(config_file)
    store = Store(database_of(config))
    try:
        with Registry(config.ctgov) as registry:
            index = registry.version_index(HISTORY_STUDY)
            wanted = history.versions_to_fetch(index)
            first, fetched = fetch_versions(store, registry, index, wanted, limit=4)
            assert (sorted(first), fetched) == ([0, 1, 2, 3], 4)
            second, fetched = fetch_versions(store, registry, index, wanted, limit=4)
            assert (sorted(second), fetched) == ([0, 1, 2, 3, 4, 5, 6, 7], 4)  # the first four from the store
            third, fetched = fetch_versions(store, registry, index, wanted, limit=4)
            assert (sorted(third), fetched) == (list(range(10)), 2)
    finally:
        store.close()
    assert [s.path.rsplit("/", 1)[1] for s in fake.log] == ["history", *map(str, range(10))]  # each version once
