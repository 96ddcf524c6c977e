"""Pure: every kind of change in words, its category (what a subscriber filters on) and its rank (where it
sorts in a digest); the changes that read as one line; and a subject built from facts, not from words."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import pytest

from watcher import wording
from watcher.changes import Category, Change, ChangeKind, LoggedChange
from watcher.digest import build
from watcher.fields import LOCATIONS_PATH, SITE_STATUS_PATH, TRACKED_FIELDS
from watcher.wording import describe, describe_all

S = "protocolSection.statusModule"
ENROLLMENT = "protocolSection.designModule.enrollmentInfo"
TITLE = "protocolSection.identificationModule.briefTitle"
PHASES = "protocolSection.designModule.phases"
SPONSOR = "protocolSection.sponsorCollaboratorsModule.leadSponsor.name"
NCT = "NCT01727193"

HUASHAN = {"facility": "Huashan Hospital", "city": "Shanghai", "country": "China", "status": "RECRUITING"}
PUMCH = {"facility": "Peking Union Medical College Hospital", "city": "Beijing", "country": "China"}


def changed(path: str, old: Any, new: Any, site: dict[str, Any] | None = None) -> Change:
    return Change(NCT, ChangeKind.CHANGED, path, old, new, site)


def site_added(site: dict[str, Any]) -> Change:
    return Change(NCT, ChangeKind.ADDED, LOCATIONS_PATH, None, site, site)


def site_removed(site: dict[str, Any]) -> Change:
    return Change(NCT, ChangeKind.REMOVED, LOCATIONS_PATH, site, None, site)


STATUS, SITES, RESULTS, DATES = Category.STATUS, Category.SITES, Category.RESULTS, Category.DATES
ENROLL, DETAILS = Category.ENROLLMENT, Category.DETAILS

# (change, its words, category, rank), one change at a time
WORDS = [
    pytest.param(changed(f"{S}.overallStatus", "UNKNOWN", "COMPLETED"), "Status: Unknown status → Completed", STATUS, 0, id="status"),
    pytest.param(changed(f"{S}.whyStopped", None, "Sponsor decision"), "Reason for stopping given", STATUS, 1, id="why-stopped-given"),
    pytest.param(changed(f"{S}.whyStopped", "Sponsor decision", None), "Reason for stopping removed", STATUS, 1, id="why-stopped-removed"),
    pytest.param(Change(NCT, ChangeKind.DELISTED), f"{NCT} is no longer listed on ClinicalTrials.gov", STATUS, 2, id="delisted"),
    pytest.param(Change(NCT, ChangeKind.RELISTED), f"{NCT} is listed on ClinicalTrials.gov again", STATUS, 3, id="relisted"),
    pytest.param(site_added(HUASHAN), "New site recruiting: Huashan Hospital, Shanghai, China", SITES, 10, id="site-added-recruiting"),
    pytest.param(site_added({**HUASHAN, "status": "NOT_YET_RECRUITING"}), "New site: Huashan Hospital, Shanghai, China", SITES, 10, id="site-added-not-recruiting"),
    pytest.param(changed(SITE_STATUS_PATH, "NOT_YET_RECRUITING", "RECRUITING", PUMCH), "Site now recruiting: Peking Union Medical College Hospital, Beijing, China", SITES, 11, id="site-now-recruiting"),
    pytest.param(changed(SITE_STATUS_PATH, "RECRUITING", "COMPLETED", PUMCH), "Site completed: Peking Union Medical College Hospital, Beijing, China (was recruiting)", SITES, 11, id="site-status-other"),
    pytest.param(Change(NCT, ChangeKind.MOVED, LOCATIONS_PATH, PUMCH, {**PUMCH, "city": "Tianjin"}, {**PUMCH, "city": "Tianjin"}),
                 "Site moved: Peking Union Medical College Hospital, from Beijing, China to Tianjin, China", SITES, 12, id="site-moved"),
    pytest.param(site_removed(PUMCH), "Site removed: Peking Union Medical College Hospital, Beijing, China", SITES, 13, id="site-removed"),
    pytest.param(changed("hasResults", False, True), "Results posted", RESULTS, 20, id="results-posted"),
    pytest.param(changed("hasResults", True, False), "Results no longer shown", RESULTS, 20, id="results-withdrawn"),
    pytest.param(changed(f"{S}.resultsFirstPostDateStruct.date", None, "2026-11-25"), "Results first posted 25 Nov 2026", RESULTS, 21, id="results-first-posted"),
    pytest.param(Change(NCT, ChangeKind.NEW_STUDY), "New trial matching the search", Category.NEW_STUDY, 25, id="new-study"),
    pytest.param(Change(NCT, ChangeKind.LEFT_SEARCH), "No longer matches the search", Category.LEFT_SEARCH, 26, id="left-search"),
    pytest.param(changed(f"{S}.startDateStruct.date", "2012-11", "2013-01"), "Start moved from Nov 2012 to Jan 2013 (2 months later)", DATES, 30, id="start-date"),
    pytest.param(changed(f"{S}.startDateStruct.date", None, "2013-01"), "Start: no date → Jan 2013", DATES, 30, id="start-date-first-given"),
    pytest.param(changed(f"{S}.startDateStruct.type", "ESTIMATED", "ACTUAL"), "Start is now actual (was estimated)", DATES, 31, id="start-type"),
    pytest.param(changed(f"{S}.primaryCompletionDateStruct.date", "2024-09", "2026-03"), "Primary completion moved from Sep 2024 to Mar 2026 (18 months later)", DATES, 32, id="primary-completion-date"),
    pytest.param(changed(f"{S}.primaryCompletionDateStruct.type", "ESTIMATED", "ACTUAL"), "Primary completion is now actual (was estimated)", DATES, 33, id="primary-completion-type"),
    pytest.param(changed(f"{S}.completionDateStruct.date", "2020-01", "2022-01"), "Completion moved from Jan 2020 to Jan 2022 (2 years later)", DATES, 34, id="completion-date"),
    pytest.param(changed(f"{S}.completionDateStruct.type", "ACTUAL", "ESTIMATED"), "Completion is now estimated (was actual)", DATES, 35, id="completion-type"),
    pytest.param(changed(f"{ENROLLMENT}.count", 1000, 1200), "Enrollment: 1,000 → 1,200", ENROLL, 40, id="enrollment-count"),
    pytest.param(changed(f"{ENROLLMENT}.type", "ESTIMATED", "ACTUAL"), "Enrollment is now actual (was estimated)", ENROLL, 41, id="enrollment-type"),
    pytest.param(changed(TITLE, "Leflunomide in MG", "Leflunomide or Azathioprine in MG"), "Title: Leflunomide in MG → Leflunomide or Azathioprine in MG", DETAILS, 60, id="title"),
    pytest.param(changed(PHASES, ["PHASE2"], ["PHASE2", "PHASE3"]), "Phase: Phase 2 → Phase 2 / Phase 3", DETAILS, 61, id="phases"),
    pytest.param(changed(SPONSOR, "Sun Yat-sen University", "SYSU"), "Lead sponsor: Sun Yat-sen University → SYSU", DETAILS, 62, id="sponsor"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "text", "category", "rank"), WORDS)
def test_each_change_in_words(change: Change, text: str, category: Category, rank: int) -> None:
    line = describe(change)
    assert (line.text, line.category, line.rank) == (text, category, rank)
    # the facts a subject and a merged line are built from travel with the words
    assert (line.kind, line.path, line.old, line.new) == (change.kind, change.path, change.old, change.new)


def test_the_table_covers_every_kind_and_every_tracked_field() -> None:
    changes = [row.values[0] for row in WORDS]
    assert {c.kind for c in changes} == set(ChangeKind)
    tracked = {f.path for f in TRACKED_FIELDS}
    assert tracked <= {c.path for c in changes}, f"no row for {sorted(tracked - {c.path for c in changes})}"
    assert {c.path for c in changes if c.kind is ChangeKind.CHANGED} - tracked == {SITE_STATUS_PATH}


# --- changes that read as one line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        pytest.param([changed(f"{S}.completionDateStruct.date", "2020-01", "2019-12"), changed(f"{S}.completionDateStruct.type", "ESTIMATED", "ACTUAL")],
                     "Completion: Jan 2020 (estimated) → Dec 2019 (actual), 1 month earlier", id="completion-and-its-type"),
        pytest.param([changed(f"{S}.startDateStruct.type", None, "ACTUAL"), changed(f"{S}.startDateStruct.date", "2012-11", "2012-11-16")],
                     "Start: Nov 2012 → 16 Nov 2012 (actual)", id="start-and-its-type-in-any-order"),
        pytest.param([changed(f"{S}.primaryCompletionDateStruct.date", "2024-09", "2026-03"), changed(f"{S}.primaryCompletionDateStruct.type", "ESTIMATED", "ACTUAL")],
                     "Primary completion: Sep 2024 (estimated) → Mar 2026 (actual), 18 months later", id="primary-completion-and-its-type"),
        pytest.param([changed(f"{S}.resultsFirstPostDateStruct.date", None, "2026-11-25"), changed("hasResults", False, True)],
                     "Results posted on 25 Nov 2026", id="results-and-their-date"),
    ],
)  # fmt: skip
def test_a_change_and_its_companion_read_as_one_line(changes: list[Change], text: str) -> None:
    [line] = describe_all(changes)
    assert line.text == text


def test_a_date_type_does_not_join_another_dates_line() -> None:
    lines = describe_all(
        [
            changed(f"{S}.completionDateStruct.date", "2020-01", "2019-12"),
            changed(f"{S}.startDateStruct.type", "ESTIMATED", "ACTUAL"),
        ]
    )
    assert [line.text for line in lines] == [
        "Start is now actual (was estimated)",
        "Completion moved from Jan 2020 to Dec 2019 (1 month earlier)",
    ]


def test_the_reason_a_trial_stopped_is_quoted_on_its_status_line() -> None:
    [line] = describe_all(
        [
            changed(f"{S}.whyStopped", None, "Sponsor decision"),
            changed(f"{S}.overallStatus", "RECRUITING", "TERMINATED"),
        ]
    )
    assert (line.text, line.quote) == ("Status: Recruiting → Terminated", "Sponsor decision")


def test_a_reason_beside_a_status_that_is_not_a_stop_keeps_its_own_line() -> None:
    lines = describe_all(
        [
            changed(f"{S}.overallStatus", "TERMINATED", "RECRUITING"),
            changed(f"{S}.whyStopped", "Sponsor decision", None),
        ]
    )
    assert [(line.text, line.quote) for line in lines] == [
        ("Status: Terminated → Recruiting", None),
        ("Reason for stopping removed", None),
    ]


def test_results_withdrawn_do_not_absorb_a_posting_date() -> None:
    lines = describe_all(
        [changed("hasResults", True, False), changed(f"{S}.resultsFirstPostDateStruct.date", "2026-11-25", None)]
    )
    assert [line.path for line in lines] == ["hasResults", f"{S}.resultsFirstPostDateStruct.date"]
    assert lines[0].text == "Results no longer shown"


# --- order within a trial ---------------------------------------------------------------------------


def test_lines_are_ordered_status_sites_results_dates_enrollment_details() -> None:
    shuffled = [
        changed(SPONSOR, "Sun Yat-sen University", "SYSU"),
        changed(SITE_STATUS_PATH, "RECRUITING", "COMPLETED", PUMCH),
        changed(f"{ENROLLMENT}.count", 100, 96),
        site_removed({"facility": "Old Site", "city": "Beijing", "country": "China"}),
        changed(TITLE, "Leflunomide in MG", "Leflunomide or Azathioprine in MG"),
        changed("hasResults", False, True),
        changed(f"{S}.primaryCompletionDateStruct.date", "2024-09", "2026-03"),
        site_added(HUASHAN),
        changed(f"{S}.overallStatus", "RECRUITING", "ACTIVE_NOT_RECRUITING"),
    ]
    assert [line.text for line in describe_all(shuffled)] == [
        "Status: Recruiting → Active, not recruiting",
        "New site recruiting: Huashan Hospital, Shanghai, China",
        "Site completed: Peking Union Medical College Hospital, Beijing, China (was recruiting)",
        "Site removed: Old Site, Beijing, China",
        "Results posted",
        "Primary completion moved from Sep 2024 to Mar 2026 (18 months later)",
        "Enrollment: 100 → 96",
        "Title: Leflunomide in MG → Leflunomide or Azathioprine in MG",
        "Lead sponsor: Sun Yat-sen University → SYSU",
    ]


# --- the subject is built from facts --------------------------------------------------------------


def test_the_subject_is_built_from_facts_not_from_words(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime(2026, 11, 25, 9, tzinfo=UTC)
    changes = [
        changed(f"{S}.overallStatus", "UNKNOWN", "COMPLETED"),
        replace(site_added(HUASHAN), nct_id="NCT90000001"),
        replace(changed("hasResults", False, True), nct_id="NCT90000003"),
        Change("NCT90000004", ChangeKind.NEW_STUDY),
        Change("NCT90000005", ChangeKind.LEFT_SEARCH),
    ]
    pending = [LoggedChange(**vars(c), id=i, detected_at=now, watches=("w",)) for i, c in enumerate(changes, 1)]

    def subject() -> str:
        digest = build("a@example.org", "daily", ["w"], pending, {}, date(2026, 11, 25), "mailto:x@example.org")
        assert digest is not None
        return digest.subject

    expected = "5 trial updates: NCT01727193 completed · 1 new trial · 1 site opened · results posted for 1 trial · 1 left your search"
    assert subject() == expected
    # every line now says something else, even another status: the subject still tells what happened
    monkeypatch.setattr(wording, "_words", lambda change: "Status: Recruiting → Withdrawn")
    assert subject() == expected


def test_registry_text_reads_without_markdown_escapes() -> None:
    # the API's text is CommonMark: NCT06341426's title holds "psychotherapy \\[PAP\\]"
    change = Change(
        "NCT06341426", ChangeKind.CHANGED, "protocolSection.identificationModule.briefTitle",
        "Psychotherapy", "Short-term psychotherapy \\[PAP\\] \\& support \\<in MG\\>",
    )  # fmt: skip
    assert describe(change).text == "Title: Psychotherapy → Short-term psychotherapy [PAP] & support <in MG>"
