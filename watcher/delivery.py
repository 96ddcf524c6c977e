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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import insert
from sqlmodel import Session, func, select

from watcher import models
from watcher.changes import LoggedChange
from watcher.clock import Clock, utcnow
from watcher.config import Config, Frequency
from watcher.digest import Digest, Rendered, build
from watcher.mailer import build_message, default_unsubscribe, make_transport, new_message_id
from watcher.models import table_of
from watcher.outbox import Outcome, SendStatus, send_pending
from watcher.states import DigestState
from watcher.store import Store, load_records
from watcher.subscribers import ALL_WATCHES, Recipient, enroll, pending_changes, set_last_slot
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


# --- who is due, and with what ------------------------------------------------------------


def compose(
    session: Session,
    config: Config,
    recipient: Recipient,
    changes: list[LoggedChange],
    now: datetime,
    records: dict[str, dict[str, Any]] | None = None,
) -> Digest | None:
    """The digest of these changes for a subscriber. `records` caches study records across calls."""
    records = {} if records is None else records
    records.update(load_records(session, {c.nct_id for c in changes} - set(records)))
    local_day = now.astimezone(ZoneInfo(config.schedule.timezone)).date()
    return build(
        recipient.email, recipient.frequency, recipient.watch_names, changes, records, local_day,
        unsubscribe_link(config), recipient.kinds,
    )  # fmt: skip


def queue_due(
    config: Config, store: Store, now: datetime, everyone: bool = False, dry_run: bool = False
) -> list[Outcome]:
    """Build and persist the digests that are due now. Returns what was queued (or would be).

    Each subscriber's digest is queued in a savepoint of its own: a digest that cannot be built
    is one failed outcome, and the others are queued all the same.
    """
    queued: list[Outcome] = []
    records: dict[str, dict[str, Any]] = {}  # the same trials recur across subscribers
    with store.write() as session:
        roster = enroll(session, config, now)
        due = [r for r in roster.recipients if everyone or is_due(now, r.frequency, config.schedule, r.last_slot)]
        pending = pending_changes(session, due)
        for recipient in due:
            try:
                with session.begin_nested():
                    outcome = _queue_one(session, config, recipient, pending[recipient.key], now, records, dry_run)
            except Exception as exc:  # one subscriber's digest must not stop the others'
                log.error("the digest for %s could not be built: %s", recipient.email, exc)
                log.debug("digest failure details", exc_info=True)
                outcome = Outcome(recipient.email, SendStatus.FAILED, "", 0, f"could not be built ({exc})")
            if outcome is not None:
                queued.append(outcome)
        if dry_run:
            session.rollback()
    return queued


def _queue_one(
    session: Session,
    config: Config,
    recipient: Recipient,
    changes: list[LoggedChange],
    now: datetime,
    records: dict[str, dict[str, Any]],
    dry_run: bool,
) -> Outcome | None:
    digest = compose(session, config, recipient, changes, now, records)
    slot = current_slot(now, recipient.frequency, config.schedule)
    if not dry_run and slot is not None:
        set_last_slot(session, recipient, slot)
    if digest is None:
        return None
    if dry_run:
        return Outcome(recipient.email, SendStatus.WOULD_SEND, digest.subject, len(digest.change_ids))
    digest_id = persist(session, config, digest, _render(digest), now, recipient.key)
    return Outcome(recipient.email, SendStatus.QUEUED, digest.subject, len(digest.change_ids), digest_id=digest_id)


def _render(digest: Digest) -> Rendered:
    from watcher.render import render  # Jinja2 only where a digest is rendered

    return render(digest)


def persist(session: Session, config: Config, digest: Digest, rendered: Rendered, now: datetime, key: str) -> int:
    """Store a digest for the subscriber `key`, with its exact message, before any send; returns its id."""
    message_id = new_message_id(config.mail.from_)
    message = build_message(rendered, config.mail.from_, digest.email, message_id, now, digest.unsubscribe)
    outbox = table_of(models.OutboxMessage)  # Core: a thousand digests in one run stay cheap
    digest_id: int = session.execute(
        insert(outbox).returning(outbox.c.id),
        {
            "email": key, "message_id": message_id, "subject": rendered.subject,
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
    unbuilt = [o for o in queued if o.status is SendStatus.FAILED]  # said here, or nobody would hear of them
    report.outcomes = unbuilt + send_pending(
        store, lambda: make_transport(config), config.mail.from_, clock, cancel, workers
    )
    return report


def preview(config: Config, store: Store, email: str, now: datetime) -> tuple[Digest, Rendered] | None:
    """The next digest of a subscriber, rendered; nothing is stored or marked."""
    subscriber = config.subscriber(email)
    with store.read() as session:
        following = {
            row.watch: row.after_change
            for row in session.exec(
                select(models.Subscription).where(models.Subscription.subscriber == subscriber.email.lower())
            ).all()
        }
        newest = session.exec(select(func.max(models.ChangeEntry.id))).one() or 0
        watches = {w: following.get(w, following.get(ALL_WATCHES, newest)) for w in subscriber.watches}
        recipient = Recipient(
            subscriber.email.lower(), subscriber.email, subscriber.frequency, subscriber.kinds, watches, None
        )
        pending = pending_changes(session, [recipient])[recipient.key]
        digest = compose(session, config, recipient, pending, now)
    return None if digest is None else (digest, _render(digest))


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
