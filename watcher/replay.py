"""Replay on sync: the versions a study went through between two polls, read from the registry.

The I/O edge of `watcher.history.plan_replay`/`replay` for a sync. It runs in the sync's
reading phase (before its one write transaction) and hands the write phase what to store: the
version indexes read, the version records fetched, and for each study either a plan to replay
it version by version or nothing (plain diff). Nothing here writes to the database.

The registry's history is an internal API of its website, read gently (one request a second,
at most `VERSIONS_PER_SYNC` version records a sync) and never trusted to work: any failure
falls back to the plain diff, for that study (its history alone is missing or odd) or for the
rest of the sync (the service refuses, rate limits or is down).
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from watcher.differ import Record
from watcher.errors import HistoryUnavailable
from watcher.history import VERSIONS_PER_SYNC, ReplayPlan, Version, VersionIndex, plan_replay
from watcher.registry import Registry
from watcher.store import Store, fetched_versions
from watcher.store import canonical as canonical_json
from watcher.validate import problem

log = logging.getLogger(__name__)


class Progress(Protocol):
    def __call__(self, done: int, total: int, phase: str | None = None) -> None: ...


@dataclass(frozen=True)
class Moved:
    """A study whose record moved to a new version since the stored one: the dates the two
    records were submitted on are all planning needs."""

    stored_on: str | None
    fetched_on: str | None


@dataclass
class HistoryReport:
    """What a sync did with the registry's version history."""

    asked: int = 0  # studies whose version index was asked for
    unasked: int = 0  # studies compared plainly because the sync had asked for as many indexes as it may
    replayed: int = 0  # studies whose changes were recorded version by version (set by the write phase)
    fetched: int = 0  # version records fetched (the cap counts these)
    from_store: int = 0  # version records read from the store instead
    dated: int = 0  # changes recorded with their version's date (set by the write phase)
    deferred: list[str] = field(default_factory=list)  # left for the next sync: the cap was reached
    plain: int = 0  # studies compared plainly instead, because their history could not be used
    fallbacks: list[str] = field(default_factory=list)  # why, for a study whose own history failed
    stopped: str | None = None  # why the rest of the sync stopped asking (the service failed)


@dataclass
class ReplayWork:
    """What the write phase of a sync stores and replays."""

    plans: dict[str, ReplayPlan] = field(default_factory=dict)  # studies replayed version by version
    deferred: set[str] = field(default_factory=set)  # studies left whole (record and changes) for the next sync
    indexes: list[VersionIndex] = field(default_factory=list)
    # version records fetched (compressed: up to VERSIONS_PER_SYNC of them wait for the write)
    bodies: list[tuple[str, Version, bytes]] = field(default_factory=list)
    report: HistoryReport = field(default_factory=HistoryReport)

    def fetched_records(self) -> Iterator[tuple[str, Version, Record]]:
        for nct_id, version, blob in self.bodies:
            yield nct_id, version, json.loads(zlib.decompress(blob))


def gather(
    registry: Registry,
    store: Store,
    moved: Mapping[str, Moved],
    budget: int = VERSIONS_PER_SYNC,
    progress: Progress | None = None,
) -> ReplayWork:
    """Read the version index of every moved study (at most `budget` of them; the others are
    compared plainly), plan its replay, and fetch the versions in between that are not stored
    yet, at most `budget` of them. A version that is not the shape the API promises makes its
    study fall back to the plain comparison. Studies needing fewer versions come first, so that
    a cap leaves as few studies waiting as it can; a study whose versions do not all fit is left
    whole for the next sync (what was fetched is kept)."""
    work = ReplayWork()
    report = work.report
    order = sorted(moved)
    for done, nct_id in enumerate(order):
        if progress:
            progress(done, len(order), "reading version indexes")
        if report.stopped:
            _fall_back(report)
            continue
        if report.asked >= budget:  # an index is a request too: a sync asks for at most `budget` of them
            report.unasked += 1
            continue
        try:
            report.asked += 1
            index = registry.version_index(nct_id)
            work.indexes.append(index)
            work.plans[nct_id] = plan_replay(index, moved[nct_id].stored_on, moved[nct_id].fetched_on)
        except HistoryUnavailable as exc:
            _fall_back(report, exc)
    with store.read() as session:
        need = {
            nct_id: [n for n in plan.between if n not in stored]
            for nct_id, plan in work.plans.items()
            for stored in [fetched_versions(session, nct_id)]
        }
    report.from_store = sum(len(p.between) - len(need[n]) for n, p in work.plans.items())
    total = min(budget, sum(len(n) for n in need.values()))
    for nct_id in sorted(need, key=lambda n: (len(need[n]), n)):
        if report.stopped:
            del work.plans[nct_id]
            _fall_back(report)
            continue
        left = budget - report.fetched
        todo = need[nct_id]
        try:
            for number in todo[: max(left, 0)]:
                if progress:
                    progress(report.fetched, total, "reading registry versions")
                record = registry.version(nct_id, number)
                reason = problem(record)
                if reason is not None:
                    raise HistoryUnavailable(f"{nct_id}: version {number} is malformed ({reason})", study_only=True)
                version = work.plans[nct_id].index.versions[number]
                work.bodies.append((nct_id, version, zlib.compress(canonical_json(record), 6)))
                report.fetched += 1
        except HistoryUnavailable as exc:
            del work.plans[nct_id]
            _fall_back(report, exc)
            continue
        if len(todo) > left:
            del work.plans[nct_id]
            work.deferred.add(nct_id)
            report.deferred.append(nct_id)
    if report.unasked:
        log.info("registry history: %d trials compared plainly (at most %d indexes a sync)", report.unasked, budget)
    if report.deferred:
        log.info(
            "registry history: %d version records read (the most one sync reads); %d trials wait for the next sync",
            report.fetched, len(report.deferred),
        )  # fmt: skip
    return work


def _fall_back(report: HistoryReport, exc: HistoryUnavailable | None = None) -> None:
    """This study is compared plainly. A failure of its own history is said for it; the first
    failure of the service itself is said once and stops the asking for the rest of the sync."""
    report.plain += 1
    if exc is None:
        return
    if exc.study_only:
        report.fallbacks.append(str(exc))
        log.warning("%s; its changes are found by comparing records instead", exc)
    else:
        report.stopped = str(exc)
        log.warning("%s; no more history requests in this sync, changes are found by comparing records", exc)
