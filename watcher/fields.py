"""What trial watcher tracks, in one table, and the human words for the registry's codes.

Every tracked field is a leaf path in the API v2 study record with a label, a way to
compare it, a category and a rank. Everything not listed here (lastUpdatePostDate,
statusVerifiedDate, versionHolder, key order, ...) is administrative churn and never
produces a change. `classify` is the one place that decides a change's category and rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from watcher.changes import Category, Change, ChangeKind
from watcher.text import clean

CATEGORIES = tuple(c.value for c in Category)


class Compare(Enum):
    EXACT = "exact"  # equal JSON values
    UNORDERED = "unordered"  # a list whose order carries no meaning (phases)
    TEXT = "text"  # a string compared with surrounding whitespace ignored
    PARTIAL_DATE = "partial_date"  # yyyy, yyyy-MM or yyyy-MM-dd: gaining or losing precision is no move


@dataclass(frozen=True)
class TrackedField:
    path: str
    label: str
    category: Category
    compare: Compare = Compare.EXACT
    rank: int = 50  # within a trial in a digest: lower is more important

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.path.split("."))


_S = "protocolSection.statusModule"
OVERALL_STATUS = f"{_S}.overallStatus"
WHY_STOPPED = f"{_S}.whyStopped"
HAS_RESULTS = "hasResults"
RESULTS_FIRST_POSTED = f"{_S}.resultsFirstPostDateStruct.date"
START, PRIMARY_COMPLETION, COMPLETION = (
    f"{_S}.startDateStruct",
    f"{_S}.primaryCompletionDateStruct",
    f"{_S}.completionDateStruct",
)
DATE_STRUCTS = {START: "Start", PRIMARY_COMPLETION: "Primary completion", COMPLETION: "Completion"}
ENROLLMENT_COUNT = "protocolSection.designModule.enrollmentInfo.count"
ENROLLMENT_TYPE = "protocolSection.designModule.enrollmentInfo.type"
PHASES = "protocolSection.designModule.phases"

TRACKED_FIELDS: tuple[TrackedField, ...] = (
    TrackedField(OVERALL_STATUS, "Status", Category.STATUS, rank=0),
    TrackedField(WHY_STOPPED, "Why stopped", Category.STATUS, Compare.TEXT, rank=1),
    TrackedField(HAS_RESULTS, "Results posted", Category.RESULTS, rank=20),
    TrackedField(RESULTS_FIRST_POSTED, "Results first posted", Category.RESULTS, rank=21),
    TrackedField(f"{START}.date", "Start", Category.DATES, Compare.PARTIAL_DATE, rank=30),
    TrackedField(f"{START}.type", "Start date type", Category.DATES, rank=31),
    TrackedField(f"{PRIMARY_COMPLETION}.date", "Primary completion", Category.DATES, Compare.PARTIAL_DATE, rank=32),
    TrackedField(f"{PRIMARY_COMPLETION}.type", "Primary completion date type", Category.DATES, rank=33),
    TrackedField(f"{COMPLETION}.date", "Completion", Category.DATES, Compare.PARTIAL_DATE, rank=34),
    TrackedField(f"{COMPLETION}.type", "Completion date type", Category.DATES, rank=35),
    TrackedField(ENROLLMENT_COUNT, "Enrollment", Category.ENROLLMENT, rank=40),
    TrackedField(ENROLLMENT_TYPE, "Enrollment type", Category.ENROLLMENT, rank=41),
    TrackedField("protocolSection.identificationModule.briefTitle", "Title", Category.DETAILS, Compare.TEXT, rank=60),
    TrackedField(PHASES, "Phases", Category.DETAILS, Compare.UNORDERED, rank=61),
    TrackedField(
        "protocolSection.sponsorCollaboratorsModule.leadSponsor.name", "Lead sponsor", Category.DETAILS,
        Compare.TEXT, rank=62,
    ),
)  # fmt: skip

FIELDS_BY_PATH = {f.path: f for f in TRACKED_FIELDS}

# Sites are a keyed collection: added, removed, or a site's status changed.
LOCATIONS_PATH = "protocolSection.contactsLocationsModule.locations"
SITE_STATUS_PATH = f"{LOCATIONS_PATH}.status"
LOCATION_KEY = ("facility", "city", "country")

# Changes that are not a tracked field's: (kind, path) → (category, rank). Sites rank just
# after the status, above results and dates; membership events come after results.
EVENTS: dict[tuple[ChangeKind, str | None], tuple[Category, int]] = {
    (ChangeKind.DELISTED, None): (Category.STATUS, 2),
    (ChangeKind.RELISTED, None): (Category.STATUS, 3),
    (ChangeKind.ADDED, LOCATIONS_PATH): (Category.SITES, 10),
    (ChangeKind.CHANGED, SITE_STATUS_PATH): (Category.SITES, 11),
    (ChangeKind.MOVED, LOCATIONS_PATH): (Category.SITES, 12),
    (ChangeKind.REMOVED, LOCATIONS_PATH): (Category.SITES, 13),
    (ChangeKind.NEW_STUDY, None): (Category.NEW_STUDY, 25),
    (ChangeKind.LEFT_SEARCH, None): (Category.LEFT_SEARCH, 26),
}
UNKNOWN_RANK = 99


def classify(kind: ChangeKind, path: str | None) -> tuple[Category, int]:
    """The category a subscriber filters on and the rank a digest orders by, for any change."""
    event = EVENTS.get((kind, path))
    if event is not None:
        return event
    tracked = FIELDS_BY_PATH.get(path or "")
    if kind is ChangeKind.CHANGED and tracked is not None:
        return tracked.category, tracked.rank
    return Category.DETAILS, UNKNOWN_RANK


def category_of(change: Change) -> Category:
    return classify(change.kind, change.path)[0]


# --- the registry's codes in words ----------------------------------------------------------

STATUS_LABELS = {
    "RECRUITING": "Recruiting",
    "NOT_YET_RECRUITING": "Not yet recruiting",
    "ENROLLING_BY_INVITATION": "Enrolling by invitation",
    "ACTIVE_NOT_RECRUITING": "Active, not recruiting",
    "SUSPENDED": "Suspended",
    "TERMINATED": "Terminated",
    "WITHDRAWN": "Withdrawn",
    "COMPLETED": "Completed",
    "UNKNOWN": "Unknown status",
    "AVAILABLE": "Available",
    "NO_LONGER_AVAILABLE": "No longer available",
    "TEMPORARILY_NOT_AVAILABLE": "Temporarily not available",
    "APPROVED_FOR_MARKETING": "Approved for marketing",
    "WITHHELD": "Withheld",
}
STOPPED_STATUSES = frozenset({"SUSPENDED", "TERMINATED", "WITHDRAWN"})

DATE_TYPE_LABELS = {"ACTUAL": "actual", "ESTIMATED": "estimated"}

PHASE_LABELS = {
    "NA": "Not applicable",
    "EARLY_PHASE1": "Early phase 1",
    "PHASE1": "Phase 1",
    "PHASE2": "Phase 2",
    "PHASE3": "Phase 3",
    "PHASE4": "Phase 4",
}


def status_label(code: object) -> str:
    """'UNKNOWN' → 'Unknown status'; a code it does not know is shown as it is."""
    if code is None:
        return "no status"
    if not isinstance(code, str):
        return clean(code)
    return STATUS_LABELS.get(code, clean(code.replace("_", " ")).capitalize())


def phases_label(codes: object) -> str:
    if not codes:
        return "no phase"
    if not isinstance(codes, list):
        return clean(codes)
    return " / ".join(PHASE_LABELS.get(c, clean(c)) if isinstance(c, str) else clean(c) for c in codes)
