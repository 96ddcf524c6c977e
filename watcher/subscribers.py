"""Subscribers as trial watcher keeps them: who they are, what they follow and since when.

Config subscribers are copied into the database whenever the config is read (`enroll`), so
that each subscription carries the moment it began: a subscriber hears about a watch's
changes detected from then on, never its old news, and one who leaves a watch and comes
back does not get what happened while they were away. An unsubscribe (by link) always wins
over the config.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session, col, delete, select

from watcher import models
from watcher.changes import Category, LoggedChange
from watcher.config import Config, Frequency
from watcher.fields import category_of
from watcher.states import AccountState, SubscriberSource
from watcher.store import Store, last_covered, query_changes
from watcher.timing import current_slot

log = logging.getLogger(__name__)

# A subscription row for every watch, made by the migration from 0.1's one `since` per subscriber.
ALL_WATCHES = "*"


@dataclass(frozen=True)
class Recipient:
    """A subscriber who gets digests now: their address, schedule, filter and subscriptions."""

    key: str
    email: str
    frequency: Frequency
    kinds: tuple[Category, ...]
    watches: dict[str, datetime]  # watch → since when they hear about it
    last_slot: datetime | None
    source: SubscriberSource = SubscriberSource.CONFIG

    @property
    def watch_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.watches))

    def wants(self, change: LoggedChange) -> bool:
        """Whether this change is news to them: in a watch they followed when it was detected, of a kind they want."""
        if self.kinds and category_of(change) not in self.kinds:
            return False
        return any(w in self.watches and change.detected_at >= self.watches[w] for w in change.watches)


@dataclass
class Roster:
    """Everyone who gets digests now, and the config subscribers skipped because they unsubscribed."""

    recipients: list[Recipient] = field(default_factory=list)
    unsubscribed: list[str] = field(default_factory=list)

    def by_key(self) -> dict[str, Recipient]:
        return {r.key: r for r in self.recipients}


def kinds_of(text: str | None) -> tuple[Category, ...]:
    return tuple(Category(k) for k in json.loads(text)) if text else ()


def enroll(session: Session, config: Config, now: datetime) -> Roster:
    """Bring the config's subscribers into the database and return everyone who gets digests now."""
    accounts = {a.key: a for a in session.exec(select(models.SubscriberAccount)).all()}
    rows: dict[str, dict[str, models.Subscription]] = {}
    for row in session.exec(select(models.Subscription)).all():
        rows.setdefault(row.subscriber, {})[row.watch] = row
    roster = Roster()
    configured: set[str] = set()
    for sub in config.subscribers:
        key = sub.email.lower()
        configured.add(key)
        account = accounts.get(key)
        if account is None:
            account = models.SubscriberAccount(
                key=key, email=sub.email, source=SubscriberSource.CONFIG, state=AccountState.ACTIVE,
                frequency=sub.frequency, since=now, last_slot=current_slot(now, sub.frequency, config.schedule),
                created_at=now,
            )  # fmt: skip
            session.add(account)
            accounts[key] = account
        elif account.state == AccountState.UNSUBSCRIBED:
            roster.unsubscribed.append(sub.email)
            continue
        account.email, account.frequency = sub.email, sub.frequency
        account.kinds = json.dumps(list(sub.kinds)) if sub.kinds else None
        session.add(account)
        follow(session, key, sub.watches, rows.get(key, {}), now)
    for key, account in accounts.items():  # config subscribers taken out of the config follow nothing now
        if account.source == SubscriberSource.CONFIG and key not in configured and rows.get(key):
            session.execute(delete(models.Subscription).where(col(models.Subscription.subscriber) == key))
            rows.pop(key)
    session.flush()
    known = {w.name for w in config.watches}
    following: dict[str, dict[str, datetime]] = {}
    for row in session.exec(select(models.Subscription)).all():
        if row.watch in known:
            following.setdefault(row.subscriber, {})[row.watch] = row.since
    for key, account in sorted(accounts.items()):
        live = key in configured or account.source == SubscriberSource.WEB
        if not live or account.state != AccountState.ACTIVE or not following.get(key) or not account.email:
            continue
        roster.recipients.append(
            Recipient(
                key=key, email=account.email, frequency=Frequency(account.frequency), kinds=kinds_of(account.kinds),
                watches=following[key], last_slot=account.last_slot, source=SubscriberSource(account.source),
            )
        )  # fmt: skip
    return roster


def follow(
    session: Session, key: str, watches: Sequence[str], current: dict[str, models.Subscription], now: datetime
) -> None:
    """Make a subscriber's subscriptions exactly `watches`: new ones start now, dropped ones end."""
    placeholder = current.pop(ALL_WATCHES, None)
    if placeholder is not None:
        session.delete(placeholder)
    for watch in watches:
        if watch not in current:
            since = placeholder.since if placeholder is not None else now
            session.add(models.Subscription(subscriber=key, watch=watch, since=since))
    for watch, row in current.items():
        if watch not in watches:
            session.delete(row)


def enroll_subscribers(config: Config, store: Store, now: datetime) -> Roster:
    """Record subscribers before a sync records changes, so that they hear of those changes."""
    with store.write() as session:
        roster = enroll(session, config, now)
    for email in roster.unsubscribed:
        log.warning("%s unsubscribed by link: skipped until they subscribe again", email)
    return roster


def pending_changes(session: Session, recipients: Sequence[Recipient]) -> dict[str, list[LoggedChange]]:
    """The changes each recipient has not had in a digest yet and wants.

    One query for everyone: 1,000 subscribers of one watch cost what one does.
    """
    if not recipients:
        return {}
    covered = last_covered(session, [r.key for r in recipients])
    found = query_changes(
        session,
        since=min(since for r in recipients for since in r.watches.values()),
        watches=sorted({w for r in recipients for w in r.watches}),
        after_id=min(covered.get(r.key, 0) for r in recipients),
    )
    return {r.key: [c for c in found if c.id > covered.get(r.key, 0) and r.wants(c)] for r in recipients}


def set_last_slot(session: Session, recipient: Recipient, slot: datetime) -> None:
    account = session.get(models.SubscriberAccount, recipient.key)
    assert account is not None
    account.last_slot = slot
    session.add(account)


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
    source: SubscriberSource = SubscriberSource.CONFIG
    state: AccountState = AccountState.ACTIVE


def statuses(config: Config, store: Store) -> tuple[list[SubscriberStatus], list[str]]:
    """Who follows what: the config's subscribers (those not yet in the database show as new), then
    those who subscribed on the web pages, in every state. Read only."""
    from watcher.states import DigestState, MessageKind

    outbox = models.OutboxMessage
    known = {w.name for w in config.watches}
    with store.read() as session:
        accounts = {a.key: a for a in session.exec(select(models.SubscriberAccount)).all()}
        following: dict[str, dict[str, datetime]] = {}
        for row in session.exec(select(models.Subscription)).all():
            following.setdefault(row.subscriber, {})[row.watch] = row.since
        unsubscribed: list[str] = []
        recipients: list[Recipient] = []
        for sub in config.subscribers:
            account = accounts.get(sub.email.lower())
            if account is not None and account.state == AccountState.UNSUBSCRIBED:
                unsubscribed.append(sub.email)
            watches = following.get(sub.email.lower(), {})
            if ALL_WATCHES in watches:
                watches = {w: watches[ALL_WATCHES] for w in sub.watches}
            recipients.append(
                Recipient(sub.email.lower(), sub.email, sub.frequency, sub.kinds,
                          {w: s for w, s in watches.items() if w in sub.watches}, None)
            )  # fmt: skip
        configured = {r.key for r in recipients}
        web = sorted(
            (a for key, a in accounts.items() if a.source == SubscriberSource.WEB and key not in configured),
            key=lambda a: a.key,
        )
        for account in web:
            watches = {w: since for w, since in following.get(account.key, {}).items() if w in known}
            recipients.append(
                Recipient(account.key, account.email or account.key, Frequency(account.frequency),
                          kinds_of(account.kinds), watches, None, SubscriberSource.WEB)
            )  # fmt: skip
        pending = pending_changes(
            session,
            [r for r in recipients if r.watches and _state(accounts.get(r.key)) is AccountState.ACTIVE],
        )
        result: list[SubscriberStatus] = []
        for recipient in recipients:
            account = accounts.get(recipient.key)
            messages = session.exec(select(outbox).where(outbox.email == recipient.key)).all()
            sent = [
                d.sent_at
                for d in messages
                if d.status == DigestState.SENT and d.sent_at and d.kind == MessageKind.DIGEST
            ]
            result.append(
                SubscriberStatus(
                    email=recipient.email,
                    watches=recipient.watch_names
                    if recipient.source is SubscriberSource.WEB
                    else config.subscriber(recipient.email).watches,
                    frequency=recipient.frequency,
                    kinds=tuple(recipient.kinds),
                    since=account.since if account else None,
                    last_delivered=max(sent) if sent else None,
                    pending_changes=len(pending.get(recipient.key, [])),
                    queued=sum(1 for d in messages if d.status == DigestState.PENDING),
                    failed=[(d.id or 0, d.last_error or "") for d in messages if d.status == DigestState.FAILED],
                    source=recipient.source,
                    state=_state(account),
                )
            )
    return result, unsubscribed


def _state(account: models.SubscriberAccount | None) -> AccountState:
    """A config subscriber not in the database yet is active (they are added at the next sync or send)."""
    return AccountState(account.state) if account else AccountState.ACTIVE
