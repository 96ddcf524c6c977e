"""The run log: one row per sync or check, with its outcome, traffic and error."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlmodel import Session

from watcher.clock import Clock
from watcher.models import SyncRun
from watcher.registry import Registry
from watcher.states import RunKind, RunOutcome
from watcher.store import Store

log = logging.getLogger(__name__)


def new_run(
    session: Session, started_at: datetime, stamp: str | None, fingerprint: str | None, kind: RunKind = RunKind.SYNC
) -> SyncRun:
    run = SyncRun(kind=kind, started_at=started_at, data_timestamp=stamp, watches_fingerprint=fingerprint)
    session.add(run)
    session.flush()
    return run


def close_run(
    session: Session, run: SyncRun, outcome: RunOutcome, registry: Registry, clock: Clock, studies: int, changes: int
) -> None:
    run.outcome = outcome
    run.finished_at = clock()
    run.requests, run.bytes = registry.traffic.requests, registry.traffic.bytes
    run.studies, run.changes = studies, changes
    session.add(run)


def record_failure(
    store: Store, registry: Registry | None, started_at: datetime, error: str, clock: Clock,
    kind: RunKind = RunKind.SYNC,
) -> None:  # fmt: skip
    """Note a failed run (after the run's own transaction was rolled back)."""
    traffic = registry.traffic if registry is not None else None
    try:
        with store.write() as session:
            session.add(
                SyncRun(
                    kind=kind, started_at=started_at, finished_at=clock(), outcome=RunOutcome.FAILED,
                    requests=traffic.requests if traffic else 0, bytes=traffic.bytes if traffic else 0,
                    error=error[:500],
                )
            )  # fmt: skip
    except Exception:  # the original error matters more than this note
        log.debug("could not record the failed run", exc_info=True)
