"""Pure: a subscriber's pending changes → a digest (grouped by trial, ordered, worded). No I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

from watcher.changes import Category, Change, ChangeKind, LoggedChange
from watcher.config import Frequency
from watcher.fields import HAS_RESULTS, LOCATIONS_PATH, SITE_STATUS_PATH, category_of, status_label
from watcher.wording import Line, describe_all, describe_story, facts, history_url, status_of, study_url, title_of


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
class MailLinks:
    """The web pages' links in one subscriber's digest (when [web] is set)."""

    unsubscribe: str  # a page with a button; a one-click POST from the mail provider
    manage: str
    view: str  # this digest in the browser


@dataclass(frozen=True)
class Digest:
    email: str
    day: date
    frequency: Frequency
    watches: tuple[str, ...]
    subject: str
    trials: tuple[TrialUpdate, ...]
    change_ids: tuple[int, ...]
    unsubscribe: str
    extra: dict[str, Any] = field(default_factory=dict)
    links: MailLinks | None = None

    @property
    def date_text(self) -> str:
        return f"{self.day.day} {self.day:%B %Y}"


@dataclass(frozen=True)
class Rendered:
    """A digest as words: what `watcher.render` makes of it."""

    subject: str
    text: str
    html: str


Story = tuple[LoggedChange, ...]  # successive dated changes of one field, in order


def merge(changes: Sequence[LoggedChange]) -> tuple[list[LoggedChange], list[Story]]:
    """Successive changes of one field read as one: A → B → C is A → C; A → B → A is nothing.

    Unless the changes were replayed from the registry's version history (they carry their
    version's date): then every step is told, in order and with its date, as a story.
    """
    groups: dict[tuple[Any, ...], list[LoggedChange]] = {}
    for change in changes:
        key: tuple[Any, ...]
        if change.kind is ChangeKind.CHANGED and change.path == SITE_STATUS_PATH:
            site = change.site or {}
            key = (change.nct_id, change.path, site.get("facility"), site.get("city"), site.get("country"))
        elif change.kind is ChangeKind.CHANGED:
            key = (change.nct_id, change.path)
        else:
            key = (change.id,)
        groups.setdefault(key, []).append(change)
    merged: list[LoggedChange] = []
    stories: list[Story] = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
        elif any(c.effective_date for c in group):
            stories.append(tuple(group))
        else:
            one = replace(group[-1], old=group[0].old)
            if one.old != one.new:
                merged.append(one)
    return merged, stories


def _new_trial_summary(record: Mapping[str, Any] | None) -> str:
    if not record:
        return ""
    f = facts(dict(record))
    return "no sites listed yet" if f.sites == "none listed" else f"sites: {f.sites}"


def build(
    email: str,
    frequency: Frequency,
    watches: Sequence[str],
    changes: Sequence[LoggedChange],
    records: Mapping[str, Mapping[str, Any]],
    day: date,
    unsubscribe: str,
    kinds: Sequence[Category] = (),
    links: MailLinks | None = None,
) -> Digest | None:
    """The digest for one subscriber, or None when there is nothing to tell."""
    wanted = [c for c in changes if not kinds or category_of(c) in kinds]
    merged, stories = merge(wanted)
    by_trial: dict[str, list[LoggedChange]] = {}
    told: dict[str, list[Line]] = {}
    for change in merged:
        by_trial.setdefault(change.nct_id, []).append(change)
    for story in stories:
        by_trial.setdefault(story[0].nct_id, [])
        told.setdefault(story[0].nct_id, []).append(describe_story(story, [c.effective_date for c in story]))
    trials: list[TrialUpdate] = []
    for nct_id, items in by_trial.items():
        record = records.get(nct_id) or {}
        lines = sorted([*describe_all(items), *told.get(nct_id, [])], key=lambda line: line.rank)
        if not lines:
            continue
        new_trial = any(c.kind is ChangeKind.NEW_STUDY for c in items)
        trials.append(
            TrialUpdate(
                nct_id=nct_id,
                title=title_of(record) if record else nct_id,
                status=status_of(record) if record else "",
                url=study_url(nct_id),
                history_url=history_url(nct_id),
                lines=tuple(lines),
                new_trial=new_trial,
                left_search=any(c.kind is ChangeKind.LEFT_SEARCH for c in items),
                summary=_new_trial_summary(record) if new_trial else "",
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
        subject=subject_for(trials),
        trials=tuple(trials),
        change_ids=tuple(sorted(c.id for c in wanted)),
        unsubscribe=unsubscribe,
        links=links,
    )


def _count(lines: Sequence[Line], kind: ChangeKind, path: str | None, new: object = None) -> int:
    return sum(1 for line in lines if line.kind is kind and line.path == path and (new is None or line.new == new))


def subject_for(trials: Sequence[TrialUpdate]) -> str:
    """One line that says the most important things first, built from the lines' facts."""
    parts: list[str] = []
    # a status that changed and came back between two polls is told in the digest, not here
    statuses = [(t.nct_id, line.new) for t in trials for line in t.lines if line.is_status and line.old != line.new]
    parts += [f"{nct_id} {status_label(status).lower()}" for nct_id, status in statuses[:2]]
    if len(statuses) > 2:
        parts.append(f"{len(statuses) - 2} more status changes")
    new = sum(1 for t in trials if t.new_trial)
    if new:
        parts.append(f"{new} new trial{'s' if new > 1 else ''}")
    lines = [line for t in trials for line in t.lines]
    opened = _count(lines, ChangeKind.ADDED, LOCATIONS_PATH)
    if opened:
        parts.append(f"{opened} site{'s' if opened > 1 else ''} opened")
    results = sum(1 for t in trials if _count(t.lines, ChangeKind.CHANGED, HAS_RESULTS, new=True))
    if results:
        parts.append(f"results posted for {results} trial{'s' if results > 1 else ''}")
    left = sum(1 for t in trials if t.left_search)
    if left:
        parts.append(f"{left} left your search")
    count = len(trials)
    head = f"{count} trial update{'s' if count > 1 else ''}"
    text = f"{head}: {' · '.join(parts)}" if parts else head
    return " ".join(text.split())[:200]


def sample_changes(now: datetime) -> tuple[list[LoggedChange], dict[str, dict[str, Any]]]:
    """One change of every kind, for `watcher test-email` and the golden digest."""
    s = "protocolSection.statusModule"
    site = {"facility": "Huashan Hospital", "status": "RECRUITING", "city": "Shanghai", "country": "China"}
    changed, added, removed = ChangeKind.CHANGED, ChangeKind.ADDED, ChangeKind.REMOVED
    samples = [
        Change("NCT01727193", changed, f"{s}.overallStatus", "UNKNOWN", "COMPLETED"),
        Change("NCT01727193", changed, f"{s}.completionDateStruct.date", "2020-01", "2019-12"),
        Change("NCT01727193", changed, f"{s}.completionDateStruct.type", "ESTIMATED", "ACTUAL"),
        Change("NCT90000001", added, LOCATIONS_PATH, None, site, site),
        Change("NCT90000001", removed, LOCATIONS_PATH, {"facility": "Old Site"}, None,
               {"facility": "Old Site", "city": "Beijing", "country": "China"}),
        Change("NCT90000001", changed, SITE_STATUS_PATH, "RECRUITING", "COMPLETED",
               {"facility": "Peking Union Medical College Hospital", "city": "Beijing", "country": "China"}),
        Change("NCT90000001", changed, "protocolSection.designModule.enrollmentInfo.count", 120, 150),
        Change("NCT90000001", changed, f"{s}.primaryCompletionDateStruct.date", "2025-06", "2026-03"),
        Change("NCT90000003", changed, "hasResults", False, True),
        Change("NCT90000003", changed, f"{s}.resultsFirstPostDateStruct.date", None, "2026-11-25"),
        Change("NCT90000002", changed, f"{s}.overallStatus", "RECRUITING", "TERMINATED"),
        Change("NCT90000002", changed, f"{s}.whyStopped", None, "Sponsor decision"),
        Change("NCT90000004", ChangeKind.NEW_STUDY),
        Change("NCT90000005", ChangeKind.LEFT_SEARCH),
    ]  # fmt: skip
    changes = [
        LoggedChange(**vars(c), id=i, detected_at=now, watches=("sample-watch",)) for i, c in enumerate(samples, 1)
    ]
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
