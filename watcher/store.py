"""The store: opening it, transactions, and the queries the rest of the code needs.

One sync or one check is one write transaction, all or nothing. Writers queue one behind
the other (see `watcher.db`), on SQLite and PostgreSQL alike; readers never wait.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Insert, Table, insert
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, delete, func, select

from watcher import db, models
from watcher.changes import Change, ChangeKind, LoggedChange
from watcher.db import BUSY_TIMEOUT_S, Backend, Database
from watcher.differ import get_path, nct_id_of
from watcher.errors import StoreError
from watcher.history import Version, VersionIndex
from watcher.models import table_of
from watcher.states import DigestState, RunKind, RunOutcome

T = TypeVar("T")
# The newest migration (watcher/migrations/versions); a test keeps the two in step. A database
# at this revision opens without importing Alembic, so reading commands start fast.
HEAD_REVISION = "0007"


def chunks(items: Iterable[T], size: int = 500) -> Iterator[list[T]]:
    """Lists of at most `size` items: databases cap the parameters of one statement."""
    batch = list(items)
    for start in range(0, len(batch), size):
        yield batch[start : start + size]


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Store:
    """An open database. `writing` says whether the command will write: on SQLite a writing
    command upgrades an older schema (after a backup); see `watcher.schema.ensure`."""

    def __init__(self, database: Database | Path, writing: bool = True) -> None:
        self.database = database if isinstance(database, Database) else db.sqlite_database(database)
        if self.backend is Backend.SQLITE and not self.database.path.parent.is_dir():
            raise StoreError(f"{self.database.path}: the folder for the database does not exist")
        self.engine = db.create(self.database)
        try:
            if self._revision() != HEAD_REVISION:
                from watcher.schema import ensure  # Alembic is imported only when there is work for it

                ensure(self.engine, self.database, writing)
        except sa_exc.DBAPIError as exc:
            self.engine.dispose()
            raise StoreError(
                f"{self.database.display}: cannot open the database ({db.describe_error(self.database, exc)})"
            ) from None
        except BaseException:
            self.engine.dispose()
            raise

    @property
    def backend(self) -> Backend:
        return self.database.backend

    @property
    def path(self) -> Path:
        """The SQLite file (SQLite only)."""
        return self.database.path

    def _revision(self) -> str | None:
        with self.engine.connect() as conn:
            try:
                value = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            except sa_exc.DBAPIError as exc:
                if "alembic_version" in str(exc.orig):  # no such table (yet)
                    return None
                raise
        return str(value) if value is not None else None

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.engine.connect() as conn, Session(bind=conn) as session:
            yield session

    @contextmanager
    def write(self, serial: bool = True) -> Iterator[Session]:
        """One all-or-nothing transaction; rolled back on any error.

        `serial` (the default) queues it behind every other writer, which the sync and the
        digest queueing rely on. Claiming and marking outbox rows need not (on PostgreSQL).
        """
        with self.engine.connect() as conn:
            conn.execution_options(write_lock=True)
            with Session(bind=conn, expire_on_commit=False) as session:
                try:
                    if serial:
                        db.begin_write(session.connection(), self.backend)
                    yield session
                    session.commit()
                except sa_exc.DBAPIError as exc:
                    session.rollback()
                    if db.is_busy(exc):
                        raise StoreError(
                            f"{self.database.display}: the database stayed busy for {BUSY_TIMEOUT_S} s"
                        ) from None
                    raise StoreError(
                        f"{self.database.display}: database error ({db.describe_error(self.database, exc)})"
                    ) from None
                except BaseException:
                    session.rollback()
                    raise


def upsert(session: Session, table: Table) -> Insert:
    """An INSERT that can take ON CONFLICT clauses, in the session's SQL dialect."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


# --- studies and snapshots ---------------------------------------------------------------


def load_records(session: Session, nct_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for batch in chunks(nct_ids):
        rows = session.exec(
            select(models.Study.nct_id, models.Snapshot.record)
            .join(models.Snapshot, col(models.Snapshot.id) == col(models.Study.snapshot_id))
            .where(col(models.Study.nct_id).in_(batch))
        )
        for nct_id, blob in rows:
            records[nct_id] = json.loads(zlib.decompress(blob))
    return records


def stored_last_updates(session: Session, nct_ids: Iterable[str]) -> dict[str, str | None]:
    query = select(models.Study.nct_id, models.Study.last_update)
    result: dict[str, str | None] = {}
    for batch in chunks(nct_ids):
        result.update(session.exec(query.where(col(models.Study.nct_id).in_(batch))).all())
    return result


def save_records(
    session: Session,
    records: Sequence[dict[str, Any]],
    data_timestamp: str | None,
    now: datetime,
    changed: Collection[str] = (),
) -> None:
    """Store records as their studies' current state, a page at a time.

    A record's content is stored once (a snapshot per distinct content hash), however often it
    is fetched. `changed` names the studies whose tracked fields changed now.
    """
    prepared: dict[tuple[str, str], tuple[bytes, dict[str, Any]]] = {}
    for record in records:
        nct_id = nct_id_of(record)
        assert nct_id
        body = canonical(record)
        prepared[(nct_id, hashlib.sha256(body).hexdigest())] = (body, record)
    if not prepared:
        return
    ids = sorted({key[0] for key in prepared})
    snapshots = table_of(models.Snapshot)  # Core, not the ORM: no per-row objects on a big sync
    known: dict[tuple[str, str], int] = {}
    for batch in chunks(ids):
        rows = session.execute(
            select(snapshots.c.nct_id, snapshots.c.content_hash, snapshots.c.id).where(snapshots.c.nct_id.in_(batch))
        )
        known.update({(n, h): i for n, h, i in rows})
    fresh = [
        {"nct_id": n, "content_hash": h, "record": zlib.compress(body, 6), "data_timestamp": data_timestamp,
         "stored_at": now}
        for (n, h), (body, _) in prepared.items()
        if (n, h) not in known
    ]  # fmt: skip
    if fresh:
        inserted = session.execute(
            insert(snapshots).returning(snapshots.c.id, snapshots.c.nct_id, snapshots.c.content_hash), fresh
        )
        known.update({(n, h): i for i, n, h in inserted})
    studies = table_of(models.Study)
    statement = upsert(session, studies)
    statement = statement.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=[studies.c.nct_id],
        set_={
            "snapshot_id": statement.excluded.snapshot_id,  # type: ignore[attr-defined]
            "brief_title": statement.excluded.brief_title,  # type: ignore[attr-defined]
            "overall_status": statement.excluded.overall_status,  # type: ignore[attr-defined]
            "last_update": statement.excluded.last_update,  # type: ignore[attr-defined]
            "checked_at": statement.excluded.checked_at,  # type: ignore[attr-defined]
            "changed_at": func.coalesce(statement.excluded.changed_at, studies.c.changed_at),  # type: ignore[attr-defined]
        },
    )
    session.execute(
        statement,
        [
            {
                "nct_id": n,
                "snapshot_id": known[(n, h)],
                "brief_title": get_path(record, ("protocolSection", "identificationModule", "briefTitle")),
                "overall_status": get_path(record, ("protocolSection", "statusModule", "overallStatus")),
                "last_update": get_path(
                    record, ("protocolSection", "statusModule", "lastUpdatePostDateStruct", "date")
                ),
                "first_seen_at": now,
                "checked_at": now,
                "changed_at": now if n in changed else None,
            }
            for (n, h), (_, record) in prepared.items()
        ],
    )
    session.expunge_all()  # keep memory flat over a long sync


def study_rows(session: Session, nct_ids: Iterable[str]) -> dict[str, models.Study]:
    ids = list(nct_ids)
    rows = session.exec(select(models.Study).where(col(models.Study.nct_id).in_(ids))).all()
    return {row.nct_id: row for row in rows}


# --- watches and memberships -------------------------------------------------------------


def watch_states(session: Session) -> dict[str, models.WatchState]:
    return {row.name: row for row in session.exec(select(models.WatchState)).all()}


def set_watch_state(session: Session, name: str, fingerprint: str, now: datetime) -> None:
    state = session.get(models.WatchState, name)
    if state is None:
        session.add(models.WatchState(name=name, fingerprint=fingerprint, baseline_at=now))
    else:
        state.fingerprint = fingerprint
        session.add(state)


def memberships(session: Session, watch: str) -> dict[str, models.Membership]:
    rows = session.exec(select(models.Membership).where(models.Membership.watch == watch)).all()
    return {row.nct_id: row for row in rows}


def watches_of(session: Session, nct_ids: Iterable[str]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for batch in chunks(nct_ids):
        rows = session.exec(
            select(models.Membership.nct_id, models.Membership.watch)
            .where(col(models.Membership.nct_id).in_(batch))
            .order_by(col(models.Membership.watch))
        )
        for nct_id, watch in rows:
            result.setdefault(nct_id, []).append(watch)
    return result


@dataclass(frozen=True)
class Member:
    """How a study belongs to a watch: by explicit ID, by its search, and whether the registry stopped listing it."""

    by_id: bool
    by_search: bool
    delisted_at: datetime | None = None


def replace_memberships(session: Session, watch: str, members: dict[str, Member], now: datetime) -> None:
    """Make the watch's members exactly `members`."""
    current = memberships(session, watch)
    gone = [nct_id for nct_id in current if nct_id not in members]
    for batch in chunks(gone):
        session.execute(
            delete(models.Membership).where(
                col(models.Membership.watch) == watch, col(models.Membership.nct_id).in_(batch)
            )
        )
    for nct_id, member in members.items():
        row = current.get(nct_id)
        if row is None:
            session.add(
                models.Membership(
                    watch=watch, nct_id=nct_id, by_id=member.by_id, by_search=member.by_search, since=now,
                    delisted_at=member.delisted_at,
                )
            )  # fmt: skip
        elif (row.by_id, row.by_search, row.delisted_at) != (member.by_id, member.by_search, member.delisted_at):
            row.by_id, row.by_search, row.delisted_at = member.by_id, member.by_search, member.delisted_at
            session.add(row)
    session.flush()


def forget_watches(session: Session, keep: Iterable[str]) -> None:
    """Drop memberships and state of watches no longer in the config."""
    names = list(keep)
    session.execute(delete(models.Membership).where(col(models.Membership.watch).not_in(names)))
    session.execute(delete(models.WatchState).where(col(models.WatchState.name).not_in(names)))


def newest_change_id(session: Session) -> int:
    """The highest id in the change log (0 when empty): a subscription that starts now starts after it."""
    return session.exec(select(func.max(models.ChangeEntry.id))).one() or 0


# --- records that failed the shape check ---------------------------------------------------------


def note_rejected(session: Session, nct_id: str, reason: str, now: datetime) -> int:
    """Count one more sync in a row in which this study's record was rejected; returns the count."""
    row = session.get(models.RejectedRecord, nct_id)
    if row is None:
        row = models.RejectedRecord(nct_id=nct_id, reason=reason, first_at=now, last_at=now, times=1)
    else:
        row.reason, row.last_at, row.times = reason, now, row.times + 1
    session.add(row)
    return row.times


@dataclass(frozen=True)
class RejectedStreak:
    nct_id: str
    reason: str
    times: int


def claim_rejected_alerts(session: Session, threshold: int, now: datetime) -> list[RejectedStreak]:
    """The records skipped `threshold` syncs in a row or more that the operator has not been told
    of in this streak; marks them told."""
    table = models.RejectedRecord
    rows = session.exec(
        select(table).where(col(table.times) >= threshold, col(table.alerted_at).is_(None)).order_by(col(table.nct_id))
    ).all()
    for row in rows:
        row.alerted_at = now
        session.add(row)
    return [RejectedStreak(r.nct_id, r.reason, r.times) for r in rows]


def clear_rejected(session: Session, nct_ids: Iterable[str]) -> None:
    """These studies' records passed the check: they are no longer counted."""
    for batch in chunks(nct_ids):
        session.execute(delete(models.RejectedRecord).where(col(models.RejectedRecord.nct_id).in_(batch)))


# --- changes -------------------------------------------------------------------------------


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def add_change(
    session: Session,
    change: Change,
    watches: Sequence[str],
    now: datetime,
    run_id: int | None,
    *,
    effective_date: str | None = None,
    registry_version: int | None = None,
) -> None:
    """Log a change. A change replayed from the registry's version history also carries the
    version's date and number."""
    row = models.ChangeEntry(
        nct_id=change.nct_id,
        kind=change.kind,
        field=change.path,
        old_json=_dump(change.old),
        new_json=_dump(change.new),
        site_json=_dump(change.site),
        detected_at=now,
        run_id=run_id,
        effective_date=effective_date,
        registry_version=registry_version,
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    for watch in dict.fromkeys(watches):
        session.add(models.ChangeWatch(change_id=row.id, watch=watch))


def query_changes(
    session: Session,
    since: datetime | None = None,
    watches: Sequence[str] | None = None,
    nct_ids: Sequence[str] | None = None,
    after_id: int | None = None,
) -> list[LoggedChange]:
    entry = models.ChangeEntry
    query = select(entry).order_by(col(entry.id))
    if since is not None:
        query = query.where(entry.detected_at >= since)
    if nct_ids:
        query = query.where(col(entry.nct_id).in_(list(nct_ids)))
    if after_id is not None:
        query = query.where(col(entry.id) > after_id)
    if watches:
        query = query.where(
            col(entry.id).in_(
                select(models.ChangeWatch.change_id).where(col(models.ChangeWatch.watch).in_(list(watches)))
            )
        )
    rows = session.exec(query).all()
    links: dict[int, list[str]] = {}
    for batch in chunks(r.id for r in rows):
        for change_id, watch in session.exec(
            select(models.ChangeWatch.change_id, models.ChangeWatch.watch)
            .where(col(models.ChangeWatch.change_id).in_(batch))
            .order_by(col(models.ChangeWatch.watch))
        ):
            links.setdefault(change_id, []).append(watch)
    return [
        LoggedChange(
            id=r.id or 0,
            nct_id=r.nct_id,
            kind=ChangeKind(r.kind),
            path=r.field,
            old=_load(r.old_json),
            new=_load(r.new_json),
            site=_load(r.site_json),
            detected_at=r.detected_at,
            watches=tuple(links.get(r.id or 0, ())),
            effective_date=r.effective_date,
            registry_version=r.registry_version,
        )
        for r in rows
    ]


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# --- registry versions (the version history) ---------------------------------------------


def save_version_index(session: Session, index: VersionIndex, now: datetime) -> None:
    """Note every entry of a study's version index. Stored records stay (versions never change),
    unless the registry now gives a version another date: then it is fetched again."""
    table = table_of(models.RegistryVersion)
    stored = {
        number: (submitted, status, labels)
        for number, submitted, status, labels in session.execute(
            select(table.c.version, table.c.submitted, table.c.status, table.c.module_labels).where(
                table.c.nct_id == index.nct_id
            )
        )
    }
    fresh = []
    for v in index.versions:
        row = (v.date, v.status, _dump(list(v.module_labels)) if v.module_labels is not None else None)
        if v.number not in stored:
            fresh.append({"nct_id": index.nct_id, "version": v.number, "submitted": row[0], "status": row[1],
                          "module_labels": row[2], "listed_at": now})  # fmt: skip
        elif stored[v.number] != row:
            moved = stored[v.number][0] != v.date
            values: dict[str, Any] = {"submitted": row[0], "status": row[1], "module_labels": row[2], "listed_at": now}
            if moved:
                values.update(record=None, fetched_at=None)
            session.execute(
                table.update().where(table.c.nct_id == index.nct_id, table.c.version == v.number).values(**values)
            )
    if fresh:
        session.execute(insert(table), fresh)
    gone = [n for n in stored if n >= len(index)]
    if gone:  # the registry lists fewer versions than before: forget the ones it no longer has
        session.execute(table.delete().where(table.c.nct_id == index.nct_id, table.c.version.in_(gone)))


def known_versions(session: Session, nct_ids: Iterable[str]) -> dict[str, list[Version]]:
    """The stored version index entries of these studies (those with none are left out)."""
    table = table_of(models.RegistryVersion)
    found: dict[str, list[Version]] = {}
    for batch in chunks(nct_ids):
        query = select(table.c.nct_id, table.c.version, table.c.submitted, table.c.status).where(
            table.c.nct_id.in_(batch)
        )
        for nct_id, number, submitted, status in session.execute(query):
            found.setdefault(nct_id, []).append(Version(number, submitted, status or ""))
    return found


def stored_version_index(session: Session, nct_id: str) -> VersionIndex | None:
    """A study's version index as last read from the registry, or None when none (or only part
    of one) is stored."""
    table = table_of(models.RegistryVersion)
    query = select(table.c.version, table.c.submitted, table.c.status, table.c.module_labels)
    rows = session.execute(query.where(table.c.nct_id == nct_id).order_by(table.c.version)).all()
    if not rows or [number for number, *_ in rows] != list(range(len(rows))):
        return None
    versions = tuple(
        Version(number, submitted, status or "", tuple(_load(labels)) if labels is not None else None)
        for number, submitted, status, labels in rows
    )
    return VersionIndex(nct_id, versions)


def fetched_versions(session: Session, nct_id: str) -> set[int]:
    """The versions of a study whose records are stored."""
    table = table_of(models.RegistryVersion)
    query = select(table.c.version).where(table.c.nct_id == nct_id, table.c.record.is_not(None))
    return {number for (number,) in session.execute(query)}


def load_versions(session: Session, nct_id: str, numbers: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Stored version records of a study, by number (those not stored are left out)."""
    table = table_of(models.RegistryVersion)
    records: dict[int, dict[str, Any]] = {}
    for batch in chunks(numbers):
        query = select(table.c.version, table.c.record).where(
            table.c.nct_id == nct_id, table.c.version.in_(batch), table.c.record.is_not(None)
        )
        for number, blob in session.execute(query):
            records[number] = json.loads(zlib.decompress(blob))
    return records


def save_version(session: Session, nct_id: str, version: Version, record: dict[str, Any], now: datetime) -> None:
    """Store a fetched version's record (its index entry is written too, if not there yet)."""
    table = table_of(models.RegistryVersion)
    labels = _dump(list(version.module_labels)) if version.module_labels is not None else None
    blob = zlib.compress(canonical(record), 6)
    statement = upsert(session, table).values(
        nct_id=nct_id, version=version.number, submitted=version.date, status=version.status,
        module_labels=labels, record=blob, listed_at=now, fetched_at=now,
    )  # fmt: skip
    session.execute(
        statement.on_conflict_do_update(  # type: ignore[attr-defined]
            index_elements=[table.c.nct_id, table.c.version], set_={"record": blob, "fetched_at": now}
        )
    )


# --- sync runs --------------------------------------------------------------------------


def last_good_sync(session: Session) -> models.SyncRun | None:
    return session.exec(
        select(models.SyncRun)
        .where(
            models.SyncRun.kind == RunKind.SYNC, col(models.SyncRun.outcome).in_([RunOutcome.OK, RunOutcome.UNCHANGED])
        )
        .order_by(col(models.SyncRun.id).desc())
    ).first()


def recent_runs(session: Session, limit: int = 10) -> list[models.SyncRun]:
    return list(session.exec(select(models.SyncRun).order_by(col(models.SyncRun.id).desc()).limit(limit)).all())


def failure_streak(session: Session) -> list[models.SyncRun]:
    """The failed syncs since the last good one, newest first."""
    runs = session.exec(
        select(models.SyncRun)
        .where(models.SyncRun.kind == RunKind.SYNC)
        .order_by(col(models.SyncRun.id).desc())
        .limit(100)
    ).all()
    streak = []
    for run in runs:
        if run.outcome != RunOutcome.FAILED:
            break
        streak.append(run)
    return streak


def consecutive_failures(session: Session) -> int:
    runs = session.exec(
        select(models.SyncRun.outcome)
        .where(models.SyncRun.kind == RunKind.SYNC)
        .order_by(col(models.SyncRun.id).desc())
        .limit(100)
    ).all()
    count = 0
    for outcome in runs:
        if outcome != RunOutcome.FAILED:
            break
        count += 1
    return count


def last_covered(session: Session, emails: Iterable[str]) -> dict[str, int]:
    """Per subscriber (lower-cased email), the newest change id a digest of theirs covers.

    Change ids only grow and a digest covers every pending change when it is built, so the
    changes still pending for a subscriber are exactly those after this id.
    """
    outbox = models.OutboxMessage
    query = (
        select(outbox.email, func.max(models.DigestChange.change_id))
        .join(models.DigestChange, col(models.DigestChange.digest_id) == col(outbox.id))
        .where(col(outbox.email).in_([e.lower() for e in emails]))
        .group_by(outbox.email)
    )
    return dict(session.exec(query).all())


def digest_counts_by_channel(session: Session) -> dict[str, dict[str, int]]:
    """Outbox messages by how they travel (email, channel, webhook), then by state."""
    from watcher.states import ChannelKind

    outbox = models.OutboxMessage
    rows = session.exec(select(outbox.channel, outbox.status, func.count()).group_by(outbox.channel, outbox.status))
    found: dict[tuple[str, str], int] = {(channel, status): n for channel, status, n in rows}
    states = (DigestState.PENDING, DigestState.FAILED, DigestState.SENT)
    return {kind.value: {s.value: found.get((kind, s), 0) for s in states} for kind in ChannelKind}


def digest_counts(session: Session) -> dict[str, int]:
    """Outbox messages (emails, channel messages and webhooks together) by state: pending, failed, sent."""
    outbox = models.OutboxMessage
    counts = dict(session.exec(select(outbox.status, func.count()).group_by(outbox.status)).all())
    return {state.value: counts.get(state, 0) for state in (DigestState.PENDING, DigestState.FAILED, DigestState.SENT)}
