"""Subscribers who help themselves: subscribe (double opt-in), confirm, manage, unsubscribe.

The web pages and the CLI (`watcher subscribers remove`) call these; they take an open write
session and a clock value, and never send anything themselves: a confirmation or manage-link
email is persisted in the outbox like a digest, and the caller sends it (or a later
`digest send` / the daemon does). Rules:

- a subscribe request answers the same whatever the address: nobody learns who subscribes;
- an address that is not active gets a confirmation link, and nothing else until it confirms;
  an active address changes nothing and gets at most one manage link a day;
- at most `MAILS_PER_DAY` emails per address per 24 hours from the form, and at most
  `REQUESTS_PER_HOUR` subscribe requests per client address per hour;
- an unsubscribe always wins (also over the config), and repeating it is harmless;
- subscribers from the config are managed by the operator: on the web they can unsubscribe,
  and subscribe again, but their watches and frequency are the config's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert
from sqlmodel import Session, col, select

from watcher import models, tokens
from watcher.changes import Category
from watcher.config import Config, Frequency
from watcher.delivery import persist_notice
from watcher.errors import WatcherError
from watcher.models import table_of
from watcher.outbox import cancel_queued
from watcher.states import AccountState, MessageKind, SubscriberSource, TokenPurpose
from watcher.store import newest_change_id
from watcher.subscribers import ALL_WATCHES, enroll, follow
from watcher.timing import current_slot
from watcher.tokens import Secret, TokenState
from watcher.wording import frequency_words

log = logging.getLogger(__name__)

MAILS_PER_DAY = 3  # emails to one address from the subscribe form, per 24 hours
REQUESTS_PER_HOUR = 10  # subscribe requests from one client address, per hour


class RateLimited(WatcherError):
    """Too many subscribe requests from one client address."""


@dataclass(frozen=True)
class Account:
    """A subscriber as the pages show them."""

    key: str
    email: str
    source: SubscriberSource
    state: AccountState
    frequency: Frequency
    kinds: tuple[Category, ...]
    watches: tuple[str, ...]

    @property
    def managed_by_operator(self) -> bool:
        return self.source is SubscriberSource.CONFIG


def account(session: Session, config: Config, key: str) -> Account | None:
    row = session.get(models.SubscriberAccount, key)
    if row is None:
        return None
    names = [w.name for w in config.watches]
    following = session.exec(select(models.Subscription.watch).where(models.Subscription.subscriber == key)).all()
    watches = tuple(w for w in names if w in following)
    source = SubscriberSource(row.source)
    if source is SubscriberSource.CONFIG and (ALL_WATCHES in following or not watches):
        configured = next((s for s in config.subscribers if s.key == key), None)
        watches = configured.watches if configured else watches
    kinds = tuple(Category(k) for k in json.loads(row.kinds)) if row.kinds else ()
    return Account(key, row.email or key, source, AccountState(row.state), Frequency(row.frequency), kinds, watches)


# --- subscribing ------------------------------------------------------------------------------------


def _count_client(session: Session, secret: Secret, client: str, now: datetime) -> None:
    """Count a subscribe request from `client` (kept as an HMAC, never the address); RateLimited past the limit."""
    hits = models.RateHit
    session.execute(delete(hits).where(col(hits.at) < now - timedelta(days=1)))  # old hits are of no use
    bucket = "subscribe:" + secret.sign("client", client)
    recent = session.exec(
        select(func.count()).select_from(hits).where(hits.bucket == bucket, hits.at > now - timedelta(hours=1))
    ).one()
    if recent >= REQUESTS_PER_HOUR:
        raise RateLimited("too many subscribe requests from this address; try again in an hour")
    session.execute(insert(table_of(hits)), {"bucket": bucket, "at": now})


def _form_mails(session: Session, key: str, now: datetime, kinds: Sequence[MessageKind]) -> int:
    """Emails queued for `key` by the subscribe form in the last 24 hours."""
    outbox = models.OutboxMessage
    return session.exec(
        select(func.count())
        .select_from(outbox)
        .where(outbox.email == key, col(outbox.kind).in_([k.value for k in kinds]))
        .where(outbox.created_at > now - timedelta(days=1))
    ).one()


def request_subscription(
    session: Session,
    config: Config,
    secret: Secret,
    email: str,
    watches: Sequence[str],
    frequency: Frequency,
    client: str,
    now: datetime,
) -> int | None:
    """A subscribe request from the web pages. Returns the outbox id of the email to send now, if any.

    `email`, `watches` and `frequency` are already checked. RateLimited when the client has
    asked too often; every other outcome looks the same to the person asking.
    """
    _count_client(session, secret, client, now)
    key = email.lower()
    if _form_mails(session, key, now, (MessageKind.CONFIRM, MessageKind.MANAGE)) >= MAILS_PER_DAY:
        log.info("subscribe request for an address that had %d emails today: nothing sent", MAILS_PER_DAY)
        return None
    row = session.get(models.SubscriberAccount, key)
    if row is None and any(s.key == key for s in config.subscribers):
        enroll(session, config, now)  # a config subscriber not recorded yet: they are active
        row = session.get(models.SubscriberAccount, key)
    if row is not None and row.state == AccountState.ACTIVE:
        if _form_mails(session, key, now, (MessageKind.MANAGE,)):
            return None  # at most one manage link a day
        return _queue_manage_link(session, config, secret, key, now)
    if row is None:
        row = models.SubscriberAccount(
            key=key, email=email, source=SubscriberSource.WEB, state=AccountState.PENDING, frequency=frequency,
            since=now, created_at=now,
        )  # fmt: skip
    if row.source == SubscriberSource.CONFIG and not any(s.key == key for s in config.subscribers):
        row.source = SubscriberSource.WEB  # once the operator's, no longer in the config: their own now
    row.state = AccountState.PENDING
    if row.source == SubscriberSource.WEB:  # the operator's subscribers keep the config's choices
        row.email, row.frequency = email, frequency
    session.add(row)
    session.flush()
    if row.source == SubscriberSource.WEB:
        _follow_exactly(session, key, watches, now)
    return _queue_confirmation(session, config, secret, key, now)


def _follow_exactly(session: Session, key: str, watches: Sequence[str], now: datetime) -> None:
    rows = session.exec(select(models.Subscription).where(models.Subscription.subscriber == key))
    current = {row.watch: row for row in rows}
    follow(session, key, watches, current, now, newest_change_id(session))


def _queue_confirmation(session: Session, config: Config, secret: Secret, key: str, now: datetime) -> int:
    from watcher.render import render_notice

    assert config.web is not None
    shown = account(session, config, key)
    assert shown is not None
    token = tokens.one(session, secret, key, TokenPurpose.CONFIRM, now)
    rendered = render_notice(
        "confirm", account=shown, url=config.web.url(f"/confirm/{token}"), days=tokens.CONFIRM_TTL.days,
        often=frequency_words(shown.frequency),
    )  # fmt: skip
    return persist_notice(session, config, key, shown.email, rendered, MessageKind.CONFIRM, now)


def _queue_manage_link(session: Session, config: Config, secret: Secret, key: str, now: datetime) -> int:
    from watcher.render import render_notice

    assert config.web is not None
    shown = account(session, config, key)
    assert shown is not None
    token = tokens.one(session, secret, key, TokenPurpose.MANAGE, now)
    rendered = render_notice(
        "manage_link", account=shown, url=config.web.url(f"/manage/{token}"), often=frequency_words(shown.frequency)
    )
    return persist_notice(session, config, key, shown.email, rendered, MessageKind.MANAGE, now)


# --- links --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """What a link's token leads to: its state, and the subscriber when it is valid."""

    state: TokenState
    account: Account | None = None
    row: models.WebToken | None = None

    @property
    def valid(self) -> bool:
        return self.state is TokenState.VALID and self.account is not None


def follow_link(session: Session, config: Config, token: str, purpose: TokenPurpose, now: datetime) -> Link:
    found = tokens.resolve(session, token, purpose, now)
    if found.row is None:
        return Link(found.state)
    return Link(found.state, account(session, config, found.subscriber), found.row)


def confirm(session: Session, config: Config, link: Link, now: datetime) -> Account:
    """The subscription behind a valid confirm link becomes active: digests from now on."""
    assert link.valid and link.account is not None and link.row is not None
    row = session.get(models.SubscriberAccount, link.account.key)
    assert row is not None
    if row.state != AccountState.ACTIVE:
        row.state, row.since, row.unsubscribed_at = AccountState.ACTIVE, now, None
        row.last_slot = current_slot(now, Frequency(row.frequency), config.schedule)
        session.add(row)
        newest = newest_change_id(session)
        for sub in session.exec(select(models.Subscription).where(models.Subscription.subscriber == row.key)):
            sub.since, sub.after_change = now, newest  # news from now on, never what happened before
            session.add(sub)
    tokens.mark_used(session, link.row, now)
    session.flush()
    log.info("a subscription was confirmed on the web pages")
    confirmed = account(session, config, row.key)
    assert confirmed is not None
    return confirmed


def unsubscribe(session: Session, key: str, now: datetime) -> bool:
    """No more digests for `key`, whatever the config says, until they subscribe again themselves.
    What is still queued for them is cancelled. Returns whether anything changed (repeating is harmless)."""
    row = session.get(models.SubscriberAccount, key)
    if row is None or row.state == AccountState.UNSUBSCRIBED:
        return False
    row.state, row.unsubscribed_at = AccountState.UNSUBSCRIBED, now
    session.add(row)
    cancelled = cancel_queued(session, key)
    log.info("a subscriber unsubscribed (%d queued message%s cancelled)", cancelled, "" if cancelled == 1 else "s")
    return True


def update(
    session: Session,
    config: Config,
    key: str,
    watches: Sequence[str],
    frequency: Frequency,
    kinds: Sequence[Category],
    now: datetime,
) -> Account:
    """A web subscriber's new choices (checked by the caller): new watches bring news from now on."""
    row = session.get(models.SubscriberAccount, key)
    assert row is not None and row.source == SubscriberSource.WEB
    if row.frequency != frequency:
        row.frequency = frequency
        row.last_slot = current_slot(now, frequency, config.schedule)
    row.kinds = json.dumps([k.value for k in kinds]) if kinds and len(kinds) < len(Category) else None
    session.add(row)
    _follow_exactly(session, key, watches, now)
    session.flush()
    changed = account(session, config, key)
    assert changed is not None
    return changed


# --- by hand ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removed:
    email: str
    source: SubscriberSource
    was: AccountState


def remove(session: Session, config: Config, email: str, now: datetime) -> Removed:
    """`watcher subscribers remove EMAIL`: unsubscribe someone, and end their confirm and manage links."""
    key = email.strip().lower()
    if session.get(models.SubscriberAccount, key) is None and any(s.key == key for s in config.subscribers):
        enroll(session, config, now)
    row = session.get(models.SubscriberAccount, key)
    if row is None:
        raise WatcherError(f"{email}: no such subscriber (see: watcher subscribers)")
    was = AccountState(row.state)
    unsubscribe(session, key, now)
    tokens.revoke(session, [key], [TokenPurpose.CONFIRM, TokenPurpose.MANAGE], now)
    return Removed(row.email or key, SubscriberSource(row.source), was)
