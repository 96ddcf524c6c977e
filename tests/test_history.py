"""The registry's version history, pure: checking bodies, HTML against Markdown, which versions to
fetch, which version a stored record is, and the timeline. The index is a real recorded body."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from watcher.changes import ChangeKind
from watcher.config import HistoryMode
from watcher.differ import diff
from watcher.errors import HistoryUnavailable
from watcher.history import (
    Version,
    VersionIndex,
    asks_for_history,
    comparable,
    diff_versions,
    field_timeline,
    first_words,
    parse_index,
    parse_version,
    plain_text,
    status_timeline,
    timeline,
    version_of,
    versions_to_fetch,
)

SAMPLE = Path(__file__).parent / "fixtures" / "history" / "NCT03690141_int-history-true_2023.json"
NCT = "NCT03690141"


def sample() -> dict[str, Any]:
    return json.loads(SAMPLE.read_text())


def index_body(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"changes": list(entries), "originalData": {}, "lastUpdateVersions": {}, "outcomesUpdateCount": 0}


def entry(version: int, day: str, status: str = "RECRUITING", labels: list[str] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"version": version, "date": day, "status": status}
    if labels is not None:
        found["moduleLabels"] = labels
    return found


# --- the index -------------------------------------------------------------------------------


def test_the_real_index_parses() -> None:
    index = parse_index(NCT, {**sample()["history"], "unknownNewKey": True})  # the route's own shape
    assert len(index) == 10 and [v.number for v in index.versions] == list(range(10))
    assert index.versions[0] == Version(0, "2018-09-27", "NOT_YET_RECRUITING", ())
    assert index.versions[1].module_labels == ("Study Status", "Contacts/Locations")
    assert index.latest == Version(9, "2020-04-27", "COMPLETED", ("Study Status",))
    assert parse_index(NCT, sample()) == index  # the ?history=true form says the same


def test_newer_entries_with_more_keys_and_no_labels_parse() -> None:
    body = index_body(
        {"version": 1, "date": "2020-05-02", "status": "RECRUITING", "studyType": "INTERVENTIONAL",
         "lastUpdateSubmitQcDate": "2020-05-02", "reviewNotPassed": False},
        {"version": 0, "date": "2020-04-29", "status": "NOT_YET_RECRUITING", "moduleLabels": ["Study Status"]},
    )  # fmt: skip
    index = parse_index(NCT, body)
    assert [(v.number, v.date, v.module_labels) for v in index.versions] == [
        (0, "2020-04-29", ("Study Status",)),
        (1, "2020-05-02", None),
    ]


BAD_INDEXES = [
    ([], "not a JSON object"),
    ({"changes": {"0": {}}}, "no list of versions"),
    ({"studies": []}, "no list of versions"),
    (index_body(), "no versions at all"),
    (index_body(entry(0, "2020-01-01"), entry(2, "2020-02-01")), "version 1 is missing from versions 0 to 2"),
    (index_body(entry(1, "2020-01-01")), "version 0 is missing from versions 0 to 1"),
    (index_body(entry(0, "2020-01-01"), entry(0, "2020-01-02")), "version 0 is listed twice"),
    (index_body({"version": "0", "date": "2020-01-01", "status": "RECRUITING"}), "entry 0 has no version number"),
    (index_body({"version": True, "date": "2020-01-01", "status": "RECRUITING"}), "entry 0 has no version number"),
    (index_body(entry(0, "2020-1-01")), "version 0 has no YYYY-MM-DD date: '2020-1-01'"),
    (index_body(entry(0, "2020-02-30")), "version 0 has no YYYY-MM-DD date: '2020-02-30'"),
    (index_body({"version": 0, "date": "2020-01-01"}), "version 0 has no status"),
    (index_body(entry(0, "2020-01-01") | {"moduleLabels": "Study Status"}),
     "version 0's moduleLabels is not a list of strings"),
    (index_body("v0"), "entry 0 is not an object"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "reason"), BAD_INDEXES, ids=[r for _, r in BAD_INDEXES])
def test_an_index_of_another_shape_is_refused_with_its_reason(body: Any, reason: str) -> None:
    with pytest.raises(HistoryUnavailable) as err:
        parse_index(NCT, body)
    assert str(err.value) == f"{NCT}: the registry's version history has an unexpected shape ({reason})"


# --- a version's record ----------------------------------------------------------------------


def test_a_version_body_wrapped_or_bare() -> None:
    study = sample()["study"]
    assert parse_version(NCT, 9, {"studyVersion": 9, "study": study}) == study
    assert parse_version(NCT, 9, {"study": study}) == study
    assert parse_version(NCT, 9, study) == study
    anonymous = copy.deepcopy(study)
    del anonymous["protocolSection"]["identificationModule"]["nctId"]
    named = parse_version(NCT, 9, {"studyVersion": 9, "study": anonymous})
    assert named["protocolSection"]["identificationModule"]["nctId"] == NCT
    assert "nctId" not in anonymous["protocolSection"]["identificationModule"]  # not changed in place


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("<html>", "version 3 is not a JSON object"),
        ({"studyVersion": 4, "study": {"protocolSection": {}}}, "asked for version 3, got version 4"),
        ({"studyVersion": "3", "study": {"protocolSection": {}}}, "asked for version 3, got version '3'"),
        ({"studyVersion": 3}, "version 3 holds no study record"),
        ({"studyVersion": 3, "study": {"derivedSection": {}}}, "version 3 has no protocolSection"),
        ({"studyVersion": 3, "study": []}, "version 3 has no protocolSection"),
        ({"study": {"protocolSection": {"identificationModule": {"nctId": "NCT00000001"}}}},
         "version 3 is a record of 'NCT00000001'"),
    ],
)  # fmt: skip
def test_a_version_body_of_another_shape_is_refused(body: Any, reason: str) -> None:
    with pytest.raises(HistoryUnavailable, match=f"unexpected shape \\({reason}\\)$"):
        parse_version(NCT, 3, body)


# --- HTML (versions) against Markdown (API v2) -------------------------------------------------


@pytest.mark.parametrize(
    ("from_version", "from_api_v2"),
    [
        ('Tomivosertib in Prostate Cancer (<mark class="hl-term">CRPC</mark>)', "Tomivosertib in Prostate Cancer (CRPC)"),
        ("apalutamide and&#x2F;or abiraterone", "apalutamide and/or abiraterone"),
        ("Psychotherapy [PAP] &amp; Care", "Psychotherapy \\[PAP\\] & Care"),
        ("Study of <i>in vitro</i> <b>markers</b>", "Study of *in vitro* **markers**"),
        ("first line<br/>second   line", "first line\nsecond line"),
        ("Grade &lt;b&gt; 3 &gt; 2", "Grade \\<b\\> 3 > 2"),
        ("Sponsor&#39;s decision", "Sponsor's decision"),
        ("Funding\u00a0withdrawn", "Funding withdrawn"),
        ("snake_case_name stays", "snake\\_case\\_name stays"),
    ],
)  # fmt: skip
def test_html_and_markdown_of_the_same_text_read_the_same(from_version: str, from_api_v2: str) -> None:
    assert plain_text(from_version) == plain_text(from_api_v2)


def test_html_and_markdown_stay_different_when_the_words_differ() -> None:
    assert plain_text("<p>Funding withdrawn</p>") != plain_text("Sponsor decision")
    assert plain_text("Prostate Cancer (<mark>CRPC</mark>)") == "Prostate Cancer (CRPC)"


def as_api_v2(version_record: dict[str, Any]) -> dict[str, Any]:
    """The same content as the API v2 would give it: Markdown text, hasResults at the top."""
    record = copy.deepcopy(version_record)
    p = record["protocolSection"]
    p["identificationModule"]["briefTitle"] = (
        "A Study of Tomivosertib \\[eFT508\\] in Castrate-resistant Prostate Cancer (CRPC)"
    )
    p["statusModule"]["whyStopped"] = "Sponsor's decision: funding *withdrawn*"
    p["sponsorCollaboratorsModule"]["leadSponsor"]["name"] = "Effector Therapeutics & Partners"
    p["contactsLocationsModule"]["locations"][0]["facility"] = "Yale Cancer Center & Smilow"
    record["hasResults"] = False
    return record


def as_version(record: dict[str, Any]) -> dict[str, Any]:
    version = copy.deepcopy(record)
    p = version["protocolSection"]
    p["identificationModule"]["briefTitle"] = (
        'A Study of Tomivosertib [eFT508] in Castrate-resistant Prostate Cancer (<mark class="hl-term">CRPC</mark>)'
    )
    p["statusModule"]["whyStopped"] = "<p>Sponsor&#39;s decision: funding <em>withdrawn</em></p>"
    p["sponsorCollaboratorsModule"]["leadSponsor"]["name"] = "Effector Therapeutics &amp; Partners"
    p["contactsLocationsModule"]["locations"][0]["facility"] = "Yale Cancer Center &amp; Smilow"
    version.pop("hasResults", None)
    version.pop("derivedSection", None)
    return version


def test_a_version_and_the_api_v2_record_of_the_same_content_make_no_change() -> None:
    version = as_version(sample()["study"])
    current = as_api_v2(version)
    assert diff(version, current) != []  # the plain differ alone would see changes that are only format
    assert diff_versions(version, current) == []
    assert diff_versions(current, version) == []


def test_real_changes_still_show_through_the_normalisation() -> None:
    version = as_version(sample()["study"])
    current = as_api_v2(version)
    current["protocolSection"]["statusModule"]["whyStopped"] = "Enrollment too slow"
    current["protocolSection"]["identificationModule"]["briefTitle"] = "Tomivosertib in CRPC"
    found = {c.path.rsplit(".", 1)[1]: (c.old, c.new) for c in diff_versions(version, current) if c.path}
    assert found == {
        "whyStopped": ("Sponsor's decision: funding withdrawn", "Enrollment too slow"),
        "briefTitle": ("A Study of Tomivosertib [eFT508] in Castrate-resistant Prostate Cancer (CRPC)",
                       "Tomivosertib in CRPC"),
    }  # fmt: skip


def test_comparable_leaves_its_input_alone_and_derives_has_results() -> None:
    version = as_version(sample()["study"])
    before = copy.deepcopy(version)
    assert comparable(version)["hasResults"] is False
    assert version == before
    version["protocolSection"]["statusModule"]["resultsFirstPostDateStruct"] = {"date": "2021-01-05"}
    assert comparable(version)["hasResults"] is True


# --- which versions to fetch ----------------------------------------------------------------


def test_every_version_of_the_real_index_may_touch_a_tracked_field() -> None:
    index = parse_index(NCT, sample())
    assert versions_to_fetch(index) == list(range(10))  # each touched "Study Status"
    assert versions_to_fetch(index, after=6) == [7, 8, 9]
    assert versions_to_fetch(index, after=9) == []


def test_versions_touching_only_untracked_modules_are_not_fetched() -> None:
    index = parse_index(NCT, index_body(
        entry(0, "2020-01-01", "NOT_YET_RECRUITING", []),
        entry(1, "2020-01-05", "NOT_YET_RECRUITING", ["Eligibility", "Arms and Interventions"]),
        entry(2, "2020-02-01", "NOT_YET_RECRUITING", ["Contacts/Locations"]),
        entry(3, "2020-03-01", "NOT_YET_RECRUITING", ["Outcome Measures", "References"]),
        entry(4, "2020-04-01", "NOT_YET_RECRUITING", []),  # empty labels: fetched, to be safe
        entry(5, "2020-05-01", "NOT_YET_RECRUITING", None),  # no labels at all: fetched
        entry(6, "2020-06-01", "NOT_YET_RECRUITING", ["A Label Not Seen Before"]),  # fetched
        entry(7, "2020-07-01", "RECRUITING", ["Conditions"]),  # labels say untracked, yet the status moved
        entry(8, "2020-08-01", "RECRUITING", ["Sponsor/Collaborators"]),
        entry(9, "2020-09-01", "RECRUITING", ["Outcome Measures (Results)"]),
        entry(10, "2020-10-01", "RECRUITING", ["Study Description"]),
    ))  # fmt: skip
    assert versions_to_fetch(index) == [0, 2, 4, 5, 6, 7, 8, 9]
    assert versions_to_fetch(index, after=2) == [4, 5, 6, 7, 8, 9]


# --- which version a stored record is --------------------------------------------------------


def record_submitted(day: str | None) -> dict[str, Any]:
    status = {"lastUpdateSubmitDate": day} if day else {}
    return {"protocolSection": {"identificationModule": {"nctId": NCT}, "statusModule": status}}


def test_the_stored_record_is_the_version_of_its_last_update_submit_date() -> None:
    index = parse_index(NCT, sample())
    assert version_of(index, sample()["study"]) == index.versions[9]  # lastUpdateSubmitDate 2020-04-27
    assert version_of(index, record_submitted("2019-01-18")) == index.versions[5]
    assert version_of(index, record_submitted("2019-01-19")) is None
    assert version_of(index, record_submitted(None)) is None


def test_the_finder_goes_by_version_number_never_by_date() -> None:
    index = parse_index(NCT, index_body(
        entry(0, "2020-01-01"), entry(1, "2020-03-01"), entry(2, "2020-02-01"),  # dates need not grow
        entry(3, "2020-03-01"), entry(4, "2020-04-01"),
    ))  # fmt: skip
    assert version_of(index, record_submitted("2020-02-01")).number == 2  # type: ignore[union-attr]
    # two versions on one day: the lower one, so that replaying from it can skip nothing
    assert version_of(index, record_submitted("2020-03-01")).number == 1  # type: ignore[union-attr]


# --- the story -------------------------------------------------------------------------------


def test_the_status_timeline_comes_from_the_index_alone() -> None:
    points = status_timeline(parse_index(NCT, sample()))
    assert [(p.version, p.date, p.status) for p in points] == [
        (0, "2018-09-27", "NOT_YET_RECRUITING"),
        (1, "2018-10-16", "RECRUITING"),
        (7, "2019-07-16", "ACTIVE_NOT_RECRUITING"),
        (9, "2020-04-27", "COMPLETED"),
    ]


def versions_of_a_study() -> tuple[VersionIndex, dict[int, dict[str, Any]]]:
    index = parse_index(NCT, index_body(
        entry(0, "2018-09-27", "NOT_YET_RECRUITING", []),
        entry(1, "2018-10-16", "RECRUITING", ["Study Status", "Contacts/Locations"]),
        entry(2, "2018-11-02", "RECRUITING", ["Eligibility"]),
        entry(3, "2019-07-16", "ACTIVE_NOT_RECRUITING", ["Study Status", "Study Design"]),
    ))  # fmt: skip
    v0 = as_version(sample()["study"])
    s = v0["protocolSection"]
    s["statusModule"].update(overallStatus="NOT_YET_RECRUITING", lastUpdateSubmitDate="2018-09-27")
    s["statusModule"].pop("whyStopped")
    s["designModule"]["enrollmentInfo"] = {"count": 30, "type": "ESTIMATED"}
    v1 = copy.deepcopy(v0)
    v1["protocolSection"]["statusModule"]["overallStatus"] = "RECRUITING"
    v1["protocolSection"]["contactsLocationsModule"]["locations"].append(
        {"facility": "Karmanos &amp; Wayne State", "city": "Detroit", "country": "United States"}
    )
    v3 = copy.deepcopy(v1)
    v3["protocolSection"]["statusModule"]["overallStatus"] = "ACTIVE_NOT_RECRUITING"
    v3["protocolSection"]["designModule"]["enrollmentInfo"] = {"count": 16, "type": "ACTUAL"}
    return index, {0: v0, 1: v1, 3: v3}


def test_the_field_timeline_diffs_consecutive_fetched_versions_in_the_digest_words() -> None:
    index, records = versions_of_a_study()
    events = field_timeline(index, records)
    assert [(e.version.number, e.version.date) for e in events] == [(1, "2018-10-16"), (3, "2019-07-16")]
    assert [line.text for line in events[0].lines] == [
        "Status: Not yet recruiting → Recruiting",
        "New site: Karmanos & Wayne State, Detroit, United States",
    ]
    assert [line.text for line in events[1].lines] == [
        "Status: Recruiting → Active, not recruiting",
        "Enrollment: 30 (estimated) → 16 (actual)",
    ]
    assert all(c.kind in (ChangeKind.CHANGED, ChangeKind.ADDED) for e in events for c in e.changes)


def test_the_timeline_starts_with_version_0_in_words() -> None:
    index, records = versions_of_a_study()
    told = timeline(index, records)
    assert told.first == "First submitted · Not yet recruiting · 30 participants planned · 10 sites"
    assert [p.status for p in told.statuses] == ["NOT_YET_RECRUITING", "RECRUITING", "ACTIVE_NOT_RECRUITING"]
    assert [e.version.number for e in told.events] == [1, 3]
    assert first_words("RECRUITING", None) == "First submitted · Recruiting"


# --- when a sync asks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "previous", "current", "asks"),
    [
        (HistoryMode.GAPS, None, "2026-11-25T09:00:05", False),  # the first sync: a silent baseline
        (HistoryMode.GAPS, "2026-11-24T09:00:05", "2026-11-25T09:00:05", False),  # an ordinary daily sync
        (HistoryMode.GAPS, "2026-11-25T09:00:05", "2026-11-25T09:00:05", False),  # a quiet poll
        (HistoryMode.GAPS, "2026-11-20T09:00:05", "2026-11-23T09:00:05", True),  # a weekend: Friday to Monday
        (HistoryMode.GAPS, "2026-11-24T09:00:05", "2026-11-25T15:00:06", True),  # 30 h and a second
        (HistoryMode.GAPS, "2026-11-24T09:00:05", "2026-11-25T15:00:05", False),  # 30 h exactly
        (HistoryMode.GAPS, "yesterday", "2026-11-25T09:00:05", True),  # unreadable: look
        (HistoryMode.ALWAYS, "2026-11-24T09:00:05", "2026-11-25T09:00:05", True),
        (HistoryMode.ALWAYS, None, "2026-11-25T09:00:05", False),
        (HistoryMode.OFF, "2026-11-01T09:00:05", "2026-11-25T09:00:05", False),
    ],
)
def test_when_a_sync_asks_for_history(mode: HistoryMode, previous: str | None, current: str, asks: bool) -> None:
    assert asks_for_history(mode, previous, current) is asks
