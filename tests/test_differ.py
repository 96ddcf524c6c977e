"""The differ over real recorded records: what is news, and what never is."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.world import record
from watcher.changes import Change
from watcher.differ import diff
from watcher.fields import LOCATIONS_PATH
from watcher.wording import describe

S = "protocolSection.statusModule"
REAL = ["NCT01727193", "NCT00184067", "NCT03934567", "NCT05147467"]


def edited(name: str, **paths: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    old, new = record(name), record(name)
    for path, value in paths.items():
        node = new
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return old, new


@pytest.mark.parametrize("name", REAL)
def test_same_record_is_no_change(name: str) -> None:
    assert diff(record(name), record(name)) == []


@pytest.mark.parametrize("name", REAL)
def test_administrative_churn_is_not_news(name: str) -> None:
    old, new = record(name), record(name)
    status = new["protocolSection"]["statusModule"]
    status["lastUpdatePostDateStruct"] = {"date": "2026-11-25", "type": "ACTUAL"}
    status["lastUpdateSubmitDate"] = "2026-11-24"
    status["statusVerifiedDate"] = "2026-11"
    new.setdefault("derivedSection", {}).setdefault("miscInfoModule", {})["versionHolder"] = "2026-11-25"
    reordered = {k: new[k] for k in reversed(list(new))}
    reordered["protocolSection"] = {k: new["protocolSection"][k] for k in reversed(list(new["protocolSection"]))}
    assert diff(old, reordered) == []


def test_status_change_of_the_target_trial() -> None:
    old, new = edited("NCT01727193", protocolSection__statusModule__overallStatus="COMPLETED")
    assert diff(old, new) == [Change("NCT01727193", "changed", f"{S}.overallStatus", "UNKNOWN", "COMPLETED")]


def test_stopped_with_reason() -> None:
    old, new = edited("NCT05147467")
    new["protocolSection"]["statusModule"].update(overallStatus="SUSPENDED", whyStopped="Funding paused")
    assert diff(old, new) == [
        Change("NCT05147467", "changed", f"{S}.overallStatus", "RECRUITING", "SUSPENDED"),
        Change("NCT05147467", "changed", f"{S}.whyStopped", None, "Funding paused"),
    ]


def test_dates_and_their_type() -> None:
    old, new = edited("NCT01727193")
    new["protocolSection"]["statusModule"]["completionDateStruct"] = {"date": "2019-12", "type": "ACTUAL"}
    new["protocolSection"]["statusModule"]["primaryCompletionDateStruct"]["date"] = "2020-03"
    assert diff(old, new) == [
        Change("NCT01727193", "changed", f"{S}.primaryCompletionDateStruct.date", "2019-12", "2020-03"),
        Change("NCT01727193", "changed", f"{S}.completionDateStruct.date", "2020-01", "2019-12"),
        Change("NCT01727193", "changed", f"{S}.completionDateStruct.type", "ESTIMATED", "ACTUAL"),
    ]


def test_enrollment_count_and_type() -> None:
    old, new = edited("NCT01727193")
    new["protocolSection"]["designModule"]["enrollmentInfo"] = {"count": 96, "type": "ACTUAL"}
    path = "protocolSection.designModule.enrollmentInfo"
    assert diff(old, new) == [
        Change("NCT01727193", "changed", f"{path}.count", 100, 96),
        Change("NCT01727193", "changed", f"{path}.type", "ESTIMATED", "ACTUAL"),
    ]


def test_results_posted() -> None:
    old, new = edited("NCT00184067", hasResults=True)
    new["protocolSection"]["statusModule"]["resultsFirstPostDateStruct"] = {"date": "2026-11-25", "type": "ACTUAL"}
    assert diff(old, new) == [
        Change("NCT00184067", "changed", "hasResults", False, True),
        Change("NCT00184067", "changed", f"{S}.resultsFirstPostDateStruct.date", None, "2026-11-25"),
    ]


def test_site_added_removed_and_status_changed() -> None:
    old, new = record("NCT05147467"), record("NCT05147467")
    sites = new["protocolSection"]["contactsLocationsModule"]["locations"]
    removed = sites.pop(0)
    sites[0] = {**sites[0], "status": "RECRUITING" if sites[0].get("status") != "RECRUITING" else "COMPLETED"}
    added = {"facility": "Huashan Hospital", "status": "RECRUITING", "city": "Shanghai", "country": "China"}
    sites.append(added)
    changes = diff(old, new)
    kinds = [(c.kind, c.path) for c in changes]
    assert kinds == [
        ("changed", f"{LOCATIONS_PATH}.status"),
        ("added", LOCATIONS_PATH),
        ("removed", LOCATIONS_PATH),
    ]
    assert changes[1].new == added and changes[1].site == added
    assert changes[2].old == removed and changes[2].new is None
    assert changes[0].site is not None and changes[0].site["facility"] == sites[0]["facility"]


def test_site_contacts_and_order_are_not_news() -> None:
    old, new = record("NCT03934567"), record("NCT03934567")
    sites = new["protocolSection"]["contactsLocationsModule"]["locations"]
    sites.reverse()
    sites[0]["contacts"] = [{"name": "Someone New", "role": "CONTACT"}]
    sites[1]["geoPoint"] = {"lat": 1.0, "lon": 2.0}
    assert diff(old, new) == []


def test_phases_order_and_title_whitespace_are_not_news() -> None:
    old, new = record("NCT01727193"), record("NCT01727193")
    old["protocolSection"]["designModule"]["phases"] = ["PHASE2", "PHASE3"]
    new["protocolSection"]["designModule"]["phases"] = ["PHASE3", "PHASE2"]
    ident = new["protocolSection"]["identificationModule"]
    ident["briefTitle"] = "  " + ident["briefTitle"].replace(" ", "  ") + "\n"
    assert diff(old, new) == []


def test_title_phase_and_sponsor_changes() -> None:
    old, new = record("NCT01727193"), record("NCT01727193")
    new["protocolSection"]["identificationModule"]["briefTitle"] = "Leflunomide or Azathioprine in MG"
    new["protocolSection"]["designModule"]["phases"] = ["PHASE2", "PHASE3"]
    new["protocolSection"]["sponsorCollaboratorsModule"]["leadSponsor"]["name"] = "SYSU"
    assert [c.path for c in diff(old, new)] == [
        "protocolSection.identificationModule.briefTitle",
        "protocolSection.designModule.phases",
        "protocolSection.sponsorCollaboratorsModule.leadSponsor.name",
    ]


def test_missing_modules_do_not_crash_and_read_as_none() -> None:
    old = record("NCT01727193")
    new = {"protocolSection": {"identificationModule": {"nctId": "NCT01727193"}}}
    changes = diff(old, new)
    status = next(c for c in changes if c.path == f"{S}.overallStatus")
    assert (status.old, status.new) == ("UNKNOWN", None)
    assert sum(1 for c in changes if c.kind == "removed") == 1


def _with_sites(sites: list[dict[str, str]]) -> dict[str, object]:
    return {
        "protocolSection": {
            "identificationModule": {"nctId": "NCT01727193"},
            "contactsLocationsModule": {"locations": sites},
        }
    }


TWINS = [  # one hospital with two sites in one city: same facility, city and country
    {"facility": "Huashan Hospital", "city": "Shanghai", "country": "China", "status": "RECRUITING", "zip": "200040"},
    {"facility": "Huashan Hospital", "city": "Shanghai", "country": "China", "status": "COMPLETED", "zip": "201907"},
]


def test_sites_are_a_set_twins_that_swap_places_are_no_change() -> None:
    assert diff(_with_sites(TWINS), _with_sites(list(reversed(TWINS)))) == []


def test_deleting_one_of_two_twin_sites_reports_the_one_that_went() -> None:
    [change] = diff(_with_sites(TWINS), _with_sites([TWINS[1]]))
    assert (change.kind, change.old) == ("removed", TWINS[0])
    [change] = diff(_with_sites(TWINS), _with_sites([TWINS[0]]))
    assert (change.kind, change.old) == ("removed", TWINS[1])


def test_a_site_whose_city_changes_moved() -> None:
    before = {"facility": "Sun Yat-sen University First Hospital", "city": "Guangzhou", "country": "China"}
    after = {**before, "city": "Shenzhen"}
    [change] = diff(_with_sites([before]), _with_sites([after]))
    assert (change.kind, change.path, change.old, change.new) == ("moved", LOCATIONS_PATH, before, after)
    assert (
        describe(change).text
        == "Site moved: Sun Yat-sen University First Hospital, from Guangzhou, China to Shenzhen, China"
    )
    assert describe(change).category == "sites"


@pytest.mark.parametrize(("old", "new"), [("2024-05", "2024-05-01"), ("2024", "2024-05"), ("2024-05-01", "2024-05")])
def test_a_date_that_only_gains_or_loses_precision_is_no_move(old: str, new: str) -> None:
    before, after = record("NCT01727193"), record("NCT01727193")
    before["protocolSection"]["statusModule"]["startDateStruct"]["date"] = old
    after["protocolSection"]["statusModule"]["startDateStruct"]["date"] = new
    assert diff(before, after) == []


def test_a_real_move_of_a_precise_date_is_still_news() -> None:
    before, after = record("NCT01727193"), record("NCT01727193")
    before["protocolSection"]["statusModule"]["startDateStruct"]["date"] = "2024-05"
    after["protocolSection"]["statusModule"]["startDateStruct"]["date"] = "2024-06-01"
    assert [(c.old, c.new) for c in diff(before, after)] == [("2024-05", "2024-06-01")]
