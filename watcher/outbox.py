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
from collections.abc import Callable, Iterator
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
from watcher.errors import WatcherError
from watcher.mailer import Deferred, Rejected, Transport
from watcher.models import table_of
from watcher.states import DigestState
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

    @property
    def name(self) -> str:
        """The message's file name in an outbox folder."""
        return f"{self.created_at:%Y%m%dT%H%M%SZ}-{self.id:06d}-{re.sub(r'[^A-Za-z0-9@._-]', '_', self.email)}"


class _Cursor:
    """Where the senders of one run are in the queue: each message is tried once per run."""

    def __init__(self) -> None:
        self.after = 0
        self.lock = threading.Lock()


def _next_pending(after: int, limit: int) -> Select[Any]:
    outbox = table_of(models.OutboxMessage)
    c = outbox.c
    return (
        select(c.id, c.email, c.subject, c.changes, c.message, c.created_at, c.claimed_by, c.claimed_until)
        .where(c.status == DigestState.PENDING.value, c.id > after)
        .order_by(c.id)
        .limit(limit)
    )


def _claimed(row: Row[Any]) -> Claimed:
    return Claimed(row.id, row.email, row.subject, row.changes, bytes(row.message), row.created_at)


def _mark(
    session: Session | Connection, claimed: Claimed, state: DigestState, error: str | None, now: datetime
) -> None:
    outbox = models.OutboxMessage
    session.execute(
        update(outbox)
        .where(col(outbox.id) == claimed.id)
        .values(
            status=state,
            attempts=outbox.attempts + 1,
            last_error=error,
            sent_at=now if state is DigestState.SENT else None,
            claimed_by=None,
            claimed_until=None,
        )
    )


# --- claims -------------------------------------------------------------------------------------


@contextmanager
def _claim_postgres(store: Store, cursor: _Cursor) -> Iterator[tuple[Claimed, Connection] | None]:
    """The next pending message, row-locked in a transaction that stays open while it is sent."""
    with store.engine.connect() as conn, conn.begin():
        with cursor.lock:
            row = conn.execute(_next_pending(cursor.after, 1).with_for_update(skip_locked=True)).first()
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
                rows = session.execute(_next_pending(cursor.after, 50)).all()
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
    """Hand one message to the transport; what became of it. The command that sends reports the
    outcome (the CLI prints it, the daemon logs it), so nothing is said twice here."""

    def outcome(status: SendStatus, detail: str = "") -> Outcome:
        return Outcome(claimed.email, status, claimed.subject, claimed.changes, detail, claimed.id)

    try:
        transport.send(claimed.message, sender, claimed.email, claimed.name)
    except Rejected as exc:
        log.debug("digest %d to %s failed: %s", claimed.id, claimed.email, exc)
        return DigestState.FAILED, outcome(SendStatus.FAILED, str(exc))
    except Deferred as exc:
        log.debug("digest %d to %s deferred: %s", claimed.id, claimed.email, exc)
        return DigestState.PENDING, outcome(SendStatus.DEFERRED, str(exc))
    except WatcherError:  # the settings are wrong (a missing password): nothing can go out, stop here
        raise
    except Exception as exc:  # whatever one address does, the others still get their mail
        log.debug("digest %d to %s could not be sent", claimed.id, claimed.email, exc_info=True)
        return DigestState.FAILED, outcome(SendStatus.FAILED, f"could not be sent ({type(exc).__name__}: {exc})")
    log.info("digest %d sent to %s (%d changes)", claimed.id, claimed.email, claimed.changes)
    return DigestState.SENT, outcome(SendStatus.SENT)


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
) -> list[Outcome]:
    """Try every pending message once, with `workers` senders side by side (each its own
    connection to the mail server). One failing recipient does not stop the others."""
    cursor = _Cursor()
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


def retry_failed(store: Store) -> int:
    outbox = models.OutboxMessage
    with store.write() as session:
        rows = session.exec(model_select(outbox).where(outbox.status == DigestState.FAILED)).all()
        for row in rows:
            row.status = DigestState.PENDING
            session.add(row)
        return len(rows)
