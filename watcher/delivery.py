"""The digest outbox: decide who is due, persist each digest before sending, mark it after.

A digest row (recipient, covered change ids, Message-ID, the exact message bytes) is
committed before any send. It becomes `sent` only after the mail server (or the outbox
folder) accepted it; a deferral leaves it `pending` for the next run, a permanent refusal
marks it `failed` with the server's reply. A change reaches a subscriber in one digest only.
"""

from __future__ import annotations

import fcntl
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import insert
from sqlmodel import Session, col, select

from watcher import models
from watcher import store as st
from watcher.config import Config, Subscriber
from watcher.digest import Digest, Rendered, build
from watcher.mailer import (
    Deferred,
    OutboxTransport,
    Rejected,
    SmtpTransport,
    build_message,
    default_unsubscribe,
    new_message_id,
)
from watcher.timing import current_slot, is_due

log = logging.getLogger(__name__)


class Transport(Protocol):
    description: str

    def send(self, message: bytes, sender: str, to: str, name: str) -> None: ...
    def __enter__(self) -> Transport: ...
    def __exit__(self, *exc: object) -> None: ...


@dataclass
class Outcome:
    email: str
    status: str  # sent | deferred | failed | would-send
    subject: str
    changes: int
    detail: str = ""
    digest_id: int | None = None


@dataclass
class SendReport:
    outcomes: list[Outcome] = field(default_factory=list)
    transport: str = ""

    @property
    def ok(self) -> bool:
        return all(o.status in ("sent", "would-send") for o in self.outcomes)


def make_transport(config: Config) -> Transport:
    if config.smtp is None:
        return OutboxTransport(config.outbox_path)
    ca = (config.folder / config.smtp.ca_file).resolve() if config.smtp.ca_file else None
    return SmtpTransport(config.smtp, ca)


def unsubscribe_link(config: Config) -> str:
    return config.mail.unsubscribe or default_unsubscribe(config.mail.from_)


@contextmanager
def sending_lock(database: Path) -> Iterator[None]:
    """One sender at a time per database (the daemon and a one-off `digest send`).

    An OS lock: it is released when its process ends, however it ends.
    """
    path = database.with_name(database.name + ".send.lock")
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- who is due, and with what ------------------------------------------------------------


def pending_changes(
    session: Session, subscribers: Sequence[tuple[Subscriber, datetime]]
) -> dict[str, list[st.StoredChange]]:
    """The changes each subscriber (with the moment they joined) has not had in a digest yet.

    One query for everyone: 1,000 subscribers of one watch cost what one does.
    """
    if not subscribers:
        return {}
    covered = st.last_covered(session, [sub.email for sub, _ in subscribers])
    floor = min(covered.get(sub.email.lower(), 0) for sub, _ in subscribers)
    found = st.query_changes(
        session,
        since=min(since for _, since in subscribers),
        watches=sorted({w for sub, _ in subscribers for w in sub.watches}),
        after_id=floor,
    )
    pending: dict[str, list[st.StoredChange]] = {}
    for sub, since in subscribers:
        mine, after = set(sub.watches), covered.get(sub.email.lower(), 0)
        pending[sub.email.lower()] = [
            c for c in found if c.id > after and c.detected_at >= since and mine.intersection(c.watches)
        ]
    return pending


def compose(
    session: Session,
    config: Config,
    subscriber: Subscriber,
    changes: list[st.StoredChange],
    now: datetime,
    records: dict[str, dict[str, Any]] | None = None,
) -> Digest | None:
    """The digest of these changes for a subscriber. `records` caches study records across calls."""
    records = {} if records is None else records
    records.update(st.load_records(session, {c.nct_id for c in changes} - set(records)))
    local_day = now.astimezone(_zone(config)).date()
    return build(
        subscriber.email, subscriber.frequency, subscriber.watches, changes, records, local_day,
        unsubscribe_link(config), subscriber.kinds,
    )  # fmt: skip


def _zone(config: Config) -> ZoneInfo:
    return ZoneInfo(config.schedule.timezone)


def queue_due(
    config: Config, store: st.Store, now: datetime, everyone: bool = False, dry_run: bool = False
) -> list[Outcome]:
    """Build and persist the digests that are due now. Returns what was queued (or would be)."""
    queued: list[Outcome] = []
    records: dict[str, dict[str, Any]] = {}  # the same trials recur across subscribers
    with store.write() as session:
        states = st.ensure_subscriber_states(session, config, now)
        due = [
            sub
            for sub in config.subscribers
            if everyone or is_due(now, sub.frequency, config.schedule, states[sub.email.lower()].last_slot)
        ]
        pending = pending_changes(session, [(sub, states[sub.email.lower()].since) for sub in due])
        for sub in due:
            state = states[sub.email.lower()]
            digest = compose(session, config, sub, pending[sub.email.lower()], now, records)
            if not dry_run:
                state.last_slot = current_slot(now, sub.frequency, config.schedule) or state.last_slot
                session.add(state)
            if digest is None:
                continue
            if dry_run:
                queued.append(Outcome(sub.email, "would-send", digest.subject, len(digest.change_ids)))
                continue
            digest_id = persist(session, config, digest, _render(digest), now)
            queued.append(Outcome(sub.email, "pending", digest.subject, len(digest.change_ids), digest_id=digest_id))
        if dry_run:
            session.rollback()
    return queued


def _render(digest: Digest) -> Rendered:
    from watcher.render import render  # Jinja2 only where a digest is rendered

    return render(digest)


def persist(session: Session, config: Config, digest: Digest, rendered: Rendered, now: datetime) -> int:
    """Store a digest, with its exact message, before any send; returns its id."""
    message_id = new_message_id(config.mail.from_)
    message = build_message(rendered, config.mail.from_, digest.email, message_id, now, digest.unsubscribe)
    digests = models.Digest.__table__  # Core: a thousand digests in one run stay cheap
    digest_id: int = session.execute(
        insert(digests).returning(digests.c.id),  # type: ignore[arg-type]
        {
            "email": digest.email.lower(), "message_id": message_id, "subject": rendered.subject,
            "message": message, "changes": len(digest.change_ids), "status": "pending",
            "attempts": 0, "created_at": now,
        },
    ).scalar_one()  # fmt: skip
    if digest.change_ids:
        session.execute(
            insert(models.DigestChange.__table__),  # type: ignore[arg-type]
            [{"digest_id": digest_id, "change_id": change_id} for change_id in digest.change_ids],
        )
    return digest_id


# --- sending ---------------------------------------------------------------------------------


def send_pending(
    config: Config,
    store: st.Store,
    transport: Transport,
    clock: Callable[[], datetime],
    cancel: threading.Event | None = None,
) -> list[Outcome]:
    """Try every pending digest once; one failing recipient does not stop the others."""
    with store.read() as session:
        pending = session.exec(
            select(models.Digest.id, models.Digest.email, models.Digest.subject, models.Digest.changes)
            .where(models.Digest.status == "pending")
            .order_by(col(models.Digest.id))
        ).all()
    outcomes: list[Outcome] = []
    with transport:
        for digest_id, email, subject, changes in pending:
            if cancel is not None and cancel.is_set():
                break
            with store.read() as session:
                row = session.get(models.Digest, digest_id)
                if row is None or row.status != "pending":  # another sender got there first
                    continue
                message, created = row.message, row.created_at
            name = f"{created:%Y%m%dT%H%M%SZ}-{digest_id:06d}-{re.sub(r'[^A-Za-z0-9@._-]', '_', email)}"
            try:
                transport.send(message, config.mail.from_, email, name)
            except Rejected as exc:
                _mark(store, digest_id, "failed", str(exc), None)
                outcomes.append(Outcome(email, "failed", subject, changes, str(exc), digest_id))
                log.warning("digest %d to %s failed: %s", digest_id, email, exc)
            except Deferred as exc:
                _mark(store, digest_id, "pending", str(exc), None)
                outcomes.append(Outcome(email, "deferred", subject, changes, str(exc), digest_id))
                log.warning("digest %d to %s deferred: %s", digest_id, email, exc)
            else:
                _mark(store, digest_id, "sent", None, clock())
                outcomes.append(Outcome(email, "sent", subject, changes, "", digest_id))
                log.info("digest %d sent to %s (%d change%s)", digest_id, email, changes, "" if changes == 1 else "s")
    return outcomes


def _mark(store: st.Store, digest_id: int, status: str, error: str | None, sent_at: datetime | None) -> None:
    with store.write() as session:
        row = session.get(models.Digest, digest_id)
        assert row is not None
        row.status = status
        row.attempts += 1
        row.last_error = error
        row.sent_at = sent_at
        session.add(row)


def retry_failed(store: st.Store) -> int:
    with store.write() as session:
        rows = session.exec(select(models.Digest).where(models.Digest.status == "failed")).all()
        for row in rows:
            row.status = "pending"
            session.add(row)
        return len(rows)


def send_due(
    config: Config,
    store: st.Store,
    clock: Callable[[], datetime] = st.utcnow,
    everyone: bool = False,
    dry_run: bool = False,
    transport: Transport | None = None,
    cancel: threading.Event | None = None,
) -> SendReport:
    """Queue every due digest, then send everything queued (including earlier deferrals)."""
    transport = transport or make_transport(config)
    report = SendReport(transport=transport.description)
    with sending_lock(store.path):
        queued = queue_due(config, store, clock(), everyone=everyone, dry_run=dry_run)
        if dry_run:
            report.outcomes = queued
            return report
        report.outcomes = send_pending(config, store, transport, clock, cancel)
    return report


def preview(config: Config, store: st.Store, email: str, now: datetime) -> tuple[Digest, Rendered] | None:
    """The next digest of a subscriber, rendered; nothing is stored or marked."""
    subscriber = config.subscriber(email)
    with store.read() as session:
        state = session.get(models.SubscriberState, subscriber.email.lower())
        since = state.since if state else now
        pending = pending_changes(session, [(subscriber, since)])[subscriber.email.lower()]
        digest = compose(session, config, subscriber, pending, now)
    return None if digest is None else (digest, _render(digest))


@dataclass
class SubscriberStatus:
    email: str
    watches: tuple[str, ...]
    frequency: str
    kinds: tuple[str, ...]
    since: datetime | None
    last_delivered: datetime | None
    pending_changes: int
    queued: int
    failed: list[tuple[int, str]]


def subscriber_statuses(config: Config, store: st.Store) -> list[SubscriberStatus]:
    result = []
    with store.read() as session:
        states = {s.email: s for s in session.exec(select(models.SubscriberState)).all()}
        known = [(sub, states[sub.email.lower()].since) for sub in config.subscribers if sub.email.lower() in states]
        pending_by_email = pending_changes(session, known)
        for sub in config.subscribers:
            key = sub.email.lower()
            state = states.get(key)
            digests = session.exec(select(models.Digest).where(models.Digest.email == key)).all()
            sent = [d.sent_at for d in digests if d.status == "sent" and d.sent_at]
            pending = pending_by_email.get(key, [])
            result.append(
                SubscriberStatus(
                    email=sub.email,
                    watches=sub.watches,
                    frequency=sub.frequency,
                    kinds=sub.kinds,
                    since=state.since if state else None,
                    last_delivered=max(sent) if sent else None,
                    pending_changes=len(pending),
                    queued=sum(1 for d in digests if d.status == "pending"),
                    failed=[(d.id or 0, d.last_error or "") for d in digests if d.status == "failed"],
                )
            )
    return result


def send_sample(config: Config, email: str, clock: Callable[[], datetime] = st.utcnow) -> str:
    """Send a sample digest with one change of every kind (nothing stored); returns the route."""
    from watcher.digest import sample_changes

    changes, records = sample_changes()
    now = clock()
    sample = build(email, "daily", ["sample-watch"], changes, records, now.date(), unsubscribe_link(config))
    assert sample is not None
    message = build_message(
        _render(sample), config.mail.from_, email, new_message_id(config.mail.from_), now, sample.unsubscribe
    )
    transport = make_transport(config)
    with transport:
        transport.send(message, config.mail.from_, email, f"{now:%Y%m%dT%H%M%SZ}-sample-{email}")
    return transport.description
