"""SQLModel tables. Timestamps are timezone-aware UTC datetimes.

Columns holding a closed set (`SyncRun.outcome`, `OutboxMessage.status`, ...) are plain
strings in the database; the code reads and writes them through the enums in
`watcher.states` and `watcher.changes`.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Table
from sqlmodel import Field, SQLModel, UniqueConstraint


def table_of(model: type[SQLModel]) -> Table:
    """A model's Core table, for bulk statements that skip per-row ORM objects."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


class Study(SQLModel, table=True):
    """The current stored state of one study (its latest snapshot)."""

    nct_id: str = Field(primary_key=True)
    snapshot_id: int = Field(foreign_key="snapshot.id")
    brief_title: str | None = None
    overall_status: str | None = None
    last_update: str | None = None  # lastUpdatePostDate: only used to skip refetching
    first_seen_at: datetime
    checked_at: datetime
    changed_at: datetime | None = None


class Snapshot(SQLModel, table=True):
    """A distinct version of a study record, stored once however often it is polled."""

    __table_args__ = (UniqueConstraint("nct_id", "content_hash"),)
    id: int | None = Field(default=None, primary_key=True)
    nct_id: str = Field(index=True)
    content_hash: str
    record: bytes  # zlib-compressed canonical JSON
    data_timestamp: str | None = None
    stored_at: datetime


class Membership(SQLModel, table=True):
    """A study belonging to a watch, by explicit ID, by its search, or both."""

    watch: str = Field(primary_key=True)
    nct_id: str = Field(primary_key=True, index=True)
    by_id: bool = False
    by_search: bool = False
    since: datetime


class WatchState(SQLModel, table=True):
    """One row per watch whose baseline is stored; `fingerprint` of its definition then."""

    name: str = Field(primary_key=True)
    fingerprint: str
    baseline_at: datetime


class ChangeEntry(SQLModel, table=True):
    """The append-only change log."""

    __tablename__ = "change"
    id: int | None = Field(default=None, primary_key=True)
    nct_id: str = Field(index=True)
    kind: str  # a ChangeKind
    field: str | None = None  # the API path
    old_json: str | None = None
    new_json: str | None = None
    site_json: str | None = None
    detected_at: datetime = Field(index=True)
    run_id: int | None = Field(default=None, foreign_key="syncrun.id")
    # when replayed from the registry's version history: the version's date (YYYY-MM-DD) and number
    effective_date: str | None = None
    registry_version: int | None = None


class RegistryVersion(SQLModel, table=True):
    """One version of a study as the registry keeps it: its entry in the version index, and its
    record once fetched. Versions never change, so a stored record is never fetched again."""

    nct_id: str = Field(primary_key=True)
    version: int = Field(primary_key=True)  # from 0, without gaps
    submitted: str  # YYYY-MM-DD: the version's date (submitted, not posted)
    status: str | None = None  # its overall status, as the index says
    module_labels: str | None = None  # JSON list of the index's moduleLabels; None when it gave none
    record: bytes | None = None  # zlib-compressed canonical JSON, as snapshot.record; None until fetched
    listed_at: datetime  # when the index was last read with this entry
    fetched_at: datetime | None = None


class ChangeWatch(SQLModel, table=True):
    """Which watches a change belongs to (a study can be in several)."""

    change_id: int = Field(foreign_key="change.id", primary_key=True)
    watch: str = Field(primary_key=True, index=True)


class SyncRun(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    kind: str = "sync"  # a RunKind
    started_at: datetime
    finished_at: datetime | None = None
    outcome: str = "running"  # a RunOutcome
    data_timestamp: str | None = None
    watches_fingerprint: str | None = None
    requests: int = 0
    bytes: int = 0
    studies: int = 0
    changes: int = 0
    error: str | None = None


class SubscriberState(SQLModel, table=True):
    """Per subscriber: since when they hear about changes, and the last digest slot handled."""

    email: str = Field(primary_key=True)  # lower-cased
    since: datetime
    last_slot: datetime | None = None


class OutboxMessage(SQLModel, table=True):
    """The outbox: a digest is stored (with its exact message) before it is sent."""

    __tablename__ = "digest"
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(index=True)  # lower-cased
    message_id: str
    subject: str
    message: bytes  # the whole RFC 5322 message, so a retry sends the same bytes
    changes: int
    status: str = Field(default="pending", index=True)  # a DigestState
    attempts: int = 0
    last_error: str | None = None
    created_at: datetime
    sent_at: datetime | None = None
    # a sender's claim while it sends (see watcher.outbox): who, and until when it stands
    claimed_by: str | None = None
    claimed_until: datetime | None = None


class DigestChange(SQLModel, table=True):
    """Which changes a digest covers: a change reaches each subscriber in one digest only."""

    digest_id: int = Field(foreign_key="digest.id", primary_key=True)
    change_id: int = Field(foreign_key="change.id", primary_key=True, index=True)


class DaemonState(SQLModel, table=True):
    """One row: the running daemon's pid and its next scheduled runs, for `watcher status`."""

    id: int = Field(default=1, primary_key=True)
    pid: int
    host: str | None = None
    started_at: datetime
    heartbeat: datetime | None = None
    next_sync: datetime | None = None
    next_digest: datetime | None = None
