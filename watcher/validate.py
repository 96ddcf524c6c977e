"""Pure: is a record from the registry the shape the API promises, for everything trial watcher reads?

A record that is not is skipped whole by the sync (its last good state stays): storing it
would make every later reading command and digest word nonsense, or crash. The checks cover
the tracked fields and the sections that hold them: sections are objects or absent; status a
string; dates `YYYY`, `YYYY-MM` or `YYYY-MM-DD`; enrollment a whole number; locations a list
of objects. Anything else in a record is not read, so it is not checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from watcher.fields import LOCATIONS_PATH, TRACKED_FIELDS, Compare

NCT_ID = re.compile(r"NCT\d{8}")
PARTIAL_DATE = re.compile(r"\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?")
FULL_DATE = re.compile(r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])")

Check = Callable[[Any], str | None]  # the value → what is wrong with it, or None


def _kind(value: object) -> str:
    return {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else f"is {_shown(value)} ({_kind(value)}), not a string"


def _date(pattern: re.Pattern[str], form: str) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and (pattern.fullmatch(value) or not value):
            return None
        return f"is {_shown(value)}, not a date ({form})"

    return check


def _count(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return None
    return f"is {_shown(value)}, not a whole number"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"is {_shown(value)}, not true or false"


def _strings(value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return None
    return f"is {_shown(value)}, not a list of strings"


def _locations(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"is {_shown(value)} ({_kind(value)}), not a list of sites"
    for n, site in enumerate(value):
        if not isinstance(site, dict):
            return f"site {n + 1} is {_shown(site)}, not an object"
        for key in ("facility", "city", "state", "country", "status", "zip"):
            if site.get(key) is not None and not isinstance(site[key], str):
                return f"site {n + 1} {key} is {_shown(site[key])}, not a string"
    return None


def _check_for(path: str, compare: Compare) -> Check:
    if compare is Compare.PARTIAL_DATE:
        return _date(PARTIAL_DATE, "YYYY, YYYY-MM or YYYY-MM-DD")
    if compare is Compare.UNORDERED:
        return _strings
    if path.endswith("enrollmentInfo.count"):
        return _count
    if path == "hasResults":
        return _flag
    if path.endswith("resultsFirstPostDateStruct.date"):
        return _date(FULL_DATE, "YYYY-MM-DD")
    return _string


CHECKS: dict[str, Check] = {
    **{t.path: _check_for(t.path, t.compare) for t in TRACKED_FIELDS},
    "protocolSection.identificationModule.nctIdAliases": _strings,
    "protocolSection.statusModule.lastUpdatePostDateStruct.date": _date(FULL_DATE, "YYYY-MM-DD"),
    LOCATIONS_PATH: _locations,
}


def problem(record: object) -> str | None:
    """What is wrong with a record, in a few words naming the field; None when it is fine."""
    if not isinstance(record, Mapping):
        return f"the record is {_kind(record)}, not an object"
    section = record.get("protocolSection")
    if not isinstance(section, Mapping):
        return f"protocolSection is {_shown(section)}, not an object"
    nct_id = (
        section.get("identificationModule", {}).get("nctId")
        if isinstance(section.get("identificationModule"), Mapping)
        else None
    )
    if not isinstance(nct_id, str) or not NCT_ID.fullmatch(nct_id):
        return f"protocolSection.identificationModule.nctId is {_shown(nct_id)}, not an NCT ID"
    for path, check in CHECKS.items():
        node: object = record
        keys = path.split(".")
        for depth, key in enumerate(keys):
            if node is None:
                break
            if not isinstance(node, Mapping):
                return f"{'.'.join(keys[:depth])} is {_shown(node)} ({_kind(node)}), not an object"
            node = node.get(key)
        else:
            if node is not None:
                reason = check(node)
                if reason is not None:
                    return f"{path} {reason}"
    return None
