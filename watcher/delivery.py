"""The digest outbox: decide who is due, persist each digest before sending, mark it after.

A digest row (recipient, covered change ids, Message-ID, the exact message bytes) is
committed before any send. It becomes `sent` only after the mail server (or the outbox
folder) accepted it; a deferral leaves it `pending` for the next run, a permanent refusal
marks it `failed` with the server's reply. A change reaches a subscriber in one digest only.

This module also owns each subscriber's state: since when they hear about changes, and the
last digest slot handled for them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import insert
from sqlmodel import Session, select

from watcher import models
from watcher.changes import LoggedChange
from watcher.clock import Clock, utcnow
from watcher.config import Config, Frequency, Subscriber
from watcher.digest import Digest, Rendered, build
from watcher.mailer import build_message, default_unsubscribe, make_transport, new_message_id
from watcher.models import table_of
from watcher.outbox import Outcome, SendStatus, send_pending
from watcher.states import DigestState
from watcher.store import Store, last_covered, load_records, query_changes
from watcher.timing import current_slot, is_due

log = logging.getLogger(__name__)


@dataclass
class SendReport:
    outcomes: list[Outcome] = field(default_factory=list)
    transport: str = ""

    @property
    def ok(self) -> bool:
        return all(o.status in (SendStatus.SENT, SendStatus.WOULD_SEND) for o in self.outcomes)


def unsubscribe_link(config: Config) -> str:
    return config.mail.unsubscribe or default_unsubscribe(config.mail.from_)


# --- subscribers' state ----------------------------------------------------------------------


def enroll(session: Session, config: Config, now: datetime) -> dict[str, models.SubscriberState]:
    """Every subscriber's state, creating the missing ones: a new subscriber hears about changes
    from now on, and their first digest slot is the current one (no digest for a past slot)."""
    states = {s.email: s for s in session.exec(select(models.SubscriberState)).all()}
    for sub in config.subscribers:
        key = sub.email.lower()
        if key not in states:
            states[key] = models.SubscriberState(
                email=key, since=now, last_slot=current_slot(now, sub.frequency, config.schedule)
            )
            session.add(states[key])
    session.flush()
    return states


def enroll_subscribers(config: Config, store: Store, now: datetime) -> None:
    """Record new subscribers before a sync records changes, so that they hear of those changes."""
    if config.subscribers:
        with store.write() as session:
            enroll(session, config, now)


# --- who is due, and with what ------------------------------------------------------------


def pending_changes(
    session: Session, subscribers: Sequence[tuple[Subscriber, datetime]]
) -> dict[str, list[LoggedChange]]:
    """The changes each subscriber (with the moment they joined) has not had in a digest yet.

    One query for everyone: 1,000 subscribers of one watch cost what one does.
    """
    if not subscribers:
        return {}
    covered = last_covered(session, [sub.email for sub, _ in subscribers])
    floor = min(covered.get(sub.email.lower(), 0) for sub, _ in subscribers)
    found = query_changes(
        session,
        since=min(since for _, since in subscribers),
        watches=sorted({w for sub, _ in subscribers for w in sub.watches}),
        after_id=floor,
    )
    pending: dict[str, list[LoggedChange]] = {}
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
    changes: list[LoggedChange],
    now: datetime,
    records: dict[str, dict[str, Any]] | None = None,
) -> Digest | None:
    """The digest of these changes for a subscriber. `records` caches study records across calls."""
    records = {} if records is None else records
    records.update(load_records(session, {c.nct_id for c in changes} - set(records)))
    local_day = now.astimezone(ZoneInfo(config.schedule.timezone)).date()
    return build(
        subscriber.email, subscriber.frequency, subscriber.watches, changes, records, local_day,
        unsubscribe_link(config), subscriber.kinds,
    )  # fmt: skip


def queue_due(
    config: Config, store: Store, now: datetime, everyone: bool = False, dry_run: bool = False
) -> list[Outcome]:
    """Build and persist the digests that are due now. Returns what was queued (or would be)."""
    queued: list[Outcome] = []
    records: dict[str, dict[str, Any]] = {}  # the same trials recur across subscribers
    with store.write() as session:
        states = enroll(session, config, now)
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
                queued.append(Outcome(sub.email, SendStatus.WOULD_SEND, digest.subject, len(digest.change_ids)))
                continue
            digest_id = persist(session, config, digest, _render(digest), now)
            queued.append(
                Outcome(sub.email, SendStatus.QUEUED, digest.subject, len(digest.change_ids), digest_id=digest_id)
            )
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
    outbox = table_of(models.OutboxMessage)  # Core: a thousand digests in one run stay cheap
    digest_id: int = session.execute(
        insert(outbox).returning(outbox.c.id),
        {
            "email": digest.email.lower(), "message_id": message_id, "subject": rendered.subject,
            "message": message, "changes": len(digest.change_ids), "status": DigestState.PENDING,
            "attempts": 0, "created_at": now,
        },
    ).scalar_one()  # fmt: skip
    if digest.change_ids:
        session.execute(
            insert(table_of(models.DigestChange)),
            [{"digest_id": digest_id, "change_id": change_id} for change_id in digest.change_ids],
        )
    return digest_id


# --- sending ---------------------------------------------------------------------------------


def send_due(
    config: Config,
    store: Store,
    clock: Clock = utcnow,
    everyone: bool = False,
    dry_run: bool = False,
    cancel: threading.Event | None = None,
    workers: int = 1,
) -> SendReport:
    """Queue every due digest, then send everything queued (including earlier deferrals).

    Other senders may run at the same time (see `watcher.outbox`): each message goes out once.
    """
    report = SendReport(transport=make_transport(config).description)
    queued = queue_due(config, store, clock(), everyone=everyone, dry_run=dry_run)
    if dry_run:
        report.outcomes = queued
        return report
    report.outcomes = send_pending(store, lambda: make_transport(config), config.mail.from_, clock, cancel, workers)
    return report


def preview(config: Config, store: Store, email: str, now: datetime) -> tuple[Digest, Rendered] | None:
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
    frequency: Frequency
    kinds: tuple[str, ...]
    since: datetime | None
    last_delivered: datetime | None
    pending_changes: int
    queued: int
    failed: list[tuple[int, str]]


def subscriber_statuses(config: Config, store: Store) -> list[SubscriberStatus]:
    result = []
    outbox = models.OutboxMessage
    with store.read() as session:
        states = {s.email: s for s in session.exec(select(models.SubscriberState)).all()}
        known = [(sub, states[sub.email.lower()].since) for sub in config.subscribers if sub.email.lower() in states]
        pending_by_email = pending_changes(session, known)
        for sub in config.subscribers:
            key = sub.email.lower()
            state = states.get(key)
            digests = session.exec(select(outbox).where(outbox.email == key)).all()
            sent = [d.sent_at for d in digests if d.status == DigestState.SENT and d.sent_at]
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
                    queued=sum(1 for d in digests if d.status == DigestState.PENDING),
                    failed=[(d.id or 0, d.last_error or "") for d in digests if d.status == DigestState.FAILED],
                )
            )
    return result


def send_sample(config: Config, email: str, clock: Clock = utcnow) -> str:
    """Send a sample digest with one change of every kind (nothing stored); returns the route."""
    from watcher.digest import sample_changes

    now = clock()
    changes, records = sample_changes(now)
    sample = build(email, Frequency.DAILY, ["sample-watch"], changes, records, now.date(), unsubscribe_link(config))
    assert sample is not None
    message = build_message(
        _render(sample), config.mail.from_, email, new_message_id(config.mail.from_), now, sample.unsubscribe
    )
    transport = make_transport(config)
    with transport:
        transport.send(message, config.mail.from_, email, f"{now:%Y%m%dT%H%M%SZ}-sample-{email}")
    return transport.description
