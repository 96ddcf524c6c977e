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
    # an explicitly watched study the registry stopped listing: kept, to say "listed again" when it returns
    delisted_at: datetime | None = None


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
    alerted: bool = False  # the operator was told of the run of failures this one belongs to
    deferred: int = 0  # studies this sync left for the next one (their history did not all fit)


class SubscriberAccount(SQLModel, table=True):
    """A subscriber as trial watcher keeps them: from the config or (later) the web, and their state.

    An unsubscribe always wins: a config subscriber whose state is `unsubscribed` gets nothing
    until they subscribe again themselves.
    """

    __tablename__ = "subscriber"
    key: str = Field(primary_key=True)  # the email address, lower-cased
    email: str | None = None
    source: str = "config"  # a SubscriberSource
    state: str = "active"  # an AccountState
    frequency: str = "daily"  # a Frequency
    kinds: str | None = None  # a JSON list of categories, or none for all
    since: datetime  # when they first became active
    last_slot: datetime | None = None  # the last digest slot handled for them
    created_at: datetime
    unsubscribed_at: datetime | None = None


class Subscription(SQLModel, table=True):
    """A subscriber follows a watch since a moment: they hear of its changes recorded from then on,
    that is, of the changes whose id is above `after_change` (ids only grow; clocks can tie)."""

    subscriber: str = Field(foreign_key="subscriber.key", primary_key=True)
    watch: str = Field(primary_key=True, index=True)
    since: datetime
    after_change: int = 0


class RejectedRecord(SQLModel, table=True):
    """A study whose record failed the shape check: skipped (its last good state stays) and counted."""

    __tablename__ = "rejectedrecord"
    nct_id: str = Field(primary_key=True)
    reason: str
    first_at: datetime
    last_at: datetime
    times: int = 1
    alerted_at: datetime | None = None  # when the operator was told of this streak


class OutboxMessage(SQLModel, table=True):
    """The outbox: a digest is stored (with its exact message) before it is sent.

    A subscriber with an email and two channels gets three rows for one digest, each covering
    the same changes; a webhook gets one. No secret is ever stored: a channel or webhook is
    named by `target`, a digest of its URL as written in the config (`{env:NAME}` unexpanded).
    """

    __tablename__ = "digest"
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(index=True)  # the subscriber's key: the email lower-cased, a name, or a webhook's key
    message_id: str  # the Message-ID; a channel message's or webhook delivery's id (stable across retries)
    subject: str
    # email: the whole RFC 5322 message, so a retry sends the same bytes; channel: the compact digest
    # (watcher.channels.ChatDigest as JSON); webhook: the change objects (JSON)
    message: bytes
    channel: str = Field(default="email", sa_column_kwargs={"server_default": "email"})  # a ChannelKind
    target: str | None = None  # channel and webhook: which one (see watcher.channels.target_of)
    parts_sent: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # of a digest split in parts
    next_attempt_at: datetime | None = None  # after a deferral: the daemon waits until then
    changes: int
    status: str = Field(default="pending", index=True)  # a DigestState
    attempts: int = 0
    last_error: str | None = None
    created_at: datetime
    sent_at: datetime | None = None
    # a sender's claim while it sends (see watcher.outbox): who, and until when it stands
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    kind: str = "digest"  # a MessageKind: a digest, or a confirmation / manage link from the web pages


class DigestChange(SQLModel, table=True):
    """Which changes a digest covers: a change reaches each subscriber in one digest only."""

    digest_id: int = Field(foreign_key="digest.id", primary_key=True)
    change_id: int = Field(foreign_key="change.id", primary_key=True, index=True)


class WebToken(SQLModel, table=True):
    """A link's token, stored only as its SHA-256. A subscriber's confirm, manage and unsubscribe tokens
    are HMACs of the secret and `nonce` (so every email can carry the same link); a digest's view token
    is random. Either way the token itself is never stored."""

    __tablename__ = "webtoken"
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, index=True)  # sha256 of the token, hex
    subscriber: str = Field(foreign_key="subscriber.key", index=True)
    purpose: str  # a TokenPurpose
    nonce: str | None = None
    digest_id: int | None = Field(default=None, foreign_key="digest.id")
    created_at: datetime
    expires_at: datetime | None = None
    used_at: datetime | None = None
    revoked_at: datetime | None = None


class RateHit(SQLModel, table=True):
    """One request or email counted against a limit: `bucket` names whose (an HMAC, never an address)."""

    __tablename__ = "ratehit"
    id: int | None = Field(default=None, primary_key=True)
    bucket: str = Field(index=True)
    at: datetime = Field(index=True)


class WebSecret(SQLModel, table=True):
    """The secret that signs tokens and forms when [web] secret_env is not set: made once, kept here."""

    __tablename__ = "websecret"
    id: int = Field(default=1, primary_key=True)
    secret: str
    created_at: datetime


class DaemonState(SQLModel, table=True):
    """One row: the running daemon's pid and its next scheduled runs, for `watcher status`."""

    id: int = Field(default=1, primary_key=True)
    pid: int
    host: str | None = None
    started_at: datetime
    heartbeat: datetime | None = None
    next_sync: datetime | None = None
    next_digest: datetime | None = None
