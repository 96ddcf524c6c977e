"""The closed sets of states the store records (stored as their string values)."""

from __future__ import annotations

from enum import StrEnum


class RunKind(StrEnum):
    SYNC = "sync"
    CHECK = "check"


class RunOutcome(StrEnum):
    RUNNING = "running"
    OK = "ok"
    UNCHANGED = "unchanged"  # the registry's dataTimestamp had not moved: one request, nothing else
    FAILED = "failed"


class DigestState(StrEnum):
    PENDING = "pending"  # queued: not yet accepted by the mail server (new, or deferred)
    SENT = "sent"
    FAILED = "failed"  # refused for good; `digest send --retry-failed` queues it again
    CANCELLED = "cancelled"  # its recipient unsubscribed before it went out: never sent


class MessageKind(StrEnum):
    """What an outbox message is. Only digests cover changes."""

    DIGEST = "digest"
    CONFIRM = "confirm"  # the link that confirms a subscription made on the web pages
    MANAGE = "manage"  # an already active address asked to subscribe: the link to manage it


class TokenPurpose(StrEnum):
    """What a link's token lets its holder do (one token per subscriber and purpose)."""

    CONFIRM = "confirm"
    MANAGE = "manage"
    UNSUBSCRIBE = "unsubscribe"
    VIEW = "view"  # one sent digest, in the browser (one token per digest)


class ChannelKind(StrEnum):
    """How an outbox message travels."""

    EMAIL = "email"  # an RFC 5322 message to a mail server (or the outbox folder)
    CHANNEL = "channel"  # a compact digest to a chat or push service, through Apprise
    WEBHOOK = "webhook"  # a signed JSON POST of the changes


class SubscriberSource(StrEnum):
    CONFIG = "config"  # a [[subscriber]] table, managed by the operator
    WEB = "web"  # subscribed through the web pages


class AccountState(StrEnum):
    PENDING = "pending"  # subscribed on the web, not confirmed yet
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
