"""Pure: a study's version history as the registry keeps it. No I/O.

ClinicalTrials.gov keeps every version of every record and serves them on its internal API
(what the website's "History of Changes" tab reads; undocumented, not a contract). This
module checks those bodies before anything uses them, decides which versions are worth
fetching, makes version records (HTML text) and API v2 records (Markdown text) comparable,
finds which version a stored record is, and tells the story: a status timeline from the
index alone, and the field-level changes between fetched versions, found by the same differ
(`watcher.differ.diff`) and worded in the same words (`watcher.wording.describe_all`) as
digests.

A version's `date` is when it was submitted (quality-checked), usually a few days before it
was posted; everything shown from here says so.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import pairwise
from typing import Any

from watcher.changes import Change
from watcher.config import HistoryMode
from watcher.differ import Record, diff, get_path
from watcher.errors import HistoryUnavailable
from watcher.fields import (
    HAS_RESULTS,
    LOCATIONS_PATH,
    RESULTS_FIRST_POSTED,
    TRACKED_FIELDS,
    Compare,
    status_label,
)
from watcher.wording import Line, describe_all

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


# --- the index -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One entry of a study's version index."""

    number: int  # from 0 (the first posted record), without gaps
    date: str  # YYYY-MM-DD: when this version was submitted, usually days before it was posted
    status: str  # the overall status in this version (the registry's code)
    module_labels: tuple[str, ...] | None = None  # what the submission touched; None when not said


@dataclass(frozen=True)
class VersionIndex:
    nct_id: str
    versions: tuple[Version, ...]  # by number: versions[n].number == n

    @property
    def latest(self) -> Version:
        return self.versions[-1]

    def __len__(self) -> int:
        return len(self.versions)


def _unexpected(nct_id: str, reason: str) -> HistoryUnavailable:
    return HistoryUnavailable(
        f"{nct_id}: the registry's version history has an unexpected shape ({reason})", study_only=True
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_index(nct_id: str, body: Any) -> VersionIndex:
    """The version index (`GET …/api/int/studies/{nct}/history`), checked.

    Wants `changes`: one entry per version, numbered from 0 without gaps, each with a
    YYYY-MM-DD `date` and a `status`; `moduleLabels` may be missing; other keys are ignored.
    The `?history=true` form (`{"history": {"changes": [...]}}`) is read too. Anything else
    raises HistoryUnavailable with the reason.
    """
    if not isinstance(body, dict):
        raise _unexpected(nct_id, "not a JSON object")
    changes = body.get("changes")
    if changes is None and isinstance(body.get("history"), dict):
        changes = body["history"].get("changes")
    if not isinstance(changes, list):
        raise _unexpected(nct_id, "no list of versions")
    if not changes:
        raise _unexpected(nct_id, "no versions at all")
    found: dict[int, Version] = {}
    for position, entry in enumerate(changes):
        if not isinstance(entry, dict):
            raise _unexpected(nct_id, f"entry {position} is not an object")
        number = entry.get("version")
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise _unexpected(nct_id, f"entry {position} has no version number")
        day = entry.get("date")
        if not isinstance(day, str) or not _DAY.fullmatch(day) or not _valid_day(day):
            raise _unexpected(nct_id, f"version {number} has no YYYY-MM-DD date: {_shown(day)}")
        status = entry.get("status")
        if not isinstance(status, str) or not status:
            raise _unexpected(nct_id, f"version {number} has no status")
        labels = entry.get("moduleLabels")
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
            raise _unexpected(nct_id, f"version {number}'s moduleLabels is not a list of strings")
        if number in found:
            raise _unexpected(nct_id, f"version {number} is listed twice")
        found[number] = Version(number, day, status, tuple(labels) if labels is not None else None)
    for expected in range(len(found)):
        if expected not in found:
            raise _unexpected(nct_id, f"version {expected} is missing from versions 0 to {max(found)}")
    return VersionIndex(nct_id, tuple(found[n] for n in range(len(found))))


def _valid_day(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def parse_version(nct_id: str, number: int, body: Any) -> Record:
    """A version's record (`GET …/history/{number}`), checked: `{"studyVersion": n, "study": {...}}`,
    or a bare record with a `protocolSection`. Returns the record in the API v2 shape."""
    if not isinstance(body, dict):
        raise _unexpected(nct_id, f"version {number} is not a JSON object")
    if "study" in body:
        served = body.get("studyVersion")
        if served is not None and (not _is_int(served) or served != number):
            raise _unexpected(nct_id, f"asked for version {number}, got version {_shown(served)}")
        study = body["study"]
    elif "protocolSection" in body:
        study = body
    else:
        raise _unexpected(nct_id, f"version {number} holds no study record")
    if not isinstance(study, dict) or not isinstance(study.get("protocolSection"), dict):
        raise _unexpected(nct_id, f"version {number} has no protocolSection")
    ident = study["protocolSection"].get("identificationModule")
    if ident is not None and not isinstance(ident, dict):
        raise _unexpected(nct_id, f"version {number}'s identificationModule is not an object")
    own = ident.get("nctId") if ident else None
    if own is not None and own != nct_id:
        raise _unexpected(nct_id, f"version {number} is a record of {_shown(own)}")
    record: Record = study
    if own is None:  # the differ names changes after the record's own ID
        record = _with(record, ("protocolSection", "identificationModule", "nctId"), nct_id)
    return record


# --- comparing versions with API v2 records ----------------------------------------------------

# Version records carry HTML text (`<mark>CRPC</mark>`, `&amp;`, `&#x2F;`); API v2 records carry
# Markdown (`\[PAP\]`, `*in vitro*`). Both are reduced to the plain text a reader sees.
_TAG = re.compile(r"(?<!\\)<(/?)([A-Za-z][A-Za-z0-9]*)\b[^<>]*>")
_BLOCK_TAGS = frozenset({"br", "p", "div", "li", "ul", "ol", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6"})
_MARKDOWN_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_EMPHASIS = re.compile(r"(?<!\w)(\*\*|__|\*|_)(?=\S)(.+?)(?<=\S)\1(?!\w)")


def plain_text(value: str) -> str:
    """Registry text as a reader sees it, whether it came as HTML or as Markdown: tags dropped,
    Markdown escapes and emphasis undone, entities unescaped, whitespace collapsed."""
    text = _TAG.sub(lambda m: " " if m[2].lower() in _BLOCK_TAGS else "", value)
    text = _MARKDOWN_ESCAPE.sub(r"\1", text)
    text = html.unescape(text)
    previous = None
    while previous != text:  # nested emphasis: ***both***
        previous, text = text, _EMPHASIS.sub(r"\2", text)
    return " ".join(text.split())


_TEXT_FIELDS = tuple(f.keys for f in TRACKED_FIELDS if f.compare is Compare.TEXT)
_SITE_TEXT = ("facility", "city", "state", "country")


def _with(record: Record, keys: Sequence[str], value: Any) -> Record:
    """A copy of `record` with `value` at `keys`, copying only the dicts along the way."""
    head, *rest = keys
    inner = record.get(head)
    return {**record, head: _with(inner if isinstance(inner, dict) else {}, rest, value) if rest else value}


def comparable(record: Record) -> Record:
    """The record with its tracked text in plain text, so that a version (HTML) and an API v2
    record (Markdown) of the same content diff to nothing.

    Tracked text fields (title, why stopped, lead sponsor) and the parts naming a site are made
    plain; a version without `hasResults` gets it from whether results were posted. The record
    passed in is not changed.
    """
    out = record
    for keys in _TEXT_FIELDS:
        value = get_path(out, keys)
        if isinstance(value, str):
            out = _with(out, keys, plain_text(value))
    locations = get_path(out, LOCATIONS_PATH.split("."))
    if isinstance(locations, list):
        plain = [
            {**site, **{k: plain_text(site[k]) for k in _SITE_TEXT if isinstance(site.get(k), str)}}
            if isinstance(site, dict)
            else site
            for site in locations
        ]
        out = _with(out, LOCATIONS_PATH.split("."), plain)
    if HAS_RESULTS not in out:
        posted = get_path(out, RESULTS_FIRST_POSTED.split(".")) or out.get("resultsSection")
        out = {**out, HAS_RESULTS: bool(posted)}
    return out


def diff_versions(old: Record, new: Record) -> list[Change]:
    """The differ over two records of which either or both may be registry versions."""
    return diff(comparable(old), comparable(new))


# --- which versions are worth fetching ---------------------------------------------------------

# The website's module labels, by the tracked fields a submission under them can change.
_MODULE_OF_LABEL = {
    "Study Status": "statusModule",
    "Study Design": "designModule",
    "Study Identification": "identificationModule",
    "Sponsor/Collaborators": "sponsorCollaboratorsModule",
    "Oversight": "sponsorCollaboratorsModule",  # the site shows sponsor edits under it at times
    "Contacts/Locations": "contactsLocationsModule",
}
_RESULTS_LABELS = frozenset({
    "Participant Flow", "Baseline Characteristics", "Outcome Measures (Results)", "Adverse Events",
    "More Information", "Limitations and Caveats", "Certain Agreements", "Results",
})  # fmt: skip
# Labels of modules holding no tracked field: a version touching only these changes nothing we show.
UNTRACKED_LABELS = frozenset({
    "Arms and Interventions", "Outcome Measures", "Eligibility", "Study Description", "Conditions",
    "References", "IPD Sharing Statement", "Document Section",
})  # fmt: skip
_TRACKED_PATHS = (*(f.path for f in TRACKED_FIELDS), LOCATIONS_PATH)


def fields_of_label(label: str) -> frozenset[str] | None:
    """The tracked paths a submission under `label` can change; None for a label not known here."""
    if label in UNTRACKED_LABELS:
        return frozenset()
    if label in _RESULTS_LABELS or "(Results)" in label:
        return frozenset({HAS_RESULTS, RESULTS_FIRST_POSTED})
    module = _MODULE_OF_LABEL.get(label)
    if module is None:
        return None
    paths = {p for p in _TRACKED_PATHS if p.startswith(f"protocolSection.{module}.")}
    if module == "statusModule":  # results are posted with a status-module submission
        paths.add(HAS_RESULTS)
    return frozenset(paths)


def may_touch_tracked(version: Version, previous: Version | None = None) -> bool:
    """Whether this version can have changed a tracked field: its status differs from the
    previous version's, or its labels name a module holding one. Missing, empty or unknown
    labels count as yes: fetching one version too many is better than missing a change."""
    if previous is not None and previous.status != version.status:
        return True
    if not version.module_labels:
        return True
    return any(fields_of_label(label) != frozenset() for label in version.module_labels)


def versions_to_fetch(index: VersionIndex, after: int | None = None) -> list[int]:
    """The versions whose records tell every tracked change: with `after`, those after that
    version (by number) that may touch a tracked field; without, version 0 (the start) too."""
    start = 0 if after is None else after + 1
    wanted = [
        v.number
        for v in index.versions[start:]
        if may_touch_tracked(v, index.versions[v.number - 1] if v.number else None)
    ]
    if after is None and 0 not in wanted:
        wanted.insert(0, 0)
    return wanted


# --- when a sync asks for history ------------------------------------------------------------

# The registry refreshes its data once a working day; more than this between two good syncs
# means refreshes, and so versions, may have been missed (downtime, failed syncs, a stopped daemon).
MISSED_REFRESH = timedelta(hours=30)


def asks_for_history(mode: HistoryMode, previous_stamp: str | None, current_stamp: str) -> bool:
    """Whether a sync asks for the version history of the studies that changed, given the registry's
    `dataTimestamp` at the last good sync and now. The first sync (a silent baseline) never does;
    `gaps` only when the data moved by more than one daily refresh; `always` whenever it syncs."""
    if mode is HistoryMode.OFF or previous_stamp is None:
        return False
    if mode is HistoryMode.ALWAYS:
        return True
    try:
        moved = datetime.fromisoformat(current_stamp) - datetime.fromisoformat(previous_stamp)
    except ValueError:
        return True  # a stamp we cannot read: be safe, look
    return moved > MISSED_REFRESH


# --- which version a stored record is ---------------------------------------------------------


def submitted_on(record: Mapping[str, Any]) -> str | None:
    """A record's `lastUpdateSubmitDate`: the date of the version it is."""
    submitted = get_path(record, ("protocolSection", "statusModule", "lastUpdateSubmitDate"))
    return submitted if isinstance(submitted, str) else None


def version_of(index: VersionIndex, record: Mapping[str, Any]) -> Version | None:
    """The version a stored API v2 record is, or None when none matches.

    A record is the version whose `date` is its `lastUpdateSubmitDate`. Versions are taken in
    number order, never date order (dates need not grow with numbers). When several share the
    date, the lowest-numbered one is returned: replaying from it can only re-find content the
    record already holds (which diffs to nothing), never skip a change.
    """
    return version_on(index, submitted_on(record))


def version_on(index: VersionIndex, submitted: str | None, newest: bool = False) -> Version | None:
    """The version submitted on that date: the lowest-numbered of those sharing it (see
    `version_of`), or with `newest` the highest (a freshly fetched record is the newest of them)."""
    versions = reversed(index.versions) if newest else iter(index.versions)
    return next((v for v in versions if v.date == submitted), None) if submitted else None


# --- replaying the versions missed between two polls -----------------------------------------

# The most version records one sync reads; the rest wait for the next sync.
VERSIONS_PER_SYNC = 200


@dataclass(frozen=True)
class ReplayPlan:
    """How to tell what happened to a study between the stored record and the fetched one."""

    index: VersionIndex
    anchor: Version  # the version the stored record is
    target: Version  # the version the fetched record is
    between: tuple[int, ...]  # the versions in between worth reading, by number

    @property
    def nct_id(self) -> str:
        return self.index.nct_id


def plan_replay(index: VersionIndex, stored_on: str | None, fetched_on: str | None) -> ReplayPlan:
    """Which versions lie between a stored record and a fresh one, given the dates they were
    submitted on. Raises HistoryUnavailable (for this study only) when the index does not hold both."""
    nct_id = index.nct_id
    anchor, target = version_on(index, stored_on), version_on(index, fetched_on, newest=True)
    if anchor is None:
        raise HistoryUnavailable(
            f"{nct_id}: the registry's version history has no version submitted on {stored_on} (the stored record)",
            study_only=True,
        )
    if target is None or target.number < anchor.number:
        raise HistoryUnavailable(
            f"{nct_id}: the registry's version history has no version submitted on {fetched_on} "
            "(the record just fetched) after the stored one",
            study_only=True,
        )
    between = tuple(n for n in versions_to_fetch(index, after=anchor.number) if n < target.number)
    return ReplayPlan(index, anchor, target, between)


def replay(stored: Record, steps: Sequence[tuple[Version, Record]]) -> list[tuple[Version, list[Change]]]:
    """What each version changed, in order: the stored record against the first version read,
    then each against the next; the last step is the fetched record itself, as its version.
    A version not read touched no tracked field, so a change belongs to the next version read."""
    told: list[tuple[Version, list[Change]]] = []
    before = stored
    for version, record in steps:
        told.append((version, diff_versions(before, record)))
        before = record
    return told


def replay_pending(versions: Sequence[Version], stored: Mapping[str, Any]) -> bool:
    """Whether versions after a stored record are already known (stored from an earlier sync
    that left the study for later, or from `history --registry`): then its next change is
    replayed whatever the history mode."""
    if not versions:
        return False
    ordered = tuple(sorted(versions, key=lambda v: v.number))
    anchor = version_of(VersionIndex("", ordered), stored)
    return anchor is not None and ordered[-1].number > anchor.number


# --- the story -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusPoint:
    version: int
    date: str
    status: str


@dataclass(frozen=True)
class VersionEvent:
    """What one version changed in the tracked fields, in data and in words."""

    version: Version
    changes: tuple[Change, ...]
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class Timeline:
    index: VersionIndex
    first: str  # version 0 in words: "First submitted · Not yet recruiting · 30 participants planned · 10 sites"
    statuses: tuple[StatusPoint, ...]
    events: tuple[VersionEvent, ...]  # versions after 0 that changed a tracked field, by number


def status_timeline(index: VersionIndex) -> list[StatusPoint]:
    """The overall status from the index alone: version 0, then every version that changed it."""
    points: list[StatusPoint] = []
    for v in index.versions:
        if not points or points[-1].status != v.status:
            points.append(StatusPoint(v.number, v.date, v.status))
    return points


def first_words(status: str, record: Record | None) -> str:
    """Version 0 in words."""
    parts = ["First submitted", status_label(status)]
    if record is not None:
        count = get_path(record, ("protocolSection", "designModule", "enrollmentInfo", "count"))
        kind = get_path(record, ("protocolSection", "designModule", "enrollmentInfo", "type"))
        if _is_int(count):
            noun = "participant" if count == 1 else "participants"
            parts.append(f"{count:,} {noun}" + {"ESTIMATED": " planned", "ACTUAL": " enrolled"}.get(kind, ""))
        sites = get_path(record, LOCATIONS_PATH.split("."))
        if isinstance(sites, list) and sites:
            parts.append(f"{len(sites):,} site{'s' if len(sites) != 1 else ''}")
    return " · ".join(parts)


def field_timeline(index: VersionIndex, records: Mapping[int, Record]) -> list[VersionEvent]:
    """Consecutive fetched versions diffed: each version's changes to the tracked fields.

    Versions not fetched (their labels say they touch no tracked field) changed nothing tracked,
    so a change found between two fetched versions belongs to the later one.
    """
    events: list[VersionEvent] = []
    numbers = sorted(records)
    for before, after in pairwise(numbers):
        changes = diff_versions(records[before], records[after])
        if changes:
            events.append(VersionEvent(index.versions[after], tuple(changes), tuple(describe_all(changes))))
    return events


def timeline(index: VersionIndex, records: Mapping[int, Record]) -> Timeline:
    """The whole story from the index and the fetched versions (version 0 among them)."""
    return Timeline(
        index=index,
        first=first_words(index.versions[0].status, records.get(0)),
        statuses=tuple(status_timeline(index)),
        events=tuple(field_timeline(index, records)),
    )
