"""The vocabulary of changes: what kinds there are, and a change as data (no I/O, no wording)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class ChangeKind(StrEnum):
    CHANGED = "changed"  # a tracked field, or a site's status
    ADDED = "added"  # a site
    REMOVED = "removed"  # a site
    MOVED = "moved"  # a site whose facility stays but whose city or country changed
    NEW_STUDY = "new_study"  # a study joined a watch
    LEFT_SEARCH = "left_search"  # a study no longer matches a watch's search
    DELISTED = "delisted"  # an explicitly watched study the registry no longer lists
    RELISTED = "relisted"  # ... and lists again


class Category(StrEnum):
    """What a subscriber can filter on (`kinds = [...]`), in digest order."""

    STATUS = "status"
    SITES = "sites"
    RESULTS = "results"
    NEW_STUDY = "new_study"
    LEFT_SEARCH = "left_search"
    DATES = "dates"
    ENROLLMENT = "enrollment"
    DETAILS = "details"


@dataclass(frozen=True)
class Change:
    """One field-level change of one study, or a membership event of one watch."""

    nct_id: str
    kind: ChangeKind
    path: str | None = None  # dotted API path down to the leaf, e.g. protocolSection.statusModule.overallStatus
    old: Any = None
    new: Any = None
    # for site events: the site (facility, city, state, country, status) the change is about
    site: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class LoggedChange(Change):
    """A change as the change log holds it: its id, when it was detected, and for which watches."""

    id: int
    detected_at: datetime
    watches: tuple[str, ...] = ()
    # set when the change was replayed from the registry's version history
    effective_date: str | None = None  # YYYY-MM-DD: the date of the version that made it
    registry_version: int | None = None  # that version's number
