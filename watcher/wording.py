"""Pure: the human words for changes and study facts, shared by the CLI and the digests.

A worded change is a `Line`: its words plus the structured facts it was made from (kind,
path, old and new value, category, rank). Subjects, quotes and ordering are built from
those facts, never from the words, so that rewording a sentence cannot change what a
digest says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from watcher.changes import Category, Change, ChangeKind
from watcher.differ import get_path
from watcher.fields import (
    DATE_STRUCTS,
    DATE_TYPE_LABELS,
    ENROLLMENT_COUNT,
    ENROLLMENT_TYPE,
    FIELDS_BY_PATH,
    HAS_RESULTS,
    LOCATIONS_PATH,
    OVERALL_STATUS,
    PHASES,
    RESULTS_FIRST_POSTED,
    SITE_STATUS_PATH,
    STOPPED_STATUSES,
    WHY_STOPPED,
    Compare,
    classify,
    phases_label,
    status_label,
)
from watcher.text import clean

FREQUENCY_WORDS = {"immediate": "as soon as something changes", "daily": "daily", "weekly": "weekly"}


def frequency_words(frequency: str) -> str:
    """How often a subscriber hears, in words: 'as soon as something changes', 'daily', 'weekly'."""
    return FREQUENCY_WORDS.get(str(frequency), str(frequency))


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class Line:
    """One worded change: what a reader sees, what it is about, and where it sorts."""

    text: str
    kind: ChangeKind
    path: str | None
    old: Any
    new: Any
    category: Category
    rank: int
    quote: str | None = None  # e.g. the reason a study stopped, shown quoted

    @property
    def is_status(self) -> bool:
        return self.kind is ChangeKind.CHANGED and self.path == OVERALL_STATUS


def partial_date(value: object) -> str:
    """'2019-12' → 'Dec 2019', '2012-11-16' → '16 Nov 2012', '2019' → '2019'; anything else as it is."""
    if not value:
        return "no date"
    if not isinstance(value, str):
        return str(value)
    parts = value.split("-")
    try:
        if len(parts) == 1:
            return str(int(parts[0]))
        month = MONTHS[int(parts[1]) - 1]
        if len(parts) == 2:
            return f"{month} {int(parts[0])}"
        return f"{int(parts[2])} {month} {int(parts[0])}"
    except (ValueError, IndexError):
        return clean(value)


def _months(value: str) -> int | None:
    parts = value.split("-")
    try:
        return int(parts[0]) * 12 + (int(parts[1]) - 1 if len(parts) > 1 else 0)
    except ValueError:
        return None


def shift(old: object, new: object) -> str:
    """'9 months later', '2 years earlier', or '' when it cannot be told."""
    if not isinstance(old, str) or not isinstance(new, str) or "-" not in old or "-" not in new:
        return ""
    a, b = _months(old), _months(new)
    if a is None or b is None or a == b:
        return ""
    n = abs(b - a)
    size = f"{n // 12} year{'s' if n >= 24 else ''}" if n % 12 == 0 else f"{n} month{'s' if n > 1 else ''}"
    return f"{size} {'later' if b > a else 'earlier'}"


def site_name(site: Mapping[str, Any] | None) -> str:
    if not site:
        return "a site"
    parts = [site.get("facility"), site.get("city"), site.get("country")]
    return ", ".join(clean(p) for p in parts if p) or "a site"


def _date_type(value: object) -> str:
    return DATE_TYPE_LABELS.get(value, "") if isinstance(value, str) else ""


def _dated(date: object, kind: object) -> str:
    label = _date_type(kind)
    return f"{partial_date(date)} ({label})" if label else partial_date(date)


def _count(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "none" if value is None else str(value)


def _plain(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(clean(v) for v in value) or "none"
    return clean(value)


def _type_words(name: str, change: Change) -> str:
    return f"{name} is now {_date_type(change.new) or 'untyped'} (was {_date_type(change.old) or 'untyped'})"


def _date_words(name: str, change: Change) -> str:
    if change.old and change.new:
        moved = shift(change.old, change.new)
        return f"{name} moved from {partial_date(change.old)} to {partial_date(change.new)}" + (
            f" ({moved})" if moved else ""
        )
    return f"{name}: {partial_date(change.old)} → {partial_date(change.new)}"


def _field_words(change: Change) -> str:
    path = change.path or ""
    if path == OVERALL_STATUS:
        return f"Status: {status_label(change.old)} → {status_label(change.new)}"
    if path == WHY_STOPPED:
        return "Reason for stopping given" if change.new else "Reason for stopping removed"
    if path == HAS_RESULTS:
        return "Results posted" if change.new else "Results no longer shown"
    if path == RESULTS_FIRST_POSTED:
        return f"Results first posted {partial_date(change.new)}"
    struct, _, leaf = path.rpartition(".")
    if struct in DATE_STRUCTS:
        return (_date_words if leaf == "date" else _type_words)(DATE_STRUCTS[struct], change)
    if path == ENROLLMENT_COUNT:
        return f"Enrollment: {_count(change.old)} → {_count(change.new)}"
    if path == ENROLLMENT_TYPE:
        return _type_words("Enrollment", change)
    if path == PHASES:
        return f"Phase: {phases_label(change.old)} → {phases_label(change.new)}"
    label = FIELDS_BY_PATH[path].label if path in FIELDS_BY_PATH else path
    return f"{label}: {_plain(change.old)} → {_plain(change.new)}"


def _place(site: object) -> str:
    if not isinstance(site, Mapping):
        return "somewhere"
    return ", ".join(clean(p) for p in (site.get("city"), site.get("country")) if p) or "somewhere"


def _words(change: Change) -> str:
    if change.kind is ChangeKind.NEW_STUDY:
        return "New trial matching the search"
    if change.kind is ChangeKind.LEFT_SEARCH:
        return "No longer matches the search"
    if change.kind is ChangeKind.DELISTED:
        return f"{change.nct_id} is no longer listed on ClinicalTrials.gov"
    if change.kind is ChangeKind.RELISTED:
        return f"{change.nct_id} is listed on ClinicalTrials.gov again"
    if change.kind is ChangeKind.MOVED:
        facility = clean((change.site or {}).get("facility") or "A site")
        return f"Site moved: {facility}, from {_place(change.old)} to {_place(change.new)}"
    if change.kind is ChangeKind.ADDED and change.path == LOCATIONS_PATH:
        recruiting = (change.site or {}).get("status") == "RECRUITING"
        return f"{'New site recruiting' if recruiting else 'New site'}: {site_name(change.site)}"
    if change.kind is ChangeKind.REMOVED and change.path == LOCATIONS_PATH:
        return f"Site removed: {site_name(change.site)}"
    if change.path == SITE_STATUS_PATH:
        if change.new == "RECRUITING":
            return f"Site now recruiting: {site_name(change.site)}"
        now, was = status_label(change.new).lower(), status_label(change.old).lower()
        return f"Site {now}: {site_name(change.site)} (was {was})"
    return _field_words(change)


def describe(change: Change) -> Line:
    """One change in words."""
    category, rank = classify(change.kind, change.path)
    return Line(_words(change), change.kind, change.path, change.old, change.new, category, rank)


# --- changes that read as one line ------------------------------------------------------------
# A change whose companion changed in the same batch is worded together with it; the companion
# then has no line of its own. Each rule: (main path, companion path, when, the combined line).

Rule = Callable[[Line, Change], Line | None]


def _date_with_type(struct: str) -> Rule:
    def combine(line: Line, kind: Change) -> Line:
        old, new = _dated(line.old, kind.old), _dated(line.new, kind.new)
        moved = shift(line.old, line.new)
        return replace(line, text=f"{DATE_STRUCTS[struct]}: {old} → {new}" + (f", {moved}" if moved else ""))

    return combine


def _enrollment_with_type(line: Line, kind: Change) -> Line:
    def counted(count: object, of: object) -> str:
        label = _date_type(of)
        return f"{_count(count)} ({label})" if label else _count(count)

    return replace(line, text=f"Enrollment: {counted(line.old, kind.old)} → {counted(line.new, kind.new)}")


def _results_with_date(line: Line, first_posted: Change) -> Line | None:
    if line.new is not True or not first_posted.new:
        return None
    return replace(line, text=f"Results posted on {partial_date(first_posted.new)}")


def _status_with_reason(line: Line, reason: Change) -> Line | None:
    if not reason.new or line.new not in STOPPED_STATUSES:
        return None
    return replace(line, quote=clean(reason.new))


COMPANIONS: tuple[tuple[str, str, Rule], ...] = (
    *((f"{struct}.date", f"{struct}.type", _date_with_type(struct)) for struct in DATE_STRUCTS),
    (ENROLLMENT_COUNT, ENROLLMENT_TYPE, _enrollment_with_type),
    (HAS_RESULTS, RESULTS_FIRST_POSTED, _results_with_date),
    (OVERALL_STATUS, WHY_STOPPED, _status_with_reason),
)


def describe_all(changes: Sequence[Change]) -> list[Line]:
    """All changes of one study in words, most important first.

    A date and its ACTUAL/ESTIMATED type changing together read as one line ("Completion:
    Jan 2020 (estimated) → Dec 2019 (actual)"), and so do an enrollment and its type;
    results posted with their date read as one;
    a stop reason is quoted on the status line it explains.
    """
    fields = {c.path: c for c in changes if c.kind is ChangeKind.CHANGED}
    lines = {id(c): describe(c) for c in changes}
    absorbed: set[int] = set()
    for main_path, companion_path, rule in COMPANIONS:
        main, companion = fields.get(main_path), fields.get(companion_path)
        if main is None or companion is None:
            continue
        combined = rule(lines[id(main)], companion)
        if combined is not None:
            lines[id(main)] = combined
            absorbed.add(id(companion))
    return sorted((line for key, line in lines.items() if key not in absorbed), key=lambda line: line.rank)


# --- successive dated changes of one field ---------------------------------------------------
# Replayed from the registry's version history, the changes a field went through between two
# polls are told in order, each on its version's date, instead of being merged into one.


def _story_name(change: Change) -> str:
    path = change.path or ""
    if path == SITE_STATUS_PATH:
        return f"Site {site_name(change.site)}"
    struct, _, leaf = path.rpartition(".")
    if struct in DATE_STRUCTS:
        return DATE_STRUCTS[struct] if leaf == "date" else f"{DATE_STRUCTS[struct]} type"
    if path == ENROLLMENT_TYPE:
        return "Enrollment type"
    if path == HAS_RESULTS:
        return "Results"
    return FIELDS_BY_PATH[path].label if path in FIELDS_BY_PATH else path


def _value_words(path: str | None, value: object) -> str:
    if path == OVERALL_STATUS:
        return status_label(value)
    if path == SITE_STATUS_PATH:
        return status_label(value).lower()
    struct, _, leaf = (path or "").rpartition(".")
    if struct in DATE_STRUCTS and leaf == "type":
        return _date_type(value) or "untyped"
    if struct.endswith("DateStruct"):
        return partial_date(value)
    if path == ENROLLMENT_COUNT:
        return _count(value)
    if path == ENROLLMENT_TYPE:
        return _date_type(value) or "untyped"
    if path == HAS_RESULTS:
        return "posted" if value else "not shown"
    if path == PHASES:
        return phases_label(value)
    return _plain(value)


def describe_story(steps: Sequence[Change], dates: Sequence[str | None]) -> Line:
    """Successive changes of one field, each on its date (a version's): "Status changed to
    Active, not recruiting on 3 Mar 2026, back to Recruiting on 10 Mar 2026"; when it did not
    come back, what it was: "…, then to Completed on 20 Mar 2026 (was Recruiting)"."""
    first, last = steps[0], steps[-1]
    category, rank = classify(first.kind, first.path)
    tracked = FIELDS_BY_PATH.get(first.path or "")
    if first.path == WHY_STOPPED:  # free text: said, not quoted inline
        told = ", ".join(f"{'given' if s.new else 'removed'}{_on(d)}" for s, d in zip(steps, dates, strict=True))
        return Line(f"Reason for stopping {told}", first.kind, first.path, first.old, last.new, category, rank)
    if tracked is not None and tracked.compare is Compare.TEXT:
        days = ", ".join(partial_date(d) for d in dates if d)
        if last.new == first.old:
            text = f"{_story_name(first)} changed and changed back ({days})"
        else:
            text = f"{_field_words(replace(first, new=last.new))} (changed {days})"
        return Line(text, first.kind, first.path, first.old, last.new, category, rank)
    parts = []
    for i, (step, day) in enumerate(zip(steps, dates, strict=True)):
        value = _value_words(step.path, step.new)
        when = _on(day)
        if i == 0:
            parts.append(f"{_story_name(first)} changed to {value}{when}")
        elif step.new in (first.old, steps[i - 1].old):
            parts.append(f"back to {value}{when}")
        else:
            parts.append(f"then to {value}{when}")
    text = ", ".join(parts)
    if last.new != first.old:
        text += f" (was {_value_words(first.path, first.old)})"
    return Line(text, first.kind, first.path, first.old, last.new, category, rank)


def _on(day: str | None) -> str:
    return f" on {partial_date(day)}" if day else ""


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
    return clean(title or "") or "(no title)"


def status_of(record: Mapping[str, Any]) -> str:
    return status_label(get_path(record, ("protocolSection", "statusModule", "overallStatus")))


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def facts(record: Mapping[str, Any]) -> Facts:
    """The key facts of a study record, in words. Whatever the record holds (even a value of the
    wrong type stored by an older release), this words it: what it cannot word it shows as it is."""
    status_module = _mapping(get_path(record, ("protocolSection", "statusModule")))
    nct_id = clean(get_path(record, ("protocolSection", "identificationModule", "nctId")) or "?")
    overall = status_module.get("overallStatus")
    last_known = status_module.get("lastKnownStatus")
    enrollment = _mapping(get_path(record, ("protocolSection", "designModule", "enrollmentInfo")))
    count = enrollment.get("count")
    if isinstance(count, int) and not isinstance(count, bool):
        enrolled = f"{count:,} participants"
        if enrollment.get("type"):
            enrolled += f" ({_date_type(enrollment['type']) or clean(enrollment['type'])})"
    else:
        enrolled = clean(count) if count is not None else "not given"

    def when(key: str) -> str | None:
        struct = _mapping(status_module.get(key))
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
    found = get_path(record, ("protocolSection", "contactsLocationsModule", "locations"))
    locations = [loc for loc in found if isinstance(loc, Mapping)] if isinstance(found, list) else []
    countries = sorted({clean(loc["country"]) for loc in locations if loc.get("country")})
    if len(locations) == 1:
        sites = "1 · " + ", ".join(clean(p) for p in (locations[0].get("city"), locations[0].get("country")) if p)
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
    why = status_module.get("whyStopped")
    sponsor = get_path(record, ("protocolSection", "sponsorCollaboratorsModule", "leadSponsor", "name"))
    updated = get_path(record, ("protocolSection", "statusModule", "lastUpdatePostDateStruct", "date"))
    return Facts(
        nct_id=nct_id,
        title=title_of(record),
        status=status_label(overall),
        last_known=status_label(last_known) if last_known and overall == "UNKNOWN" else None,
        why_stopped=clean(why) if why else None,
        enrollment=enrolled,
        dates=" · ".join(dates) or "not given",
        sites=sites,
        results=results,
        sponsor=clean(sponsor) if sponsor else "not given",
        phases=phases_label(get_path(record, ("protocolSection", "designModule", "phases"))),
        last_update=clean(updated) if updated else None,
    )
