"""One sync: version check → membership → fetch what moved → diff → store.

The registry is read first (the records that moved are spooled to disk), then everything is
written in one short transaction: a slow registry never holds the database, and a sync that
fails at any point stores nothing. Only one sync runs at a time on a database.

A record that is not the shape the API promises is skipped whole (its last good state stays),
named in the report and counted; the rest of the sync goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from watcher import db, models
from watcher.changes import Change, ChangeKind
from watcher.clock import Clock, utcnow
from watcher.config import Config, HistoryMode, Watch
from watcher.differ import diff, nct_id_of
from watcher.errors import Cancelled, WatcherError
from watcher.history import (
    VERSIONS_PER_SYNC,
    ReplayPlan,
    asks_for_history,
    replay,
    replay_pending,
    submitted_on,
    version_of,
)
from watcher.registry import Listed, Registry
from watcher.replay import HistoryReport, Moved, Progress, ReplayWork, gather
from watcher.runs import close_run, new_run, record_failure
from watcher.spool import PageSpool
from watcher.states import RunOutcome
from watcher.store import (
    Member,
    Store,
    add_change,
    clear_rejected,
    forget_watches,
    known_versions,
    last_good_sync,
    load_records,
    load_versions,
    memberships,
    note_rejected,
    replace_memberships,
    save_records,
    save_version,
    save_version_index,
    set_watch_state,
    stored_last_updates,
    watch_states,
)
from watcher.validate import problem

log = logging.getLogger(__name__)

SYNC_WAIT_S = 5.0  # a second sync waits this long for the first, then says so


class SyncRunning(WatcherError):
    """Another sync holds this database."""


@dataclass
class WatchReport:
    name: str
    members: int = 0
    updated: int = 0
    new: int = 0
    left: int = 0
    delisted: int = 0
    relisted: int = 0
    baseline: bool = False
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Rejected:
    """A record skipped because it is not the shape the API promises."""

    nct_id: str
    reason: str
    times: int  # syncs in a row


@dataclass
class SyncReport:
    outcome: RunOutcome  # OK or UNCHANGED
    data_timestamp: str
    previous_timestamp: str | None
    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0
    fetched: int = 0
    changes: int = 0
    run_id: int | None = None
    watches: list[WatchReport] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    skipped_listings: int = 0  # listing entries without a usable NCT ID
    history: HistoryReport = field(default_factory=HistoryReport)  # the registry's version history, if asked


@dataclass
class _Members:
    """The studies of one watch as listed now."""

    by_id: set[str] = field(default_factory=set)
    by_search: set[str] = field(default_factory=set)

    def flags(self) -> dict[str, Member]:
        return {n: Member(n in self.by_id, n in self.by_search) for n in self.by_id | self.by_search}


@dataclass
class _Attribution:
    """Which watches a study's changes belong to: those that already held it and still do
    (a watch's first sync is a silent baseline)."""

    watches: Sequence[Watch]
    baseline: set[str]
    before: dict[str, dict[str, models.Membership]]
    after: dict[str, dict[str, Member]]

    def of(self, nct_id: str) -> list[str]:
        return [
            w.name
            for w in self.watches
            if w.name not in self.baseline and nct_id in self.before[w.name] and nct_id in self.after[w.name]
        ]


def _attribution(session: Session, watches: Sequence[Watch], members: dict[str, _Members]) -> _Attribution:
    states = watch_states(session)
    return _Attribution(
        watches=watches,
        baseline={w.name for w in watches if w.name not in states or states[w.name].fingerprint != w.fingerprint},
        before={w.name: memberships(session, w.name) for w in watches},
        after={w.name: members[w.name].flags() for w in watches},
    )


def run_sync(
    config: Config,
    store: Store,
    registry: Registry,
    progress: Progress | None = None,
    clock: Clock = utcnow,
    history_budget: int = VERSIONS_PER_SYNC,
) -> SyncReport:
    """Poll every watch once. Raises RegistryError (nothing stored) when the registry fails.

    `history_budget` caps the version records read from the registry's history in this sync."""
    try:
        with db.exclusive(store.engine, store.database, "sync", wait_s=SYNC_WAIT_S):
            return _sync(config, store, registry, progress, clock, history_budget)
    except db.LockHeld:
        raise SyncRunning(
            f"a sync is already running on {store.database.display}; nothing was done: try again when it is done"
        ) from None


def _sync(
    config: Config, store: Store, registry: Registry, progress: Progress | None, clock: Clock, history_budget: int
) -> SyncReport:
    started, started_at = time.monotonic(), clock()
    fingerprint = config.watches_fingerprint
    try:
        stamp = registry.data_timestamp()
        with store.read() as session:
            last = last_good_sync(session)
        previous = last.data_timestamp if last else None
        # nothing moved: nothing to do, unless the last sync left studies for this one
        if last and previous == stamp and last.watches_fingerprint == fingerprint and not last.deferred:
            report = SyncReport(RunOutcome.UNCHANGED, stamp, previous)
            with store.write() as session:
                run = new_run(session, started_at, stamp, fingerprint)
                report.run_id = run.id
                close_run(session, run, report.outcome, registry, clock, 0, 0)
        else:
            report = SyncReport(RunOutcome.OK, stamp, previous)
            listed, members, missing = _list_members(config.watches, registry)
            report.skipped_listings = registry.skipped_listings
            with store.read() as session:
                stored = stored_last_updates(session, listed)
            to_fetch = [n for n, item in listed.items() if n not in stored or stored[n] != item.last_update]
            log.debug("%d studies listed, %d to fetch", len(listed), len(to_fetch))
            with PageSpool() as pages:
                _fetch(registry, to_fetch, pages, progress)
                work = _read_history(config, store, registry, members, pages, previous, stamp, progress, history_budget)
                report.history = work.report
                with store.write() as session:
                    run = new_run(session, started_at, stamp, fingerprint)
                    report.run_id = run.id
                    _write(session, config.watches, members, missing, pages, work, report, clock)
                    close_run(
                        session, run, report.outcome, registry, clock, sum(w.members for w in report.watches),
                        report.changes,
                    )  # fmt: skip
                    run.deferred = len(work.deferred)
        report.requests, report.bytes = registry.traffic.requests, registry.traffic.bytes
        report.seconds = time.monotonic() - started
        for rejected in report.rejected:
            log.warning(
                "%s skipped: its record is not what the API promises (%s); its last good state stays",
                rejected.nct_id, rejected.reason,
            )  # fmt: skip
        return report
    except Cancelled:
        raise
    except Exception as exc:
        record_failure(store, registry, started_at, str(exc), clock)
        raise


def _fetch(registry: Registry, to_fetch: list[str], pages: PageSpool, progress: Progress | None) -> None:
    done = 0
    if progress:
        progress(0, len(to_fetch))
    for page in registry.fetch(to_fetch):
        pages.add(page)
        done += len(page)
        if progress:
            progress(done, len(to_fetch))


def _read_history(
    config: Config,
    store: Store,
    registry: Registry,
    members: dict[str, _Members],
    pages: PageSpool,
    previous: str | None,
    stamp: str,
    progress: Progress | None,
    budget: int,
) -> ReplayWork:
    """The version history of the studies that moved to a new version, when this sync asks for it:
    every such study when versions may have been missed since the last good sync (or always,
    by config), and the studies an earlier sync left for later. A first sync asks nothing."""
    mode = config.ctgov.history
    if mode is HistoryMode.OFF or previous is None:
        return ReplayWork()
    try:
        moved = _moved(config, store, members, pages, asks_for_history(mode, previous, stamp))
        if not moved:
            return ReplayWork()
        log.info("reading the registry's version history of %d trials", len(moved))
        return gather(registry, store, moved, budget, progress)
    except Cancelled:
        raise
    except Exception as exc:  # the history never fails a sync: the plain comparison instead
        log.warning("the registry history could not be used: %s: %s", type(exc).__name__, exc)
        log.debug("history failure details", exc_info=True)
        work = ReplayWork()
        work.report.stopped = f"the registry history could not be used ({type(exc).__name__}: {exc})"
        return work


def _moved(
    config: Config, store: Store, members: dict[str, _Members], pages: PageSpool, asking: bool
) -> dict[str, Moved]:
    """The watched studies fetched at a new version whose history to read: all of them when
    `asking`, else those an earlier sync left for later (versions after theirs are stored)."""
    moved: dict[str, Moved] = {}
    with store.read() as session:
        who = _attribution(session, config.watches, members)
        for page in pages:
            ids = [nct_id_of(r) or "" for r in page]
            known = known_versions(session, ids)
            if not asking and not known:
                continue
            old_records = load_records(session, ids if asking else list(known))
            for record in page:
                nct_id = nct_id_of(record) or ""
                old = old_records.get(nct_id)
                if old is None or problem(record) is not None or not who.of(nct_id):
                    continue
                stored_on, fetched_on = submitted_on(old), submitted_on(record)
                if stored_on == fetched_on:
                    continue  # the same version: nothing can have been missed
                if asking or replay_pending(known.get(nct_id, []), old):
                    moved[nct_id] = Moved(stored_on, fetched_on)
    return moved


def _list_members(
    watches: Sequence[Watch], registry: Registry
) -> tuple[dict[str, Listed], dict[str, _Members], dict[str, list[str]]]:
    """Who is in each watch now, with last update dates; and explicit IDs the registry lacks."""
    listed: dict[str, Listed] = {}
    members = {w.name: _Members() for w in watches}
    for watch in watches:
        if watch.has_search:
            for item in registry.list_search(watch.search_params()):
                listed[item.nct_id] = item
                members[watch.name].by_search.add(item.nct_id)

    explicit = {nct_id for w in watches for nct_id in w.nct_ids}
    canonical: dict[str, str] = {}
    for item in registry.list_ids(explicit):
        listed[item.nct_id] = item
        for requested in (item.nct_id, *item.aliases):
            canonical[requested] = item.nct_id
    missing: dict[str, list[str]] = {}
    for watch in watches:
        for nct_id in watch.nct_ids:
            if nct_id in canonical:
                members[watch.name].by_id.add(canonical[nct_id])
            else:
                missing.setdefault(watch.name, []).append(nct_id)
    return listed, members, missing


def _write(
    session: Session,
    watches: Sequence[Watch],
    members: dict[str, _Members],
    missing: dict[str, list[str]],
    pages: PageSpool,
    work: ReplayWork,
    report: SyncReport,
    clock: Clock,
) -> None:
    """Everything a sync stores, in the caller's one transaction."""
    now = clock()
    who = _attribution(session, watches, members)
    baseline, before, after = who.baseline, who.before, who.after
    previously_rejected = set(session.exec(select(models.RejectedRecord.nct_id)).all())
    for index in work.indexes:
        save_version_index(session, index, now)
    for nct_id, version, body in work.fetched_records():
        save_version(session, nct_id, version, body, now)

    fetched: set[str] = set()
    unknown_rejected: set[str] = set()  # rejected studies never stored: not members until they pass
    for page in pages:
        old_records = load_records(session, (nct_id_of(r) or "" for r in page))
        good: list[dict[str, Any]] = []
        changed: set[str] = set()
        for record in page:
            nct_id = nct_id_of(record) or ""
            if nct_id in work.deferred:
                continue  # its versions did not all fit in this sync: the next one takes it whole
            reason = problem(record)
            if reason is not None:
                report.rejected.append(Rejected(nct_id, reason, note_rejected(session, nct_id, reason, now)))
                if nct_id not in old_records:
                    unknown_rejected.add(nct_id)
                continue
            plan, old = work.plans.get(nct_id), old_records.get(nct_id)
            told = _replay(session, plan, old, record, who.of(nct_id), now, report) if plan and old else None
            changes = (
                told if told is not None else record_changes(session, record, old, who.of(nct_id), now, report.run_id)
            )
            report.changes += len(changes)
            fetched.add(nct_id)
            good.append(record)
            if changes:
                changed.add(nct_id)
        save_records(session, good, report.data_timestamp, now, changed)
    clear_rejected(session, previously_rejected & fetched)
    report.fetched = len(fetched)

    for watch in watches:
        name = watch.name
        current = {n: m for n, m in after[name].items() if n not in unknown_rejected}
        wr = WatchReport(name, members=len(current), baseline=name in baseline, missing=missing.get(name, []))
        wr.updated = sum(1 for n in fetched if n in before[name] and n in current)
        if name not in baseline:
            events = _membership_events(before[name], current, wr, now)
            for event in events:
                add_change(session, event, [name], now, report.run_id)
            report.changes += len(events)
        replace_memberships(session, name, current, now)
        set_watch_state(session, name, watch.fingerprint, now)
        report.watches.append(wr)
    forget_watches(session, [w.name for w in watches])


def _replay(
    session: Session,
    plan: ReplayPlan,
    old: dict[str, Any],
    record: dict[str, Any],
    watches: Sequence[str],
    now: datetime,
    report: SyncReport,
) -> list[Change] | None:
    """Log what each version between the stored record and `record` changed, dated by its version;
    None (nothing logged) when the plan no longer fits: the stored record changed since it was
    made (a `check` meanwhile) or a version it needs is not stored."""
    anchor = version_of(plan.index, old)
    stored = load_versions(session, plan.nct_id, plan.between)
    if anchor is None or anchor.number != plan.anchor.number or len(stored) < len(plan.between):
        return None
    save_version(session, plan.nct_id, plan.target, _as_version(record), now)  # the trial page's story goes on
    steps = [(plan.index.versions[n], stored[n]) for n in plan.between]
    told: list[Change] = []
    for version, changes in replay(old, [*steps, (plan.target, record)]):
        for change in changes:
            add_change(
                session, change, watches, now, report.run_id,
                effective_date=version.date, registry_version=version.number,
            )  # fmt: skip
        told += changes
    report.history.replayed += 1
    report.history.dated += len(told)
    return told


def _as_version(record: dict[str, Any]) -> dict[str, Any]:
    """A fetched record as its version is stored: without the registry's derived section."""
    return {k: v for k, v in record.items() if k != "derivedSection"}


def _membership_events(
    before: dict[str, models.Membership], current: dict[str, Member], wr: WatchReport, now: datetime
) -> list[Change]:
    """What joining, leaving, disappearing and coming back means for one watch; `current` gains the
    explicitly watched studies the registry stopped listing (kept, to say "listed again" later)."""
    events = [Change(nct_id, ChangeKind.NEW_STUDY) for nct_id in sorted(set(current) - set(before))]
    wr.new += len(events)
    for nct_id, row in sorted(before.items()):
        if nct_id in current:
            if row.delisted_at is not None:
                events.append(Change(nct_id, ChangeKind.RELISTED))
                wr.relisted += 1
        elif row.by_id:
            current[nct_id] = Member(True, False, row.delisted_at or now)
            if row.delisted_at is None:
                events.append(Change(nct_id, ChangeKind.DELISTED))
                wr.delisted += 1
        elif row.by_search:
            events.append(Change(nct_id, ChangeKind.LEFT_SEARCH))
            wr.left += 1
    return events


def record_changes(
    session: Session,
    record: dict[str, Any],
    old: dict[str, Any] | None,
    watches: Sequence[str],
    now: datetime,
    run_id: int | None,
) -> list[Change]:
    """Log the changes of a freshly fetched record against the stored one (none for a new study).

    The changes belong to `watches` (possibly none: a trial checked by hand). The caller
    stores the record itself with `store.save_records`.
    """
    changes = diff(old, record) if old is not None else []
    for change in changes:
        add_change(session, change, watches, now, run_id)
    return changes
