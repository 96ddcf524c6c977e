"""Sending what the outbox holds: each message claimed by one sender, sent, then marked.

Several senders (a daemon, a one-off `watcher digest send`, threads of `--workers N`, other
machines on one PostgreSQL database) may run at once. Each message is claimed before it is
sent, so that no two senders ever send it at the same time:

- on PostgreSQL the claim is a row lock (`SELECT … FOR UPDATE SKIP LOCKED`) held while the
  message is sent and marked; a sender that dies releases it with its connection, and the
  message goes to the next sender at once;
- on SQLite (one machine) the claim is a lease written to the row: who holds it and until
  when. A claim whose process is gone, or whose lease ran out, is taken over.

Either way a message accepted by the server is marked `sent` and never sent again, and a
message whose sender died mid-send is sent at most once more, with the same Message-ID.

Emails, channel messages and webhooks are all rows here; a `Courier` knows how each kind
travels. A deferred message waits before its next try (`retry_delay`: 2 minutes, then twice
as long each time, at most 6 hours): the daemon respects that, a manual `digest send` tries
every pending message at once.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, Self

from sqlalchemy import Connection, Row, Select, or_, select, update
from sqlmodel import Session, col
from sqlmodel import select as model_select

from watcher import models
from watcher.clock import Clock
from watcher.db import Backend, process_alive, this_process
from watcher.errors import DeliveryError, WatcherError
from watcher.mailer import Deferred, Rejected, redact_links
from watcher.models import table_of
from watcher.states import ChannelKind, DigestState, MessageKind
from watcher.store import Store

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)  # longer than any one send; a crashed sender's claim ends with it
FIRST_RETRY = timedelta(minutes=2)
LAST_RETRY = timedelta(hours=6)


def retry_delay(attempts: int) -> timedelta:
    """How long a message waits after its `attempts`-th failed try: 2 min, 4, 8, … at most 6 h."""
    delay: timedelta = FIRST_RETRY * 2 ** min(max(attempts - 1, 0), 16)
    return min(delay, LAST_RETRY)


class SendStatus(StrEnum):
    SENT = "sent"
    DEFERRED = "deferred"  # stays queued, retried later
    FAILED = "failed"  # refused for good
    QUEUED = "queued"  # stored, not tried yet
    WOULD_SEND = "would-send"  # --dry-run


@dataclass
class Outcome:
    recipient: str  # who, as people may see it: an email, a subscriber's name, a webhook
    status: SendStatus
    subject: str
    changes: int
    detail: str = ""
    digest_id: int | None = None
    via: str = ""  # where it went: the mail server, a channel, a webhook (secrets masked)


@dataclass(frozen=True)
class Claimed:
    id: int
    email: str  # the subscriber's key
    subject: str
    changes: int
    message: bytes
    created_at: datetime
    channel: ChannelKind = ChannelKind.EMAIL
    target: str | None = None
    message_id: str = ""
    attempts: int = 0
    parts_sent: int = 0
    kind: str = MessageKind.DIGEST.value

    @property
    def name(self) -> str:
        """The message's file name in an outbox folder."""
        return f"{self.created_at:%Y%m%dT%H%M%SZ}-{self.id:06d}-{re.sub(r'[^A-Za-z0-9@._-]', '_', self.email)}"


class _Cursor:
    """Where the senders of one run are in the queue: each message is tried once per run.
    `only` limits the run to some messages (the web pages send a confirmation at once)."""

    def __init__(self, only: Collection[int] | None = None) -> None:
        self.after = 0
        self.lock = threading.Lock()
        self.only = only


def _next_pending(after: int, limit: int, due_at: datetime | None, only: Collection[int] | None) -> Select[Any]:
    """Pending messages after id `after`; with `due_at`, only those whose wait after a deferral is over."""
    outbox = table_of(models.OutboxMessage)
    c = outbox.c
    query = (
        select(
            c.id, c.email, c.subject, c.changes, c.message, c.created_at, c.claimed_by, c.claimed_until,
            c.channel, c.target, c.message_id, c.attempts, c.parts_sent, c.kind,
        )
        .where(c.status == DigestState.PENDING.value, c.id > after)
        .order_by(c.id)
        .limit(limit)
    )  # fmt: skip
    if due_at is not None:
        query = query.where(or_(c.next_attempt_at.is_(None), c.next_attempt_at <= due_at))
    return query if only is None else query.where(c.id.in_(list(only)))


def _claimed(row: Row[Any]) -> Claimed:
    return Claimed(
        row.id, row.email, row.subject, row.changes, bytes(row.message), row.created_at,
        ChannelKind(row.channel), row.target, row.message_id, row.attempts, row.parts_sent, row.kind,
    )  # fmt: skip


_WEB_LINK = re.compile(rb"/unsubscribe/[A-Za-z0-9_-]{32}")


def _kept(claimed: Claimed) -> bytes | None:
    """What the outbox keeps of a message that went out: without its links' tokens (None: unchanged).
    A message waiting for a retry keeps them: it must go out exactly as built."""
    if claimed.channel is not ChannelKind.EMAIL:
        return None
    head = claimed.message.split(b"\r\n\r\n", 1)[0]
    if claimed.kind == MessageKind.DIGEST and not _WEB_LINK.search(head):
        return None
    return redact_links(claimed.message)


@dataclass(frozen=True)
class Attempt:
    """What became of one try: the new state, and for a message sent in parts, how many went out."""

    state: DigestState
    outcome: Outcome
    parts_sent: int


def _mark(session: Session | Connection, claimed: Claimed, attempt: Attempt, now: datetime) -> None:
    outbox = models.OutboxMessage
    deferred = attempt.state is DigestState.PENDING
    values: dict[str, Any] = {
        "status": attempt.state,
        "attempts": outbox.attempts + 1,
        "last_error": attempt.outcome.detail or None,
        "sent_at": now if attempt.state is DigestState.SENT else None,
        "parts_sent": attempt.parts_sent,
        "next_attempt_at": now + retry_delay(claimed.attempts + 1) if deferred else None,
        "claimed_by": None,
        "claimed_until": None,
    }
    kept = _kept(claimed) if attempt.state is DigestState.SENT else None
    if kept is not None:
        values["message"] = kept  # the tokens of a sent message's links are not kept
    session.execute(update(outbox).where(col(outbox.id) == claimed.id).values(**values))


# --- claims -------------------------------------------------------------------------------------


@contextmanager
def _claim_postgres(
    store: Store, cursor: _Cursor, due_at: datetime | None
) -> Iterator[tuple[Claimed, Connection] | None]:
    """The next pending message, row-locked in a transaction that stays open while it is sent."""
    with store.engine.connect() as conn, conn.begin():
        with cursor.lock:
            query = _next_pending(cursor.after, 1, due_at, cursor.only).with_for_update(skip_locked=True)
            row = conn.execute(query).first()
            if row is None:
                yield None
                return
            claimed = _claimed(row)
            cursor.after = max(cursor.after, claimed.id)
        yield claimed, conn


def _claim_sqlite(store: Store, cursor: _Cursor, me: str, now: datetime, due_at: datetime | None) -> Claimed | None:
    """The next pending message no live sender holds, leased to `me`."""
    outbox = models.OutboxMessage
    with cursor.lock:
        while True:
            with store.write() as session:
                rows = session.execute(_next_pending(cursor.after, 50, due_at, cursor.only)).all()
                if not rows:
                    return None
                for row in rows:
                    cursor.after = row.id
                    held = row.claimed_by and row.claimed_until and row.claimed_until > now
                    if held and process_alive(row.claimed_by) is not False:
                        continue  # another sender is on it
                    session.execute(
                        update(outbox).where(col(outbox.id) == row.id).values(claimed_by=me, claimed_until=now + LEASE)
                    )
                    return _claimed(row)


# --- sending ------------------------------------------------------------------------------------


class Courier(Protocol):
    """Carries outbox messages of every kind (see `watcher.delivery.Couriers`)."""

    def deliver(self, claimed: Claimed) -> None:
        """Returns when the message was accepted; raises Deferred or Rejected (with `parts_sent`)."""

    def who(self, claimed: Claimed) -> str: ...

    def via(self, claimed: Claimed) -> str: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def _deliver(courier: Courier, claimed: Claimed) -> Attempt:
    """Hand one message to its courier; what became of it."""
    who, via = courier.who(claimed), courier.via(claimed)

    def outcome(status: SendStatus, detail: str = "") -> Outcome:
        return Outcome(who, status, claimed.subject, claimed.changes, detail, claimed.id, via)

    kind = claimed.kind if claimed.channel is ChannelKind.EMAIL else f"{claimed.channel} message"
    try:
        courier.deliver(claimed)
    except Rejected as exc:
        log.debug("%s %d to %s failed: %s", kind, claimed.id, who, exc)
        return Attempt(
            DigestState.FAILED, outcome(SendStatus.FAILED, str(exc)), max(exc.parts_sent, claimed.parts_sent)
        )
    except Deferred as exc:
        log.debug("%s %d to %s deferred: %s", kind, claimed.id, who, exc)
        return Attempt(
            DigestState.PENDING, outcome(SendStatus.DEFERRED, str(exc)), max(exc.parts_sent, claimed.parts_sent)
        )
    except DeliveryError as exc:  # any other delivery error is temporary
        log.debug("%s %d to %s deferred: %s", kind, claimed.id, who, exc)
        return Attempt(DigestState.PENDING, outcome(SendStatus.DEFERRED, str(exc)), claimed.parts_sent)
    except WatcherError:  # the settings are wrong (a missing password): nothing can go out, stop here
        raise
    except Exception as exc:  # whatever one address does, the others still get theirs
        log.debug("%s %d to %s could not be sent", kind, claimed.id, who, exc_info=True)
        detail = f"could not be sent ({type(exc).__name__}: {exc})"
        return Attempt(DigestState.FAILED, outcome(SendStatus.FAILED, detail), claimed.parts_sent)
    changes = f" ({claimed.changes} change{'' if claimed.changes == 1 else 's'})" if claimed.changes else ""
    log.info("%s %d sent to %s%s", kind, claimed.id, who, changes)
    return Attempt(DigestState.SENT, outcome(SendStatus.SENT), claimed.parts_sent)


def _sender(
    store: Store,
    courier: Courier,
    clock: Clock,
    cursor: _Cursor,
    cancel: threading.Event | None,
    outcomes: list[Outcome],
    respect_backoff: bool,
) -> None:
    me = this_process()
    with courier:
        while cancel is None or not cancel.is_set():
            due_at = clock() if respect_backoff else None
            if store.backend is Backend.POSTGRESQL:
                with _claim_postgres(store, cursor, due_at) as found:
                    if found is None:
                        return
                    claimed, conn = found
                    attempt = _deliver(courier, claimed)
                    _mark(conn, claimed, attempt, clock())
            else:
                claimed_row = _claim_sqlite(store, cursor, me, clock(), due_at)
                if claimed_row is None:
                    return
                attempt = _deliver(courier, claimed_row)
                with store.write(serial=False) as session:
                    _mark(session, claimed_row, attempt, clock())
            outcomes.append(attempt.outcome)


def send_pending(
    store: Store,
    couriers: Callable[[], Courier],
    clock: Clock,
    cancel: threading.Event | None = None,
    workers: int = 1,
    respect_backoff: bool = False,
    only: Collection[int] | None = None,
) -> list[Outcome]:
    """Try every pending message once (or those of `only`), with `workers` senders side by side
    (each its own connection to the mail server). One failing recipient does not stop the others.
    `respect_backoff` (the daemon) leaves a deferred message alone until its wait is over."""
    cursor = _Cursor(only)
    outcomes: list[Outcome] = []
    if workers <= 1:
        _sender(store, couriers(), clock, cursor, cancel, outcomes, respect_backoff)
        return outcomes
    threads = [
        threading.Thread(
            target=_sender,
            args=(store, couriers(), clock, cursor, cancel, outcomes, respect_backoff),
            name=f"sender-{n}",
        )
        for n in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes, key=lambda o: o.digest_id or 0)


def cancel_queued(session: Session, key: str) -> int:
    """Whatever is still queued for the subscriber `key` is never sent (they unsubscribed)."""
    outbox = models.OutboxMessage
    rows = session.exec(
        model_select(outbox).where(col(outbox.email) == key, col(outbox.status) == DigestState.PENDING.value)
    ).all()
    for row in rows:
        message = bytes(row.message)
        claimed = Claimed(
            row.id or 0, row.email, "", 0, message, row.created_at, ChannelKind(row.channel), kind=row.kind
        )
        row.message = _kept(claimed) or message
        row.status, row.last_error = DigestState.CANCELLED, "the recipient unsubscribed before it was sent"
        session.add(row)
    return len(rows)


def pending_due(store: Store, now: datetime) -> int:
    """How many pending messages the daemon would try now."""
    from sqlalchemy import func

    outbox = table_of(models.OutboxMessage)
    c = outbox.c
    with store.read() as session:
        return int(
            session.execute(
                select(func.count())
                .select_from(outbox)
                .where(
                    c.status == DigestState.PENDING.value, or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now)
                )
            ).scalar_one()
        )


def retry_failed(store: Store) -> int:
    outbox = models.OutboxMessage
    with store.write() as session:
        rows = session.exec(model_select(outbox).where(outbox.status == DigestState.FAILED)).all()
        for row in rows:
            row.status = DigestState.PENDING
            row.next_attempt_at = None
            session.add(row)
        return len(rows)
