"""Building the MIME message (pure) and handing it to a mail server or the outbox folder (I/O).

A transport's `send` returns only when the message was accepted; otherwise it raises
`Deferred` (try again later: 4xx, connection refused, timeout, TLS or login trouble) or
`Rejected` (the server refused this message for good: 5xx on the recipient or the data).
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import ssl
import tempfile
import uuid
from collections.abc import Sequence
from datetime import datetime
from email import policy
from email.charset import BASE64, Charset
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import Protocol, Self

from watcher.config import Config, Security, SmtpSettings
from watcher.digest import Rendered
from watcher.errors import DeliveryError

_CRLF = policy.compat32.clone(linesep="\r\n")


_UTF8_B = Charset("utf-8")
_UTF8_B.header_encoding = BASE64  # one encoding, not the costly shortest-of-two search
# Bodies in base64, whatever else in the process changed the module-wide default for utf-8
# (Apprise's email plugin switches it to quoted-printable when it is imported).
_UTF8_BODY = Charset("utf-8")
_UTF8_BODY.header_encoding = BASE64
_UTF8_BODY.body_encoding = BASE64
_UTF8_BODY = Charset("utf-8")  # bodies as MIMEText encodes them (base64)


def _header_text(text: str) -> str | Header:
    return text if text.isascii() else Header(text, _UTF8_B)


class Deferred(DeliveryError):
    """Not delivered now; the digest stays queued."""


class Rejected(DeliveryError):
    """The server refused the message for good."""


def one_line(text: str) -> str:
    """Header-safe: CR, LF and runs of whitespace become single spaces."""
    return " ".join(text.split())


def address_of(sender: str) -> str:
    return parseaddr(sender)[1] or sender


def new_message_id(sender: str, purpose: str = "digest") -> str:
    domain = address_of(sender).rpartition("@")[2] or "localhost"
    return f"<{purpose}.{uuid.uuid4().hex}@{domain}>"


class _UriList:
    """A `List-Unsubscribe` value: URIs in angle brackets, one per line when there are several (a long
    URL folded by the stdlib would leave the header's first line empty). Header-like for compat32."""

    def __init__(self, uris: Sequence[str]) -> None:
        self.items = [f"<{one_line(uri)}>" for uri in uris]

    def encode(self, linesep: str = "\n", **_: object) -> str:
        return f",{linesep} ".join(self.items)

    def __str__(self) -> str:
        return ", ".join(self.items)


def _headers(message: MIMEText | MIMEMultipart, headers: list[tuple[str, str | Header | _UriList]]) -> None:
    for name, value in headers:
        if isinstance(value, str) and ("\r" in value or "\n" in value):
            raise ValueError(f"{name} header would span lines")
        message[name] = value  # type: ignore[assignment]  # compat32 messages take Header objects too


def default_unsubscribe(sender: str) -> str:
    return f"mailto:{address_of(sender)}?subject=unsubscribe"


def build_message(
    rendered: Rendered,
    sender: str,
    to: str,
    message_id: str,
    date: datetime,
    unsubscribe: str | Sequence[str] | None,
    one_click: bool | None = None,
) -> bytes:
    """A message (multipart/alternative: text, then HTML) as RFC 5322 bytes with CRLF line ends.

    `unsubscribe` is the `List-Unsubscribe` URI, or several (the one-click https page first, then a
    mailto:); None leaves the header out (a confirmation is not list mail). `one_click` adds
    `List-Unsubscribe-Post` (RFC 8058); by default when the first URI is https.

    Built with the stdlib's `email.mime` classes, which are twice as fast as `EmailMessage` for
    this (it matters at a thousand digests a run). Those do not refuse CR/LF in a header, so
    every header value is put on one line here, and checked.
    """
    message = MIMEMultipart("alternative")
    headers: list[tuple[str, str | Header | _UriList]] = [
        ("From", formataddr(parseaddr(one_line(sender)), "utf-8")),
        ("To", one_line(to)),
        ("Subject", _header_text(one_line(rendered.subject))),
        ("Date", format_datetime(date)),
        ("Message-ID", one_line(message_id)),
    ]
    uris = [unsubscribe] if isinstance(unsubscribe, str) else list(unsubscribe or ())
    if uris:
        headers.append(("List-Unsubscribe", _UriList(uris)))
        if one_click if one_click is not None else uris[0].startswith("https://"):
            headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    headers.append(("Auto-Submitted", "auto-generated"))
    _headers(message, headers)
    message.attach(MIMEText(rendered.text, "plain", _UTF8_BODY))  # type: ignore[arg-type]
    message.attach(MIMEText(rendered.html, "html", _UTF8_BODY))  # type: ignore[arg-type]
    return message.as_bytes(policy=_CRLF)


_LINK_TOKEN = re.compile(r"(/(?:unsubscribe|manage|digest|confirm)/)[A-Za-z0-9_-]{32,}")
REDACTED = "redacted"


def redact_links(message: bytes) -> bytes:
    """The message with the tokens of its web links replaced by `redacted`: what the outbox keeps of a
    message once it is sent (the links stay working; the database no longer holds them)."""
    from email import message_from_bytes

    parsed = message_from_bytes(message, policy=_CRLF)
    for name in ("List-Unsubscribe",):
        value = parsed.get(name)
        if value is not None:
            uris = re.findall(r"<([^>]*)>", str(value))
            parsed.replace_header(name, _UriList([_LINK_TOKEN.sub(rf"\g<1>{REDACTED}", u) for u in uris]))  # type: ignore[arg-type]
    for part in parsed.walk():
        if part.get_content_maintype() != "text":
            continue
        raw = part.get_payload(decode=True)
        if not isinstance(raw, bytes):
            continue
        text = raw.decode(part.get_content_charset() or "utf-8", errors="replace")
        cleaned = _LINK_TOKEN.sub(rf"\g<1>{REDACTED}", text)
        if cleaned != text:
            del part["Content-Transfer-Encoding"]
            part.set_payload(cleaned, _UTF8_BODY)
    return parsed.as_bytes(policy=_CRLF)


def build_alert(subject: str, text: str, sender: str, to: str, message_id: str, date: datetime) -> bytes:
    """A plain-text message to the operator (never to subscribers), CRLF line ends."""
    message = MIMEText(text, "plain", _UTF8_BODY)  # type: ignore[arg-type]
    _headers(
        message,
        [
            ("From", formataddr(parseaddr(one_line(sender)), "utf-8")),
            ("To", one_line(to)),
            ("Subject", _header_text(one_line(subject))),
            ("Date", format_datetime(date)),
            ("Message-ID", one_line(message_id)),
            ("Auto-Submitted", "auto-generated"),
        ],
    )
    return message.as_bytes(policy=_CRLF)


class Transport(Protocol):
    """Hands a finished message to its next hop; raises Deferred or Rejected when it cannot."""

    @property
    def description(self) -> str: ...

    def send(self, message: bytes, sender: str, to: str, name: str) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def make_transport(config: Config) -> Transport:
    """SMTP when `[smtp]` is configured, else the outbox folder."""
    if config.smtp is None:
        return OutboxTransport(config.outbox_path)
    ca = (config.folder / config.smtp.ca_file).resolve() if config.smtp.ca_file else None
    return SmtpTransport(config.smtp, ca)


class OutboxTransport:
    """No mail server configured: each message becomes an .eml file in a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    @property
    def description(self) -> str:
        return f"the outbox folder {self.folder}"

    def send(self, message: bytes, sender: str, to: str, name: str) -> None:
        temporary: str | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            target = self.folder / f"{name}.eml"
            # write then rename, so a reader never sees half a message
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".", suffix=".tmp", delete=False) as tmp:
                temporary = tmp.name
                tmp.write(message)
            os.replace(temporary, target)
        except OSError as exc:
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)  # no stray half-written file
            raise Deferred(f"cannot write to the outbox {self.folder} ({exc.strerror or exc})") from None


class SmtpTransport:
    """One SMTP session for a run of sends, opened on first use and always closed."""

    def __init__(self, settings: SmtpSettings, ca_file: Path | None = None) -> None:
        self.settings = settings
        self.ca_file = ca_file
        self.client: smtplib.SMTP | None = None

    @property
    def description(self) -> str:
        return f"{self.settings.host}:{self.settings.effective_port}"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.quit()
            except (smtplib.SMTPException, OSError):
                self.client.close()
            self.client = None

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        password = s.password()
        port, timeout = s.effective_port, s.timeout_s
        client: smtplib.SMTP
        if s.security is Security.SSL:
            client = smtplib.SMTP_SSL(s.host, port, timeout=timeout, context=self._tls())
        else:
            client = smtplib.SMTP(s.host, port, timeout=timeout)
        try:
            client.ehlo()
            if s.security is Security.STARTTLS:
                client.starttls(context=self._tls())
                client.ehlo()
            if s.username and password is not None:
                client.login(s.username, password)
        except BaseException:
            client.close()
            raise
        return client

    def send(self, message: bytes, sender: str, to: str, name: str) -> None:
        try:
            if self.client is None:
                self.client = self._connect()
            self.client.sendmail(address_of(sender), [to], message)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            raise _classify(code, reply, "refused the recipient") from None
        except smtplib.SMTPDataError as exc:
            raise _classify(exc.smtp_code, exc.smtp_error, "refused the message") from None
        except smtplib.SMTPAuthenticationError as exc:
            self.close()
            raise Deferred(f"the mail server refused the login ({_reply(exc.smtp_code, exc.smtp_error)})") from None
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise Deferred(f"the mail server answered {_reply(exc.smtp_code, exc.smtp_error)}") from None
        except ssl.SSLError as exc:
            self.close()
            raise Deferred(f"TLS with the mail server {self.description} failed ({exc.reason or exc})") from None
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            self.close()
            reason = "timed out" if isinstance(exc, TimeoutError | socket.timeout) else str(exc) or type(exc).__name__
            if isinstance(exc, ConnectionRefusedError):
                reason = "connection refused"
            raise Deferred(f"cannot reach the mail server {self.description} ({reason})") from None


def _reply(code: int, text: bytes | str) -> str:
    message = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    return f"{code} {one_line(message)}"


def _classify(code: int, reply: bytes | str, what: str) -> DeliveryError:
    if 500 <= code < 600:
        return Rejected(f"the mail server {what} ({_reply(code, reply)})")
    return Deferred(f"the mail server deferred the digest ({_reply(code, reply)})")
