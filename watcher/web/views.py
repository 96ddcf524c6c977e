"""What the pages and feeds show, read from the store: watches, trials and their change events.

An *event* is one trial's changes from one sync (or check): a line on a page, an entry in a feed.
Its changes are worded exactly as in the digests (`watcher.wording`). Everything here reads.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session

from watcher import models
from watcher.changes import ChangeKind, LoggedChange
from watcher.config import Config, Watch
from watcher.fields import STATUS_LABELS, status_label
from watcher.history import Timeline, timeline, versions_to_fetch
from watcher.models import table_of
from watcher.store import (
    chunks,
    fetched_versions,
    last_good_sync,
    load_records,
    load_versions,
    stored_version_index,
    watches_of,
)
from watcher.wording import Facts, Line, describe_all, facts

EVENTS_PER_FEED = 100
TRIALS_PER_PAGE = 100


@dataclass(frozen=True)
class Event:
    """One trial's changes from one sync, in words."""

    nct_id: str
    title: str
    detected_at: datetime
    first_id: int  # the event's stable identity: its first change never changes
    last_id: int
    lines: tuple[Line, ...]
    # replayed from the registry's version history: the version that made these changes
    effective_date: str | None = None
    registry_version: int | None = None


def _title(text: str | None, nct_id: str) -> str:
    return " ".join((text or "").split()) or nct_id


def _logged(row: Any) -> LoggedChange:
    def load(text: str | None) -> Any:
        return None if text is None else json.loads(text)

    return LoggedChange(
        id=row.id, nct_id=row.nct_id, kind=ChangeKind(row.kind), path=row.field, old=load(row.old_json),
        new=load(row.new_json), site=load(row.site_json), detected_at=row.detected_at,
        effective_date=row.effective_date, registry_version=row.registry_version,
    )  # fmt: skip


def titles(session: Session, nct_ids: Sequence[str]) -> dict[str, str]:
    study = table_of(models.Study)
    found: dict[str, str] = {}
    for batch in chunks(nct_ids):
        rows = session.execute(select(study.c.nct_id, study.c.brief_title).where(study.c.nct_id.in_(batch)))
        found.update({nct_id: title for nct_id, title in rows})
    return {n: _title(found.get(n), n) for n in nct_ids}


def events(
    session: Session, watch: str | None = None, nct_id: str | None = None, limit: int | None = EVENTS_PER_FEED
) -> list[Event]:
    """The newest events first: of one watch, of one trial, or of all."""
    change, links = table_of(models.ChangeEntry), table_of(models.ChangeWatch)
    c = change.c

    def scoped(query: Any) -> Any:
        if watch is not None:
            query = query.join(links, links.c.change_id == c.id).where(links.c.watch == watch)
        if nct_id is not None:
            query = query.where(c.nct_id == nct_id)
        return query

    # one sync's changes of one trial, split by the registry version that made them (when replayed)
    keys = (c.nct_id, c.run_id, c.detected_at, c.registry_version, c.effective_date)
    groups = scoped(select(*keys, func.min(c.id), func.max(c.id)))
    groups = groups.group_by(*keys).order_by(func.max(c.id).desc())
    found = session.execute(groups if limit is None else groups.limit(limit)).all()
    if not found:
        return []
    low, high = min(g[5] for g in found), max(g[6] for g in found)
    members: dict[tuple[Any, ...], list[LoggedChange]] = {tuple(g[:5]): [] for g in found}
    ids = sorted({g[0] for g in found})
    for batch in chunks(ids):
        rows = session.execute(
            scoped(select(change)).where(c.id.between(low, high), c.nct_id.in_(batch)).order_by(c.id)
        ).all()
        for row in rows:
            key = (row.nct_id, row.run_id, row.detected_at, row.registry_version, row.effective_date)
            if key in members:
                members[key].append(_logged(row))
    named = titles(session, ids)
    result = []
    for n, run, at, version, day, first, last in found:
        lines = describe_all(members[(n, run, at, version, day)])
        if lines:
            result.append(Event(n, named[n], at, first, last, tuple(lines), day, version))
    return result


def newest_change(session: Session, watch: str | None = None, nct_id: str | None = None) -> tuple[int, datetime | None]:
    """The newest change's id (0 when none) and time, of a watch or a trial: what a feed's validators hang on."""
    change, links = table_of(models.ChangeEntry), table_of(models.ChangeWatch)
    query = select(func.max(change.c.id))
    if watch is not None:
        query = query.join(links, links.c.change_id == change.c.id).where(links.c.watch == watch)
    if nct_id is not None:
        query = query.where(change.c.nct_id == nct_id)
    newest = session.execute(query).scalar()
    if not newest:
        return 0, None
    at = session.execute(select(change.c.detected_at).where(change.c.id == newest)).scalar()
    return int(newest), at


# --- watches ---------------------------------------------------------------------------------------


def search_words(watch: Watch) -> str:
    """A watch's definition in words: 'condition: myasthenia gravis · intervention: azathioprine'."""
    searched = (("condition", watch.condition), ("intervention", watch.intervention), ("terms", watch.term))
    parts = [f"{label}: {value}" for label, value in searched if value]
    if watch.statuses:
        parts.append("status: " + ", ".join(STATUS_LABELS.get(s, s) for s in watch.statuses))
    if watch.nct_ids:
        ids = ", ".join(watch.nct_ids[:3]) + (f" and {len(watch.nct_ids) - 3} more" if len(watch.nct_ids) > 3 else "")
        parts.append(f"{'trial' if len(watch.nct_ids) == 1 else 'trials'} {ids}")
    return " · ".join(parts)


@dataclass(frozen=True)
class WatchSummary:
    name: str
    words: str
    trials: int
    latest: list[Event]


def member_counts(session: Session) -> dict[str, int]:
    m = table_of(models.Membership)
    query = select(m.c.watch, func.count()).where(m.c.delisted_at.is_(None)).group_by(m.c.watch)
    return {watch: count for watch, count in session.execute(query)}


def summaries(session: Session, config: Config, latest: int = 3) -> list[WatchSummary]:
    counts = member_counts(session)
    return [
        WatchSummary(w.name, search_words(w), counts.get(w.name, 0), events(session, watch=w.name, limit=latest))
        for w in config.watches
    ]


@dataclass(frozen=True)
class LastSync:
    at: datetime
    data_timestamp: str | None


def last_sync(session: Session) -> LastSync | None:
    run = last_good_sync(session)
    if run is None:
        return None
    return LastSync(run.finished_at or run.started_at, run.data_timestamp)


# --- trials ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialCard:
    nct_id: str
    title: str
    status: str
    enrollment: str
    sites: str
    last_change: str | None
    last_change_at: datetime | None


class FactsCache:
    """Facts of one database's stored snapshots (a snapshot never changes), so that pages decompress
    each record once. One per app: snapshot ids mean something in their own database only."""

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self.items: OrderedDict[int, Facts] = OrderedDict()
        self.lock = threading.Lock()

    def get_many(self, session: Session, snapshot_ids: Sequence[int]) -> dict[int, Facts]:
        with self.lock:
            found = {i: self.items[i] for i in snapshot_ids if i in self.items}
        missing = [i for i in snapshot_ids if i not in found]
        snapshot = table_of(models.Snapshot)
        for batch in chunks(missing):
            for snapshot_id, blob in session.execute(
                select(snapshot.c.id, snapshot.c.record).where(snapshot.c.id.in_(batch))
            ):
                found[snapshot_id] = facts(json.loads(zlib.decompress(blob)))
        with self.lock:
            for i in missing:
                if i in found:
                    self.items[i] = found[i]
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return found


@dataclass(frozen=True)
class TrialList:
    cards: list[TrialCard]
    total: int
    page: int
    pages: int


def trial_list(
    session: Session, cache: FactsCache, watch: str, page: int = 1, per_page: int = TRIALS_PER_PAGE
) -> TrialList:
    """A watch's trials, the most recently changed first, a page at a time."""
    m, study = table_of(models.Membership), table_of(models.Study)
    change, links = table_of(models.ChangeEntry), table_of(models.ChangeWatch)
    members = session.execute(
        select(study.c.nct_id, study.c.brief_title, study.c.overall_status, study.c.snapshot_id)
        .join(m, m.c.nct_id == study.c.nct_id)
        .where(m.c.watch == watch, m.c.delisted_at.is_(None))
    ).all()
    last = dict(
        session.execute(
            select(change.c.nct_id, func.max(change.c.id))
            .join(links, links.c.change_id == change.c.id)
            .where(links.c.watch == watch)
            .group_by(change.c.nct_id)
        ).all()
    )
    ordered = sorted(members, key=lambda r: (-(last.get(r.nct_id) or 0), r.nct_id))
    pages = max(1, -(-len(ordered) // per_page))
    page = min(max(page, 1), pages)
    shown = ordered[(page - 1) * per_page : page * per_page]
    known = cache.get_many(session, [r.snapshot_id for r in shown])
    # the newest change comes with the others of its sync: the card shows the most important of them
    moments: set[tuple[str, datetime]] = set()
    for batch in chunks([last[r.nct_id] for r in shown if r.nct_id in last]):
        moments.update(session.execute(select(change.c.nct_id, change.c.detected_at).where(change.c.id.in_(batch))))
    latest: dict[str, list[LoggedChange]] = {}
    for batch in chunks(sorted({n for n, _ in moments})):
        query = (
            select(change)
            .join(links, links.c.change_id == change.c.id)
            .where(
                links.c.watch == watch, change.c.nct_id.in_(batch), change.c.detected_at.in_({at for _, at in moments})
            )
        )
        for row in session.execute(query.order_by(change.c.id)):
            if (row.nct_id, row.detected_at) in moments:
                latest.setdefault(row.nct_id, []).append(_logged(row))
    cards = []
    for r in shown:
        f = known.get(r.snapshot_id)
        group = latest.get(r.nct_id, [])
        told = describe_all(group)
        cards.append(
            TrialCard(
                nct_id=r.nct_id,
                title=_title(r.brief_title, r.nct_id),
                status=status_label(r.overall_status),
                enrollment=f.enrollment if f else "not given",
                sites=f.sites if f else "none listed",
                last_change=told[0].text if told else None,
                last_change_at=group[-1].detected_at if group else None,
            )
        )
    return TrialList(cards, len(ordered), page, pages)


@dataclass(frozen=True)
class TrialStory:
    facts: Facts
    watches: list[str]
    first_seen: datetime
    checked_at: datetime
    events: list[Event]
    registry: Timeline | None = None  # its story in the registry's version history, when stored here


def trial_story(session: Session, nct_id: str) -> TrialStory | None:
    """A stored trial's facts and its whole change timeline, newest first (None if not stored)."""
    row = session.get(models.Study, nct_id)
    if row is None:
        return None
    record = load_records(session, [nct_id]).get(nct_id)
    if record is None:
        return None
    return TrialStory(
        facts=facts(record),
        watches=watches_of(session, [nct_id]).get(nct_id, []),
        first_seen=row.first_seen_at,
        checked_at=row.checked_at,
        events=events(session, nct_id=nct_id, limit=None),
        registry=registry_timeline(session, nct_id),
    )


def registry_timeline(session: Session, nct_id: str) -> Timeline | None:
    """The trial's story from the registry's version history, from what is stored (a page never
    asks the registry): the status at every version from the index, and what each version changed
    when every version worth reading is stored (`watcher history NCT… --registry` reads them)."""
    index = stored_version_index(session, nct_id)
    if index is None:
        return None
    wanted = versions_to_fetch(index)
    if set(wanted) <= fetched_versions(session, nct_id):
        return timeline(index, load_versions(session, nct_id, wanted))
    return timeline(index, {})  # a partial set would put changes on the wrong versions: the statuses alone
