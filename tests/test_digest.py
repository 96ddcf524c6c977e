"""The pure digest builder and its templates, over real fixture records (golden files)."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from tests.support.world import TARGET, new_mg_study, record, related_mg, variant
from watcher.changes import Category, Change, ChangeKind, LoggedChange
from watcher.differ import diff
from watcher.digest import build, merge
from watcher.fields import category_of
from watcher.render import render

GOLDEN = Path(__file__).parent / "golden"
S = "protocolSection.statusModule"


def edited(base: dict[str, Any], change: Any) -> dict[str, Any]:
    import copy

    new = copy.deepcopy(base)
    change(new)
    return new


NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def logged(i: int, change: Change, on: str | None = None, version: int | None = None) -> LoggedChange:
    """A logged change; with `on` and `version`, one replayed from the registry's version history."""
    return LoggedChange(
        **vars(change), id=i, detected_at=NOW, watches=("mg-azathioprine",), effective_date=on, registry_version=version
    )


def realistic() -> tuple[list[LoggedChange], dict[str, dict[str, Any]]]:
    """Changes the differ finds between real fixture records and edited copies of them: every kind of change."""
    target = record(TARGET)
    ocular, generalized, withdrawal = related_mg()
    leaving = variant("NCT03934567", "NCT90000005", "Tacrolimus in Refractory Myasthenia Gravis",
                      ["Myasthenia Gravis"], ["Tacrolimus"])  # fmt: skip
    gone = variant("NCT00184067", "NCT90000006", "Mycophenolate in Juvenile Myasthenia Gravis",
                   ["Myasthenia Gravis"], ["Mycophenolate mofetil"])  # fmt: skip
    back = variant("NCT05147467", "NCT90000007", "Rituximab in New-onset Myasthenia Gravis",
                   ["Myasthenia Gravis"], ["Rituximab"], overallStatus="RECRUITING")  # fmt: skip

    def completed(r: dict[str, Any]) -> None:  # its dates and enrollment now actual, its one site closed
        status = r["protocolSection"]["statusModule"]
        status["overallStatus"] = "COMPLETED"
        status["completionDateStruct"] = {"date": "2019-12", "type": "ACTUAL"}
        status["primaryCompletionDateStruct"]["type"] = "ACTUAL"
        r["protocolSection"]["designModule"]["enrollmentInfo"] = {"count": 96, "type": "ACTUAL"}
        r["protocolSection"]["contactsLocationsModule"]["locations"][0]["status"] = "COMPLETED"

    def sites_move(r: dict[str, Any]) -> None:  # a site opens, one recruits, one withdraws, one moves, one is gone
        sites = r["protocolSection"]["contactsLocationsModule"]["locations"]
        sites[0]["status"] = "RECRUITING"
        sites[1]["status"] = "WITHDRAWN"
        sites[3]["city"] = "Foshan"
        del sites[2]
        sites.append({"facility": "Huashan Hospital", "status": "RECRUITING", "city": "Shanghai", "country": "China"})
        r["protocolSection"]["designModule"]["enrollmentInfo"]["count"] = 150
        r["protocolSection"]["statusModule"]["primaryCompletionDateStruct"]["date"] = "2026-03"

    def stopped(r: dict[str, Any]) -> None:
        status = r["protocolSection"]["statusModule"]
        status["overallStatus"] = "TERMINATED"
        status["whyStopped"] = "The sponsor ended the programme after the interim analysis"
        status["completionDateStruct"] = {"date": "2025-06-30", "type": "ACTUAL"}

    def results_and_details(r: dict[str, Any]) -> None:
        r["hasResults"] = True
        r["protocolSection"]["statusModule"]["resultsFirstPostDateStruct"] = {"date": "2026-11-25", "type": "ACTUAL"}
        r["protocolSection"]["identificationModule"]["briefTitle"] = (
            "Azathioprine Withdrawal in Stable Generalized Myasthenia Gravis"
        )
        r["protocolSection"]["designModule"]["phases"] = ["PHASE2", "PHASE3"]
        r["protocolSection"]["sponsorCollaboratorsModule"]["leadSponsor"]["name"] = "Myasthenia Gravis Research Network"

    pairs = [(target, edited(target, completed)), (ocular, edited(ocular, sites_move)),
             (generalized, edited(generalized, stopped)), (withdrawal, edited(withdrawal, results_and_details))]  # fmt: skip
    found = [c for old, new in pairs for c in diff(old, new)]
    found += [Change("NCT90000004", ChangeKind.NEW_STUDY), Change("NCT90000005", ChangeKind.LEFT_SEARCH)]
    found += [Change("NCT90000006", ChangeKind.DELISTED), Change("NCT90000007", ChangeKind.RELISTED)]
    pending = [logged(i, c) for i, c in enumerate(found, 1)]
    records = {r["protocolSection"]["identificationModule"]["nctId"]: r for _, r in pairs}
    records["NCT90000004"] = new_mg_study()
    records["NCT90000005"] = leaving
    records["NCT90000006"], records["NCT90000007"] = gone, back
    return pending, records


def sample_digest() -> Any:
    changes, records = realistic()
    digest = build("alice@example.org", "daily", ["mg-azathioprine"], changes, records, date(2026, 11, 25),
                   "mailto:watcher@example.org?subject=unsubscribe")  # fmt: skip
    assert digest is not None
    return digest


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; rerun with UPDATE_GOLDEN=1 if the change is intended"


def test_golden_text() -> None:
    check_golden("digest.txt", render(sample_digest()).text)


def test_golden_html() -> None:
    check_golden("digest.html", render(sample_digest()).html)


def test_order_and_subject() -> None:
    digest = sample_digest()
    assert digest.subject == (
        "8 trial updates: NCT01727193 completed · NCT90000002 terminated · 1 new trial · 1 site opened"
        " · results posted for 1 trial · 1 left your search"
    )
    # status changes first (a trial no longer listed, or listed again, is one), then sites, results, the new
    # trial, the one that left
    trials = {t.nct_id: t for t in digest.trials}
    assert list(trials) == [TARGET, "NCT90000002", "NCT90000006", "NCT90000007", "NCT90000001", "NCT90000003",
                            "NCT90000004", "NCT90000005"]  # fmt: skip
    stopped = trials["NCT90000002"].lines[0]
    assert (stopped.text, stopped.quote) == (
        "Status: Active, not recruiting → Terminated", "The sponsor ended the programme after the interim analysis"
    )  # fmt: skip
    assert [line.text for line in trials["NCT90000001"].lines] == [
        "New site recruiting: Huashan Hospital, Shanghai, China",
        "Site now recruiting: Sun Yat-sen University Cancer Center, Guangzhou, China",
        "Site withdrawn: Zhujiang Hospital of Southern Medical University, Guangzhou, China (was not yet recruiting)",
        "Site moved: Hainan General Hospital, from Haikou, China to Foshan, China",
        "Site removed: Nanfang Hospital of Southern Medical University, Guangzhou, China",
        "Primary completion moved from Sep 2024 to Mar 2026 (18 months later)",
        "Enrollment: 75 → 150",
    ]
    lines = [line for t in digest.trials for line in t.lines]  # the sample holds every kind of change
    assert {line.kind for line in lines} == set(ChangeKind) and {line.category for line in lines} == set(Category)


def test_nothing_to_tell_is_no_digest() -> None:
    assert build("a@example.org", "daily", ["w"], [], {}, date(2026, 11, 25), "mailto:x@example.org") is None
    back_and_forth = [
        logged(1, Change(TARGET, ChangeKind.CHANGED, f"{S}.overallStatus", "UNKNOWN", "COMPLETED")),
        logged(2, Change(TARGET, ChangeKind.CHANGED, f"{S}.overallStatus", "COMPLETED", "UNKNOWN")),
    ]
    assert merge(back_and_forth) == ([], [])
    assert build("a@example.org", "daily", ["w"], back_and_forth, {}, date(2026, 11, 25), "mailto:x") is None


def test_successive_changes_read_as_one() -> None:
    steps = [
        logged(1, Change(TARGET, ChangeKind.CHANGED, f"{S}.overallStatus", "RECRUITING", "ACTIVE_NOT_RECRUITING")),
        logged(2, Change(TARGET, ChangeKind.CHANGED, f"{S}.overallStatus", "ACTIVE_NOT_RECRUITING", "COMPLETED")),
    ]
    [merged], [] = merge(steps)
    assert (merged.old, merged.new) == ("RECRUITING", "COMPLETED")


def status(i: int, old: str, new: str, on: str, version: int) -> LoggedChange:
    return logged(i, Change(TARGET, ChangeKind.CHANGED, f"{S}.overallStatus", old, new), on, version)


def lines_of(changes: list[LoggedChange]) -> list[str]:
    digest = build("a@example.org", "daily", ["w"], changes, {}, date(2026, 11, 25), "mailto:x")
    assert digest is not None
    return [line.text for t in digest.trials for line in t.lines]


def test_a_change_made_and_reverted_between_polls_is_told_with_its_dates() -> None:
    changes = [
        status(1, "RECRUITING", "SUSPENDED", "2026-11-03", 7),
        status(2, "SUSPENDED", "RECRUITING", "2026-11-10", 8),
        logged(3, Change(TARGET, ChangeKind.CHANGED, "protocolSection.designModule.enrollmentInfo.count", 100, 120),
               "2026-11-10", 8),
    ]  # fmt: skip
    assert lines_of(changes) == [
        "Status changed to Suspended on 3 Nov 2026, back to Recruiting on 10 Nov 2026",
        "Enrollment: 100 → 120",
    ]
    digest = build("a@example.org", "daily", ["w"], changes, {}, date(2026, 11, 25), "mailto:x")
    assert digest is not None and "recruiting" not in digest.subject.lower()  # it came back: no status news
    assert digest.change_ids == (1, 2, 3)


def test_successive_replayed_changes_are_each_told_in_order() -> None:
    changes = [
        status(1, "RECRUITING", "ACTIVE_NOT_RECRUITING", "2026-11-03", 7),
        status(2, "ACTIVE_NOT_RECRUITING", "COMPLETED", "2026-11-20", 9),
    ]
    assert lines_of(changes) == [
        "Status changed to Active, not recruiting on 3 Nov 2026, then to Completed on 20 Nov 2026 (was Recruiting)"
    ]
    digest = build("a@example.org", "daily", ["w"], changes, {}, date(2026, 11, 25), "mailto:x")
    assert digest is not None and digest.subject == "1 trial update: NCT01727193 completed"


def test_kinds_filter_keeps_only_what_was_asked() -> None:
    changes, records = realistic()
    digest = build("a@example.org", "daily", ["w"], changes, records, date(2026, 11, 25), "mailto:x", kinds=["results"])
    assert digest is not None
    assert [t.nct_id for t in digest.trials] == ["NCT90000003"]
    assert digest.change_ids == tuple(c.id for c in changes if category_of(c) is Category.RESULTS)
    assert [line.text for line in digest.trials[0].lines] == ["Results posted on 25 Nov 2026"]


def test_stories_of_free_text_and_dates_read_plainly() -> None:
    why = f"{S}.whyStopped"
    title = "protocolSection.identificationModule.briefTitle"
    changes = [
        logged(1, Change(TARGET, ChangeKind.CHANGED, why, None, "Funding withdrawn by the sponsor"), "2026-11-18", 7),
        logged(2, Change(TARGET, ChangeKind.CHANGED, why, "Funding withdrawn by the sponsor", None), "2026-11-20", 8),
        logged(3, Change(TARGET, ChangeKind.CHANGED, title, "Old", "Interim"), "2026-11-18", 7),
        logged(4, Change(TARGET, ChangeKind.CHANGED, title, "Interim", "New"), "2026-11-20", 8),
        logged(5, Change(TARGET, ChangeKind.CHANGED, f"{S}.resultsFirstPostDateStruct.date", None, "2026-11-18"),
               "2026-11-18", 7),
        logged(6, Change(TARGET, ChangeKind.CHANGED, f"{S}.resultsFirstPostDateStruct.date", "2026-11-18", "2026-11-19"),
               "2026-11-20", 8),
    ]  # fmt: skip
    assert lines_of(changes) == [
        "Reason for stopping given on 18 Nov 2026, removed on 20 Nov 2026",
        "Results first posted changed to 18 Nov 2026 on 18 Nov 2026, then to 19 Nov 2026 on 20 Nov 2026 (was no date)",
        "Title: Old → New (changed 18 Nov 2026, 20 Nov 2026)",
    ]
