"""The digest outbox: decide who is due, persist each digest before sending, mark it after.

A digest row (recipient, covered change ids, Message-ID, the exact message bytes) is
committed before any send. It becomes `sent` only after the mail server (or the outbox
folder) accepted it; a deferral leaves it `pending` for the next run, a permanent refusal
marks it `failed` with the server's reply. A change reaches a subscriber in one digest only.

A subscriber's digest is one row per way it travels, all stored together and covering the
same changes: the email, and the compact digest for each of their channels. A webhook gets
one row with the changes of the watches it names.

This module also owns each subscriber's state: since when they hear about changes, and the
last digest slot handled for them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self
from zoneinfo import ZoneInfo

from sqlalchemy import insert
from sqlmodel import Session, select

from watcher import masking, models
from watcher.changes import LoggedChange
from watcher.clock import Clock, utcnow
from watcher.config import Config, Frequency, Subscriber, Webhook
from watcher.digest import Digest, MailLinks, Rendered, build
from watcher.mailer import Rejected, Transport, build_message, default_unsubscribe, make_transport, new_message_id
from watcher.models import table_of
from watcher.outbox import Claimed, Outcome, SendStatus, send_pending
from watcher.states import ChannelKind, DigestState, MessageKind, TokenPurpose
from watcher.store import Store, load_records, newest_change_id, study_rows
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
        recipient.email or recipient.label, recipient.frequency, recipient.watch_names, changes, records, local_day,
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
        mailed = [r.key for r in due if pending[r.key] and r.email and r.webhook is None]
        links = web_links(session, config, mailed, now)
        for recipient in due:
            try:
                with session.begin_nested():
                    outcomes = _queue_one(
                        session, config, recipient, pending[recipient.key], now, records, dry_run, links
                    )
            except Exception as exc:  # one subscriber's digest must not stop the others'
                log.error("the digest for %s could not be built: %s", recipient.label, exc)
                log.debug("digest failure details", exc_info=True)
                outcomes = [Outcome(recipient.label, SendStatus.FAILED, "", 0, f"could not be built ({exc})")]
            queued.extend(outcomes)
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
) -> list[Outcome]:
    """Every row of one recipient's digest (email, each channel) or webhook delivery, stored together."""
    if recipient.webhook is not None:
        return _queue_webhook(session, recipient.webhook, recipient.key, changes, now, dry_run)
    view_token = random_token() if links is not None and recipient.key in links.unsubscribe and changes else None
    mail_links = links.for_digest(recipient.key, view_token) if links is not None and view_token else None
    digest = compose(session, config, recipient, changes, now, records, mail_links)
    slot = current_slot(now, recipient.frequency, config.schedule)
    if not dry_run and slot is not None:
        set_last_slot(session, recipient, slot)
    if digest is None:
        return []
    routes: list[tuple[ChannelKind, str | None, str]] = []
    if recipient.email:
        routes.append((ChannelKind.EMAIL, None, recipient.email if recipient.label != recipient.email else ""))
    routes += [(ChannelKind.CHANNEL, url, masking.shown_url(url)) for url in recipient.notify]
    count = len(digest.change_ids)
    if dry_run:
        return [Outcome(recipient.label, SendStatus.WOULD_SEND, digest.subject, count, via=via) for _, _, via in routes]
    outcomes = []
    rendered: Rendered | None = None
    chat: bytes | None = None
    for kind, url, via in routes:
        if kind is ChannelKind.EMAIL:
            rendered = rendered or _render(digest)
            digest_id = persist(session, config, digest, rendered, now, recipient.key)
            if view_token is not None:
                record_view_token(session, view_token, recipient.key, digest_id, now)
        else:
            from watcher.channels import chat_digest, target_of

            assert url is not None
            chat = chat or chat_digest(digest).to_json()
            digest_id = _insert(
                session, recipient.key, ChannelKind.CHANNEL, target_of(url), str(uuid.uuid4()), digest.subject, chat,
                digest.change_ids, now,
            )  # fmt: skip
        outcomes.append(
            Outcome(recipient.label, SendStatus.QUEUED, digest.subject, count, digest_id=digest_id, via=via)
        )
    return outcomes


def _queue_webhook(
    session: Session, webhook: Webhook, key: str, changes: list[LoggedChange], now: datetime, dry_run: bool
) -> list[Outcome]:
    if not changes:
        return []
    subject = f"changes in {', '.join(webhook.watches)}"
    if dry_run:
        return [Outcome(f"webhook {webhook.shown}", SendStatus.WOULD_SEND, subject, len(changes))]
    from watcher.webhooks import changes_payload

    titles = {n: row.brief_title for n, row in study_rows(session, sorted({c.nct_id for c in changes})).items()}
    digest_id = _insert(
        session, key, ChannelKind.WEBHOOK, webhook.key, str(uuid.uuid4()), subject, changes_payload(changes, titles),
        tuple(c.id for c in changes), now,
    )  # fmt: skip
    return [Outcome(f"webhook {webhook.shown}", SendStatus.QUEUED, subject, len(changes), digest_id=digest_id)]


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
    return _insert(session, key, ChannelKind.EMAIL, None, message_id, rendered.subject, message, digest.change_ids, now)


def persist_notice(
    session: Session, config: Config, key: str, email: str, rendered: Rendered, kind: MessageKind, now: datetime
) -> int:
    """Store a confirmation or manage-link email in the outbox (it covers no change); returns its id."""
    message_id = new_message_id(config.mail.from_, kind.value)
    message = build_message(rendered, config.mail.from_, email, message_id, now, None)
    return _insert(session, key, ChannelKind.EMAIL, None, message_id, rendered.subject, message, (), now, kind)


def _insert(
    session: Session,
    key: str,
    channel: ChannelKind,
    target: str | None,
    message_id: str,
    subject: str,
    message: bytes,
    change_ids: tuple[int, ...],
    now: datetime,
    kind: MessageKind = MessageKind.DIGEST,
) -> int:
    """One outbox row and the changes it covers; returns its id."""
    outbox = table_of(models.OutboxMessage)  # Core: a thousand digests in one run stay cheap
    digest_id: int = session.execute(
        insert(outbox).returning(outbox.c.id),
        {
            "email": key, "message_id": message_id, "subject": subject, "message": message,
            "changes": len(change_ids), "status": DigestState.PENDING, "attempts": 0, "created_at": now,
            "channel": channel.value, "target": target, "parts_sent": 0, "kind": kind,
        },
    ).scalar_one()  # fmt: skip
    if change_ids:
        session.execute(
            insert(table_of(models.DigestChange)),
            [{"digest_id": digest_id, "change_id": change_id} for change_id in change_ids],
        )
    return digest_id


# --- sending ---------------------------------------------------------------------------------


class Couriers:
    """Carries outbox messages of every kind for one sender: emails over the mail transport (one
    session for the run), channel messages through Apprise, webhooks over one HTTP session.
    Channels and webhooks are found in the config by what the row names; one no longer there
    is refused for good."""

    def __init__(self, config: Config) -> None:
        from watcher.channels import target_of

        self.config = config
        self.mail: Transport = make_transport(config)
        self.subscribers: dict[str, Subscriber] = {s.key: s for s in config.subscribers}
        self.channels: dict[tuple[str, str], str] = {
            (s.key, target_of(url)): url for s in config.subscribers for url in s.notify
        }
        self.webhooks: dict[str, Webhook] = {w.key: w for w in config.webhooks}
        self._chat: Any = None
        self._hooks: Any = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        for part in (self.mail, self._chat, self._hooks):
            if part is not None:
                part.__exit__(*exc)

    def who(self, claimed: Claimed) -> str:
        if claimed.channel is ChannelKind.WEBHOOK:
            hook = self.webhooks.get(claimed.email)
            return f"webhook {hook.shown}" if hook else claimed.email
        subscriber = self.subscribers.get(claimed.email)
        if claimed.channel is ChannelKind.EMAIL or subscriber is None:
            return subscriber.email if subscriber and subscriber.email else claimed.email
        return subscriber.label

    def via(self, claimed: Claimed) -> str:
        """Where it goes, when `who` does not say it already."""
        if claimed.channel is ChannelKind.EMAIL:
            return self.mail.description
        if claimed.channel is ChannelKind.WEBHOOK:
            return ""
        url = self.channels.get((claimed.email, claimed.target or ""))
        return masking.shown_url(url) if url else "a channel no longer in the config"

    def deliver(self, claimed: Claimed) -> None:
        if claimed.channel is ChannelKind.EMAIL:
            self.mail.send(claimed.message, self.config.mail.from_, claimed.email, claimed.name)
        elif claimed.channel is ChannelKind.CHANNEL:
            self._deliver_chat(claimed)
        else:
            self._deliver_webhook(claimed)

    def _deliver_chat(self, claimed: Claimed) -> None:
        from watcher.channels import ChannelSender, ChatDigest

        url = self.channels.get((claimed.email, claimed.target or ""))
        if url is None:
            raise Rejected("the channel is no longer in the config")
        if self._chat is None:
            self._chat = ChannelSender()
        self._chat.send(url, ChatDigest.from_json(claimed.message), claimed.parts_sent)

    def _deliver_webhook(self, claimed: Claimed) -> None:
        from watcher.registry import user_agent
        from watcher.webhooks import WebhookSender

        hook = self.webhooks.get(claimed.email)
        if hook is None:
            raise Rejected("the webhook is no longer in the config")
        if self._hooks is None:
            self._hooks = WebhookSender(user_agent(self.config.ctgov.contact))
        self._hooks.send(hook.url, hook.secret_env, claimed.message_id, claimed.message, utcnow(), hook.timeout_s)


def send_due(
    config: Config,
    store: Store,
    clock: Clock = utcnow,
    everyone: bool = False,
    dry_run: bool = False,
    cancel: threading.Event | None = None,
    workers: int = 1,
    respect_backoff: bool = False,
) -> SendReport:
    """Queue every due digest, then send everything queued (including earlier deferrals).

    Other senders may run at the same time (see `watcher.outbox`): each message goes out once.
    `respect_backoff` (the daemon) leaves a deferred message alone until its wait is over; a
    manual `digest send` tries every pending message at once.
    """
    report = SendReport(transport=make_transport(config).description)
    queued = queue_due(config, store, clock(), everyone=everyone, dry_run=dry_run)
    if dry_run:
        report.outcomes = queued
        return report
    unbuilt = [o for o in queued if o.status is SendStatus.FAILED]  # said here, or nobody would hear of them
    sent = send_pending(store, lambda: Couriers(config), clock, cancel, workers, respect_backoff)
    report.outcomes = unbuilt + sent
    return report


def resend_due(
    config: Config, store: Store, clock: Clock = utcnow, cancel: threading.Event | None = None
) -> SendReport:
    """The daemon between its jobs: send the pending messages whose wait after a deferral is over
    (nothing is queued here)."""
    report = SendReport(transport=make_transport(config).description)
    report.outcomes = send_pending(store, lambda: Couriers(config), clock, cancel, 1, respect_backoff=True)
    return report


def preview(config: Config, store: Store, email: str, now: datetime) -> tuple[Digest, Rendered] | None:
    """The next digest of a subscriber (from the config, or active on the web pages), rendered; nothing
    is stored or marked. Its web links, if any, are left out: making them would store tokens."""
    key = email.lower()
    with store.read() as session:
        following = {
            row.watch: row.after_change
            for row in session.exec(select(models.Subscription).where(models.Subscription.subscriber == key)).all()
        }
        account = session.get(models.SubscriberAccount, key)
        configured = next((s for s in config.subscribers if s.key == key), None)
        if configured is not None or account is None:
            subscriber = config.subscriber(email)
            newest = newest_change_id(session)
            watches = {w: following.get(w, following.get(ALL_WATCHES, newest)) for w in subscriber.watches}
            recipient = Recipient(
                subscriber.key, subscriber.email, subscriber.frequency, subscriber.kinds, watches, None,
                name=subscriber.name, notify=subscriber.notify,
            )  # fmt: skip
        else:
            known = {w.name for w in config.watches}
            recipient = Recipient(
                key, account.email or key, Frequency(account.frequency), kinds_of(account.kinds),
                {w: after for w, after in following.items() if w in known}, None,
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


def send_sample_notify(url: str, clock: Clock = utcnow) -> int:
    """`watcher test-notify`: a sample digest with one change of every kind through one Apprise URL
    (nothing stored). Returns how many messages it took."""
    from watcher.channels import send_sample
    from watcher.digest import sample_changes

    now = clock()
    changes, records = sample_changes(now)
    sample = build("test-notify", Frequency.DAILY, ["sample-watch"], changes, records, now.date(), "")
    assert sample is not None
    return send_sample(url, sample)
