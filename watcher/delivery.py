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
from sqlmodel import Session, select

from watcher import models
from watcher.changes import LoggedChange
from watcher.clock import Clock, utcnow
from watcher.config import Config, Frequency
from watcher.digest import Digest, MailLinks, Rendered, build
from watcher.mailer import build_message, default_unsubscribe, make_transport, new_message_id
from watcher.models import table_of
from watcher.outbox import Outcome, SendStatus, send_pending
from watcher.states import DigestState, MessageKind, TokenPurpose
from watcher.store import Store, load_records
from watcher.subscribers import ALL_WATCHES, Recipient, enroll, kinds_of, pending_changes, set_last_slot
from watcher.timing import current_slot, is_due
from watcher.tokens import random_token, record_view_token

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


def unsubscribe_mailto(config: Config) -> str:
    """The mailto: that follows the one-click link in `List-Unsubscribe` when [web] is set."""
    configured = config.mail.unsubscribe
    return configured if configured and configured.startswith("mailto:") else default_unsubscribe(config.mail.from_)


@dataclass
class WebLinks:
    """The subscribers' link tokens for one run of digests ([web] set)."""

    public_url: str
    unsubscribe: dict[str, str]  # subscriber key → token
    manage: dict[str, str]

    def for_digest(self, key: str, view_token: str) -> MailLinks:
        return MailLinks(
            unsubscribe=f"{self.public_url}/unsubscribe/{self.unsubscribe[key]}",
            manage=f"{self.public_url}/manage/{self.manage[key]}",
            view=f"{self.public_url}/digest/{view_token}",
        )


def web_links(session: Session, config: Config, keys: list[str], now: datetime) -> WebLinks | None:
    """The unsubscribe and manage tokens of these subscribers (made where missing), or None without [web]."""
    if config.web is None or not keys:
        return None
    from watcher import tokens

    secret = tokens.load_secret(session, config, now)
    return WebLinks(
        config.web.public_url,
        tokens.current(session, secret, keys, TokenPurpose.UNSUBSCRIBE, now),
        tokens.current(session, secret, keys, TokenPurpose.MANAGE, now),
    )


# --- who is due, and with what ------------------------------------------------------------


def compose(
    session: Session,
    config: Config,
    recipient: Recipient,
    changes: list[LoggedChange],
    now: datetime,
    records: dict[str, dict[str, Any]] | None = None,
    links: MailLinks | None = None,
) -> Digest | None:
    """The digest of these changes for a subscriber. `records` caches study records across calls."""
    records = {} if records is None else records
    records.update(load_records(session, {c.nct_id for c in changes} - set(records)))
    local_day = now.astimezone(ZoneInfo(config.schedule.timezone)).date()
    return build(
        recipient.email, recipient.frequency, recipient.watch_names, changes, records, local_day,
        unsubscribe_link(config), recipient.kinds, links,
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
        links = web_links(session, config, [r.key for r in due if pending[r.key]], now)
        for recipient in due:
            try:
                with session.begin_nested():
                    outcome = _queue_one(
                        session, config, recipient, pending[recipient.key], now, records, dry_run, links
                    )
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
    links: WebLinks | None = None,
) -> Outcome | None:
    view_token = random_token() if links is not None and changes else None
    mail_links = links.for_digest(recipient.key, view_token) if links is not None and view_token else None
    digest = compose(session, config, recipient, changes, now, records, mail_links)
    slot = current_slot(now, recipient.frequency, config.schedule)
    if not dry_run and slot is not None:
        set_last_slot(session, recipient, slot)
    if digest is None:
        return None
    if dry_run:
        return Outcome(recipient.email, SendStatus.WOULD_SEND, digest.subject, len(digest.change_ids))
    digest_id = persist(session, config, digest, _render(digest), now, recipient.key)
    if view_token is not None:
        record_view_token(session, view_token, recipient.key, digest_id, now)
    return Outcome(recipient.email, SendStatus.QUEUED, digest.subject, len(digest.change_ids), digest_id=digest_id)


def _render(digest: Digest) -> Rendered:
    from watcher.render import render  # Jinja2 only where a digest is rendered

    return render(digest)


def persist(session: Session, config: Config, digest: Digest, rendered: Rendered, now: datetime, key: str) -> int:
    """Store a digest for the subscriber `key`, with its exact message, before any send; returns its id.

    With [web] set its `List-Unsubscribe` is the one-click page, then the mailto:, with
    `List-Unsubscribe-Post` (RFC 8058); without, the mailto: (or https) link of [mail] alone.
    """
    message_id = new_message_id(config.mail.from_)
    if digest.links is not None:
        unsubscribe: list[str] = [digest.links.unsubscribe, unsubscribe_mailto(config)]
        message = build_message(rendered, config.mail.from_, digest.email, message_id, now, unsubscribe, True)
    else:
        message = build_message(rendered, config.mail.from_, digest.email, message_id, now, digest.unsubscribe)
    digest_id = _insert(session, key, message_id, rendered.subject, message, len(digest.change_ids), now)
    if digest.change_ids:
        session.execute(
            insert(table_of(models.DigestChange)),
            [{"digest_id": digest_id, "change_id": change_id} for change_id in digest.change_ids],
        )
    return digest_id


def _insert(
    session: Session,
    key: str,
    message_id: str,
    subject: str,
    message: bytes,
    changes: int,
    now: datetime,
    kind: MessageKind = MessageKind.DIGEST,
) -> int:
    outbox = table_of(models.OutboxMessage)  # Core: a thousand digests in one run stay cheap
    digest_id: int = session.execute(
        insert(outbox).returning(outbox.c.id),
        {
            "email": key, "message_id": message_id, "subject": subject, "message": message, "changes": changes,
            "status": DigestState.PENDING, "attempts": 0, "created_at": now, "kind": kind,
        },
    ).scalar_one()  # fmt: skip
    return digest_id


def persist_notice(
    session: Session, config: Config, key: str, email: str, rendered: Rendered, kind: MessageKind, now: datetime
) -> int:
    """Store a confirmation or manage-link email in the outbox (it covers no change); returns its id."""
    message_id = new_message_id(config.mail.from_, kind.value)
    message = build_message(rendered, config.mail.from_, email, message_id, now, None)
    return _insert(session, key, message_id, rendered.subject, message, 0, now, kind)


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
    """The next digest of a subscriber (from the config, or active on the web pages), rendered; nothing
    is stored or marked. Its web links, if any, are left out: making them would store tokens."""
    key = email.lower()
    with store.read() as session:
        following = {
            row.watch: row.since
            for row in session.exec(select(models.Subscription).where(models.Subscription.subscriber == key)).all()
        }
        account = session.get(models.SubscriberAccount, key)
        if any(s.email.lower() == key for s in config.subscribers) or account is None:
            subscriber = config.subscriber(email)
            watches = {w: following.get(w, following.get(ALL_WATCHES, now)) for w in subscriber.watches}
            recipient = Recipient(key, subscriber.email, subscriber.frequency, subscriber.kinds, watches, None)
        else:
            known = {w.name for w in config.watches}
            recipient = Recipient(
                key, account.email or key, Frequency(account.frequency), kinds_of(account.kinds),
                {w: since for w, since in following.items() if w in known}, None,
            )  # fmt: skip
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
