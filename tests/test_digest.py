"""The pure digest builder and its templates, over real fixture records (golden files)."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from tests.support.world import TARGET, new_mg_study, record, related_mg
from watcher.changes import Change, ChangeKind, LoggedChange
from watcher.differ import diff
from watcher.digest import build, merge
from watcher.render import render

GOLDEN = Path(__file__).parent / "golden"
S = "protocolSection.statusModule"


def edited(base: dict[str, Any], change: Any) -> dict[str, Any]:
    import copy

    new = copy.deepcopy(base)
    change(new)
    return new


NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def logged(i: int, change: Change) -> LoggedChange:
    return LoggedChange(**vars(change), id=i, detected_at=NOW, watches=("mg-azathioprine",))


def realistic() -> tuple[list[LoggedChange], dict[str, dict[str, Any]]]:
    """Changes the differ finds between real fixture records and edited copies of them."""
    target = record(TARGET)
    ocular, generalized, withdrawal = related_mg()

    def completed(r: dict[str, Any]) -> None:
        r["protocolSection"]["statusModule"]["overallStatus"] = "COMPLETED"
        r["protocolSection"]["statusModule"]["completionDateStruct"] = {"date": "2019-12", "type": "ACTUAL"}

    def new_site(r: dict[str, Any]) -> None:
        site = {"facility": "Huashan Hospital", "status": "RECRUITING", "city": "Shanghai", "country": "China"}
        r["protocolSection"]["contactsLocationsModule"]["locations"].append(site)
        r["protocolSection"]["designModule"]["enrollmentInfo"]["count"] = 150
        r["protocolSection"]["statusModule"]["primaryCompletionDateStruct"]["date"] = "2026-03"

    def results(r: dict[str, Any]) -> None:
        r["hasResults"] = True
        r["protocolSection"]["statusModule"]["resultsFirstPostDateStruct"] = {"date": "2026-11-25", "type": "ACTUAL"}

    pairs = [(target, edited(target, completed)), (ocular, edited(ocular, new_site)),
             (withdrawal, edited(withdrawal, results))]  # fmt: skip
    found = [c for old, new in pairs for c in diff(old, new)]
    pending = [logged(i, c) for i, c in enumerate(found, 1)]
    newcomer = new_mg_study()
    pending.append(logged(len(pending) + 1, Change("NCT90000004", ChangeKind.NEW_STUDY)))
    records = {r["protocolSection"]["identificationModule"]["nctId"]: r for _, r in pairs}
    records["NCT90000004"] = newcomer
    del generalized
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
    assert (
        digest.subject
        == "4 trial updates: NCT01727193 completed · 1 new trial · 1 site opened · results posted for 1 trial"
    )
    assert [t.nct_id for t in digest.trials] == [TARGET, "NCT90000001", "NCT90000003", "NCT90000004"]
    assert digest.trials[0].lines[0].text == "Status: Unknown status → Completed"
    assert [line.text for line in digest.trials[1].lines] == [
        "New site recruiting: Huashan Hospital, Shanghai, China",
        "Primary completion moved from Sep 2024 to Mar 2026 (18 months later)",
        "Enrollment: 75 → 150",
    ]


def test_nothing_to_tell_is_no_digest() -> None:
    assert build("a@example.org", "daily", ["w"], [], {}, date(2026, 11, 25), "mailto:x@example.org") is None
    back_and_forth = [
        logged(1, Change(TARGET, ChangeKind.CHANGED, f"{S}.overallStatus", "UNKNOWN", "COMPLETED")),
        logged(2, Change(TARGET, ChangeKind.CHANGED, f"{S}.overallStatus", "COMPLETED", "UNKNOWN")),
    ]
    assert merge(back_and_forth) == []
    assert build("a@example.org", "daily", ["w"], back_and_forth, {}, date(2026, 11, 25), "mailto:x") is None


def test_successive_changes_read_as_one() -> None:
    steps = [
        logged(1, Change(TARGET, ChangeKind.CHANGED, f"{S}.overallStatus", "RECRUITING", "ACTIVE_NOT_RECRUITING")),
        logged(2, Change(TARGET, ChangeKind.CHANGED, f"{S}.overallStatus", "ACTIVE_NOT_RECRUITING", "COMPLETED")),
    ]
    [merged] = merge(steps)
    assert (merged.old, merged.new) == ("RECRUITING", "COMPLETED")


def test_kinds_filter_keeps_only_what_was_asked() -> None:
    changes, records = realistic()
    digest = build("a@example.org", "daily", ["w"], changes, records, date(2026, 11, 25), "mailto:x", kinds=["results"])
    assert digest is not None
    assert [t.nct_id for t in digest.trials] == ["NCT90000003"]
    assert digest.change_ids == tuple(c.id for c in changes if c.nct_id == "NCT90000003")
