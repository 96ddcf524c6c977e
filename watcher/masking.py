"""Secrets from the environment: `{env:NAME}` in a URL, read when it is used, and masked everywhere.

A channel or webhook URL is kept as written in the config, `{env:NAME}` unexpanded: that is
what the database stores and what people see. `expand` reads the environment at the moment
a message is sent, and remembers every value it hands out, so that the log records made in
this process (ours, Apprise's, urllib3's) never show one: `install` makes every log record
pass through `mask` before any handler sees it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping

ENV_REF = re.compile(r"\{env:([^{}]*)\}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MASK = "****"
_MIN_LENGTH = 4  # shorter values would mask ordinary words

_known: set[str] = set()
_lock = threading.Lock()


class MissingSecret(Exception):
    """An environment variable a URL names is not set."""

    def __init__(self, name: str) -> None:
        super().__init__(f"environment variable {name} is not set")
        self.name = name


def env_names(template: str) -> list[str]:
    """The variables `{env:NAME}` a template names, in order; ValueError for a malformed one."""
    names = []
    for match in ENV_REF.finditer(template):
        if not ENV_NAME.fullmatch(match[1]):
            raise ValueError(f'"{{env:{match[1]}}}" does not name an environment variable')
        names.append(match[1])
    rest = ENV_REF.sub("", template)
    if "{env:" in rest:
        raise ValueError('has an unfinished "{env:" (write {env:NAME})')
    return names


def remember(*values: str | None) -> None:
    """Mask these values in every log record from now on."""
    with _lock:
        for value in values:
            if value and len(value) >= _MIN_LENGTH:
                _known.add(value)
                quoted = urllib.parse.quote(value, safe="")
                if quoted != value:
                    _known.add(quoted)


def secret(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of an environment variable that holds a secret; MissingSecret if unset or empty."""
    value = (os.environ if environ is None else environ).get(name)
    if not value:
        raise MissingSecret(name)
    remember(value)
    return value


def expand(template: str, environ: Mapping[str, str] | None = None) -> str:
    """The template with each `{env:NAME}` replaced by the variable's value (remembered for masking)."""
    env_names(template)
    return ENV_REF.sub(lambda m: secret(m[1], environ), template)


def mask(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every remembered secret (and `extra`) replaced by ****."""
    with _lock:
        values = sorted({*_known, *(v for v in extra if v)}, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/?#]*):(?P<password>[^@/?#]+)@")


def shown_url(template: str) -> str:
    """A URL as people may see it: as written, `{env:NAME}` left unexpanded, a literal password
    (`user:password@`) masked, and any remembered secret masked."""
    refs = ENV_REF.findall(template)
    text = ENV_REF.sub(lambda m: f"\x00{refs.index(m[1])}\x00", template)  # a {env:NAME} holds a ":" itself
    match = _USERINFO.match(text)
    if match and not re.fullmatch(r"\x00\d+\x00", match["password"]):
        text = f"{match['scheme']}{match['user']}:{MASK}@{text[match.end() :]}"
    return mask(re.sub(r"\x00(\d+)\x00", lambda m: f"{{env:{refs[int(m[1])]}}}", text))


def scheme_of(url: str) -> str:
    return urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""


# --- every log record, masked -------------------------------------------------------------------

_installed = False


def install() -> None:
    """Mask remembered secrets in every log record made in this process, whoever logs it and
    wherever it goes (also pytest's caplog). Idempotent."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not _known:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: leave it to logging's own error report
            return record
        masked = mask(message)
        if masked != message or record.args:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    # Apprise logs full request URLs, tokens included, at DEBUG; WARNING and up are masked by it.
    logging.getLogger("apprise").setLevel(logging.WARNING)
