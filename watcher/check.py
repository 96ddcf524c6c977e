"""The one-off `watcher check`: fetch trials now and record their changes exactly as a sync would,
so that a change is recorded once whichever of the two sees it first."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from watcher.changes import Change
from watcher.clock import Clock, utcnow
from watcher.config import Config
from watcher.differ import get_path, nct_id_of
from watcher.errors import Cancelled
from watcher.registry import Registry
from watcher.runs import close_run, new_run, record_failure
from watcher.states import RunKind, RunOutcome
from watcher.store import Store, load_records, save_records, study_rows, watch_states, watches_of
from watcher.sync import record_changes
from watcher.validate import problem


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
    rejected: dict[str, str] = field(default_factory=dict)  # requested ID → what is wrong with its record


def run_check(
    config: Config, store: Store, registry: Registry, nct_ids: Iterable[str], clock: Clock = utcnow
) -> CheckReport:
    """Fetch the given trials now and record their changes as a sync would."""
    requested = list(dict.fromkeys(nct_ids))
    started_at = clock()
    try:
        records = [r for page in registry.fetch(requested) for r in page]
        by_request: dict[str, dict[str, Any]] = {}
        for record in records:
            aliases = get_path(record, ("protocolSection", "identificationModule", "nctIdAliases"))
            for key in (nct_id_of(record), *(aliases if isinstance(aliases, list) else [])):
                if key and key in requested:
                    by_request[key] = record
        rejected = {asked: reason for asked, record in by_request.items() if (reason := problem(record))}
        usable = {asked: record for asked, record in by_request.items() if asked not in rejected}
        checked: list[CheckedStudy] = []
        with store.write() as session:
            run = new_run(session, started_at, None, None, kind=RunKind.CHECK)
            now = clock()
            ids = [nct_id_of(r) or "" for r in usable.values()]
            old_records = load_records(session, ids)
            rows = study_rows(session, ids)
            states = watch_states(session)
            member_of = watches_of(session, ids)
            done: set[str] = set()
            for asked in requested:
                fetched = usable.get(asked)
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
            save_records(session, list({nct_id_of(r): r for r in usable.values()}.values()), None, now, changed)
            close_run(session, run, RunOutcome.OK, registry, clock, len(checked), sum(len(c.changes) for c in checked))
    except Cancelled:
        raise
    except Exception as exc:
        record_failure(store, registry, started_at, str(exc), clock, kind=RunKind.CHECK)
        raise
    missing = [n for n in requested if n not in by_request]
    return CheckReport(checked, missing, registry.traffic.requests, registry.traffic.bytes, rejected)
