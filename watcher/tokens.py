"""The tokens in the links trial watcher emails (confirm, manage, unsubscribe, view a digest), and the
secret that signs them.

A token is never stored: the database holds its SHA-256, so a copy of the database lets nobody
act for a subscriber. A subscriber's confirm, manage and unsubscribe tokens are the HMAC of the
secret over a random nonce (256 bits) kept with the hash, so every digest can carry the same
unsubscribe link and an old email's link keeps working; a digest's view token is random. A
token is one per subscriber and purpose: revoking it (or a confirm token being replaced) makes
its links answer "no longer valid", and the next email carries a new one. Changing the secret
changes the links in new emails only: the old ones still resolve through their stored hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import insert, update
from sqlmodel import Session, col, select

from watcher import models
from watcher.config import Config
from watcher.models import table_of
from watcher.states import TokenPurpose
from watcher.store import chunks, upsert

CONFIRM_TTL = timedelta(days=3)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def shown(token: str) -> str:
    """A token as logs may show it: its first characters only."""
    return f"{token[:6]}…"


# --- the secret ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """The key behind tokens, forms and rate-limit buckets; each use gets its own sub-key."""

    value: bytes

    def key(self, use: str) -> bytes:
        return hmac.new(self.value, f"trial-watcher:{use}".encode(), hashlib.sha256).digest()

    def sign(self, use: str, message: str) -> str:
        return _b64(hmac.new(self.key(use), message.encode(), hashlib.sha256).digest())


def load_secret(session: Session, config: Config, now: datetime) -> Secret:
    """`[web] secret_env`'s secret, else the one kept in the database (made the first time it is needed)."""
    assert config.web is not None
    from_env = config.web.secret()
    if from_env is not None:
        return Secret(from_env.encode())
    row = session.get(models.WebSecret, 1)
    if row is None:
        table = table_of(models.WebSecret)
        statement = upsert(session, table).on_conflict_do_nothing(index_elements=[table.c.id])  # type: ignore[attr-defined]
        session.execute(statement, {"id": 1, "secret": secrets.token_urlsafe(32), "created_at": now})
        row = session.get(models.WebSecret, 1)
        assert row is not None
    return Secret(row.secret.encode())


# --- subscriber tokens --------------------------------------------------------------------------


def _derive(secret: Secret, purpose: TokenPurpose, key: str, nonce: str) -> str:
    return secret.sign("token", f"{purpose.value}\0{key}\0{nonce}")


def current(
    session: Session, secret: Secret, keys: Collection[str], purpose: TokenPurpose, now: datetime
) -> dict[str, str]:
    """Each subscriber's token for `purpose`, made where there is none yet (one query for all of them).

    A confirm token lasts CONFIRM_TTL and is replaced once used or expired; manage and
    unsubscribe tokens last until revoked.
    """
    webtoken = table_of(models.WebToken)
    c = webtoken.c
    found: dict[str, str] = {}
    for batch in chunks(keys):
        query = (
            select(c.subscriber, c.nonce, c.token_hash)
            .where(c.subscriber.in_(batch), c.purpose == purpose.value, c.revoked_at.is_(None), c.used_at.is_(None))
            .where(c.nonce.is_not(None), (c.expires_at.is_(None)) | (c.expires_at > now))
            .order_by(c.id)
        )
        for key, nonce, stored in session.execute(query):
            token = _derive(secret, purpose, key, nonce)
            if hmac.compare_digest(token_hash(token), stored):  # else made with an earlier secret
                found[key] = token
    missing = [key for key in keys if key not in found]
    if not missing:
        return found
    if purpose is TokenPurpose.CONFIRM:  # one confirm link at a time: an unused older one stops working
        revoke(session, missing, [purpose], now, unused_only=True)
    expires = now + CONFIRM_TTL if purpose is TokenPurpose.CONFIRM else None
    rows = []
    for key in missing:
        nonce = secrets.token_hex(32)
        found[key] = _derive(secret, purpose, key, nonce)
        rows.append(
            {"token_hash": token_hash(found[key]), "subscriber": key, "purpose": purpose.value, "nonce": nonce,
             "created_at": now, "expires_at": expires}
        )  # fmt: skip
    session.execute(insert(webtoken), rows)
    return found


def one(session: Session, secret: Secret, key: str, purpose: TokenPurpose, now: datetime) -> str:
    return current(session, secret, [key], purpose, now)[key]


def random_token() -> str:
    return secrets.token_urlsafe(32)


def record_view_token(session: Session, token: str, key: str, digest_id: int, now: datetime) -> None:
    """Keep (the hash of) a random token that shows digest `digest_id` in the browser."""
    session.execute(
        insert(table_of(models.WebToken)),
        {"token_hash": token_hash(token), "subscriber": key, "purpose": TokenPurpose.VIEW.value,
         "digest_id": digest_id, "created_at": now},
    )  # fmt: skip


def revoke(
    session: Session,
    keys: Collection[str],
    purposes: Collection[TokenPurpose],
    now: datetime,
    unused_only: bool = False,
) -> None:
    """The subscribers' tokens for these purposes stop working; the next email carries new ones."""
    webtoken = models.WebToken
    for batch in chunks(keys):
        statement = (
            update(webtoken)
            .where(col(webtoken.subscriber).in_(batch), col(webtoken.purpose).in_([p.value for p in purposes]))
            .where(col(webtoken.revoked_at).is_(None))
        )
        if unused_only:
            statement = statement.where(col(webtoken.used_at).is_(None))
        session.execute(statement.values(revoked_at=now))


# --- resolving a link ----------------------------------------------------------------------------


class TokenState(StrEnum):
    VALID = "valid"
    UNKNOWN = "unknown"  # never issued (or a typo)
    EXPIRED = "expired"
    USED = "used"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Resolved:
    state: TokenState
    row: models.WebToken | None = None

    @property
    def subscriber(self) -> str:
        assert self.row is not None
        return self.row.subscriber


def resolve(session: Session, token: str, purpose: TokenPurpose, now: datetime) -> Resolved:
    """What a link's token is worth now. Tokens of another purpose are unknown here."""
    if not token or len(token) > 100:
        return Resolved(TokenState.UNKNOWN)
    row = session.exec(select(models.WebToken).where(models.WebToken.token_hash == token_hash(token))).first()
    if row is None or row.purpose != purpose.value:
        return Resolved(TokenState.UNKNOWN)
    if row.revoked_at is not None:
        return Resolved(TokenState.REVOKED, row)
    if row.used_at is not None:
        return Resolved(TokenState.USED, row)
    if row.expires_at is not None and row.expires_at <= now:
        return Resolved(TokenState.EXPIRED, row)
    return Resolved(TokenState.VALID, row)


def mark_used(session: Session, row: models.WebToken, now: datetime) -> None:
    row.used_at = now
    session.add(row)
