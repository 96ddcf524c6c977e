"""Pure: a subscriber's pending changes → a digest (grouped by trial, ordered, worded). No I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from watcher.fields import LOCATIONS_PATH, category_of
from watcher.wording import ChangeLike, Line, describe_all, facts, history_url, status_of, study_url, title_of


@dataclass(frozen=True)
class PendingChange:
    """A change as the digest builder needs it (a stored change or a sample)."""

    id: int
    nct_id: str
    kind: str
    field: str | None
    old: Any
    new: Any
    site: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrialUpdate:
    nct_id: str
    title: str
    status: str
    url: str
    history_url: str
    lines: tuple[Line, ...]
    new_trial: bool = False
    left_search: bool = False
    summary: str = ""  # for a new trial: its sites in a few words

    @property
    def rank(self) -> int:
        return min((line.rank for line in self.lines), default=99)


@dataclass(frozen=True)
class Digest:
    email: str
    day: date
    frequency: str
    watches: tuple[str, ...]
    subject: str
    trials: tuple[TrialUpdate, ...]
    change_ids: tuple[int, ...]
    unsubscribe: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def date_text(self) -> str:
        return f"{self.day.day} {self.day:%B %Y}"


@dataclass(frozen=True)
class Rendered:
    """A digest as words: what `watcher.render` makes of it."""

    subject: str
    text: str
    html: str


def merge(changes: Sequence[PendingChange]) -> list[PendingChange]:
    """Successive changes of one field read as one: A → B → C is A → C; A → B → A is nothing."""
    merged: dict[tuple[Any, ...], PendingChange] = {}
    order: list[tuple[Any, ...]] = []
    for change in changes:
        if change.kind == "changed" and not (change.field or "").startswith(LOCATIONS_PATH):
            key: tuple[Any, ...] = (change.nct_id, change.field)
        elif change.field == f"{LOCATIONS_PATH}.status":
            site = change.site or {}
            key = (change.nct_id, change.field, site.get("facility"), site.get("city"), site.get("country"))
        else:
            key = (change.id,)
        if key in merged:
            first = merged[key]
            merged[key] = PendingChange(
                change.id, change.nct_id, change.kind, change.field, first.old, change.new, change.site
            )
        else:
            merged[key] = change
            order.append(key)
    return [merged[k] for k in order if merged[k].kind != "changed" or merged[k].old != merged[k].new]


def _new_trial_summary(record: Mapping[str, Any] | None) -> str:
    if not record:
        return ""
    f = facts(dict(record))
    return "no sites listed yet" if f.sites == "none listed" else f"sites: {f.sites}"


def build(
    email: str,
    frequency: str,
    watches: Sequence[str],
    changes: Sequence[PendingChange],
    records: Mapping[str, Mapping[str, Any]],
    day: date,
    unsubscribe: str,
    kinds: Sequence[str] = (),
) -> Digest | None:
    """The digest for one subscriber, or None when there is nothing to tell."""
    wanted = [c for c in changes if not kinds or category_of(c.field, c.kind) in kinds]
    by_trial: dict[str, list[PendingChange]] = {}
    for change in merge(wanted):
        by_trial.setdefault(change.nct_id, []).append(change)
    trials: list[TrialUpdate] = []
    for nct_id, items in by_trial.items():
        record = records.get(nct_id) or {}
        lines = describe_all(items)
        if not lines:
            continue
        trials.append(
            TrialUpdate(
                nct_id=nct_id,
                title=title_of(record) if record else nct_id,
                status=status_of(record) if record else "",
                url=study_url(nct_id),
                history_url=history_url(nct_id),
                lines=tuple(lines),
                new_trial=any(c.kind == "new_study" for c in items),
                left_search=any(c.kind == "left_search" for c in items),
                summary=_new_trial_summary(record) if any(c.kind == "new_study" for c in items) else "",
            )
        )
    if not trials:
        return None
    trials.sort(key=lambda t: (t.rank, t.nct_id))
    return Digest(
        email=email,
        day=day,
        frequency=frequency,
        watches=tuple(watches),
        subject=subject_for(trials, [c for c in wanted if c.nct_id in by_trial]),
        trials=tuple(trials),
        change_ids=tuple(sorted(c.id for c in wanted)),
        unsubscribe=unsubscribe,
    )


def subject_for(trials: Sequence[TrialUpdate], changes: Sequence[ChangeLike]) -> str:
    """One line that says the most important things first."""
    parts: list[str] = []
    statuses = [
        (t.nct_id, line.text.split("→")[-1].strip())
        for t in trials
        for line in t.lines
        if line.text.startswith("Status:")
    ]
    parts += [f"{nct_id} {status.lower()}" for nct_id, status in statuses[:2]]
    if len(statuses) > 2:
        parts.append(f"{len(statuses) - 2} more status changes")
    new = sum(1 for t in trials if t.new_trial)
    if new:
        parts.append(f"{new} new trial{'s' if new > 1 else ''}")
    opened = sum(1 for c in changes if c.field == LOCATIONS_PATH and c.kind == "added")
    if opened:
        parts.append(f"{opened} site{'s' if opened > 1 else ''} opened")
    results = sum(1 for c in changes if c.field == "hasResults" and c.new is True)
    if results:
        parts.append(f"results posted for {results} trial{'s' if results > 1 else ''}")
    left = sum(1 for t in trials if t.left_search)
    if left:
        parts.append(f"{left} left your search")
    count = len(trials)
    head = f"{count} trial update{'s' if count > 1 else ''}"
    text = f"{head}: {' · '.join(parts)}" if parts else head
    return " ".join(text.split())[:200]


def sample_changes() -> tuple[list[PendingChange], dict[str, dict[str, Any]]]:
    """One change of every kind, for `watcher test-email`."""
    s = "protocolSection.statusModule"
    site = {"facility": "Huashan Hospital", "status": "RECRUITING", "city": "Shanghai", "country": "China"}
    changes = [
        PendingChange(1, "NCT01727193", "changed", f"{s}.overallStatus", "UNKNOWN", "COMPLETED"),
        PendingChange(2, "NCT01727193", "changed", f"{s}.completionDateStruct.date", "2020-01", "2019-12"),
        PendingChange(3, "NCT01727193", "changed", f"{s}.completionDateStruct.type", "ESTIMATED", "ACTUAL"),
        PendingChange(4, "NCT90000001", "added", LOCATIONS_PATH, None, site, site),
        PendingChange(5, "NCT90000001", "removed", LOCATIONS_PATH, {"facility": "Old Site"}, None,
                      {"facility": "Old Site", "city": "Beijing", "country": "China"}),
        PendingChange(6, "NCT90000001", "changed", f"{LOCATIONS_PATH}.status", "RECRUITING", "COMPLETED",
                      {"facility": "Peking Union Medical College Hospital", "city": "Beijing", "country": "China"}),
        PendingChange(7, "NCT90000001", "changed", "protocolSection.designModule.enrollmentInfo.count", 120, 150),
        PendingChange(8, "NCT90000001", "changed", f"{s}.primaryCompletionDateStruct.date", "2025-06", "2026-03"),
        PendingChange(9, "NCT90000003", "changed", "hasResults", False, True),
        PendingChange(10, "NCT90000003", "changed", f"{s}.resultsFirstPostDateStruct.date", None, "2026-11-25"),
        PendingChange(11, "NCT90000002", "changed", f"{s}.overallStatus", "RECRUITING", "TERMINATED"),
        PendingChange(12, "NCT90000002", "changed", f"{s}.whyStopped", None, "Sponsor decision"),
        PendingChange(13, "NCT90000004", "new_study", None, None, None),
        PendingChange(14, "NCT90000005", "left_search", None, None, None),
    ]  # fmt: skip
    titles = {
        "NCT01727193": "The Efficacy and Safety of Leflunomide or Azathioprine Therapy in Myasthenia Gravis "
        "Patients After Expand Thymectomy",
        "NCT90000001": "Low-dose Azathioprine in Ocular Myasthenia Gravis (sample)",
        "NCT90000002": "Steroid-sparing Strategies in Generalized Myasthenia Gravis (sample)",
        "NCT90000003": "Azathioprine Withdrawal in Stable Myasthenia Gravis (sample)",
        "NCT90000004": "Azathioprine or Rituximab After Thymectomy in Myasthenia Gravis (sample)",
        "NCT90000005": "Tacrolimus in Refractory Myasthenia Gravis (sample)",
    }
    records = {
        nct_id: {
            "protocolSection": {
                "identificationModule": {"nctId": nct_id, "briefTitle": title},
                "statusModule": {"overallStatus": "NOT_YET_RECRUITING" if nct_id == "NCT90000004" else "RECRUITING"},
                "contactsLocationsModule": {"locations": [{"city": "Milan", "country": "Italy"}] * 2}
                if nct_id == "NCT90000004"
                else {},
            }
        }
        for nct_id, title in titles.items()
    }
    return changes, records
