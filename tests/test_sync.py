"""Syncs against the fake API on 127.0.0.1, with a real SQLite file: what gets recorded, once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Runner, ScratchDatabase, write_config
from tests.support.fakeapi import FakeRegistry
from tests.support.world import TARGET, new_mg_study
from watcher.fields import LOCATIONS_PATH

pytestmark = pytest.mark.both_backends
S = "protocolSection.statusModule"


def host(fake: FakeRegistry) -> str:
    """How messages name the fake registry: its host and port."""
    return fake.base_url.split("/")[2]


def changes(run: Runner, *args: str) -> list[dict[str, Any]]:
    return json.loads(run("changes", "--json", *args).stdout)


def sync(run: Runner, fake: FakeRegistry, code: int = 0) -> str:
    fake.refresh()
    return run("sync", code=code).output


def status(fake: FakeRegistry, nct_id: str) -> dict[str, Any]:
    return fake.records[nct_id]["protocolSection"]["statusModule"]


def test_first_sync_is_a_silent_baseline(run: Runner, fake: FakeRegistry) -> None:
    out = run("sync").stdout
    assert "mg-azathioprine  4 trials · baseline stored" in out
    assert "0 changes recorded" in out
    assert changes(run) == []


def test_status_change_is_recorded_once(run: Runner, fake: FakeRegistry) -> None:
    run("sync")
    fake.edit(TARGET, lambda r: r["protocolSection"]["statusModule"].update(overallStatus="COMPLETED"))
    out = sync(run, fake)
    assert "mg-azathioprine  4 trials · 1 updated" in out
    sync(run, fake)
    found = changes(run)
    assert [(c["nct_id"], c["kind"], c["field"], c["old"], c["new"], c["watches"]) for c in found] == [
        (TARGET, "changed", f"{S}.overallStatus", "UNKNOWN", "COMPLETED", ["mg-azathioprine"])
    ]
    assert found[0]["detected_at"].endswith("Z") and found[0]["summary"] == "Status: Unknown status → Completed"


def test_site_added_enrollment_and_results_are_recorded(run: Runner, fake: FakeRegistry) -> None:
    run("sync")
    site = {"facility": "Huashan Hospital", "status": "RECRUITING", "city": "Shanghai", "country": "China"}
    fake.edit("NCT90000001", lambda r: r["protocolSection"]["contactsLocationsModule"]["locations"].append(site))
    fake.edit(TARGET, lambda r: r["protocolSection"]["designModule"]["enrollmentInfo"].update(count=96))

    def post_results(r: dict[str, Any]) -> None:
        r["hasResults"] = True
        r["protocolSection"]["statusModule"]["resultsFirstPostDateStruct"] = {"date": "2026-11-25", "type": "ACTUAL"}

    fake.edit("NCT90000003", post_results)
    sync(run, fake)
    found = {(c["nct_id"], c["kind"], c["field"]): c for c in changes(run)}
    assert found[("NCT90000001", "added", LOCATIONS_PATH)]["new"] == site
    enrollment = found[(TARGET, "changed", "protocolSection.designModule.enrollmentInfo.count")]
    assert (enrollment["old"], enrollment["new"]) == (100, 96)
    results = found[("NCT90000003", "changed", "hasResults")]
    assert (results["old"], results["new"]) == (False, True)
    assert len(found) == 4  # plus resultsFirstPostDate


def test_new_matching_study_and_a_study_leaving_the_search(run: Runner, fake: FakeRegistry) -> None:
    run("sync")
    fake.put(new_mg_study())
    fake.edit("NCT90000002", lambda r: r["protocolSection"]["armsInterventionsModule"].update(interventions=[]))
    out = sync(run, fake)
    assert "1 new · 1 left the search" in out
    sync(run, fake)
    found = [(c["nct_id"], c["kind"], c["field"], c["watches"]) for c in changes(run)]
    assert found == [
        ("NCT90000004", "new_study", None, ["mg-azathioprine"]),
        ("NCT90000002", "left_search", None, ["mg-azathioprine"]),
    ]
    new = changes(run, "--nct", "NCT90000004")[0]
    assert new["title"] == "Azathioprine or Rituximab After Thymectomy in Myasthenia Gravis"


def test_last_update_bump_alone_is_not_news(run: Runner, fake: FakeRegistry) -> None:
    run("sync")
    fake.bump(TARGET)
    fake.edit("NCT90000001", lambda r: r["derivedSection"]["miscInfoModule"].update(versionHolder="2026-11-25"))
    out = sync(run, fake)
    assert "2 updated" in out and "0 changes recorded" in out
    assert changes(run) == []


def test_unchanged_data_timestamp_costs_one_request(run: Runner, fake: FakeRegistry) -> None:
    run("sync")
    fake.log.clear()
    out = run("sync").stdout
    assert out.startswith("Registry data unchanged since the last sync (2026-11-24 09:00); nothing to do (1 request).")
    run("sync")  # and again: a quiet poll after a quiet poll is just as cheap
    assert [s.path for s in fake.log] == ["/api/v2/version", "/api/v2/version"]


def test_a_day_of_changes_fetches_only_what_moved(run: Runner, fake: FakeRegistry) -> None:
    run("sync")
    fake.log.clear()
    fake.edit(TARGET, lambda r: r["protocolSection"]["statusModule"].update(overallStatus="COMPLETED"))
    sync(run, fake)
    full = [s for s in fake.requests_to("/studies") if "fields" not in s.params]
    assert [s.params["filter.ids"] for s in full] == [TARGET]
    assert len(fake.log) == 4  # version, search listing, ID listing, one batch of full records


def test_failure_on_page_2_leaves_the_database_untouched(
    tmp_path: Path, fake: FakeRegistry, database: ScratchDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Runner(write_config(tmp_path, fake.base_url))
    run("sync")
    before = database.dump()
    fake.edit(TARGET, lambda r: r["protocolSection"]["statusModule"].update(overallStatus="COMPLETED"))
    for i in range(1, 60):  # enough studies for a second page of the search listing
        fake.put(
            {
                **new_mg_study(),
                "protocolSection": {
                    **new_mg_study()["protocolSection"],
                    "identificationModule": {"nctId": f"NCT9100{i:04d}", "briefTitle": f"MG azathioprine {i}"},
                },
            }
        )
    monkeypatch.setattr("watcher.registry.PAGE_SIZE", 50)
    fake.faults.status_on_page = {2: 500}
    fake.refresh()
    result = run("sync", code=1)
    assert result.stderr == f"error: {host(fake)} answered 500 upstream request timeout\n"
    assert "Traceback" not in result.output
    assert database.dump() == before
    fake.faults.status_on_page = {}
    out = run("sync").stdout
    assert "59 new" in out
    kinds = [c["kind"] for c in changes(run)]
    assert kinds.count("changed") == 1 and kinds.count("new_study") == 59


def test_registry_down_is_one_line_and_changes_nothing(
    run: Runner, fake: FakeRegistry, database: ScratchDatabase
) -> None:
    run("sync")
    before = database.dump()
    name = host(fake)
    fake.stop()
    result = run("sync", code=1)
    assert result.stderr.startswith(f"error: {name} did not answer after 3 tries (connection refused)")
    assert result.stderr.count("\n") == 1
    assert database.dump() == before


def test_truncated_body_fails_the_sync_cleanly(run: Runner, fake: FakeRegistry, database: ScratchDatabase) -> None:
    run("sync")
    before = database.dump()
    fake.edit(TARGET, lambda r: r["protocolSection"]["statusModule"].update(overallStatus="COMPLETED"))
    fake.faults.truncate_next = 1
    result = sync(run, fake, code=1)
    assert "not complete JSON" in result
    assert database.dump() == before
    run("sync")  # the next sync catches up
    assert [c["new"] for c in changes(run)] == ["COMPLETED"]


def test_persistent_rate_limit_fails_cleanly(run: Runner, fake: FakeRegistry) -> None:
    fake.faults.rate_limit_next, fake.faults.retry_after = 10, "0"
    result = run("sync", code=1)
    assert result.stderr == f"error: {host(fake)} is rate limiting us (429) and kept doing so; try again later\n"


def test_a_changed_watch_definition_rebaselines_quietly(tmp_path: Path, fake: FakeRegistry) -> None:
    run = Runner(write_config(tmp_path, fake.base_url))
    run("sync")
    write_config(tmp_path, fake.base_url, watches='[[watch]]\nname = "mg-azathioprine"\ncondition = "myasthenia"\n')
    out = run("sync").stdout  # same dataTimestamp, but the watches changed: not skipped
    assert "baseline stored" in out
    assert changes(run) == []


def test_an_unknown_explicit_id_is_reported(tmp_path: Path, fake: FakeRegistry) -> None:
    run = Runner(
        write_config(
            tmp_path, fake.base_url, watches='[[watch]]\nname = "x"\nnct_ids = ["NCT01727193", "NCT09999999"]\n'
        )
    )
    out = run("sync").stdout
    assert "x  1 trial · baseline stored" in out
    assert "! NCT09999999 was not found in the registry" in out


def test_two_watches_share_a_study_and_its_change(tmp_path: Path, fake: FakeRegistry) -> None:
    watches = (
        '[[watch]]\nname = "a"\nnct_ids = ["NCT01727193"]\n[[watch]]\nname = "b"\ncondition = "myasthenia gravis"\n'
    )
    run = Runner(write_config(tmp_path, fake.base_url, watches=watches))
    run("sync")
    fake.edit(TARGET, lambda r: r["protocolSection"]["statusModule"].update(overallStatus="COMPLETED"))
    sync(run, fake)
    [change] = changes(run)
    assert change["watches"] == ["a", "b"]
    assert changes(run, "--watch", "a") == changes(run, "--watch", "b") == [change]


def test_an_alias_id_in_the_config_follows_the_study(tmp_path: Path, fake: FakeRegistry) -> None:
    fake.edit(TARGET, lambda r: r["protocolSection"]["identificationModule"].update(nctIdAliases=["NCT01700001"]))
    run = Runner(write_config(tmp_path, fake.base_url, watches='[[watch]]\nname = "x"\nnct_ids = ["NCT01700001"]\n'))
    assert "x  1 trial · baseline stored" in run("sync").stdout
    fake.edit(TARGET, lambda r: r["protocolSection"]["statusModule"].update(overallStatus="COMPLETED"))
    sync(run, fake)
    assert [c["nct_id"] for c in changes(run)] == [TARGET]
