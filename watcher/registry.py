"""The ClinicalTrials.gov client: the only module that speaks HTTP.

One `requests.Session` with timeouts and urllib3's `Retry` (exponential backoff with
jitter, `Retry-After` honoured) for 429, 5xx and connection errors. Bodies that are not
complete JSON of the expected shape are errors, never data.

Besides the API v2 it reads the registry's version history on its internal API (`/api/int`,
undocumented, not a contract), strictly one request at a time and at most one a second (the
site's robots rules ask for a crawl delay of 1 s, and that API answers 429 to more). Any
failure there is a `HistoryUnavailable`, so that callers can fall back to a plain diff.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from watcher import __version__
from watcher.config import CtgovSettings
from watcher.errors import Cancelled, HistoryUnavailable, RegistryError
from watcher.history import VersionIndex, parse_index, parse_version

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
# filter.ids batches stay well under common URL length limits (~12 characters an ID)
IDS_PER_REQUEST = 250
MAX_PAGES = 2000
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


class _CountingRetry(Retry):
    """urllib3's Retry, also counting each retried attempt into the client's traffic; for the
    internal API it never retries sooner than `min_backoff_s` (urllib3 retries the first time at once)."""

    traffic: Traffic | None = None
    internal_api: bool = False
    min_backoff_s: float = 0.0

    def new(self, **kw: Any) -> _CountingRetry:
        fresh = super().new(**kw)
        fresh.traffic, fresh.internal_api, fresh.min_backoff_s = self.traffic, self.internal_api, self.min_backoff_s
        return fresh

    def increment(self, *args: Any, **kwargs: Any) -> _CountingRetry:
        fresh = super().increment(*args, **kwargs)  # raises once retries are used up
        if self.traffic is not None:
            self.traffic.requests += 1
            if self.internal_api:
                self.traffic.history_requests += 1
        return fresh

    def get_backoff_time(self) -> float:
        return max(super().get_backoff_time(), self.min_backoff_s)


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
        self, settings: CtgovSettings, cancel: threading.Event | None = None, pacer: Pacer | None = None
    ) -> None:
        self.settings = settings
        self.cancel = cancel
        self.base_url = settings.base_url
        self.int_base = settings.int_base
        self.pacer = pacer or int_pacer(cancel)
        self.traffic = Traffic()
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": user_agent(settings.contact), "Accept": "application/json"})
        adapter = HTTPAdapter(max_retries=self._retry())
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # the same session and policy for the internal API, but no retry sooner than its pace allows
        # (requests picks the adapter with the longest matching prefix)
        self.session.mount(f"{self.int_base}/", HTTPAdapter(max_retries=self._retry(internal_api=True)))

    def _retry(self, internal_api: bool = False) -> _CountingRetry:
        retries = self.settings.retries
        retry = _CountingRetry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET"}),
            backoff_factor=self.settings.backoff_s,
            backoff_max=60,
            backoff_jitter=self.settings.backoff_s / 4,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        retry.traffic, retry.internal_api = self.traffic, internal_api
        retry.min_backoff_s = self.pacer.interval_s if internal_api else 0.0
        return retry

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- raw requests -------------------------------------------------------------------

    def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        url = f"{self.base_url}/{path.lstrip('/')}"
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("stopping: no further requests")
        tries = self.settings.retries + 1
        self.traffic.requests += 1
        try:
            response = self.session.get(url, params=params, timeout=self.settings.timeout_s)
        except requests.exceptions.RetryError as exc:
            raise RegistryError(f"ClinicalTrials.gov kept failing after {tries} tries ({_reason(exc)})") from None
        except requests.exceptions.Timeout:
            raise RegistryError(
                f"ClinicalTrials.gov did not answer within {self.settings.timeout_s:g} s after {tries} tries"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            raise RegistryError(f"ClinicalTrials.gov did not answer after {tries} tries ({_reason(exc)})") from None
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"request to ClinicalTrials.gov failed ({exc})") from None
        body = response.content
        self.traffic.bytes += len(body)
        log.debug("GET %s -> %s (%d bytes)", response.url, response.status_code, len(body))
        if response.status_code != 200:
            raise RegistryError(_http_error(response))
        try:
            return json.loads(body)
        except ValueError:
            kind = response.headers.get("Content-Type", "unknown type")
            raise RegistryError(
                f"ClinicalTrials.gov sent a body that is not complete JSON "
                f"({kind}, {len(body)} bytes) for {response.url}"
            ) from None

    def get_history_json(self, path: str, nct_id: str, what: str) -> Any:
        """A body from the internal API, paced; every failure is a one-line `HistoryUnavailable`."""
        url = f"{self.int_base}/{path.lstrip('/')}"
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("stopping: no further requests")
        self.pacer.before()
        tries = self.settings.retries + 1
        self.traffic.requests += 1
        self.traffic.history_requests += 1
        try:
            response = self.session.get(url, timeout=self.settings.timeout_s)
        except requests.exceptions.RetryError as exc:
            raise HistoryUnavailable(
                f"{nct_id}: ClinicalTrials.gov kept failing on {what} after {tries} tries ({_reason(exc)})"
            ) from None
        except requests.exceptions.Timeout:
            raise HistoryUnavailable(
                f"{nct_id}: ClinicalTrials.gov did not send {what} within {self.settings.timeout_s:g} s"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise HistoryUnavailable(f"{nct_id}: ClinicalTrials.gov did not send {what} ({_reason(exc)})") from None
        finally:
            self.pacer.after()
        body = response.content
        self.traffic.bytes += len(body)
        self.traffic.history_bytes += len(body)
        log.debug("GET %s -> %s (%d bytes)", response.url, response.status_code, len(body))
        if response.status_code != 200:
            raise HistoryUnavailable(f"{nct_id}: {_history_error(response, what)}")
        kind = response.headers.get("Content-Type", "unknown type")
        if "html" in kind.lower() or body.lstrip()[:1] == b"<":
            raise HistoryUnavailable(f"{nct_id}: ClinicalTrials.gov sent a web page instead of {what}")
        try:
            return json.loads(body)
        except ValueError:
            raise HistoryUnavailable(
                f"{nct_id}: ClinicalTrials.gov sent {what} in a body that is not complete JSON "
                f"({kind}, {len(body)} bytes)"
            ) from None

    # --- endpoints ----------------------------------------------------------------------

    def data_timestamp(self) -> str:
        """`/version`'s dataTimestamp: when the registry's data was last refreshed."""
        body = self.get_json("version")
        stamp = body.get("dataTimestamp") if isinstance(body, dict) else None
        if not isinstance(stamp, str) or not stamp:
            raise RegistryError("ClinicalTrials.gov /version answered without a dataTimestamp")
        return stamp

    def pages(self, params: dict[str, str]) -> Iterator[list[dict[str, Any]]]:
        """Every page of a `/studies` query, following nextPageToken."""
        params = {**params, "pageSize": str(PAGE_SIZE)}
        seen_tokens: set[str] = set()
        for _ in range(MAX_PAGES):
            body = self.get_json("studies", params)
            if not isinstance(body, dict) or not isinstance(body.get("studies", []), list):
                raise RegistryError("ClinicalTrials.gov sent a /studies page without a list of studies")
            studies = body.get("studies", [])
            for study in studies:
                if not isinstance(study, dict) or not _nct_id(study):
                    raise RegistryError("ClinicalTrials.gov sent a study without an NCT ID")
            if studies:
                yield studies
            token = body.get("nextPageToken")
            if not token or not studies:
                return
            if token in seen_tokens:
                raise RegistryError("ClinicalTrials.gov repeated a page token; stopped paging to avoid a loop")
            seen_tokens.add(token)
            params = {**params, "pageToken": token}
        raise RegistryError(f"ClinicalTrials.gov paging did not end after {MAX_PAGES} pages")

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


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _nct_id(study: dict[str, Any]) -> str | None:
    ident = study.get("protocolSection", {}).get("identificationModule", {})
    value = ident.get("nctId") if isinstance(ident, dict) else None
    return value if isinstance(value, str) else None


def _listed(study: dict[str, Any]) -> Listed:
    section = study.get("protocolSection", {})
    date = section.get("statusModule", {}).get("lastUpdatePostDateStruct", {}).get("date")
    aliases = section.get("identificationModule", {}).get("nctIdAliases") or ()
    return Listed(_nct_id(study) or "", date, tuple(aliases))


def _reason(exc: Exception) -> str:
    text = str(exc)
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("too many 429", "rate limited: too many 429 answers"),
        ("too many 5", "server errors"),
        ("Name or service not known", "host not found"),
        ("timed out", "timed out"),
    ):
        if needle in text:
            return reason
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _history_error(response: requests.Response, what: str) -> str:
    code = response.status_code
    if code == 404:
        return f"ClinicalTrials.gov has no {what.removeprefix('its ')} for this trial (404)"
    if code == 429:
        return f"ClinicalTrials.gov is rate limiting history requests (429) and kept doing so; {what} was not read"
    if code == 403:
        return f"ClinicalTrials.gov refused the request for {what} (403)"
    if code >= 500:
        return f"ClinicalTrials.gov kept answering {code} to the request for {what}"
    text = " ".join(response.text.split())[:200] or response.reason or ""
    return f"ClinicalTrials.gov answered {code} to the request for {what}: {text}".rstrip(": ")


def _http_error(response: requests.Response) -> str:
    text = " ".join(response.text.split())[:300] or response.reason or ""
    if response.status_code == 429:
        return "ClinicalTrials.gov is rate limiting us (429) and kept doing so; try again later"
    if response.status_code >= 500:
        return f"ClinicalTrials.gov answered {response.status_code} {text}".rstrip()
    if response.status_code == 403:
        return f"ClinicalTrials.gov refused the request (403): {text}"
    return f"ClinicalTrials.gov rejected the request ({response.status_code}): {text}"
