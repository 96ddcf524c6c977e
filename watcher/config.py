"""TOML config → frozen, typed settings.

Strict on purpose: an unknown key, a wrong type or a bad value is a `ConfigError` whose
message names the file, the table, the key and the value, so a typo never silently falls
back to a default. Secrets are never read from the file: `[smtp] password_env` names an
environment variable that is read only when a message is sent, and so do `{env:NAME}` in a
channel or webhook URL and `[[webhook]] secret_env` (see `watcher.masking`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from watcher import masking
from watcher.changes import Category
from watcher.errors import ConfigError
from watcher.fields import STATUS_LABELS

DEFAULT_CONFIG = "watcher.toml"
CONFIG_ENV = "WATCHER_CONFIG"
DEFAULT_BASE_URL = "https://clinicaltrials.gov/api/v2"

NCT_ID = re.compile(r"NCT\d{8}")
_EMAIL = re.compile(r"[^@\s<>\"(),;:]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def check_nct_id(value: str) -> str:
    """Return `value` upper-cased if it is an NCT ID, else raise ValueError with the reason."""
    candidate = value.strip().upper()
    if not NCT_ID.fullmatch(candidate):
        raise ValueError(f'"{value}" is not an NCT ID (expected NCT followed by 8 digits, e.g. NCT01727193)')
    return candidate


# --- per-value checks, used through field metadata -------------------------------------


def _nct_ids(values: list[str]) -> tuple[str, ...]:
    ids = tuple(check_nct_id(v) for v in values)
    return tuple(dict.fromkeys(ids))


def _statuses(values: list[str]) -> tuple[str, ...]:
    for v in values:
        if v not in STATUS_LABELS:
            raise ValueError(f'"{v}" is not a study status (one of {", ".join(STATUS_LABELS)})')
    return tuple(values)


def _one_of(*allowed: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f'"{value}" is not one of {", ".join(allowed)}')
        return value

    return check


E = typing.TypeVar("E", bound=StrEnum)


def _member(enum: type[E]) -> Callable[[str], E]:
    def check(value: str) -> E:
        try:
            return enum(value)
        except ValueError:
            raise ValueError(f'"{value}" is not one of {", ".join(enum)}') from None

    return check


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"{value} must be greater than 0")
    return value


def _not_negative(value: int) -> int:
    if value < 0:
        raise ValueError(f"{value} must be 0 or more")
    return value


def _http_url(value: str) -> str:
    if not re.match(r"https?://[^\s/]+", value):
        raise ValueError(f'"{value}" is not an http(s) URL')
    return value.rstrip("/")


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f'"{value}" is not a valid name (letters, digits, "-", "_" and ".")')
    return value


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if "\r" in value or "\n" in value:
        raise ValueError(f"{value!r} must be on one line")
    return value.strip()


def check_email(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} holds control characters; it is not an email address")
    if not value.isascii():
        raise ValueError(
            f'"{value}" has characters outside ASCII; international addresses are not supported '
            "(not every mail server accepts them): give an ASCII address"
        )
    if not _EMAIL.fullmatch(value):
        raise ValueError(f'"{value}" is not an email address')
    return value


def _from_address(value: str) -> str:
    from email.utils import parseaddr

    _text(value)
    check_email(parseaddr(value)[1] or value)
    return value


LOCAL_SENDER = "Trial Watcher <watcher@localhost>"  # only for the outbox folder: never sent to a mail server


def _unsubscribe(value: str) -> str:
    if not re.fullmatch(r"(mailto:[^\s]+@[^\s]+|https://[^\s]+)", value):
        raise ValueError(f'"{value}" must be a mailto: address or an https:// URL')
    return value


def _public_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value.strip():
        raise ValueError(f'"{value}" is not an http(s) URL (like "https://trials.example.org")')
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f'"{value}" must be a plain address (no query, fragment or user)')
    return value.strip().rstrip("/")


def check_listen(value: str) -> str:
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})", value.strip())
    if not match or not 0 < int(match[2]) < 65536:
        raise ValueError(f'"{value}" is not a HOST:PORT to listen on (like "127.0.0.1:8080")')
    return value.strip()


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f'"{value}" is not an environment variable name')
    return value


def _notify_urls(values: list[str]) -> tuple[str, ...]:
    """Each a single Apprise URL (`scheme://…`), `{env:NAME}` well formed. Apprise itself checks
    them once the whole table is read (see `_check_channels`)."""
    for value in values:
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"{_show_url(value)} must be a single URL, without spaces")
        if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
            raise ValueError(f"{_show_url(value)} is not a URL (like matrix://TOKEN@HOST/#ROOM or ntfy://HOST/TOPIC)")
        masking.env_names(value)
    if len({v for v in values}) != len(values):
        raise ValueError("lists a URL more than once")
    return tuple(values)


def check_notify_url(value: str) -> None:
    """ValueError unless `value` is one well-formed Apprise URL (see `watcher.channels.check_url` for the rest)."""
    _notify_urls([value])


def _webhook_url(value: str) -> str:
    masking.env_names(value)
    if not re.match(r"https?://[^\s/?#]+", value) or any(c.isspace() for c in value):
        raise ValueError(f"{_show_url(value)} is not an http(s) URL")
    return value


def _show_url(value: str) -> str:
    return json.dumps(masking.shown_url(value), ensure_ascii=False)


_DATABASE_URL = re.compile(r"(?P<scheme>[a-z0-9+]+)://(?P<rest>.*)", re.IGNORECASE)
_POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg", "postgres")


def _database_url(value: str) -> str:
    """`sqlite:///path` or `postgresql+psycopg://user@host/db`; a password never sits in the URL."""
    match = _DATABASE_URL.fullmatch(value.strip())
    scheme = match["scheme"].lower() if match else ""
    if scheme == "sqlite":
        if not match or not match["rest"].startswith("/") or len(match["rest"]) == 1:
            raise ValueError(f'"{value}" is not a SQLite URL (like "sqlite:///watcher.db")')
        return value.strip()
    if scheme in _POSTGRES_SCHEMES and match:
        userinfo = match["rest"].split("@", 1)[0] if "@" in match["rest"] else ""
        if ":" in userinfo:
            raise ValueError(
                "holds a password: take it out of the URL and name the environment variable "
                'that holds it in password_env (e.g. password_env = "WATCHER_DB_PASSWORD")'
            )
        return f"postgresql+psycopg://{match['rest']}"
    shown = value if ":" not in value.split("@", 1)[0].partition("://")[2] else f"{scheme}://…"
    raise ValueError(f'"{shown}" is not a database URL (sqlite:///FILE or postgresql+psycopg://USER@HOST/DB)')


def parse_age(value: str) -> int:
    """'30m', '6h', '1d', '2w', '1h30m' → seconds."""
    text = value.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ValueError(f'"{value}" is not a duration (like "30m", "6h" or "1d")')
    return sum(int(n) * _UNITS[unit] for n, unit in parts)


def parse_duration(value: str) -> int:
    """A schedule's duration: like `parse_age`, at least a minute."""
    seconds = parse_age(value)
    if seconds < 60:
        raise ValueError(f'"{value}" is shorter than a minute')
    return seconds


def _duration(value: str) -> str:
    parse_duration(value)
    return value


def _crontab(value: str) -> str:
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(value)
    except ValueError as exc:
        raise ValueError(f'"{value}" is not a crontab line ({exc})') from None
    return value


def _clock(value: str) -> str:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f'"{value}" is not a time of day (HH:MM, e.g. "08:00")')
    return f"{int(match[1]):02d}:{match[2]}"


def _timezone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'"{value}" is not an IANA time zone (e.g. "Europe/London")') from None
    return value


def _kinds(values: list[str]) -> tuple[Category, ...]:
    check = _member(Category)
    return tuple(check(v) for v in values)


def _check(fn: Callable[[Any], Any]) -> dict[str, Any]:
    return {"check": fn}


# --- settings ---------------------------------------------------------------------------


class Frequency(StrEnum):
    IMMEDIATE = "immediate"
    DAILY = "daily"
    WEEKLY = "weekly"


class Security(StrEnum):
    STARTTLS = "starttls"  # plain connection upgraded with STARTTLS (port 587)
    SSL = "ssl"  # implicit TLS (port 465)
    NONE = "none"  # no TLS (port 25, or a local relay)


DEFAULT_PORTS = {Security.STARTTLS: 587, Security.SSL: 465, Security.NONE: 25}


class HistoryMode(StrEnum):
    """When a sync asks the registry's internal history routes for the versions of a study."""

    GAPS = "gaps"  # only when versions can have been missed since the last good sync
    ALWAYS = "always"  # for every study that changed
    OFF = "off"  # never; `watcher history --registry` is refused too


def int_base_of(base_url: str) -> str:
    """The registry's internal API next to its API v2: `…/api/v2` → `…/api/int`.

    Any other base URL loses its last path segment for `int` (`https://mirror.example/ct/v2` →
    `https://mirror.example/ct/int`); a base URL without a path gets `/int` appended.
    """
    url = base_url.rstrip("/")
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    if not slash:
        return f"{url}/int"
    if path == "api/v2" or path.endswith("/api/v2"):
        return url[: -len("v2")] + "int"
    head, _, _last = path.rpartition("/")
    return f"{scheme}://{host}/{head + '/' if head else ''}int"


@dataclass(frozen=True)
class CtgovSettings:
    base_url: str = field(default=DEFAULT_BASE_URL, metadata=_check(_http_url))
    timeout_s: float = field(default=30.0, metadata=_check(_positive))
    retries: int = field(default=5, metadata=_check(_not_negative))
    backoff_s: float = field(default=1.0, metadata=_check(_not_negative))
    # the longest Retry-After honoured; a registry asking for more fails the run with one line
    max_wait_s: float = field(default=120.0, metadata=_check(_positive))
    # appended to the HTTP library's own User-Agent, e.g. "mailto:you@example.org"
    contact: str | None = field(default=None, metadata=_check(_text))
    history: HistoryMode = field(default=HistoryMode.GAPS, metadata=_check(_member(HistoryMode)))

    @property
    def int_base(self) -> str:
        """The internal API the website's "History of Changes" tab reads (see `int_base_of`)."""
        return int_base_of(self.base_url)


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = field(default="sqlite:///watcher.db", metadata=_check(_database_url))
    # the environment variable holding the PostgreSQL password (read when connecting, never stored)
    password_env: str | None = field(default=None, metadata=_check(_env_name))

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite:")


@dataclass(frozen=True)
class Watch:
    name: str = field(metadata=_check(_name))
    nct_ids: tuple[str, ...] = field(default=(), metadata=_check(_nct_ids))
    condition: str | None = field(default=None, metadata=_check(_text))
    intervention: str | None = field(default=None, metadata=_check(_text))
    term: str | None = field(default=None, metadata=_check(_text))
    statuses: tuple[str, ...] = field(default=(), metadata=_check(_statuses))

    @property
    def has_search(self) -> bool:
        return any((self.condition, self.intervention, self.term))

    def search_params(self) -> dict[str, str]:
        """The `/studies` query parameters of this watch's saved search ({} if none)."""
        if not self.has_search:
            return {}
        params = {
            "query.cond": self.condition,
            "query.intr": self.intervention,
            "query.term": self.term,
            "filter.overallStatus": ",".join(self.statuses) or None,
        }
        return {k: v for k, v in params.items() if v}

    @property
    def fingerprint(self) -> str:
        """Changes whenever the set of studies this watch selects may change."""
        data = {"ids": sorted(self.nct_ids), "search": self.search_params()}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MailSettings:
    from_: str = field(default=LOCAL_SENDER, metadata=_check(_from_address))
    outbox_dir: str = "outbox"
    unsubscribe: str | None = field(default=None, metadata=_check(_unsubscribe))
    operator: str | None = field(default=None, metadata=_check(check_email))


@dataclass(frozen=True)
class SmtpSettings:
    host: str = field(metadata=_check(_text))
    port: int | None = None
    security: Security = field(default=Security.STARTTLS, metadata=_check(_member(Security)))
    username: str | None = field(default=None, metadata=_check(_text))
    password_env: str | None = field(default=None, metadata=_check(_env_name))
    timeout_s: float = field(default=30.0, metadata=_check(_positive))
    # a CA bundle to trust besides the system's (a private mail server); relative to the config file
    ca_file: str | None = field(default=None, metadata=_check(_text))

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]

    def password(self) -> str | None:
        """Read the password from the environment, at the moment it is needed."""
        if not self.username:
            return None
        if not self.password_env:
            raise ConfigError("[smtp] username is set but password_env is not")
        value = os.environ.get(self.password_env)
        if not value:
            raise ConfigError(f"[smtp] password_env: environment variable {self.password_env} is not set")
        return value


@dataclass(frozen=True)
class WebSettings:
    """The web pages: where people reach them, where the server binds, and what signs their tokens."""

    public_url: str = field(metadata=_check(_public_url))  # every link in an email starts with it
    listen: str = field(default="127.0.0.1:8080", metadata=_check(check_listen))
    # the environment variable holding the secret that signs tokens and forms; without it, one is made
    # once and kept in the database
    secret_env: str | None = field(default=None, metadata=_check(_env_name))
    subscribe: bool = True  # self-service subscriptions on the pages

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def is_https(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def plain_http_in_public(self) -> bool:
        """A plain-http public address on a host other than this machine: mail providers want https."""
        from urllib.parse import urlsplit

        host = urlsplit(self.public_url).hostname or ""
        return not self.is_https and host not in ("localhost", "127.0.0.1", "::1")

    def url(self, path: str) -> str:
        return f"{self.public_url}{path}"

    def secret(self) -> str | None:
        """The secret from the environment, read at the moment it is needed (None: kept in the database)."""
        if not self.secret_env:
            return None
        value = os.environ.get(self.secret_env)
        if not value:
            raise ConfigError(f"[web] secret_env: environment variable {self.secret_env} is not set")
        if len(value) < 32:
            raise ConfigError(
                f"[web] secret_env: the secret in {self.secret_env} is too short (at least 32 characters; "
                "e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value


@dataclass(frozen=True)
class Subscriber:
    """Someone who gets digests: by email, on channels (Apprise URLs), or both."""

    name: str | None = field(default=None, metadata=_check(_name))
    email: str | None = field(default=None, metadata=_check(check_email))
    notify: tuple[str, ...] = field(default=(), metadata=_check(_notify_urls))  # URL templates, {env:NAME} kept
    watches: tuple[str, ...] = ()
    frequency: Frequency = field(default=Frequency.DAILY, metadata=_check(_member(Frequency)))
    kinds: tuple[Category, ...] = field(default=(), metadata=_check(_kinds))

    @property
    def key(self) -> str:
        """How the database knows them: the email lower-cased, else the name. Names hold no "@"
        (emails always do), so the two never collide."""
        return self.email.lower() if self.email else (self.name or "")

    @property
    def label(self) -> str:
        return self.name or self.email or ""


@dataclass(frozen=True)
class Webhook:
    """A signed JSON POST of each batch of changes in the watches it names."""

    url: str = field(metadata=_check(_webhook_url))  # a template: {env:NAME} kept
    secret_env: str = field(metadata=_check(_env_name))
    watches: tuple[str, ...] = ()
    timeout_s: float = field(default=10.0, metadata=_check(_positive))

    @property
    def key(self) -> str:
        """How the database knows it (as a subscriber): its host and a digest of its URL as written.
        Holds no "@" and has a ":", so it never collides with an email or a subscriber's name."""
        netloc = re.sub(r"^https?://", "", self.url).split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        host = netloc.rpartition("@")[2]  # never a user or password written in the URL
        return f"webhook:{host}:{hashlib.sha256(self.url.encode()).hexdigest()[:10]}"

    @property
    def shown(self) -> str:
        return masking.shown_url(self.url)


@dataclass(frozen=True)
class AlertSettings:
    notify: tuple[str, ...] = field(
        default=(), metadata=_check(_notify_urls)
    )  # operator alerts, beside [mail] operator


@dataclass(frozen=True)
class ScheduleSettings:
    sync_every: str | None = field(default=None, metadata=_check(_duration))
    sync_cron: str | None = field(default=None, metadata=_check(_crontab))
    digest_time: str = field(default="08:00", metadata=_check(_clock))
    weekly_day: str = field(default="mon", metadata=_check(_one_of(*WEEKDAYS)))
    timezone: str = field(default="UTC", metadata=_check(_timezone))
    alert_after_failures: int = field(default=3, metadata=_check(_positive))

    @property
    def sync_seconds(self) -> int | None:
        if self.sync_cron:
            return None
        return parse_duration(self.sync_every or "6h")


@dataclass(frozen=True)
class Config:
    path: Path
    ctgov: CtgovSettings
    database: DatabaseSettings
    watches: tuple[Watch, ...]
    mail: MailSettings
    smtp: SmtpSettings | None
    subscribers: tuple[Subscriber, ...]
    schedule: ScheduleSettings
    webhooks: tuple[Webhook, ...] = ()
    alerts: AlertSettings = field(default_factory=AlertSettings)
    web: WebSettings | None = None

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def database_path(self) -> Path | None:
        """The SQLite file, or None for a server database."""
        if not self.database.is_sqlite:
            return None
        return resolve_sqlite_path(self.database.url, self.folder, self.path.name)

    @property
    def outbox_path(self) -> Path:
        return (self.folder / self.mail.outbox_dir).resolve()

    def watch(self, name: str) -> Watch:
        for w in self.watches:
            if w.name == name:
                return w
        known = ", ".join(w.name for w in self.watches) or "none"
        raise ConfigError(f'no watch named "{name}" in {self.path.name} (watches: {known})')

    def subscriber(self, who: str) -> Subscriber:
        """A subscriber by email or name."""
        for s in self.subscribers:
            if who.lower() in (s.key.lower(), (s.email or "").lower(), (s.name or "").lower()):
                return s
        raise ConfigError(f'no subscriber "{who}" in {self.path.name}')

    @property
    def watches_fingerprint(self) -> str:
        joined = ",".join(f"{w.name}={w.fingerprint}" for w in sorted(self.watches, key=lambda w: w.name))
        return hashlib.sha256(joined.encode()).hexdigest()[:16]


def resolve_sqlite_path(url: str, folder: Path, filename: str) -> Path:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigError(f'{filename}: [database] url: "{url}" is not a SQLite URL (like "sqlite:///watcher.db")')
    path = Path(url[len(prefix) :]).expanduser()
    return (path if path.is_absolute() else folder / path).resolve()


# --- loading ----------------------------------------------------------------------------

_TOP_LEVEL = ("ctgov", "database", "watch", "mail", "smtp", "subscriber", "webhook", "alerts", "schedule", "web")


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    path = config_path(explicit)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = " (copy config.example.toml to start one, or pass --config FILE)"
        raise ConfigError(f"{path}: no such config file{hint if path.name == DEFAULT_CONFIG else ''}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, path.resolve(), shown=str(path))


def parse_config(raw: dict[str, Any], path: Path, shown: str | None = None) -> Config:
    loader = _Loader(shown or path.name)
    loader.unknown(raw, _TOP_LEVEL, "")
    watches = tuple(
        loader.build(
            Watch,
            t,
            f"[[watch]] #{i + 1}",
            label=lambda t: f'[watch "{t["name"]}"]' if isinstance(t.get("name"), str) else None,
        )
        for i, t in enumerate(loader.tables(raw, "watch"))
    )
    names = [w.name for w in watches]
    for w in watches:
        if names.count(w.name) > 1:
            loader.fail(f'[watch "{w.name}"]', "name", f'"{w.name}" is used by more than one watch')
        if not w.nct_ids and not w.has_search:
            loader.fail(
                f'[watch "{w.name}"]', "nct_ids", "empty: give nct_ids or a search (condition, intervention or term)"
            )
        if w.statuses and not w.has_search:
            loader.fail(f'[watch "{w.name}"]', "statuses", "filters a search: add condition, intervention or term")

    subscribers = tuple(
        loader.build(Subscriber, t, f"[[subscriber]] #{i + 1}", label=_subscriber_label)
        for i, t in enumerate(loader.tables(raw, "subscriber"))
    )
    emails = [s.email.lower() for s in subscribers if s.email]
    sub_names = [s.name.lower() for s in subscribers if s.name]
    for i, s in enumerate(subscribers):
        where = f'[subscriber "{s.label}"]' if s.label else f"[[subscriber]] #{i + 1}"
        if not s.email and not s.notify:
            loader.fail(where, "email", "a subscriber needs an email address, notify URLs, or both")
        if not s.email and not s.name:
            loader.fail(where, "name", "is required when there is no email")
        if s.email and emails.count(s.email.lower()) > 1:
            loader.fail(where, "email", f'"{s.email}" is listed more than once')
        if s.name and sub_names.count(s.name.lower()) > 1:
            loader.fail(where, "name", f'"{s.name}" is used by more than one subscriber')
        _check_watches(loader, where, s.watches, names)
        _check_channels(loader, where, s.notify)

    webhooks = tuple(
        loader.build(Webhook, t, f"[[webhook]] #{i + 1}", label=_webhook_label)
        for i, t in enumerate(loader.tables(raw, "webhook"))
    )
    urls = [w.url for w in webhooks]
    for w in webhooks:
        where = f'[webhook "{w.shown}"]'
        if urls.count(w.url) > 1:
            loader.fail(where, "url", "is listed more than once")
        _check_watches(loader, where, w.watches, names)
    alerts = loader.build(AlertSettings, loader.table(raw, "alerts"), "[alerts]")
    _check_channels(loader, "[alerts]", alerts.notify)

    schedule = loader.build(ScheduleSettings, loader.table(raw, "schedule"), "[schedule]")
    if schedule.sync_every and schedule.sync_cron:
        loader.fail("[schedule]", "sync_cron", "give sync_every or sync_cron, not both")

    config = Config(
        path=path,
        ctgov=loader.build(CtgovSettings, loader.table(raw, "ctgov"), "[ctgov]"),
        database=loader.build(DatabaseSettings, loader.table(raw, "database"), "[database]"),
        watches=watches,
        mail=loader.build(MailSettings, loader.table(raw, "mail"), "[mail]"),
        smtp=loader.build(SmtpSettings, raw["smtp"], "[smtp]") if "smtp" in raw else None,
        subscribers=subscribers,
        schedule=schedule,
        webhooks=webhooks,
        alerts=alerts,
        web=loader.build(WebSettings, raw["web"], "[web]") if "web" in raw else None,
    )
    if config.database.is_sqlite:
        resolve_sqlite_path(config.database.url, path.parent, loader.filename)
    if not watches:
        loader.fail("", "", "has no [[watch]] table: add one to say what to watch (see config.example.toml)")
    if config.smtp is not None and "from" not in loader.table(raw, "mail"):
        loader.fail(
            "[mail]", "from", "is required with [smtp]: the address digests come from (never watcher@localhost)"
        )
    return config


def _subscriber_label(table: dict[str, Any]) -> str | None:
    who = table.get("name", table.get("email"))
    return f'[subscriber "{who}"]' if isinstance(who, str) else None


def _webhook_label(table: dict[str, Any]) -> str | None:
    url = table.get("url")
    return f'[webhook "{masking.shown_url(url)}"]' if isinstance(url, str) else None


def _check_watches(loader: _Loader, where: str, watches: tuple[str, ...], names: list[str]) -> None:
    if not watches:
        loader.fail(where, "watches", "empty: name at least one watch")
    for name in watches:
        if name not in names:
            loader.fail(where, "watches", f'"{name}" is not a watch in this file{loader.suggest(name, names)}')


def _check_channels(loader: _Loader, where: str, urls: tuple[str, ...]) -> None:
    """Apprise checks each URL (only when there are any: Apprise takes a third of a second to load).
    A URL whose `{env:NAME}` is not set here is checked only for its scheme; it is checked
    whole where it is sent (the environment is read then)."""
    if not urls:
        return
    from watcher.channels import check_url

    for url in urls:
        try:
            check_url(url)
        except ValueError as exc:
            loader.fail(where, "notify", str(exc))


class _Loader:
    def __init__(self, filename: str) -> None:
        self.filename = filename

    def fail(self, where: str, key: str, message: str) -> typing.NoReturn:
        prefix = f"{where} {key}: " if key else f"{where} "
        raise ConfigError(f"{self.filename}: {prefix.lstrip()}{message}")

    @staticmethod
    def suggest(word: str, choices: typing.Iterable[str]) -> str:
        close = difflib.get_close_matches(word, list(choices), n=1)
        return f' (did you mean "{close[0]}"?)' if close else ""

    def unknown(self, table: dict[str, Any], allowed: typing.Iterable[str], where: str) -> None:
        allowed = list(allowed)
        for key in table:
            if key not in allowed:
                place = f"{where} " if where else ""
                raise ConfigError(f'{self.filename}: {place}unknown key "{key}"{self.suggest(key, allowed)}')

    def table(self, raw: dict[str, Any], key: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.filename}: [{key}] must be a table, not {_kind(value)}")
        return value

    def tables(self, raw: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise ConfigError(f"{self.filename}: {key} must be written as [[{key}]] tables")
        return value

    def build(
        self,
        cls: type,
        table: dict[str, Any],
        where: str,
        label: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> Any:
        if not isinstance(table, dict):
            raise ConfigError(f"{self.filename}: {where} must be a table, not {_kind(table)}")
        if label:
            where = label(table) or where
        hints = typing.get_type_hints(cls)
        fields_by_key = {f.name.rstrip("_"): f for f in dataclasses.fields(cls)}
        self.unknown(table, fields_by_key, where)
        values: dict[str, Any] = {}
        for key, f in fields_by_key.items():
            if key not in table:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.fail(where, key, "is required")
                continue
            value = table[key]
            if not _type_ok(value, hints[f.name]):
                self.fail(where, key, f"{_show(value)} should be {_type_name(hints[f.name])}, not {_kind(value)}")
            check = f.metadata.get("check")
            if check is not None:
                try:
                    value = check(value)
                except ValueError as exc:
                    self.fail(where, key, str(exc))
            if isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
        return cls(**values)


def _base_types(hint: Any) -> tuple[Any, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)


def _type_ok(value: Any, hint: Any) -> bool:
    for base in _base_types(hint):
        if isinstance(base, type) and issubclass(base, StrEnum):
            if isinstance(value, str):
                return True
        elif typing.get_origin(base) is tuple:
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return True
        elif base is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif base is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif isinstance(value, base):
            return True
    return False


def _type_name(hint: Any) -> str:
    names = []
    for base in _base_types(hint):
        if typing.get_origin(base) is tuple:
            names.append("a list of strings")
        elif isinstance(base, type) and issubclass(base, StrEnum):
            names.append("a string")
        else:
            names.append({str: "a string", int: "an integer", float: "a number", bool: "true or false"}[base])
    return " or ".join(names)


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
