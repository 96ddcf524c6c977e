"""Pure: the human words for changes and study facts, shared by the CLI and the digests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from watcher.differ import get_path
from watcher.fields import (
    DATE_TYPE_LABELS,
    FIELDS_BY_PATH,
    LOCATIONS_PATH,
    STOPPED_STATUSES,
    category_of,
    phases_label,
    rank_of,
    status_label,
)

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_S = "protocolSection.statusModule"
_DATE_STRUCTS = {
    f"{_S}.startDateStruct": "Start",
    f"{_S}.primaryCompletionDateStruct": "Primary completion",
    f"{_S}.completionDateStruct": "Completion",
}


class ChangeLike(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def field(self) -> str | None: ...
    @property
    def old(self) -> Any: ...
    @property
    def new(self) -> Any: ...
    @property
    def site(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Line:
    """One worded change: what a reader sees, and where it sorts."""

    text: str
    category: str
    rank: int
    quote: str | None = None  # e.g. the reason a study stopped, shown quoted


def partial_date(value: str | None) -> str:
    """'2019-12' → 'Dec 2019', '2012-11-16' → '16 Nov 2012', '2019' → '2019'."""
    if not value:
        return "no date"
    parts = value.split("-")
    try:
        if len(parts) == 1:
            return str(int(parts[0]))
        month = MONTHS[int(parts[1]) - 1]
        if len(parts) == 2:
            return f"{month} {int(parts[0])}"
        return f"{int(parts[2])} {month} {int(parts[0])}"
    except (ValueError, IndexError):
        return value


def _months(value: str) -> int | None:
    parts = value.split("-")
    try:
        return int(parts[0]) * 12 + (int(parts[1]) - 1 if len(parts) > 1 else 0)
    except ValueError:
        return None


def shift(old: str | None, new: str | None) -> str:
    """'9 months later', '2 years earlier', or '' when it cannot be told."""
    if not old or not new or len(old.split("-")) < 2 or len(new.split("-")) < 2:
        return ""
    a, b = _months(old), _months(new)
    if a is None or b is None or a == b:
        return ""
    n = abs(b - a)
    size = f"{n // 12} year{'s' if n >= 24 else ''}" if n % 12 == 0 else f"{n} month{'s' if n > 1 else ''}"
    return f"{size} {'later' if b > a else 'earlier'}"


def site_name(site: dict[str, Any] | None) -> str:
    if not site:
        return "a site"
    parts = [site.get("facility"), site.get("city"), site.get("country")]
    return ", ".join(str(p) for p in parts if p) or "a site"


def _date_type(value: str | None) -> str:
    return DATE_TYPE_LABELS.get(value or "", "")


def _dated(date: str | None, kind: str | None) -> str:
    label = _date_type(kind)
    return f"{partial_date(date)} ({label})" if label else partial_date(date)


def _field_text(change: ChangeLike) -> tuple[str, str | None]:
    path, old, new = change.field or "", change.old, change.new
    label = FIELDS_BY_PATH[path].label if path in FIELDS_BY_PATH else path
    if path == f"{_S}.overallStatus":
        quote = None
        return f"Status: {status_label(old)} → {status_label(new)}", quote
    if path == f"{_S}.whyStopped":
        return ("Reason for stopping given" if new else "Reason for stopping removed"), new
    if path == "hasResults":
        return ("Results posted" if new else "Results no longer shown"), None
    if path == f"{_S}.resultsFirstPostDateStruct.date":
        return f"Results first posted {partial_date(new)}", None
    for struct, name in _DATE_STRUCTS.items():
        if path == f"{struct}.date":
            if old and new:
                moved = shift(old, new)
                return f"{name} moved from {partial_date(old)} to {partial_date(new)}" + (
                    f" ({moved})" if moved else ""
                ), None
            return f"{name}: {partial_date(old)} → {partial_date(new)}", None
        if path == f"{struct}.type":
            return f"{name} date is now {_date_type(new) or 'untyped'} (was {_date_type(old) or 'untyped'})", None
    if path.endswith("enrollmentInfo.count"):
        return f"Enrollment: {_count(old)} → {_count(new)}", None
    if path.endswith("enrollmentInfo.type"):
        return f"Enrollment is now {_date_type(new) or 'untyped'} (was {_date_type(old) or 'untyped'})", None
    if path.endswith("designModule.phases"):
        return f"Phase: {phases_label(old)} → {phases_label(new)}", None
    return f"{label}: {_plain(old)} → {_plain(new)}", None


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "none"


def _plain(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def describe(change: ChangeLike) -> Line:
    """One change in words."""
    category, rank = category_of(change.field, change.kind), rank_of(change.field, change.kind)
    if change.kind == "new_study":
        return Line("New trial matching the search", category, rank)
    if change.kind == "left_search":
        return Line("No longer matches the search", category, rank)
    if change.field == LOCATIONS_PATH and change.kind == "added":
        status = (change.site or {}).get("status")
        what = "New site recruiting" if status == "RECRUITING" else "New site"
        return Line(f"{what}: {site_name(change.site)}", category, rank)
    if change.field == LOCATIONS_PATH and change.kind == "removed":
        return Line(f"Site removed: {site_name(change.site)}", category, rank + 2)
    if change.field == f"{LOCATIONS_PATH}.status":
        if change.new == "RECRUITING":
            text = f"Site now recruiting: {site_name(change.site)}"
        else:
            now, was = status_label(change.new).lower(), status_label(change.old).lower()
            text = f"Site {now}: {site_name(change.site)} (was {was})"
        return Line(text, category, rank + 1)
    text, quote = _field_text(change)
    return Line(text, category, rank, quote)


def describe_all(changes: Sequence[ChangeLike]) -> list[Line]:
    """All changes of one study in words, most important first.

    A date and its ACTUAL/ESTIMATED type changing together read as one line:
    "Completion: Jan 2020 (estimated) → Dec 2019 (actual)". A stop reason is quoted on the
    status line it explains.
    """
    by_field = {c.field: c for c in changes if c.kind == "changed"}
    lines: list[Line] = []
    skip: set[int] = set()
    for i, change in enumerate(changes):
        if i in skip:
            continue
        struct = (change.field or "").rsplit(".", 1)[0]
        if change.kind == "changed" and struct in _DATE_STRUCTS and change.field == f"{struct}.date":
            kind = by_field.get(f"{struct}.type")
            if kind is not None:
                skip.add(changes.index(kind))
                old, new = _dated(change.old, kind.old), _dated(change.new, kind.new)
                moved = shift(change.old, change.new)
                lines.append(
                    Line(
                        f"{_DATE_STRUCTS[struct]}: {old} → {new}" + (f", {moved}" if moved else ""),
                        "dates",
                        rank_of(change.field, "changed"),
                    )
                )
                continue
        if change.kind == "changed" and change.field == f"{struct}.type" and f"{struct}.date" in by_field:
            continue
        lines.append(describe(change))
    posted, first_posted = by_field.get("hasResults"), by_field.get(f"{_S}.resultsFirstPostDateStruct.date")
    if posted is not None and posted.new is True and first_posted is not None and first_posted.new:
        lines = [line for line in lines if not line.text.startswith("Results first posted")]
        lines = [
            Line(f"Results posted on {partial_date(first_posted.new)}", line.category, line.rank)
            if line.text == "Results posted"
            else line
            for line in lines
        ]
    status = by_field.get(f"{_S}.overallStatus")
    reason = by_field.get(f"{_S}.whyStopped")
    if status is not None and reason is not None and reason.new and status.new in STOPPED_STATUSES:
        lines = [
            Line(line.text, line.category, line.rank, reason.new) if line.text.startswith("Status:") else line
            for line in lines
            if not line.text.startswith("Reason for stopping")
        ]
    return sorted(lines, key=lambda line: line.rank)


# --- study facts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    nct_id: str
    title: str
    status: str
    last_known: str | None
    why_stopped: str | None
    enrollment: str
    dates: str
    sites: str
    results: str
    sponsor: str
    phases: str
    last_update: str | None

    @property
    def url(self) -> str:
        return study_url(self.nct_id)


def study_url(nct_id: str) -> str:
    return f"https://clinicaltrials.gov/study/{nct_id}"


def history_url(nct_id: str) -> str:
    return f"{study_url(nct_id)}?tab=history"


def title_of(record: Mapping[str, Any]) -> str:
    """A study's brief title on one line (registry text may hold CR/LF and runs of spaces)."""
    title = get_path(record, ("protocolSection", "identificationModule", "briefTitle"))
    return " ".join(str(title or "").split()) or "(no title)"


def status_of(record: Mapping[str, Any]) -> str:
    return status_label(get_path(record, ("protocolSection", "statusModule", "overallStatus")))


def facts(record: dict[str, Any]) -> Facts:
    """The key facts of a study record, in words."""
    status_module = get_path(record, ("protocolSection", "statusModule")) or {}
    nct_id = get_path(record, ("protocolSection", "identificationModule", "nctId")) or "?"
    overall = status_module.get("overallStatus")
    last_known = status_module.get("lastKnownStatus")
    enrollment = get_path(record, ("protocolSection", "designModule", "enrollmentInfo")) or {}
    count = enrollment.get("count")
    enrolled = f"{count:,} participants" if isinstance(count, int) else "not given"
    if isinstance(count, int) and enrollment.get("type"):
        enrolled += f" ({_date_type(enrollment['type'])})"

    def when(key: str) -> str | None:
        struct = status_module.get(key) or {}
        return _dated(struct.get("date"), struct.get("type")) if struct.get("date") else None

    dates = [
        f"{name} {value}"
        for name, value in (
            ("started", when("startDateStruct")),
            ("primary completion", when("primaryCompletionDateStruct")),
            ("completion", when("completionDateStruct")),
        )
        if value
    ]
    locations = get_path(record, ("protocolSection", "contactsLocationsModule", "locations")) or []
    countries = sorted({loc.get("country") for loc in locations if isinstance(loc, dict) and loc.get("country")})
    if len(locations) == 1:
        sites = "1 · " + ", ".join(p for p in (locations[0].get("city"), locations[0].get("country")) if p)
    elif locations:
        shown = ", ".join(countries[:5]) + (f" and {len(countries) - 5} more countries" if len(countries) > 5 else "")
        recruiting = sum(1 for loc in locations if loc.get("status") == "RECRUITING")
        sites = f"{len(locations):,} in {shown}" + (f" · {recruiting} recruiting" if recruiting else "")
    else:
        sites = "none listed"
    posted = get_path(record, ("protocolSection", "statusModule", "resultsFirstPostDateStruct", "date"))
    if record.get("hasResults"):
        results = f"posted {partial_date(posted)}" if posted else "posted"
    else:
        results = "not posted"
    return Facts(
        nct_id=nct_id,
        title=title_of(record),
        status=status_label(overall),
        last_known=status_label(last_known) if last_known and overall == "UNKNOWN" else None,
        why_stopped=status_module.get("whyStopped"),
        enrollment=enrolled,
        dates=" · ".join(dates) or "not given",
        sites=sites,
        results=results,
        sponsor=get_path(record, ("protocolSection", "sponsorCollaboratorsModule", "leadSponsor", "name"))
        or "not given",
        phases=phases_label(get_path(record, ("protocolSection", "designModule", "phases"))),
        last_update=get_path(record, ("protocolSection", "statusModule", "lastUpdatePostDateStruct", "date")),
    )
