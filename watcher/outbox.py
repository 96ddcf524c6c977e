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
from typing import Any

from sqlalchemy import Connection, Row, Select, select, update
from sqlmodel import Session, col
from sqlmodel import select as model_select

from watcher import models
from watcher.clock import Clock
from watcher.db import Backend, process_alive, this_process
from watcher.mailer import Deferred, Rejected, Transport, redact_links
from watcher.models import table_of
from watcher.states import DigestState, MessageKind
from watcher.store import Store

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)  # longer than any one send; a crashed sender's claim ends with it


class SendStatus(StrEnum):
    SENT = "sent"
    DEFERRED = "deferred"  # stays queued, retried later
    FAILED = "failed"  # refused for good
    QUEUED = "queued"  # stored, not tried yet
    WOULD_SEND = "would-send"  # --dry-run


@dataclass
class Outcome:
    email: str
    status: SendStatus
    subject: str
    changes: int
    detail: str = ""
    digest_id: int | None = None


@dataclass(frozen=True)
class Claimed:
    id: int
    email: str
    subject: str
    changes: int
    message: bytes
    created_at: datetime
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


def _next_pending(after: int, limit: int, only: Collection[int] | None = None) -> Select[Any]:
    outbox = table_of(models.OutboxMessage)
    c = outbox.c
    query = (
        select(c.id, c.email, c.subject, c.changes, c.message, c.created_at, c.kind, c.claimed_by, c.claimed_until)
        .where(c.status == DigestState.PENDING.value, c.id > after)
        .order_by(c.id)
        .limit(limit)
    )
    return query if only is None else query.where(c.id.in_(list(only)))


def _claimed(row: Row[Any]) -> Claimed:
    return Claimed(row.id, row.email, row.subject, row.changes, bytes(row.message), row.created_at, row.kind)


_WEB_LINK = re.compile(rb"/unsubscribe/[A-Za-z0-9_-]{32}")


def _kept(claimed: Claimed) -> bytes | None:
    """What the outbox keeps of a message that went out: without its links' tokens (None: unchanged).
    A message waiting for a retry keeps them: it must go out exactly as built."""
    head = claimed.message.split(b"\r\n\r\n", 1)[0]
    if claimed.kind == MessageKind.DIGEST and not _WEB_LINK.search(head):
        return None
    return redact_links(claimed.message)


def _mark(
    session: Session | Connection, claimed: Claimed, state: DigestState, error: str | None, now: datetime
) -> None:
    outbox = models.OutboxMessage
    values: dict[str, Any] = {
        "status": state,
        "attempts": outbox.attempts + 1,
        "last_error": error,
        "sent_at": now if state is DigestState.SENT else None,
        "claimed_by": None,
        "claimed_until": None,
    }
    kept = _kept(claimed) if state is DigestState.SENT else None
    if kept is not None:
        values["message"] = kept
    session.execute(update(outbox).where(col(outbox.id) == claimed.id).values(**values))


# --- claims -------------------------------------------------------------------------------------


@contextmanager
def _claim_postgres(store: Store, cursor: _Cursor) -> Iterator[tuple[Claimed, Connection] | None]:
    """The next pending message, row-locked in a transaction that stays open while it is sent."""
    with store.engine.connect() as conn, conn.begin():
        with cursor.lock:
            query = _next_pending(cursor.after, 1, cursor.only).with_for_update(skip_locked=True)
            row = conn.execute(query).first()
            if row is None:
                yield None
                return
            claimed = _claimed(row)
            cursor.after = max(cursor.after, claimed.id)
        yield claimed, conn


def _claim_sqlite(store: Store, cursor: _Cursor, me: str, now: datetime) -> Claimed | None:
    """The next pending message no live sender holds, leased to `me`."""
    outbox = models.OutboxMessage
    with cursor.lock:
        while True:
            with store.write() as session:
                rows = session.execute(_next_pending(cursor.after, 50, cursor.only)).all()
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


def _deliver(transport: Transport, sender: str, claimed: Claimed) -> tuple[DigestState, Outcome]:
    """Hand one message to the transport; what became of it."""
    try:
        transport.send(claimed.message, sender, claimed.email, claimed.name)
    except Rejected as exc:
        log.warning("%s %d to %s failed: %s", claimed.kind, claimed.id, claimed.email, exc)
        outcome = Outcome(claimed.email, SendStatus.FAILED, claimed.subject, claimed.changes, str(exc), claimed.id)
        return DigestState.FAILED, outcome
    except Deferred as exc:
        log.warning("%s %d to %s deferred: %s", claimed.kind, claimed.id, claimed.email, exc)
        outcome = Outcome(claimed.email, SendStatus.DEFERRED, claimed.subject, claimed.changes, str(exc), claimed.id)
        return DigestState.PENDING, outcome
    if claimed.kind == MessageKind.DIGEST:
        log.info(
            "digest %d sent to %s (%d change%s)",
            claimed.id,
            claimed.email,
            claimed.changes,
            "" if claimed.changes == 1 else "s",
        )
    else:
        log.info("%s %d sent to %s", claimed.kind, claimed.id, claimed.email)
    return DigestState.SENT, Outcome(claimed.email, SendStatus.SENT, claimed.subject, claimed.changes, "", claimed.id)


def _sender(
    store: Store,
    transport: Transport,
    sender: str,
    clock: Clock,
    cursor: _Cursor,
    cancel: threading.Event | None,
    outcomes: list[Outcome],
) -> None:
    me = this_process()
    with transport:
        while cancel is None or not cancel.is_set():
            if store.backend is Backend.POSTGRESQL:
                with _claim_postgres(store, cursor) as found:
                    if found is None:
                        return
                    claimed, conn = found
                    state, outcome = _deliver(transport, sender, claimed)
                    _mark(conn, claimed, state, outcome.detail or None, clock())
            else:
                claimed_row = _claim_sqlite(store, cursor, me, clock())
                if claimed_row is None:
                    return
                state, outcome = _deliver(transport, sender, claimed_row)
                with store.write(serial=False) as session:
                    _mark(session, claimed_row, state, outcome.detail or None, clock())
            outcomes.append(outcome)


def send_pending(
    store: Store,
    transports: Callable[[], Transport],
    sender: str,
    clock: Clock,
    cancel: threading.Event | None = None,
    workers: int = 1,
    only: Collection[int] | None = None,
) -> list[Outcome]:
    """Try every pending message once (or those of `only`), with `workers` senders side by side
    (each its own connection to the mail server). One failing recipient does not stop the others."""
    cursor = _Cursor(only)
    outcomes: list[Outcome] = []
    threads = [
        threading.Thread(
            target=_sender, args=(store, transports(), sender, clock, cursor, cancel, outcomes), name=f"sender-{n}"
        )
        for n in range(max(1, workers))
    ]
    errors: list[BaseException] = []
    if len(threads) == 1:
        _sender(store, transports(), sender, clock, cursor, cancel, outcomes)
        return outcomes
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sorted(outcomes, key=lambda o: o.digest_id or 0)


def cancel_queued(session: Session, key: str) -> int:
    """Whatever is still queued for the subscriber `key` is never sent (they unsubscribed)."""
    outbox = models.OutboxMessage
    rows = session.exec(
        model_select(outbox).where(col(outbox.email) == key, col(outbox.status) == DigestState.PENDING.value)
    ).all()
    for row in rows:
        message = bytes(row.message)
        row.message = _kept(Claimed(row.id or 0, row.email, "", 0, message, row.created_at, row.kind)) or message
        row.status, row.last_error = DigestState.CANCELLED, "the recipient unsubscribed before it was sent"
        session.add(row)
    return len(rows)


def retry_failed(store: Store) -> int:
    outbox = models.OutboxMessage
    with store.write() as session:
        rows = session.exec(model_select(outbox).where(outbox.status == DigestState.FAILED)).all()
        for row in rows:
            row.status = DigestState.PENDING
            session.add(row)
        return len(rows)
