"""Signed webhooks: the JSON body and its signature (pure), and the POST (I/O).

One POST per batch of changes, with the changes exactly as `watcher changes --json` shows them:

    POST /hooks/trials
    Content-Type: application/json
    X-Watcher-Delivery: 0b6f4c1e-…          (the same on every retry: receivers de-duplicate on it)
    X-Watcher-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with the secret>

    {"delivery_id": "0b6f4c1e-…", "sent_at": "2026-11-25T09:14:02Z", "changes": [{…}, …]}

`sent_at` is the time of this attempt; everything else is the same on every attempt. A 2xx is
delivered; a 408, a 429, a 5xx, a refused connection or a timeout is temporary (`Deferred`);
any other 4xx is permanent (`Rejected`). Redirects are followed only on the same host.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Self

from watcher import masking
from watcher.changes import LoggedChange
from watcher.clock import iso
from watcher.mailer import Deferred, Rejected
from watcher.present import change_json

MAX_REDIRECTS = 3
TEMPORARY = (408, 429)


# --- pure ---------------------------------------------------------------------------------------


def changes_payload(changes: Sequence[LoggedChange], titles: dict[str, str | None]) -> bytes:
    """What the outbox stores for a webhook: the change objects of `watcher changes --json`."""
    return json.dumps([change_json(c, titles) for c in changes], ensure_ascii=False).encode()


def body(delivery_id: str, sent_at: datetime, payload: bytes) -> bytes:
    """The exact bytes POSTed (and signed)."""
    data: dict[str, Any] = {"delivery_id": delivery_id, "sent_at": iso(sent_at), "changes": json.loads(payload)}
    return json.dumps(data, ensure_ascii=False).encode()


def signature(secret: str, data: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def verify(secret: str, data: bytes, header: str) -> bool:
    """What a receiver does (the README shows it): compare in constant time, over the raw body."""
    return hmac.compare_digest(signature(secret, data), header)


def _same_host(a: str, b: str) -> bool:
    return urllib.parse.urlsplit(a).hostname == urllib.parse.urlsplit(b).hostname


# --- I/O ---------------------------------------------------------------------------------------


class WebhookSender:
    """POSTs webhook bodies over one `requests` session (opened on first use, always closed)."""

    def __init__(self, user_agent: str) -> None:
        self.user_agent = user_agent
        self._session: Any = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def send(
        self,
        url_template: str,
        secret_env: str,
        delivery_id: str,
        payload: bytes,
        sent_at: datetime,
        timeout_s: float,
    ) -> None:
        import requests

        shown = masking.shown_url(url_template)
        try:
            url = masking.expand(url_template)
            key = masking.secret(secret_env)
        except masking.MissingSecret as exc:
            raise Deferred(f"{exc} (the webhook {shown} needs it)") from None
        data = body(delivery_id, sent_at, payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self.user_agent,
            "X-Watcher-Delivery": delivery_id,
            "X-Watcher-Signature": signature(key, data),
        }
        if self._session is None:
            self._session = requests.Session()
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = self._session.post(
                    target, data=data, headers=headers, timeout=(min(timeout_s, 10.0), timeout_s), allow_redirects=False
                )
            except requests.Timeout:
                raise Deferred(f"the webhook {shown} did not answer within {timeout_s:g} s") from None
            except requests.RequestException as exc:
                reason = "connection refused" if "refused" in str(exc).lower() else type(exc).__name__
                raise Deferred(f"cannot reach the webhook {shown} ({reason})") from None
            status = response.status_code
            response.close()
            if 300 <= status < 400 and "location" in response.headers:
                following = urllib.parse.urljoin(target, response.headers["location"])
                if not _same_host(following, url):
                    raise Rejected(f"the webhook {shown} redirects to another host ({status}); not followed")
                target = following
                continue
            if 200 <= status < 300:
                return
            reply = masking.mask(f"{status} {response.reason or ''}".strip())
            if status in TEMPORARY or status >= 500:
                raise Deferred(f"the webhook {shown} answered {reply}")
            raise Rejected(f"the webhook {shown} answered {reply}")
        raise Rejected(f"the webhook {shown} redirected more than {MAX_REDIRECTS} times")
