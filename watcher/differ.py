"""Pure: two study records in, the list of meaningful changes out. No I/O.

Driven by the tracked-field table in `watcher.fields`; anything not in that table is
ignored, so administrative churn (lastUpdatePostDate, versionHolder, key order) is never
news.
"""

from __future__ import annotations

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


def same_partial_date(a: object, b: object) -> bool:
    """'2024-05' and '2024-05-01' are the same date told more precisely, not a move."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    shorter, longer = sorted((a.split("-"), b.split("-")), key=len)
    return longer[: len(shorter)] == shorter


def _field_change(nct_id: str, tracked: TrackedField, old: Record, new: Record) -> Change | None:
    before = get_path(old, tracked.keys)
    after = get_path(new, tracked.keys)
    if _normalise(before, tracked.compare) == _normalise(after, tracked.compare):
        return None
    if tracked.compare is Compare.PARTIAL_DATE and same_partial_date(before, after):
        return None
    return Change(nct_id, ChangeKind.CHANGED, tracked.path, before, after)


def _norm(value: Any) -> str:
    return " ".join(str(value or "").split()).casefold()


def site_key(location: dict[str, Any]) -> tuple[str, ...]:
    return tuple(_norm(location.get(k)) for k in LOCATION_KEY)


def site_summary(location: dict[str, Any]) -> dict[str, Any]:
    """The parts of a site a reader needs; leaves out contacts and coordinates."""
    keep = ("facility", "status", "city", "state", "country")
    return {k: location[k] for k in keep if location.get(k) is not None}


def _sites(record: Record) -> list[dict[str, Any]]:
    locations = get_path(record, LOCATIONS_PATH.split("."))
    return [loc for loc in locations if isinstance(loc, dict)] if isinstance(locations, list) else []


def _pair(
    before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> tuple[list[tuple[int, int]], set[int], set[int]]:
    """Sites matched as a set: by facility + city + country, and among sites sharing those, best
    match first (same summary, then same status), so that order never matters."""
    pairs: list[tuple[int, int]] = []
    left, right = set(range(len(before))), set(range(len(after)))
    for likeness in (
        lambda o, n: site_summary(o) == site_summary(n),
        lambda o, n: o.get("status") == n.get("status"),
        lambda o, n: True,
    ):
        for i in sorted(left):
            match = next(
                (
                    j
                    for j in sorted(right)
                    if site_key(before[i]) == site_key(after[j]) and likeness(before[i], after[j])
                ),
                None,
            )
            if match is not None:
                pairs.append((i, match))
                left.discard(i)
                right.discard(match)
    return pairs, left, right


def _site_changes(nct_id: str, old: Record, new: Record) -> list[Change]:
    before, after = _sites(old), _sites(new)
    pairs, removed, added = _pair(before, after)
    changes: list[Change] = []
    for i, j in sorted(pairs, key=lambda p: p[1]):
        if before[i].get("status") != after[j].get("status"):
            changes.append(
                Change(
                    nct_id, ChangeKind.CHANGED, SITE_STATUS_PATH, before[i].get("status"), after[j].get("status"),
                    site_summary(after[j]),
                )
            )  # fmt: skip
    # A site that keeps its facility but changes city or country moved: one change, not two.
    for j in sorted(added):
        facility = _norm(after[j].get("facility"))
        moved_from = next(
            (i for i in sorted(removed) if facility and _norm(before[i].get("facility")) == facility), None
        )
        if moved_from is not None:
            removed.discard(moved_from)
            summary = site_summary(after[j])
            changes.append(
                Change(nct_id, ChangeKind.MOVED, LOCATIONS_PATH, site_summary(before[moved_from]), summary, summary)
            )
        else:
            changes.append(Change(nct_id, ChangeKind.ADDED, LOCATIONS_PATH, None, after[j], site_summary(after[j])))
    for i in sorted(removed):
        changes.append(Change(nct_id, ChangeKind.REMOVED, LOCATIONS_PATH, before[i], None, site_summary(before[i])))
    return changes


def diff(old: Record, new: Record) -> list[Change]:
    """The meaningful changes from `old` to `new` (two records of the same study)."""
    nct_id = nct_id_of(new) or nct_id_of(old) or "?"
    changes = [c for t in TRACKED_FIELDS if (c := _field_change(nct_id, t, old, new))]
    changes.extend(_site_changes(nct_id, old, new))
    return changes
