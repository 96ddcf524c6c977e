"""Pure: two study records in, the list of meaningful changes out. No I/O.

Driven by the tracked-field table in `watcher.fields`; anything not in that table is
ignored, so administrative churn (lastUpdatePostDate, versionHolder, key order) is never
news.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from watcher.changes import Change, ChangeKind
from watcher.fields import LOCATION_KEY, LOCATIONS_PATH, SITE_STATUS_PATH, TRACKED_FIELDS, Compare, TrackedField

Record = dict[str, Any]


def get_path(record: Mapping[str, Any], keys: tuple[str, ...] | list[str]) -> Any:
    """The value at `keys` in a nested record, or None where any part is missing."""
    node: Any = record
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def nct_id_of(record: Record) -> str | None:
    value = get_path(record, ("protocolSection", "identificationModule", "nctId"))
    return value if isinstance(value, str) else None


def _normalise(value: Any, how: Compare) -> Any:
    if how is Compare.TEXT and isinstance(value, str):
        return " ".join(value.split()) or None
    if how is Compare.UNORDERED and isinstance(value, list):
        return sorted(value, key=str) or None
    if value in ("", [], {}):
        return None
    return value


def _field_change(nct_id: str, tracked: TrackedField, old: Record, new: Record) -> Change | None:
    before = get_path(old, tracked.keys)
    after = get_path(new, tracked.keys)
    if _normalise(before, tracked.compare) == _normalise(after, tracked.compare):
        return None
    return Change(nct_id, ChangeKind.CHANGED, tracked.path, before, after)


def site_key(location: dict[str, Any]) -> tuple[str, ...]:
    return tuple(" ".join(str(location.get(k) or "").split()).casefold() for k in LOCATION_KEY)


def site_summary(location: dict[str, Any]) -> dict[str, Any]:
    """The parts of a site a reader needs; leaves out contacts and coordinates."""
    keep = ("facility", "status", "city", "state", "country")
    return {k: location[k] for k in keep if location.get(k) is not None}


def _keyed_sites(record: Record) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Sites by facility + city + country; repeats of a key are told apart by their order."""
    locations = get_path(record, LOCATIONS_PATH.split(".")) or []
    seen: Counter[tuple[str, ...]] = Counter()
    keyed: dict[tuple[Any, ...], dict[str, Any]] = {}
    for location in locations:
        if not isinstance(location, dict):
            continue
        key = site_key(location)
        keyed[(*key, seen[key])] = location
        seen[key] += 1
    return keyed


def _site_changes(nct_id: str, old: Record, new: Record) -> list[Change]:
    before, after = _keyed_sites(old), _keyed_sites(new)
    changes: list[Change] = []
    for key, location in after.items():
        if key not in before:
            changes.append(Change(nct_id, ChangeKind.ADDED, LOCATIONS_PATH, None, location, site_summary(location)))
        elif before[key].get("status") != location.get("status"):
            changes.append(
                Change(
                    nct_id,
                    ChangeKind.CHANGED,
                    SITE_STATUS_PATH,
                    before[key].get("status"),
                    location.get("status"),
                    site_summary(location),
                )
            )
    for key, location in before.items():
        if key not in after:
            changes.append(Change(nct_id, ChangeKind.REMOVED, LOCATIONS_PATH, location, None, site_summary(location)))
    return changes


def diff(old: Record, new: Record) -> list[Change]:
    """The meaningful changes from `old` to `new` (two records of the same study)."""
    nct_id = nct_id_of(new) or nct_id_of(old) or "?"
    changes = [c for t in TRACKED_FIELDS if (c := _field_change(nct_id, t, old, new))]
    changes.extend(_site_changes(nct_id, old, new))
    return changes
