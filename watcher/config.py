"""TOML config → frozen, typed settings.

Strict on purpose: an unknown key, a wrong type or a bad value is a `ConfigError` whose
message names the file, the table, the key and the value, so a typo never silently falls
back to a default. Secrets are never read from the file: `[smtp] password_env` names an
environment variable that is read only when a message is sent.
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

from watcher.changes import Category
from watcher.errors import ConfigError
from watcher.fields import STATUS_LABELS

DEFAULT_CONFIG = "watcher.toml"
CONFIG_ENV = "WATCHER_CONFIG"
DEFAULT_BASE_URL = "https://clinicaltrials.gov/api/v2"

NCT_ID = re.compile(r"NCT\d{8}")
_EMAIL = re.compile(r"[^@\s<>\"(),;:]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DURATION = re.compile(r"(\d+)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
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
    if not _EMAIL.fullmatch(value):
        raise ValueError(f'"{value}" is not an email address')
    return value


def _from_address(value: str) -> str:
    from email.utils import parseaddr

    _text(value)
    check_email(parseaddr(value)[1] or value)
    return value


def _unsubscribe(value: str) -> str:
    if not re.fullmatch(r"(mailto:[^\s]+@[^\s]+|https://[^\s]+)", value):
        raise ValueError(f'"{value}" must be a mailto: address or an https:// URL')
    return value


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f'"{value}" is not an environment variable name')
    return value


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


def parse_duration(value: str) -> int:
    """'30m', '6h', '1d', '1h30m' → seconds."""
    text = value.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ValueError(f'"{value}" is not a duration (like "30m", "6h" or "1d")')
    seconds = sum(int(n) * _UNITS[unit] for n, unit in parts)
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
    from_: str = field(default="Trial Watcher <watcher@localhost>", metadata=_check(_from_address))
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
class Subscriber:
    email: str = field(metadata=_check(check_email))
    watches: tuple[str, ...] = ()
    frequency: Frequency = field(default=Frequency.DAILY, metadata=_check(_member(Frequency)))
    kinds: tuple[Category, ...] = field(default=(), metadata=_check(_kinds))


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

    def subscriber(self, email: str) -> Subscriber:
        for s in self.subscribers:
            if s.email.lower() == email.lower():
                return s
        raise ConfigError(f'no subscriber "{email}" in {self.path.name}')

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

_TOP_LEVEL = ("ctgov", "database", "watch", "mail", "smtp", "subscriber", "schedule")


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
        loader.build(Watch, t, f"[[watch]] #{i + 1}", label=lambda t: f'[watch "{t.get("name")}"]')
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
        loader.build(Subscriber, t, f"[[subscriber]] #{i + 1}", label=lambda t: f'[subscriber "{t.get("email")}"]')
        for i, t in enumerate(loader.tables(raw, "subscriber"))
    )
    emails = [s.email.lower() for s in subscribers]
    for s in subscribers:
        where = f'[subscriber "{s.email}"]'
        if emails.count(s.email.lower()) > 1:
            loader.fail(where, "email", f'"{s.email}" is listed more than once')
        if not s.watches:
            loader.fail(where, "watches", "empty: name at least one watch")
        for name in s.watches:
            if name not in names:
                loader.fail(where, "watches", f'"{name}" is not a watch in this file{loader.suggest(name, names)}')

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
    )
    if config.database.is_sqlite:
        resolve_sqlite_path(config.database.url, path.parent, loader.filename)
    return config


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
        self, cls: type, table: dict[str, Any], where: str, label: Callable[[dict[str, Any]], str] | None = None
    ) -> Any:
        if not isinstance(table, dict):
            raise ConfigError(f"{self.filename}: {where} must be a table, not {_kind(table)}")
        if label and isinstance(table.get("name", table.get("email")), str):
            where = label(table)
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
