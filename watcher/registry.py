"""The ClinicalTrials.gov API v2 client: the only module that speaks HTTP.

One `requests.Session` with timeouts and urllib3's `Retry` (exponential backoff with
jitter, `Retry-After` honoured) for 429, 5xx and connection errors. Bodies that are not
complete JSON of the expected shape are errors, never data.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from watcher import __version__
from watcher.config import CtgovSettings
from watcher.errors import Cancelled, RegistryError

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
# filter.ids batches stay well under common URL length limits (~12 characters an ID)
IDS_PER_REQUEST = 250
MAX_PAGES = 2000
RETRY_STATUSES = (429, 500, 502, 503, 504)

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
    requests: int = 0
    bytes: int = 0


class _CountingRetry(Retry):
    """urllib3's Retry, also counting each retried attempt into the client's traffic."""

    traffic: Traffic | None = None

    def new(self, **kw: Any) -> _CountingRetry:
        fresh = super().new(**kw)
        fresh.traffic = self.traffic
        return fresh

    def increment(self, *args: Any, **kwargs: Any) -> _CountingRetry:
        fresh = super().increment(*args, **kwargs)  # raises once retries are used up
        if self.traffic is not None:
            self.traffic.requests += 1
        return fresh


def user_agent(contact: str | None) -> str:
    # Keep the library's own token: the registry's edge rejects spoofed agents.
    agent = f"{requests.utils.default_user_agent()} trial-watcher/{__version__}"
    return f"{agent} (+{contact})" if contact else agent


class Registry:
    def __init__(self, settings: CtgovSettings, cancel: threading.Event | None = None) -> None:
        self.settings = settings
        self.cancel = cancel
        self.base_url = settings.base_url
        self.traffic = Traffic()
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": user_agent(settings.contact), "Accept": "application/json"})
        retry = _CountingRetry(
            total=settings.retries,
            connect=settings.retries,
            read=settings.retries,
            status=settings.retries,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET"}),
            backoff_factor=settings.backoff_s,
            backoff_max=60,
            backoff_jitter=settings.backoff_s / 4,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        retry.traffic = self.traffic
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

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


def _http_error(response: requests.Response) -> str:
    text = " ".join(response.text.split())[:300] or response.reason or ""
    if response.status_code == 429:
        return "ClinicalTrials.gov is rate limiting us (429) and kept doing so; try again later"
    if response.status_code >= 500:
        return f"ClinicalTrials.gov answered {response.status_code} {text}".rstrip()
    if response.status_code == 403:
        return f"ClinicalTrials.gov refused the request (403): {text}"
    return f"ClinicalTrials.gov rejected the request ({response.status_code}): {text}"
