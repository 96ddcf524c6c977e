"""Subscribers as trial watcher keeps them: who they are, what they follow and since when.

A subscriber is an email address, chat or push channels (Apprise URLs), or both; a webhook is
kept the same way (an immediate subscriber of the watches it names), so that it too hears
only of changes from the moment it was configured, and each change once.

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

from watcher import masking, models
from watcher.changes import Category, LoggedChange
from watcher.config import Config, Frequency, Subscriber, Webhook
from watcher.fields import category_of
from watcher.states import AccountState, SubscriberSource
from watcher.store import Store, last_covered, newest_change_id, query_changes
from watcher.timing import current_slot

log = logging.getLogger(__name__)

# A subscription row for every watch, made by the migration from 0.1's one `since` per subscriber.
ALL_WATCHES = "*"


@dataclass(frozen=True)
class Recipient:
    """A subscriber (or webhook) who gets digests now: where to, schedule, filter and subscriptions."""

    key: str
    email: str | None  # None: channels only (or a webhook)
    frequency: Frequency
    kinds: tuple[Category, ...]
    watches: dict[str, int]  # watch → the last change id before they followed it
    last_slot: datetime | None
    source: SubscriberSource = SubscriberSource.CONFIG
    name: str | None = None
    notify: tuple[str, ...] = ()  # Apprise URL templates ({env:NAME} unexpanded)
    webhook: Webhook | None = None

    @property
    def watch_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.watches))

    @property
    def label(self) -> str:
        """How to name them to a person (never with a secret)."""
        if self.webhook is not None:
            return f"webhook {self.webhook.shown}"
        return self.name or self.email or self.key

    def wants(self, change: LoggedChange) -> bool:
        """Whether this change is news to them: in a watch they followed when it was detected, of a kind they want."""
        if self.kinds and category_of(change) not in self.kinds:
            return False
        return any(w in self.watches and change.id > self.watches[w] for w in change.watches)


@dataclass
class Roster:
    """Everyone who gets digests now, and the config subscribers skipped because they unsubscribed."""

    recipients: list[Recipient] = field(default_factory=list)
    unsubscribed: list[str] = field(default_factory=list)

    def by_key(self) -> dict[str, Recipient]:
        return {r.key: r for r in self.recipients}


def kinds_of(text: str | None) -> tuple[Category, ...]:
    return tuple(Category(k) for k in json.loads(text)) if text else ()


def _configured(config: Config) -> dict[str, Subscriber | Webhook]:
    """Config subscribers and webhooks by their key."""
    found: dict[str, Subscriber | Webhook] = {sub.key: sub for sub in config.subscribers}
    found.update({hook.key: hook for hook in config.webhooks})
    return found


def enroll(session: Session, config: Config, now: datetime) -> Roster:
    """Bring the config's subscribers and webhooks into the database and return everyone who gets digests now."""
    accounts = {a.key: a for a in session.exec(select(models.SubscriberAccount)).all()}
    newest = newest_change_id(session)  # a subscription starts after it
    rows: dict[str, dict[str, models.Subscription]] = {}
    for row in session.exec(select(models.Subscription)).all():
        rows.setdefault(row.subscriber, {})[row.watch] = row
    roster = Roster()
    configured = _configured(config)
    for key, entry in configured.items():
        email = entry.email if isinstance(entry, Subscriber) else None
        frequency = entry.frequency if isinstance(entry, Subscriber) else Frequency.IMMEDIATE
        kinds = entry.kinds if isinstance(entry, Subscriber) else ()
        account = accounts.get(key)
        if account is None:
            account = models.SubscriberAccount(
                key=key, email=email, source=SubscriberSource.CONFIG, state=AccountState.ACTIVE,
                frequency=frequency, since=now, last_slot=current_slot(now, frequency, config.schedule),
                created_at=now,
            )  # fmt: skip
            session.add(account)
            accounts[key] = account
        elif account.state == AccountState.UNSUBSCRIBED:
            roster.unsubscribed.append(_label(entry))
            continue
        account.email, account.frequency = email, frequency
        account.kinds = json.dumps(list(kinds)) if kinds else None
        session.add(account)
        follow(session, key, entry.watches, rows.get(key, {}), now, newest)
    for key, account in accounts.items():  # config subscribers taken out of the config follow nothing now
        if account.source == SubscriberSource.CONFIG and key not in configured and rows.get(key):
            session.execute(delete(models.Subscription).where(col(models.Subscription.subscriber) == key))
            rows.pop(key)
    session.flush()
    known = {w.name for w in config.watches}
    following: dict[str, dict[str, int]] = {}
    for row in session.exec(select(models.Subscription)).all():
        if row.watch in known:
            following.setdefault(row.subscriber, {})[row.watch] = row.after_change
    for key, account in sorted(accounts.items()):
        found = configured.get(key)
        live = found is not None or account.source == SubscriberSource.WEB
        if not live or account.state != AccountState.ACTIVE or not following.get(key):
            continue
        subscriber = found if isinstance(found, Subscriber) else None
        webhook = found if isinstance(found, Webhook) else None
        notify = subscriber.notify if subscriber else ()
        if not account.email and not notify and webhook is None:
            continue
        roster.recipients.append(
            Recipient(
                key=key, email=account.email, frequency=Frequency(account.frequency), kinds=kinds_of(account.kinds),
                watches=following[key], last_slot=account.last_slot, source=SubscriberSource(account.source),
                name=subscriber.name if subscriber else None, notify=notify, webhook=webhook,
            )
        )  # fmt: skip
    return roster


def _label(entry: Subscriber | Webhook) -> str:
    return entry.label if isinstance(entry, Subscriber) else f"webhook {entry.shown}"


def follow(
    session: Session,
    key: str,
    watches: Sequence[str],
    current: dict[str, models.Subscription],
    now: datetime,
    newest: int,
) -> None:
    """Make a subscriber's subscriptions exactly `watches`: new ones start now, dropped ones end."""
    placeholder = current.pop(ALL_WATCHES, None)
    if placeholder is not None:
        session.delete(placeholder)
    for watch in watches:
        if watch not in current:
            since, after = (placeholder.since, placeholder.after_change) if placeholder else (now, newest)
            session.add(models.Subscription(subscriber=key, watch=watch, since=since, after_change=after))
    for watch, row in current.items():
        if watch not in watches:
            session.delete(row)


def enroll_subscribers(config: Config, store: Store, now: datetime) -> Roster:
    """Record subscribers before a sync records changes, so that they hear of those changes."""
    with store.write() as session:
        roster = enroll(session, config, now)
    for who in roster.unsubscribed:
        log.warning("%s unsubscribed by link: skipped until they subscribe again", who)
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
        watches=sorted({w for r in recipients for w in r.watches}),
        after_id=min(max(covered.get(r.key, 0), min(r.watches.values())) for r in recipients),
    )
    return {r.key: [c for c in found if c.id > covered.get(r.key, 0) and r.wants(c)] for r in recipients}


def set_last_slot(session: Session, recipient: Recipient, slot: datetime) -> None:
    account = session.get(models.SubscriberAccount, recipient.key)
    assert account is not None
    account.last_slot = slot
    session.add(account)


@dataclass
class SubscriberStatus:
    who: str  # the name, else the email; "webhook URL" for a webhook
    email: str | None
    watches: tuple[str, ...]
    frequency: Frequency
    kinds: tuple[str, ...]
    since: datetime | None
    last_delivered: datetime | None
    pending_changes: int
    queued: int
    failed: list[tuple[int, str]]  # (message id, what happened: where it went and the reply)
    source: SubscriberSource = SubscriberSource.CONFIG
    state: AccountState = AccountState.ACTIVE
    name: str | None = None
    notify: tuple[str, ...] = ()  # as people may see them (secrets masked)
    webhook: str | None = None  # the webhook's URL, as people may see it


def statuses(config: Config, store: Store) -> tuple[list[SubscriberStatus], list[str]]:
    """Who follows what: the config's subscribers and webhooks (those not yet in the database show
    as new), then those who subscribed on the web pages, in every state. Read only."""
    from watcher.channels import target_of
    from watcher.states import DigestState, MessageKind

    outbox = models.OutboxMessage
    entries: list[tuple[str, Subscriber | Webhook | None]] = list(_configured(config).items())
    known = {w.name for w in config.watches}
    with store.read() as session:
        accounts = {a.key: a for a in session.exec(select(models.SubscriberAccount)).all()}
        following: dict[str, dict[str, int]] = {}
        for row in session.exec(select(models.Subscription)).all():
            following.setdefault(row.subscriber, {})[row.watch] = row.after_change
        unsubscribed: list[str] = []
        recipients: list[Recipient] = []
        for key, entry in entries:
            assert entry is not None
            account = accounts.get(key)
            if account is not None and account.state == AccountState.UNSUBSCRIBED:
                unsubscribed.append(_label(entry))
            watches = following.get(key, {})
            if ALL_WATCHES in watches:
                watches = {w: watches[ALL_WATCHES] for w in entry.watches}
            subscriber = entry if isinstance(entry, Subscriber) else None
            recipients.append(
                Recipient(
                    key, subscriber.email if subscriber else None,
                    subscriber.frequency if subscriber else Frequency.IMMEDIATE, subscriber.kinds if subscriber else (),
                    {w: s for w, s in watches.items() if w in entry.watches}, None,
                )
            )  # fmt: skip
        configured = {key for key, _ in entries}
        for account in sorted(accounts.values(), key=lambda a: a.key):
            if account.source == SubscriberSource.WEB and account.key not in configured:
                watches = {w: after for w, after in following.get(account.key, {}).items() if w in known}
                recipients.append(
                    Recipient(account.key, account.email or account.key, Frequency(account.frequency),
                              kinds_of(account.kinds), watches, None, SubscriberSource.WEB)
                )  # fmt: skip
                entries.append((account.key, None))
        active = [r for r in recipients if r.watches and _state(accounts.get(r.key)) is AccountState.ACTIVE]
        pending = pending_changes(session, active)
        result: list[SubscriberStatus] = []
        for (key, entry), recipient in zip(entries, recipients, strict=True):
            account = accounts.get(key)
            subscriber = entry if isinstance(entry, Subscriber) else None
            shown = {target_of(url): masking.shown_url(url) for url in (subscriber.notify if subscriber else ())}
            messages = session.exec(select(outbox).where(outbox.email == key)).all()
            sent = [
                d.sent_at for d in messages
                if d.status == DigestState.SENT and d.sent_at and d.kind == MessageKind.DIGEST
            ]  # fmt: skip
            failed = [(d.id or 0, masking.mask(d.last_error or "")) for d in messages if d.status == DigestState.FAILED]
            result.append(
                SubscriberStatus(
                    who=_label(entry) if entry is not None else recipient.email or key,
                    email=recipient.email,
                    watches=entry.watches if entry is not None else recipient.watch_names,
                    frequency=recipient.frequency,
                    kinds=recipient.kinds,
                    since=account.since if account else None,
                    last_delivered=max(sent) if sent else None,
                    pending_changes=len(pending.get(key, [])),
                    queued=sum(1 for d in messages if d.status == DigestState.PENDING),
                    failed=failed,
                    source=recipient.source,
                    state=_state(account),
                    name=subscriber.name if subscriber else None,
                    notify=tuple(shown.values()),
                    webhook=entry.shown if isinstance(entry, Webhook) else None,
                )
            )
    return result, unsubscribed


def _state(account: models.SubscriberAccount | None) -> AccountState:
    """A config subscriber not in the database yet is active (they are added at the next sync or send)."""
    return AccountState(account.state) if account else AccountState.ACTIVE
