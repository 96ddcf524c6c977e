"""One sync: version check → membership → fetch what moved → diff → store, in one transaction.

Also the one-off `check`, which shares the record-and-diff step so that a change is
recorded once whichever of the two sees it first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session

from watcher.changes import Change, ChangeKind
from watcher.clock import Clock, utcnow
from watcher.config import Config, Watch
from watcher.differ import diff, get_path, nct_id_of
from watcher.errors import Cancelled
from watcher.models import SyncRun
from watcher.registry import Listed, Registry
from watcher.states import RunKind, RunOutcome
from watcher.store import (
    Store,
    add_change,
    forget_watches,
    last_good_sync,
    load_records,
    memberships,
    replace_memberships,
    save_records,
    set_watch_state,
    stored_last_updates,
    study_rows,
    watch_states,
    watches_of,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (studies done, studies to fetch)


@dataclass
class WatchReport:
    name: str
    members: int = 0
    updated: int = 0
    new: int = 0
    left: int = 0
    baseline: bool = False
    missing: list[str] = field(default_factory=list)


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


@dataclass
class _Members:
    """The studies of one watch as listed now: nct_id → (by_id, by_search)."""

    by_id: set[str] = field(default_factory=set)
    by_search: set[str] = field(default_factory=set)

    def flags(self) -> dict[str, tuple[bool, bool]]:
        return {n: (n in self.by_id, n in self.by_search) for n in self.by_id | self.by_search}


def run_sync(
    config: Config,
    store: Store,
    registry: Registry,
    progress: Progress | None = None,
    clock: Clock = utcnow,
) -> SyncReport:
    """Poll every watch once. Raises RegistryError (nothing stored) when the registry fails."""
    started = time.monotonic()
    started_at = clock()
    try:
        stamp = registry.data_timestamp()
        with store.read() as session:
            last = last_good_sync(session)
        previous = last.data_timestamp if last else None
        if last and previous == stamp and last.watches_fingerprint == config.watches_fingerprint:
            report = SyncReport(RunOutcome.UNCHANGED, stamp, previous)
            return _finish(store, registry, report, config.watches_fingerprint, started, started_at, clock)

        listed, members, missing = _list_members(config.watches, registry)
        report = SyncReport(RunOutcome.OK, stamp, previous)
        with store.write() as session:
            run = _new_run(session, started_at, stamp, config.watches_fingerprint)
            report.run_id = run.id
            _apply_sync(session, config.watches, listed, members, missing, registry, report, progress, clock)
            _close_run(session, run, report, registry, clock)
        report.seconds = time.monotonic() - started
        return report
    except Cancelled:
        raise
    except Exception as exc:
        _record_failure(store, registry, started_at, exc, clock)
        raise


def _finish(
    store: Store,
    registry: Registry,
    report: SyncReport,
    fingerprint: str,
    started: float,
    started_at: datetime,
    clock: Clock,
) -> SyncReport:
    with store.write() as session:
        run = _new_run(session, started_at, report.data_timestamp, fingerprint)
        report.run_id = run.id
        _close_run(session, run, report, registry, clock)
    report.seconds = time.monotonic() - started
    return report


def _new_run(
    session: Session, started_at: datetime, stamp: str | None, fingerprint: str | None, kind: RunKind = RunKind.SYNC
) -> SyncRun:
    run = SyncRun(kind=kind, started_at=started_at, data_timestamp=stamp, watches_fingerprint=fingerprint)
    session.add(run)
    session.flush()
    return run


def _close_run(
    session: Session,
    run: SyncRun,
    report: SyncReport,
    registry: Registry,
    clock: Clock,
) -> None:
    report.requests, report.bytes = registry.traffic.requests, registry.traffic.bytes
    run.outcome = report.outcome
    run.finished_at = clock()
    run.requests, run.bytes = report.requests, report.bytes
    run.studies = sum(w.members for w in report.watches)
    run.changes = report.changes
    session.add(run)


def _record_failure(
    store: Store,
    registry: Registry,
    started_at: datetime,
    exc: Exception,
    clock: Clock,
    kind: RunKind = RunKind.SYNC,
) -> None:
    """Note the failed run (after the sync's own transaction was rolled back)."""
    try:
        with store.write() as session:
            session.add(
                SyncRun(
                    kind=kind,
                    started_at=started_at,
                    finished_at=clock(),
                    outcome=RunOutcome.FAILED,
                    requests=registry.traffic.requests,
                    bytes=registry.traffic.bytes,
                    error=str(exc)[:500],
                )
            )
    except Exception:  # the original error matters more than this note
        log.debug("could not record the failed run", exc_info=True)


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


def _apply_sync(
    session: Session,
    watches: Sequence[Watch],
    listed: dict[str, Listed],
    members: dict[str, _Members],
    missing: dict[str, list[str]],
    registry: Registry,
    report: SyncReport,
    progress: Progress | None,
    clock: Clock,
) -> None:
    now = clock()
    states = watch_states(session)
    baseline = {w.name for w in watches if w.name not in states or states[w.name].fingerprint != w.fingerprint}
    before = {w.name: memberships(session, w.name) for w in watches}
    after = {w.name: members[w.name].flags() for w in watches}

    stored = stored_last_updates(session, listed)
    to_fetch = [n for n, item in listed.items() if n not in stored or stored[n] != item.last_update]
    log.debug("%d studies listed, %d to fetch", len(listed), len(to_fetch))

    def attributed(nct_id: str) -> list[str]:
        # a field change belongs to the watches that already held the study and still do
        return [
            w.name for w in watches if w.name not in baseline and nct_id in before[w.name] and nct_id in after[w.name]
        ]

    fetched: set[str] = set()
    if progress:
        progress(0, len(to_fetch))
    for page in registry.fetch(to_fetch):
        old_records = load_records(session, (nct_id_of(r) or "" for r in page))
        changed: set[str] = set()
        for record in page:
            nct_id = nct_id_of(record) or ""
            changes = record_changes(session, record, old_records.get(nct_id), attributed(nct_id), now, report.run_id)
            report.changes += len(changes)
            fetched.add(nct_id)
            if changes:
                changed.add(nct_id)
        save_records(session, page, report.data_timestamp, now, changed)
        if progress:
            progress(len(fetched), len(to_fetch))
    report.fetched = len(fetched)

    for watch in watches:
        name = watch.name
        wr = WatchReport(name, members=len(after[name]), baseline=name in baseline, missing=missing.get(name, []))
        wr.updated = sum(1 for n in fetched if n in before[name] and n in after[name])
        if name not in baseline:
            for nct_id in sorted(set(after[name]) - set(before[name])):
                add_change(session, Change(nct_id, ChangeKind.NEW_STUDY), [name], now, report.run_id)
                wr.new += 1
            for nct_id, row in sorted(before[name].items()):
                if nct_id not in after[name] and row.by_search and not row.by_id:
                    add_change(session, Change(nct_id, ChangeKind.LEFT_SEARCH), [name], now, report.run_id)
                    wr.left += 1
            report.changes += wr.new + wr.left
        replace_memberships(session, name, after[name], now)
        set_watch_state(session, name, watch.fingerprint, now)
        report.watches.append(wr)
    forget_watches(session, [w.name for w in watches])


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


# --- one-off check -----------------------------------------------------------------------


@dataclass
class CheckedStudy:
    requested: str
    nct_id: str
    record: dict[str, Any]
    changes: list[Change]
    first_check: bool
    previous_check: datetime | None
    watches: list[str]


@dataclass
class CheckReport:
    studies: list[CheckedStudy]
    missing: list[str]
    requests: int
    bytes: int


def run_check(
    config: Config,
    store: Store,
    registry: Registry,
    nct_ids: Iterable[str],
    clock: Clock = utcnow,
) -> CheckReport:
    """Fetch the given trials now and record their changes as a sync would."""
    requested = list(dict.fromkeys(nct_ids))
    started_at = clock()
    try:
        records = [r for page in registry.fetch(requested) for r in page]
        by_request: dict[str, dict[str, Any]] = {}
        for record in records:
            aliases = get_path(record, ("protocolSection", "identificationModule", "nctIdAliases")) or []
            for key in (nct_id_of(record), *aliases):
                if key and key in requested:
                    by_request[key] = record
        checked: list[CheckedStudy] = []
        with store.write() as session:
            run = _new_run(session, started_at, None, None, kind=RunKind.CHECK)
            now = clock()
            ids = [nct_id_of(r) or "" for r in by_request.values()]
            old_records = load_records(session, ids)
            rows = study_rows(session, ids)
            states = watch_states(session)
            member_of = watches_of(session, ids)
            done: set[str] = set()
            for asked in requested:
                fetched = by_request.get(asked)
                if fetched is None:
                    continue
                nct_id = nct_id_of(fetched) or asked
                watches = [w for w in member_of.get(nct_id, []) if w in states]
                changes = (
                    []
                    if nct_id in done
                    else record_changes(session, fetched, old_records.get(nct_id), watches, now, run.id)
                )
                done.add(nct_id)
                row = rows.get(nct_id)
                checked.append(
                    CheckedStudy(asked, nct_id, fetched, changes, row is None, row.checked_at if row else None, watches)
                )
            changed = {c.nct_id for c in checked if c.changes}
            save_records(session, list({nct_id_of(r): r for r in by_request.values()}.values()), None, now, changed)
            run.outcome = RunOutcome.OK
            run.finished_at = clock()
            run.requests, run.bytes = registry.traffic.requests, registry.traffic.bytes
            run.studies = len(checked)
            run.changes = sum(len(c.changes) for c in checked)
            session.add(run)
    except Cancelled:
        raise
    except Exception as exc:
        _record_failure(store, registry, started_at, exc, clock, kind=RunKind.CHECK)
        raise
    missing = [n for n in requested if n not in by_request]
    return CheckReport(checked, missing, registry.traffic.requests, registry.traffic.bytes)
