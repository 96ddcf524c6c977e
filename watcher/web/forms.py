"""Forms: CSRF tokens, and reading what a subscribe or manage form says.

CSRF: a page with a form sets a random cookie (HttpOnly, SameSite=Lax) and puts in the form a
token signed with the secret over that cookie and the time. A POST passes only with a cookie
and a token that match and are at most `CSRF_TTL` old, so another site cannot post a form in
a visitor's name. The one-click unsubscribe POST needs neither (mail providers send none).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from starlette.datastructures import FormData

from watcher.changes import Category
from watcher.config import Config, Frequency, check_email
from watcher.tokens import Secret
from watcher.wording import frequency_words

CSRF_COOKIE = "tw_csrf"
CSRF_FIELD = "csrf"
CSRF_TTL = timedelta(hours=12)

KIND_LABELS = {
    Category.STATUS: "Status changes (recruiting, completed, stopped…)",
    Category.SITES: "Sites opening, closing or recruiting",
    Category.RESULTS: "Results posted",
    Category.NEW_STUDY: "New trials matching the search",
    Category.LEFT_SEARCH: "Trials leaving the search",
    Category.DATES: "Start and completion dates",
    Category.ENROLLMENT: "Enrollment",
    Category.DETAILS: "Other details (title, phase, sponsor)",
}
FREQUENCY_LABELS = {f: frequency_words(f).capitalize() for f in Frequency}


def new_cookie() -> str:
    return secrets.token_urlsafe(18)


def csrf_token(secret: Secret, cookie: str, now: datetime) -> str:
    stamp = str(int(now.timestamp()))
    return f"{stamp}.{secret.sign('csrf', f'{cookie}|{stamp}')}"


def csrf_ok(secret: Secret, cookie: str | None, token: str | None, now: datetime) -> bool:
    if not cookie or not token or "." not in token or len(token) > 200:
        return False
    stamp, _, signature = token.partition(".")
    if not stamp.isdigit():
        return False
    made = datetime.fromtimestamp(int(stamp), now.tzinfo)
    if not (now - CSRF_TTL <= made <= now + timedelta(minutes=5)):
        return False
    return hmac.compare_digest(signature, secret.sign("csrf", f"{cookie}|{stamp}"))


class FormError(ValueError):
    """What is wrong with a form, in words for the person who filled it in."""


@dataclass
class Choices:
    """A checked subscribe or manage form."""

    email: str = ""
    watches: list[str] = field(default_factory=list)
    frequency: Frequency = Frequency.DAILY
    kinds: list[Category] = field(default_factory=list)


def _one(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _watches(config: Config, form: FormData) -> list[str]:
    names = [w.name for w in config.watches]
    chosen = [v for v in form.getlist("watch") if isinstance(v, str)]
    unknown = [v for v in chosen if v not in names]
    if unknown:
        raise FormError("Choose watches from the list.")
    if not chosen:
        raise FormError("Choose at least one watch.")
    return [n for n in names if n in chosen]


def _frequency(form: FormData) -> Frequency:
    try:
        return Frequency(_one(form, "frequency") or Frequency.DAILY.value)
    except ValueError:
        raise FormError("Choose how often: as soon as something changes, daily or weekly.") from None


def subscribe_form(config: Config, form: FormData) -> Choices:
    email = _one(form, "email")
    if not email:
        raise FormError("Enter your email address.")
    try:
        check_email(email)
    except ValueError:
        raise FormError("Enter an email address like name@example.org.") from None
    if len(email) > 254:
        raise FormError("That email address is too long.")
    return Choices(email=email, watches=_watches(config, form), frequency=_frequency(form))


def manage_form(config: Config, form: FormData) -> Choices:
    kinds: Sequence[str] = [v for v in form.getlist("kind") if isinstance(v, str)]
    try:
        chosen = [Category(k) for k in kinds]
    except ValueError:
        raise FormError("Choose kinds of change from the list.") from None
    if not chosen:
        raise FormError("Choose at least one kind of change, or unsubscribe from everything.")
    try:
        watches = _watches(config, form)
    except FormError as exc:
        raise FormError(f"{exc} To stop every digest, unsubscribe from everything.") from None
    return Choices(watches=watches, frequency=_frequency(form), kinds=[c for c in Category if c in chosen])
