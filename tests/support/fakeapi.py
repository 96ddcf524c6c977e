"""A fake ClinicalTrials.gov API v2: a real HTTP server on 127.0.0.1 serving a world of records.

It speaks the parts of the API trial watcher uses, the way the real one does: `/version`,
`/studies` (query.cond / query.intr / query.term, filter.overallStatus, filter.ids incl.
alias IDs, fields, pageSize capped at 1000, opaque nextPageToken, a full last page followed
by an empty one), `/studies/{nctId}` (301 for an alias, text/plain 404), and text/plain 400
for unknown parameters. Switches inject faults: a status on page N, a truncated body,
429s with Retry-After, latency. Used by the integration tests and by `bench/`.

It also serves the internal history routes the way the real `/api/int` does (shaped after the
recorded body in tests/fixtures/history): `/api/int/studies/{nct}/history` (the version index:
versions from 0, submission dates, statuses, module labels) and `…/history/{v}` (`{"studyVersion":
v, "study": {...}}`, text as HTML like the real versions, where the API v2 gives Markdown). Every
`edit()` appends a version; `add_version()` and `set_history()` write histories by hand. Faults:
a status (404, 403, 429, ...), an HTML page, a gap in the version numbers, a wrong shape.

Run it by hand:  python -m tests.support.fakeapi --port 8765 [records.json ...]
"""

from __future__ import annotations

import base64
import copy
import html
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Record = dict[str, Any]

PIECES = {
    "NCTId": "protocolSection.identificationModule.nctId",
    "NCTIdAlias": "protocolSection.identificationModule.nctIdAliases",
    "BriefTitle": "protocolSection.identificationModule.briefTitle",
    "OverallStatus": "protocolSection.statusModule.overallStatus",
    "LastUpdatePostDate": "protocolSection.statusModule.lastUpdatePostDateStruct",
    "HasResults": "hasResults",
}
KNOWN_PARAMS = {
    "query.cond", "query.intr", "query.term", "query.titles", "query.id", "filter.overallStatus", "filter.ids",
    "filter.advanced", "fields", "pageSize", "pageToken", "countTotal", "format", "markupFormat", "sort",
}  # fmt: skip


def _get(record: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def _put(target: Record, path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def project(record: Record, fields: list[str]) -> Record:
    out: Record = {}
    for name in fields:
        path = PIECES.get(name, name)
        value = _get(record, path)
        if value is not None:
            _put(out, path, copy.deepcopy(value))
    return out


def nct_id(record: Record) -> str:
    return record["protocolSection"]["identificationModule"]["nctId"]


def _texts(record: Record, *paths: str) -> str:
    found: list[str] = []
    for path in paths:
        value = _get(record, path)
        if isinstance(value, list):
            for item in value:
                found.append(json.dumps(item) if isinstance(item, dict) else str(item))
        elif value is not None:
            found.append(str(value))
    return " ".join(found).lower()


def matches(record: Record, params: dict[str, str]) -> bool:
    cond = params.get("query.cond")
    if cond and cond.lower().strip('"') not in _texts(
        record,
        "protocolSection.conditionsModule.conditions",
        "protocolSection.conditionsModule.keywords",
        "protocolSection.identificationModule.briefTitle",
        "protocolSection.identificationModule.officialTitle",
    ):
        return False
    intr = params.get("query.intr")
    if intr and intr.lower().strip('"') not in _texts(
        record,
        "protocolSection.armsInterventionsModule.interventions",
        "protocolSection.armsInterventionsModule.armGroups",
    ):
        return False
    term = params.get("query.term")
    if term and term.lower().strip('"') not in json.dumps(record).lower():
        return False
    statuses = params.get("filter.overallStatus")
    if statuses:
        wanted = {s.strip() for s in statuses.replace("|", ",").split(",")}
        if _get(record, "protocolSection.statusModule.overallStatus") not in wanted:
            return False
    ids = params.get("filter.ids")
    if ids:
        wanted = {s.strip().upper() for s in ids.replace("|", ",").split(",")}
        own = {nct_id(record), *(_get(record, "protocolSection.identificationModule.nctIdAliases") or [])}
        if not wanted & own:
            return False
    return True


@dataclass
class Faults:
    """Switches for the next requests. Counters go down as faults are served."""

    status_on_page: dict[int, int] = field(default_factory=dict)  # page number (1-based) → HTTP status
    status_on_page_times: int = 1_000_000  # how many times each page fault fires
    truncate_next: int = 0  # truncate the next N /studies bodies
    rate_limit_next: int = 0  # answer 429 to the next N requests
    retry_after: str | None = "1"
    server_error_next: int = 0  # answer 503 to the next N requests
    latency_s: float = 0.0
    fetch_latency_s: float = 0.0  # extra, only for full records (a /studies request without `fields`)
    version_down: bool = False
    extra_listing_entries: list[Any] = field(default_factory=list)  # raw entries added to every listing page
    trickle_next: int = 0  # send the next N bodies of full records a few bytes at a time
    trickle_s: float = 0.5  # ... waiting this long between pieces
    redirect_next: int = 0  # answer the next N requests with a redirect ...
    redirect_to: str = "http://elsewhere.example/api/v2/version"  # ... to here
    # the internal history routes: which of them misbehave ("all", "index" or "versions"), and how
    history_fault_on: str = "all"
    history_status: int | None = None  # answer this status (404, 403, 429, 503, ...)
    history_html: bool = False  # answer 200 with a web page instead of JSON
    history_gap: bool = False  # the index skips a version number
    history_wrong_shape: bool = False  # the index's changes are an object; a version holds no study


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (on purpose, in many tests) is not an error worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class FakeVersion:
    """A version of a study in the fake's history: its submission date, record and module labels."""

    date: str
    record: Record
    labels: list[str] | None


MODULE_LABELS = {
    "identificationModule": "Study Identification", "statusModule": "Study Status",
    "sponsorCollaboratorsModule": "Sponsor/Collaborators", "oversightModule": "Oversight",
    "descriptionModule": "Study Description", "conditionsModule": "Conditions", "designModule": "Study Design",
    "armsInterventionsModule": "Arms and Interventions", "outcomesModule": "Outcome Measures",
    "eligibilityModule": "Eligibility", "contactsLocationsModule": "Contacts/Locations",
    "referencesModule": "References", "ipdSharingStatementModule": "IPD Sharing Statement",
}  # fmt: skip
_HTML_FIELDS = (
    "protocolSection.identificationModule.briefTitle", "protocolSection.identificationModule.officialTitle",
    "protocolSection.statusModule.whyStopped", "protocolSection.sponsorCollaboratorsModule.leadSponsor.name",
)  # fmt: skip


def labels_between(before: Record, after: Record) -> list[str]:
    """The module labels the website would show for an update from `before` to `after`."""
    old, new = before.get("protocolSection", {}), after.get("protocolSection", {})
    labels = [label for key, label in MODULE_LABELS.items() if old.get(key) != new.get(key)]
    if before.get("resultsSection") != after.get("resultsSection"):
        labels.append("Outcome Measures (Results)")
    return labels


def as_html(text: str) -> str:
    """API v2 Markdown text as a version shows it: escapes undone, then HTML entities."""
    plain = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)
    return html.escape(plain).replace("/", "&#x2F;")


def version_body(record: Record) -> Record:
    """A record as the history routes serve a version: no derivedSection, text as HTML."""
    study = {k: copy.deepcopy(v) for k, v in record.items() if k != "derivedSection"}
    for path in _HTML_FIELDS:
        value = _get(study, path)
        if isinstance(value, str):
            _put(study, path, as_html(value))
    for site in _get(study, "protocolSection.contactsLocationsModule.locations") or []:
        if isinstance(site, dict) and isinstance(site.get("facility"), str):
            site["facility"] = as_html(site["facility"])
    return study


@dataclass
class Served:
    path: str
    params: dict[str, str]
    status: int
    bytes: int


class FakeRegistry:
    def __init__(self, records: Iterable[Record] = (), data_timestamp: str = "2026-11-24T09:00:05") -> None:
        self.records: dict[str, Record] = {}
        self.histories: dict[str, list[FakeVersion]] = {}
        self._hits_cache: dict[tuple[tuple[str, str], ...], list[Record]] = {}
        for record in records:
            self.put(record)
        self.data_timestamp = data_timestamp
        self.faults = Faults()
        self.log: list[Served] = []
        self.lock = threading.RLock()  # admin routes (bench) edit the world while a request holds it
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # --- the world -------------------------------------------------------------------

    def put(self, record: Record, copy_it: bool = True) -> None:
        self.records[nct_id(record)] = copy.deepcopy(record) if copy_it else record
        self._hits_cache.clear()

    def remove(self, study_id: str) -> None:
        self.records.pop(study_id)
        self._hits_cache.clear()

    def edit(self, study_id: str, change: Callable[[Record], None], bump: bool = True) -> None:
        """Change a record as a sponsor's update would, bumping lastUpdatePostDate. With `bump`
        (an update the registry posts) the study's history gains a version."""
        with self.lock:
            self.history(study_id)
            record = self.records[study_id]
            change(record)
            if bump:
                self.bump(study_id)
                self._append_version(study_id)
            self._hits_cache.clear()

    def bump(self, study_id: str) -> None:
        """Administrative churn only: move lastUpdatePostDate one day on (submitted the day before)."""
        status = self.records[study_id]["protocolSection"].setdefault("statusModule", {})
        struct = status.setdefault("lastUpdatePostDateStruct", {"date": "2026-01-01", "type": "ACTUAL"})
        posted = date.fromisoformat(struct["date"]) + timedelta(days=1)
        struct["date"] = posted.isoformat()
        status["lastUpdateSubmitDate"] = (posted - timedelta(days=1)).isoformat()

    # --- version histories -----------------------------------------------------------

    def history(self, study_id: str) -> list[FakeVersion]:
        """The study's versions; one (its record as it is now) until it is first edited."""
        if study_id not in self.histories:
            record = self.records[study_id]
            submitted = _get(record, "protocolSection.statusModule.lastUpdateSubmitDate") or "2020-01-01"
            self.histories[study_id] = [FakeVersion(submitted, copy.deepcopy(record), [])]
        return self.histories[study_id]

    def _append_version(self, study_id: str, labels: list[str] | None = None) -> None:
        versions = self.history(study_id)
        record = self.records[study_id]
        submitted = _get(record, "protocolSection.statusModule.lastUpdateSubmitDate")
        found = labels if labels is not None else labels_between(versions[-1].record, record)
        versions.append(FakeVersion(submitted, copy.deepcopy(record), found))

    def add_version(
        self, study_id: str, day: str, change: Callable[[Record], None] | None = None, labels: list[str] | None = None
    ) -> None:
        """An update submitted on `day` (posted the day after): the record changes and a version is added.
        `labels` default to the modules the change touched."""
        with self.lock:
            self.history(study_id)
            record = self.records[study_id]
            if change is not None:
                change(record)
            status = record["protocolSection"].setdefault("statusModule", {})
            status["lastUpdateSubmitDate"] = day
            posted = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
            status["lastUpdatePostDateStruct"] = {"date": posted, "type": "ACTUAL"}
            self._append_version(study_id, labels)
            self._hits_cache.clear()

    def set_history(self, study_id: str, versions: list[FakeVersion]) -> None:
        """A whole history at once; the study's current record becomes the last version's."""
        with self.lock:
            self.histories[study_id] = [FakeVersion(v.date, copy.deepcopy(v.record), v.labels) for v in versions]
            self.records[study_id] = copy.deepcopy(versions[-1].record)
            self._hits_cache.clear()

    def refresh(self, stamp: str | None = None) -> None:
        """The registry's nightly data refresh: a new dataTimestamp."""
        if stamp is None:
            day = date.fromisoformat(self.data_timestamp[:10]) + timedelta(days=1)
            stamp = f"{day.isoformat()}T09:00:05"
        self.data_timestamp = stamp

    # --- the server ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/api/v2"

    def start(self, port: int = 0) -> FakeRegistry:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else keep-alive requests stall ~40 ms on delayed ACKs

            def do_GET(self) -> None:
                registry._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> FakeRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_until_interrupted(self) -> None:
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            self.stop()

    def requests_to(self, path: str) -> list[Served]:
        return [s for s in self.log if s.path.endswith(path)]

    # --- request handling --------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        path = url.path
        latency = self.latency_for(path, params)
        if latency:
            time.sleep(latency)
        with self.lock:
            trickle = self.faults.trickle_next > 0 and path.endswith("/studies") and "fields" not in params
            if trickle:
                self.faults.trickle_next -= 1
            status, body, headers = self._route(path, params)
            self.log.append(Served(path, params, status, len(body)))
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            if trickle:  # a server that sends its answer a few bytes at a time, never quite stalling
                for start in range(0, len(body), 64):
                    handler.wfile.write(body[start : start + 64])
                    handler.wfile.flush()
                    time.sleep(self.faults.trickle_s)
            else:
                handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: that is what some tests check

    def latency_for(self, path: str, params: dict[str, str] | None = None) -> float:
        full_records = path.endswith("/studies") and params is not None and "fields" not in params
        return self.faults.latency_s + (self.faults.fetch_latency_s if full_records else 0.0)

    def _route(self, path: str, params: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        faults = self.faults
        if faults.redirect_next:
            faults.redirect_next -= 1
            return 302, b"", {"Location": faults.redirect_to}
        if faults.rate_limit_next:
            faults.rate_limit_next -= 1
            headers = {"Content-Type": "text/plain"}
            if faults.retry_after is not None:
                headers["Retry-After"] = faults.retry_after
            return 429, b"Too Many Requests", headers
        if faults.server_error_next:
            faults.server_error_next -= 1
            return 503, b"upstream connect error", {"Content-Type": "text/plain"}
        if path == "/api/v2/version":
            if faults.version_down:
                return 503, b"unavailable", {"Content-Type": "text/plain"}
            return self._json({"apiVersion": "2.0.5", "dataTimestamp": self.data_timestamp})
        if path == "/api/v2/studies":
            return self._studies(params)
        if path.startswith("/api/v2/studies/"):
            return self._study(path.rsplit("/", 1)[1], params)
        if path.startswith("/api/int/studies/"):
            return self._history_route(path.removeprefix("/api/int/studies/").split("/"))
        return 404, b"<html><body>404 Not Found</body></html>", {"Content-Type": "text/html"}

    @staticmethod
    def _json(data: Any) -> tuple[int, bytes, dict[str, str]]:
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        return 200, body, {"Content-Type": "application/json"}

    def _studies(self, params: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        for key in params:
            if key not in KNOWN_PARAMS:
                return 400, f"`{key}` is unknown parameter".encode(), {"Content-Type": "text/plain"}
        try:
            size = int(params.get("pageSize", "10") or 10)
        except ValueError:
            return 400, b"pageSize must be an integer", {"Content-Type": "text/plain"}
        size = min(size or 10, 1000)
        offset = 0
        if params.get("pageToken"):
            try:
                offset = int(base64.urlsafe_b64decode(params["pageToken"] + "==").decode().split(":")[1])
            except (ValueError, IndexError):
                return 400, b"Invalid page token", {"Content-Type": "text/plain"}
        page_number = offset // size + 1
        fault = self.faults.status_on_page.get(page_number)
        if fault and self.faults.status_on_page_times > 0:
            self.faults.status_on_page_times -= 1
            return fault, b"upstream request timeout", {"Content-Type": "text/plain"}
        hits = self.hits(params)
        chunk = hits[offset : offset + size]
        fields = [f for f in params.get("fields", "").replace("|", ",").split(",") if f]
        page: dict[str, Any] = {"studies": [project(r, fields) if fields else r for r in chunk]}
        if fields and self.faults.extra_listing_entries:
            page["studies"] += self.faults.extra_listing_entries
        if params.get("countTotal") == "true" and not params.get("pageToken"):
            page["totalCount"] = len(hits)
        if len(chunk) == size:  # like the real API: a full page always carries a token
            page["nextPageToken"] = base64.urlsafe_b64encode(f"p:{offset + size}".encode()).decode().rstrip("=")
        status, body, headers = self._json(page)
        if self.faults.truncate_next:
            self.faults.truncate_next -= 1
            body = body[: len(body) // 2]
        return status, body, headers

    def hits(self, params: dict[str, str]) -> list[Record]:
        """The records a query selects, in the world's order (cached until the world changes)."""
        query = {k: v for k, v in params.items() if k not in ("pageSize", "pageToken", "fields", "countTotal")}
        key = tuple(sorted(query.items()))
        if key not in self._hits_cache:
            if set(query) == {"filter.ids"}:  # a direct look-up, as a real index would do it
                wanted = [s.strip().upper() for s in query["filter.ids"].replace("|", ",").split(",")]
                if all(n in self.records for n in wanted):
                    self._hits_cache[key] = [self.records[n] for n in dict.fromkeys(wanted)]
                else:  # alias IDs: scan
                    self._hits_cache[key] = [r for r in self.records.values() if matches(r, query)]
            else:
                self._hits_cache[key] = [r for r in self.records.values() if matches(r, query)]
            if len(self._hits_cache) > 256:
                self._hits_cache.pop(next(iter(self._hits_cache)))
        return self._hits_cache[key]

    def _history_route(self, parts: list[str]) -> tuple[int, bytes, dict[str, str]]:
        if len(parts) not in (2, 3) or parts[1] != "history":
            return 404, b"<html><body>404 Not Found</body></html>", {"Content-Type": "text/html"}
        study_id, version = parts[0].upper(), parts[2] if len(parts) == 3 else None
        faults = self.faults
        if faults.history_fault_on in ("all", "versions" if version is not None else "index"):
            if faults.history_status is not None:
                headers = {"Content-Type": "text/plain"}
                if faults.history_status == 429 and faults.retry_after is not None:
                    headers["Retry-After"] = faults.retry_after
                return faults.history_status, f"Error {faults.history_status}".encode(), headers
            if faults.history_html:
                page = b"<!DOCTYPE html><html><head><title>ClinicalTrials.gov</title></head><body>...</body></html>"
                return 200, page, {"Content-Type": "text/html; charset=utf-8"}
        if study_id not in self.records:
            return 404, f"Study not found: {study_id}".encode(), {"Content-Type": "text/plain"}
        versions = self.history(study_id)
        if version is None:
            changes = [
                {"version": n, "date": v.date, "status": _get(v.record, "protocolSection.statusModule.overallStatus"),
                 "studyType": _get(v.record, "protocolSection.designModule.studyType"),
                 "moduleLabels": v.labels, "lastUpdateSubmitQcDate": v.date}
                for n, v in enumerate(versions)
            ]  # fmt: skip
            for entry in changes:
                if entry["moduleLabels"] is None:
                    del entry["moduleLabels"]
            if faults.history_gap and faults.history_fault_on in ("all", "index") and len(changes) > 2:
                del changes[1]
            body: Any = {"changes": changes, "originalData": {}, "lastUpdateVersions": {}, "outcomesUpdateCount": 0}
            if faults.history_wrong_shape and faults.history_fault_on in ("all", "index"):
                body["changes"] = {str(c["version"]): c for c in changes}
            return self._json(body)
        try:
            number = int(version)
            found = versions[number]
        except (ValueError, IndexError):
            return 404, f"Version not found: {version}".encode(), {"Content-Type": "text/plain"}
        if faults.history_wrong_shape and faults.history_fault_on in ("all", "versions"):
            return self._json({"studyVersion": number, "studyData": {}})
        return self._json({"studyVersion": number, "study": version_body(found.record)})

    def _study(self, wanted: str, params: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        wanted = wanted.upper()
        if wanted in self.records:
            return self._json(self.records[wanted])
        for record in self.records.values():
            if wanted in (_get(record, "protocolSection.identificationModule.nctIdAliases") or []):
                return 301, b"", {"Location": f"/api/v2/studies/{nct_id(record)}"}
        return 404, f"Study not found: {wanted}".encode(), {"Content-Type": "text/plain"}


def main() -> None:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("records", nargs="*", type=Path, help="study JSON files (default: the test world)")
    args = parser.parse_args()
    if args.records:
        records = [json.loads(p.read_text()) for p in args.records]
    else:
        from tests.support.world import mg_world

        records = list(mg_world().values())
    fake = FakeRegistry(records)
    if not args.records:  # and NCT03690141's version history, for `watcher history NCT03690141 --registry`
        from tests.support.world import HISTORY_STUDY, history_versions

        fake.set_history(HISTORY_STUDY, history_versions())
    fake.start(args.port)
    print(f"fake ClinicalTrials.gov API serving {len(fake.records)} studies at {fake.base_url}", flush=True)
    fake.serve_until_interrupted()


if __name__ == "__main__":
    main()
