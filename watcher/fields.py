"""What trial watcher tracks, in one table, and the human words for the registry's codes.

Every tracked field is a leaf path in the API v2 study record with a label and a way to
compare it. Everything not listed here (lastUpdatePostDate, statusVerifiedDate,
versionHolder, key order, ...) is administrative churn and never produces a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# The categories a subscriber can filter on (`kinds = [...]`), in digest order.
CATEGORIES = ("status", "sites", "results", "new_study", "left_search", "dates", "enrollment", "details")


class Compare(Enum):
    EXACT = "exact"  # equal JSON values
    UNORDERED = "unordered"  # a list whose order carries no meaning (phases)
    TEXT = "text"  # a string compared with surrounding whitespace ignored


@dataclass(frozen=True)
class TrackedField:
    path: str
    label: str
    category: str
    compare: Compare = Compare.EXACT
    # rank within the digest: lower is more important
    rank: int = 50

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.path.split("."))


_S = "protocolSection.statusModule"

TRACKED_FIELDS: tuple[TrackedField, ...] = (
    TrackedField(f"{_S}.overallStatus", "Status", "status", rank=0),
    TrackedField(f"{_S}.whyStopped", "Why stopped", "status", Compare.TEXT, rank=1),
    TrackedField("hasResults", "Results posted", "results", rank=20),
    TrackedField(f"{_S}.resultsFirstPostDateStruct.date", "Results first posted", "results", rank=21),
    TrackedField(f"{_S}.startDateStruct.date", "Start", "dates", rank=30),
    TrackedField(f"{_S}.startDateStruct.type", "Start date type", "dates", rank=31),
    TrackedField(f"{_S}.primaryCompletionDateStruct.date", "Primary completion", "dates", rank=32),
    TrackedField(f"{_S}.primaryCompletionDateStruct.type", "Primary completion date type", "dates", rank=33),
    TrackedField(f"{_S}.completionDateStruct.date", "Completion", "dates", rank=34),
    TrackedField(f"{_S}.completionDateStruct.type", "Completion date type", "dates", rank=35),
    TrackedField("protocolSection.designModule.enrollmentInfo.count", "Enrollment", "enrollment", rank=40),
    TrackedField("protocolSection.designModule.enrollmentInfo.type", "Enrollment type", "enrollment", rank=41),
    TrackedField("protocolSection.identificationModule.briefTitle", "Title", "details", Compare.TEXT, rank=60),
    TrackedField("protocolSection.designModule.phases", "Phases", "details", Compare.UNORDERED, rank=61),
    TrackedField(
        "protocolSection.sponsorCollaboratorsModule.leadSponsor.name", "Lead sponsor", "details", Compare.TEXT, rank=62
    ),
)

FIELDS_BY_PATH = {f.path: f for f in TRACKED_FIELDS}

# Sites are a keyed collection: added, removed, or a site's status changed.
LOCATIONS_PATH = "protocolSection.contactsLocationsModule.locations"
LOCATION_KEY = ("facility", "city", "country")
SITES = TrackedField(LOCATIONS_PATH, "Sites", "sites", rank=10)

# Human labels for the registry's enums, in one place.
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

CHANGE_KINDS = ("changed", "added", "removed", "new_study", "left_search")


def status_label(code: str | None) -> str:
    if code is None:
        return "no status"
    return STATUS_LABELS.get(code, code.replace("_", " ").capitalize())


def phases_label(codes: list[str] | None) -> str:
    if not codes:
        return "no phase"
    return " / ".join(PHASE_LABELS.get(c, c) for c in codes)


def category_of(path: str | None, kind: str) -> str:
    if kind in ("new_study", "left_search"):
        return kind
    if path == LOCATIONS_PATH or (path or "").startswith(LOCATIONS_PATH):
        return "sites"
    tracked = FIELDS_BY_PATH.get(path or "")
    return tracked.category if tracked else "details"


def rank_of(path: str | None, kind: str) -> int:
    if kind == "new_study":
        return 25
    if kind == "left_search":
        return 26
    if path == LOCATIONS_PATH:
        return SITES.rank
    tracked = FIELDS_BY_PATH.get(path or "")
    return tracked.rank if tracked else 99
