"""The ClinicalTrials.gov API v2 client: the only module that speaks HTTP to the registry.

One `requests.Session` with urllib3's `Retry` (exponential backoff with jitter) for 429, 5xx
and connection errors. Every retry is one log line naming the host and the reason. A
`Retry-After` is honoured up to `[ctgov] max_wait_s`; a longer one fails the run with one
line. Each request has a total deadline, so a body that trickles in cannot hold a sync. Waits
end at once when the run is cancelled. Redirects are followed only on the same scheme and
host. Bodies that are not complete JSON of the expected shape are errors, never data.

Besides the API v2 it reads the registry's version history on its internal API (`/api/int`,
undocumented, not a contract), strictly one request at a time and at most one a second (the
site's robots rules ask for a crawl delay of 1 s, and that API answers 429 to more). Any
failure there is a `HistoryUnavailable`, so that callers can fall back to a plain diff.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from watcher import __version__
from watcher.config import CtgovSettings
from watcher.differ import get_path
from watcher.errors import Cancelled, HistoryUnavailable, RegistryError
from watcher.history import VersionIndex, parse_index, parse_version

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
# filter.ids batches stay well under common URL length limits (~12 characters an ID)
IDS_PER_REQUEST = 250
MAX_PAGES = 2000
MAX_REDIRECTS = 5
RETRY_STATUSES = (429, 500, 502, 503, 504)
# /api/int: at most one request a second (robots.txt: Crawl-delay: 1), never two at once
INT_INTERVAL_S = 1.0

LISTING_FIELDS = "NCTId,LastUpdatePostDate"
ID_LISTING_FIELDS = "NCTId,NCTIdAlias,LastUpdatePostDate"


@dataclass(frozen=True)
class Listed:
    """A study as a cheap listing shows it: its ID, aliases and last update date."""

    nct_id: str
    last_update: str | None
    aliases: tuple[str, ...] = ()


@dataclass
class Traffic:
    requests: int = 0  # every request, retries included
    bytes: int = 0
    history_requests: int = 0  # of those, to the internal history API
    history_bytes: int = 0


def host_label(base_url: str) -> str:
    """How to name the registry in messages: never with credentials from the URL."""
    parts = urlsplit(base_url)
    host = parts.hostname or "the registry"
    if host in ("clinicaltrials.gov", "www.clinicaltrials.gov"):
        return "ClinicalTrials.gov"
    return f"{host}:{parts.port}" if parts.port else host


class RetryAfterTooLong(RegistryError):
    """The registry asked us to wait longer than `max_wait_s`."""


@dataclass
class _Watch:
    """What the retries of one client share: its traffic, its name, its cancel switch and its limits."""

    traffic: Traffic
    host: str
    tries: int
    max_wait_s: float
    cancel: threading.Event | None
    wait: Callable[[float], bool]  # sleep up to n seconds; True if cancelled meanwhile


class _Retry(Retry):
    """urllib3's Retry, counting each retry into the traffic, saying why it retries, capping
    Retry-After and sleeping so that a cancel ends the wait at once. For the internal API it
    never retries sooner than `min_backoff_s` (urllib3 retries the first time at once)."""

    watch: _Watch | None = None
    internal_api: bool = False
    min_backoff_s: float = 0.0

    def new(self, **kw: Any) -> _Retry:
        fresh = super().new(**kw)
        fresh.watch, fresh.internal_api, fresh.min_backoff_s = self.watch, self.internal_api, self.min_backoff_s
        return fresh

    def get_backoff_time(self) -> float:
        return max(super().get_backoff_time(), self.min_backoff_s)

    def increment(self, *args: Any, **kwargs: Any) -> _Retry:
        fresh = super().increment(*args, **kwargs)  # raises once retries are used up
        watch = self.watch
        if watch is None:
            return fresh
        watch.traffic.requests += 1
        if self.internal_api:
            watch.traffic.history_requests += 1
        response = kwargs.get("response") if "response" in kwargs else (args[2] if len(args) > 2 else None)
        error = kwargs.get("error") if "error" in kwargs else (args[3] if len(args) > 3 else None)
        wait = fresh.get_retry_after(response) if response is not None else None
        if wait is not None and wait > watch.max_wait_s:
            if response is not None:
                with contextlib.suppress(Exception):
                    response.drain_conn()  # leave the connection clean for the next request
            again = datetime.now(UTC) + timedelta(seconds=wait)
            raise RetryAfterTooLong(
                f"{watch.host} asked us to wait {wait:.0f} s before trying again (more than max_wait_s = "
                f"{watch.max_wait_s:g}); nothing was changed: try again after {again:%Y-%m-%d %H:%M} UTC"
            )
        if wait is None:
            wait = fresh.get_backoff_time()
        reason = _reason_of(response, error)
        attempt = len(fresh.history) + 1
        when = f"in {wait:.0f} s" if wait >= 0.5 else "now"
        log.warning("%s: %s; try %d of %d %s", watch.host, reason, attempt, watch.tries, when)
        return fresh

    def sleep(self, response: Any = None) -> None:
        watch = self.watch
        if watch is None:
            super().sleep(response)
            return
        wait = self.get_retry_after(response) if response is not None and self.respect_retry_after_header else None
        if wait is None:
            wait = self.get_backoff_time()
        if watch.wait(min(wait, watch.max_wait_s)):
            raise Cancelled("stopping: the wait before the next try was cut short")


def _reason_of(response: Any, error: Exception | None) -> str:
    if response is not None:
        status = getattr(response, "status", None)
        return "rate limited (429)" if status == 429 else f"answered {status}"
    return _reason(error) if error is not None else "failed"


Wait = Callable[[float], bool]  # wait up to this many seconds; True when told to stop meanwhile


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


class Pacer:
    """At most one request every `interval_s` seconds, counted from the end of the previous
    answer (so retries inside a request count too). The wait ends early, with `Cancelled`,
    when the daemon stops. Tests inject `clock` and `wait`."""

    def __init__(
        self,
        interval_s: float = INT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        wait: Wait | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.wait: Wait = wait or (cancel.wait if cancel is not None else _sleep)
        self._last: float | None = None

    def before(self) -> None:
        if self._last is None:
            return
        remaining = self._last + self.interval_s - self.clock()
        if remaining > 0 and self.wait(remaining):
            raise Cancelled("stopping: no further requests")

    def after(self) -> None:
        self._last = self.clock()


def int_pacer(cancel: threading.Event | None = None) -> Pacer:
    """The pacing of the internal API (tests replace this to inject time)."""
    return Pacer(INT_INTERVAL_S, cancel=cancel)


def user_agent(contact: str | None) -> str:
    # Keep the library's own token: the registry's edge rejects spoofed agents.
    agent = f"{requests.utils.default_user_agent()} trial-watcher/{__version__}"
    return f"{agent} (+{contact})" if contact else agent


class Registry:
    def __init__(
        self,
        settings: CtgovSettings,
        cancel: threading.Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
        pacer: Pacer | None = None,
    ) -> None:
        self.settings = settings
        self.cancel = cancel
        self.sleep = sleep  # tests record the waits instead of waiting
        self.base_url = settings.base_url
        self.int_base = settings.int_base
        self.pacer = pacer or int_pacer(cancel)
        self.host = host_label(settings.base_url)
        self.traffic = Traffic()
        self.skipped_listings = 0  # entries without a usable NCT ID, skipped
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": user_agent(settings.contact), "Accept": "application/json"})
        adapter = HTTPAdapter(max_retries=self._retry())
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # the same session and policy for the internal API, but no retry sooner than its pace allows
        # (requests picks the adapter with the longest matching prefix)
        self.session.mount(f"{self.int_base}/", HTTPAdapter(max_retries=self._retry(internal_api=True)))

    def _retry(self, internal_api: bool = False) -> _Retry:
        retries = self.settings.retries
        retry = _Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            redirect=False,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET"}),
            backoff_factor=self.settings.backoff_s,
            backoff_max=60,
            backoff_jitter=self.settings.backoff_s / 4,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        wait = self.pacer.wait if internal_api else self._wait  # the internal API's retries wait on its pacer's clock
        retry.watch = _Watch(self.traffic, self.host, retries + 1, self.settings.max_wait_s, self.cancel, wait)
        retry.internal_api = internal_api
        retry.min_backoff_s = self.pacer.interval_s if internal_api else 0.0
        return retry

    def _wait(self, seconds: float) -> bool:
        if self.cancel is None:
            self.sleep(seconds)
            return False
        return self.cancel.wait(seconds)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- raw requests -------------------------------------------------------------------

    def get_json(self, path: str, params: dict[str, str] | None = None, base: str | None = None) -> Any:
        url = f"{base or self.base_url}/{path.lstrip('/')}"
        for _ in range(MAX_REDIRECTS + 1):
            response = self._get(url, params)
            if response.status_code not in (301, 302, 303, 307, 308):
                return self._json(response)
            target = urljoin(response.url, response.headers.get("Location", ""))
            here, there = urlsplit(response.url), urlsplit(target)
            if (here.scheme, here.netloc) != (there.scheme, there.netloc):
                shown = f"{there.scheme}://{there.hostname or ''}{there.path}"
                other = "another host" if here.netloc != there.netloc else f"{there.scheme} instead of {here.scheme}"
                raise RegistryError(f"{self.host} redirected to {shown}, {other}; not followed")
            url, params = target, None
        raise RegistryError(f"{self.host} redirected more than {MAX_REDIRECTS} times; stopped following")

    def _get(self, url: str, params: dict[str, str] | None) -> requests.Response:
        """One GET with its retries, and the whole body read within a deadline of timeout_s."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("stopping: no further requests")
        tries = self.settings.retries + 1
        self.traffic.requests += 1
        timeout = self.settings.timeout_s
        try:
            response = self.session.get(url, params=params, timeout=timeout, stream=True, allow_redirects=False)
        except requests.exceptions.RetryError as exc:
            raise RegistryError(f"{self.host} kept failing after {tries} tries ({_reason(exc)})") from None
        except requests.exceptions.Timeout:
            raise RegistryError(f"{self.host} did not answer within {timeout:g} s after {tries} tries") from None
        except requests.exceptions.ConnectionError as exc:
            raise RegistryError(f"{self.host} did not answer after {tries} tries ({_reason(exc)})") from None
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"the request to {self.host} failed ({_reason(exc)})") from None
        # A body that trickles in: its connection is cut at the deadline, which ends the read.
        deadline = threading.Timer(timeout, _cut, args=(response,))
        deadline.daemon = True
        started = time.monotonic()
        deadline.start()
        try:
            body = b"".join(response.iter_content(chunk_size=65536))
        except (requests.exceptions.RequestException, OSError, AttributeError, ValueError) as exc:
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled("stopping: the request in flight was cut short") from None
            if time.monotonic() - started >= timeout:
                raise RegistryError(f"{self.host} sent its answer too slowly (over {timeout:g} s)") from None
            raise RegistryError(f"{self.host} broke off its answer ({_reason(exc)})") from None
        finally:
            deadline.cancel()
        response._content = body  # what .content returns from here on
        self.traffic.bytes += len(body)
        log.debug("GET %s -> %s (%d bytes)", _without_credentials(response.url), response.status_code, len(body))
        return response

    def _json(self, response: requests.Response) -> Any:
        if response.status_code != 200:
            raise RegistryError(self._http_error(response))
        try:
            return json.loads(response.content)
        except ValueError:
            kind = response.headers.get("Content-Type", "unknown type")
            raise RegistryError(
                f"{self.host} sent a body that is not complete JSON "
                f"({kind}, {len(response.content)} bytes) for {_without_credentials(response.url)}"
            ) from None

    def _http_error(self, response: requests.Response) -> str:
        text = " ".join(response.text.split())[:300] or response.reason or ""
        if response.status_code == 429:
            return f"{self.host} is rate limiting us (429) and kept doing so; try again later"
        if response.status_code >= 500:
            return f"{self.host} answered {response.status_code} {text}".rstrip()
        if response.status_code == 403:
            return f"{self.host} refused the request (403): {text}"
        return f"{self.host} rejected the request ({response.status_code}): {text}"

    def get_history_json(self, path: str, nct_id: str, what: str) -> Any:
        """A body from the internal API, paced; every failure is a one-line `HistoryUnavailable`."""
        url = f"{self.int_base}/{path.lstrip('/')}"
        self.pacer.before()
        before = self.traffic.bytes
        self.traffic.history_requests += 1
        try:
            response = self._get(url, None)
        except Cancelled:
            raise
        except RegistryError as exc:
            raise HistoryUnavailable(f"{nct_id}: {what} could not be read: {exc}") from None
        finally:
            self.pacer.after()
            self.traffic.history_bytes += self.traffic.bytes - before
        body = response.content
        if response.status_code != 200:
            raise HistoryUnavailable(
                f"{nct_id}: {_history_error(self.host, response, what)}", study_only=response.status_code == 404
            )
        kind = response.headers.get("Content-Type", "unknown type")
        if "html" in kind.lower() or body.lstrip()[:1] == b"<":
            raise HistoryUnavailable(f"{nct_id}: {self.host} sent a web page instead of {what}")
        try:
            return json.loads(body)
        except ValueError:
            raise HistoryUnavailable(
                f"{nct_id}: {self.host} sent {what} in a body that is not complete JSON ({kind}, {len(body)} bytes)",
                study_only=True,
            ) from None

    # --- endpoints ----------------------------------------------------------------------

    def data_timestamp(self) -> str:
        """`/version`'s dataTimestamp: when the registry's data was last refreshed."""
        body = self.get_json("version")
        stamp = body.get("dataTimestamp") if isinstance(body, dict) else None
        if not isinstance(stamp, str) or not stamp:
            raise RegistryError(f"{self.host} /version answered without a dataTimestamp")
        return stamp

    def pages(self, params: dict[str, str]) -> Iterator[list[dict[str, Any]]]:
        """Every page of a `/studies` query, following nextPageToken. Entries without a usable NCT ID
        are skipped and counted in `skipped_listings`."""
        params = {**params, "pageSize": str(PAGE_SIZE)}
        seen_tokens: set[str] = set()
        for _ in range(MAX_PAGES):
            body = self.get_json("studies", params)
            if not isinstance(body, dict) or not isinstance(body.get("studies", []), list):
                raise RegistryError(f"{self.host} sent a /studies page without a list of studies")
            studies = body.get("studies", [])
            usable = [s for s in studies if isinstance(s, dict) and _nct_id(s)]
            self.skipped_listings += len(studies) - len(usable)
            if usable:
                yield usable
            token = body.get("nextPageToken")
            if not token or not studies:
                return
            if not isinstance(token, str) or token in seen_tokens:
                raise RegistryError(f"{self.host} repeated a page token; stopped paging to avoid a loop")
            seen_tokens.add(token)
            params = {**params, "pageToken": token}
        raise RegistryError(f"{self.host} paging did not end after {MAX_PAGES} pages")

    def list_search(self, search: dict[str, str]) -> Iterator[Listed]:
        """The members of a saved search, cheaply: IDs and last update dates only."""
        for page in self.pages({**search, "fields": LISTING_FIELDS}):
            yield from (_listed(s) for s in page)

    def list_ids(self, nct_ids: Iterable[str]) -> Iterator[Listed]:
        """Explicit NCT IDs, cheaply. Alias IDs come back under their current ID."""
        for batch in _batches(sorted(set(nct_ids)), IDS_PER_REQUEST):
            for page in self.pages({"filter.ids": ",".join(batch), "fields": ID_LISTING_FIELDS}):
                yield from (_listed(s) for s in page)

    def fetch(self, nct_ids: Iterable[str]) -> Iterator[list[dict[str, Any]]]:
        """Full records of the given studies, one page at a time (not all held in memory)."""
        for batch in _batches(sorted(set(nct_ids)), IDS_PER_REQUEST):
            yield from self.pages({"filter.ids": ",".join(batch)})

    # --- the internal API: version history (not a contract) ------------------------------

    def version_index(self, nct_id: str) -> VersionIndex:
        """Every version of a study: number, submission date, status, module labels (one request)."""
        body = self.get_history_json(f"studies/{nct_id}/history", nct_id, "its version history")
        return parse_index(nct_id, body)

    def version(self, nct_id: str, number: int) -> dict[str, Any]:
        """The record as it was at version `number`, in the API v2 shape (one request)."""
        body = self.get_history_json(f"studies/{nct_id}/history/{number}", nct_id, f"version {number}")
        return parse_version(nct_id, number, body)


def _cut(response: requests.Response) -> None:
    """End a read in progress on another thread: shutting the socket down wakes a blocked recv
    (closing it would not)."""
    connection = getattr(response.raw, "connection", None) or getattr(response.raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    response.close()


def _history_error(host: str, response: requests.Response, what: str) -> str:
    code = response.status_code
    if code == 404:
        return f"{host} has no {what.removeprefix('its ')} for this trial (404)"
    if code == 429:
        return f"{host} is rate limiting history requests (429) and kept doing so; {what} was not read"
    if code == 403:
        return f"{host} refused the request for {what} (403)"
    if code >= 500:
        return f"{host} kept answering {code} to the request for {what}"
    text = " ".join(response.text.split())[:200] or response.reason or ""
    return f"{host} answered {code} to the request for {what}: {text}".rstrip(": ")


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _nct_id(study: dict[str, Any]) -> str | None:
    value = get_path(study, ("protocolSection", "identificationModule", "nctId"))
    return value if isinstance(value, str) and value else None


def _listed(study: dict[str, Any]) -> Listed:
    """A listing entry, read defensively: a missing or malformed section reads as absent."""
    date = get_path(study, ("protocolSection", "statusModule", "lastUpdatePostDateStruct", "date"))
    aliases = get_path(study, ("protocolSection", "identificationModule", "nctIdAliases"))
    return Listed(
        _nct_id(study) or "",
        date if isinstance(date, str) else None,
        tuple(a for a in aliases if isinstance(a, str)) if isinstance(aliases, list) else (),
    )


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("too many 429", "rate limited: too many 429 answers"),
        ("too many 5", "server errors"),
        ("Name or service not known", "host not found"),
        ("Temporary failure in name resolution", "host not found"),
        ("timed out", "timed out"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "the server closed the connection"),
    ):
        if needle in text:
            return reason
    first = _without_credentials(text.splitlines()[0][:200]) if text else ""
    return first or type(exc).__name__
