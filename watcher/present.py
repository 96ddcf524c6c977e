"""How results read: the terminal text and the `--json` objects of the one-off commands.

Pure functions over the services' results; `watcher.cli` prints what they return.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from watcher.changes import Change, LoggedChange
from watcher.clock import iso
from watcher.fields import status_label
from watcher.states import RunOutcome
from watcher.wording import describe, describe_all, facts, history_url

if TYPE_CHECKING:
    from watcher.check import CheckedStudy
    from watcher.dbcopy import CopyReport
    from watcher.history import Version
    from watcher.schema import SchemaStatus, UpgradeReport
    from watcher.sync import SyncReport
    from watcher.versions import RegistryHistory


def size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / 1024 / 1024:.1f} MB"


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def stamp(value: str | None) -> str:
    return value.replace("T", " ")[:16] if value else "unknown"


def format_sync_report(report: SyncReport) -> str:
    if report.outcome is RunOutcome.UNCHANGED:
        return (
            f"Registry data unchanged since the last sync ({stamp(report.data_timestamp)}); "
            f"nothing to do ({plural(report.requests, 'request')})."
        )
    lines = [
        f"Registry data of {stamp(report.data_timestamp)}"
        + (
            " (new since the last sync)"
            if report.previous_timestamp and report.previous_timestamp != report.data_timestamp
            else ""
        )
    ]
    width = max((len(w.name) for w in report.watches), default=0)
    for w in report.watches:
        parts = [plural(w.members, "trial")]
        if w.baseline:
            parts.append("baseline stored; changes are reported from the next sync")
        else:
            parts += [f"{w.updated:,} updated"] if w.updated else []
            parts += [f"{w.new:,} new"] if w.new else []
            parts += [f"{w.left:,} left the search"] if w.left else []
            parts += [f"{w.delisted:,} no longer listed"] if w.delisted else []
            parts += [f"{w.relisted:,} listed again"] if w.relisted else []
        lines.append(f"{w.name.ljust(width)}  " + " · ".join(parts))
        for nct_id in w.missing:
            lines.append(f"{''.ljust(width)}  ! {nct_id} was not found in the registry")
    for rejected in report.rejected:
        times = f" ({rejected.times} syncs in a row)" if rejected.times > 1 else ""
        reason = f"its record is malformed ({rejected.reason}){times}"
        lines.append(f"! {rejected.nct_id} skipped: {reason}; its last good state stays")
    if report.skipped_listings:
        lines.append(
            f"! {plural(report.skipped_listings, 'listing entry', 'listing entries')} without an NCT ID skipped"
        )
    lines += _history_lines(report)
    traffic = f"{plural(report.requests, 'request')} ({size(report.bytes)})"
    summary = f"{plural(report.changes, 'change')} recorded in {traffic} in {report.seconds:.1f} s."
    if report.changes:
        summary += "  See them: watcher changes --since today"
    lines.append(summary)
    return "\n".join(lines)


def _history_lines(report: SyncReport) -> list[str]:
    """What the sync did with the registry's version history, when it asked for it."""
    told = report.history
    lines = []
    if told.replayed:
        read = f"{plural(told.fetched, 'version')} read" + (
            f", {told.from_store:,} from the store" if told.from_store else ""
        )
        lines.append(
            f"Registry history: {plural(told.replayed, 'trial')} told version by version, "
            f"{plural(told.dated, 'change')} dated ({read})"
        )
    if told.deferred:
        waiting = plural(len(told.deferred), "trial")
        lines.append(
            f"! {waiting} left for the next sync: {told.fetched:,} versions read, the most one sync reads "
            "(what was read is kept)"
        )
    if told.unasked:
        lines.append(
            f"! {plural(told.unasked, 'trial')} compared plainly: this sync read as many version indexes as one may "
            f"({told.asked:,})"
        )
    for reason in told.fallbacks:
        lines.append(f"! {reason}; its changes were found by comparing records")
    if told.stopped:
        skipped = plural(told.plain - len(told.fallbacks), "trial")
        lines.append(f"! {told.stopped}; for {skipped}, changes were found by comparing records")
    return lines


def checked_json(study: CheckedStudy) -> dict[str, Any]:
    return {
        "nct_id": study.nct_id,
        "requested": study.requested,
        "facts": facts_json(study.record),
        "first_check": study.first_check,
        "changes": [
            {"kind": c.kind.value, "field": c.path, "old": c.old, "new": c.new, "site": c.site} for c in study.changes
        ],
        "summary": [line.text for line in describe_all(study.changes)],
        "watches": study.watches,
    }


def facts_json(record: dict[str, Any]) -> dict[str, Any]:
    f = facts(record)
    return {**asdict(f), "url": f.url}


def format_facts(record: dict[str, Any], note: str | None = None) -> list[str]:
    f = facts(record)
    title = textwrap.wrap(f.title, 68) or [""]
    lines = [f"{f.nct_id}  {title[0]}"] + [f"{'':13}{t}" for t in title[1:]]
    status = f.status + (f" (last known: {f.last_known})" if f.last_known else "")
    if f.why_stopped:
        status += f' · "{f.why_stopped}"'
    rows = [
        ("Status", status),
        ("Enrollment", f.enrollment),
        ("Dates", f.dates),
        ("Sites", f.sites),
        ("Results", f.results),
        ("Phase", f.phases),
        ("Sponsor", f.sponsor),
        ("Record", f"{f.url} · last updated {f.last_update or 'unknown'}"),
    ]
    lines += [f"  {k:<12} {v}" for k, v in rows]
    if note:
        lines.append(note)
    return lines


def format_checked(study: CheckedStudy) -> str:
    lines = format_facts(study.record)
    if study.requested != study.nct_id:
        lines.append(f"  ({study.requested} is an old ID of {study.nct_id})")
    lines.append("")
    if study.first_check:
        lines.append("  First check: this record is now stored; later checks and syncs report what changes.")
    else:
        since = f" ({study.previous_check:%Y-%m-%d})" if study.previous_check else ""
        described = describe_all(study.changes)
        if described:
            lines.append(f"  Changed since the last stored record{since}:")
            for line in described:
                lines.append(f"  • {line.text}" + (f' ("{line.quote}")' if line.quote else ""))
        else:
            lines.append(f"  No change since the last stored record{since}.")
    return "\n".join(lines)


# --- reading the log -------------------------------------------------------------------


def change_json(change: LoggedChange, titles: dict[str, str | None]) -> dict[str, Any]:
    """A logged change as `watcher changes --json` shows it (the shape webhooks send too)."""
    return {
        "id": change.id,
        **_change_fields(change),
        "detected_at": iso(change.detected_at),
        "watches": list(change.watches),
        "title": titles.get(change.nct_id),
        "summary": describe(change).text,
        "effective_date": change.effective_date,
        "registry_version": change.registry_version,
    }


def _change_fields(change: Change) -> dict[str, Any]:
    return {
        "nct_id": change.nct_id,
        "kind": change.kind.value,
        "field": change.path,
        "old": change.old,
        "new": change.new,
        "site": change.site,
    }


def format_changes(found: Sequence[LoggedChange], titles: dict[str, str | None]) -> str:
    lines = []
    for c in found:
        watches = f"  [{', '.join(c.watches)}]" if c.watches else ""
        version = (
            f" (registry version {c.registry_version} of {c.effective_date})" if c.registry_version is not None else ""
        )
        lines.append(f"#{c.id:<5} {c.detected_at:%Y-%m-%d %H:%M}  {c.nct_id}  {describe(c).text}{version}{watches}")
    return "\n".join(lines)


# --- the registry's version history ------------------------------------------------------


def registry_history_json(story: RegistryHistory) -> dict[str, Any]:
    """`watcher history NCT… --registry --json`: the status timeline and every version's changes."""
    told = story.timeline
    first = told.index.versions[0]
    return {
        "nct_id": story.nct_id,
        "title": story.title,
        "url": history_url(story.nct_id),
        "versions": len(told.index),
        "first_submitted": first.date,
        "dates": "submission",  # a version's date is when it was submitted, usually days before it was posted
        "first": {"version": 0, "date": first.date, "status": first.status, "summary": told.first},
        "statuses": [
            {"version": p.version, "date": p.date, "status": p.status, "label": status_label(p.status)}
            for p in told.statuses
        ],
        "events": [
            {
                "version": e.version.number,
                "date": e.version.date,
                "summary": [line.text for line in e.lines],
                "changes": [_version_change_json(c, e.version, story.title) for c in e.changes],
            }
            for e in told.events
        ],
        "requests": story.requests,
        "fetched": story.fetched,
        "from_store": story.from_store,
    }


def _wrap(text: str, margin: str, width: int = 104) -> list[str]:
    """One worded change on lines of at most `width`, continued two spaces further in."""
    return textwrap.wrap(text, width, initial_indent=margin, subsequent_indent=margin + "  ") or [margin]


def _version_change_json(change: Change, version: Version, title: str) -> dict[str, Any]:
    """A change a version made, shaped like a `watcher changes --json` item (less id, detected_at, watches)."""
    return {
        **_change_fields(change),
        "title": title,
        "summary": describe(change).text,
        "effective_date": version.date,
        "registry_version": version.number,
    }


def format_registry_history(story: RegistryHistory) -> str:
    """The trial's story, one version a block: its date, number and what it changed."""
    told = story.timeline
    first = told.index.versions[0]
    title = textwrap.wrap(story.title, 90) or [""]
    lines = [f"{story.nct_id}  {title[0]}"] + [f"{'':13}{t}" for t in title[1:]]
    count = len(told.index)
    lines.append(
        f"  {plural(count, 'registry version')} since {first.date} (dates are submission dates, "
        "usually a few days before posting)"
    )
    lines.append("")
    width = len(f"v{told.index.latest.number}") + 2
    rows = [(first.date, 0, [told.first])]
    for event in told.events:
        texts = [line.text + (f' ("{line.quote}")' if line.quote else "") for line in event.lines]
        rows.append((event.version.date, event.version.number, texts))
    margin = " " * (14 + width)
    for day, number, texts in rows:
        wrapped = [part for text in texts for part in _wrap(text, margin)]
        lines.append(f"  {day}  {f'v{number}':<{width}}{wrapped[0].lstrip()}")
        lines += wrapped[1:]
    if not told.events:
        lines.append(f"  {'':10}  {'':<{width}}no change to the tracked fields since")
    lines.append("")
    if story.fetched:
        cost = f"the index and {plural(story.fetched, 'version')}, now stored"
    else:
        cost = "the index"
    stored = f"; {plural(story.from_store, 'version')} read from the store" if story.from_store else ""
    lines.append(f"  {plural(story.requests, 'request')} ({cost}){stored}")
    lines.append(f"  {history_url(story.nct_id)}")
    return "\n".join(lines)


def _when(value: str | None) -> str:
    return value.replace("T", " ")[:16] + " UTC" if value else ""


def format_status(report: dict[str, Any]) -> str:
    daemon = report["daemon"]
    running = f"running (pid {daemon['pid']})" if daemon["running"] else "not running"
    lines = [f"Daemon      {running}"]
    upcoming = [
        f"{what} {_when(daemon[key])}"
        for what, key in (("sync", "next_sync"), ("digests", "next_digests"))
        if daemon[key]
    ]
    if upcoming:
        lines.append(f"Next        {' · '.join(upcoming)}")
    digests = report["digests"]
    lines.append(f"Digests     {digests['pending']} queued · {digests['failed']} failed · {digests['sent']} sent")
    kinds = {kind: counts for kind, counts in report.get("digests_by_channel", {}).items() if any(counts.values())}
    if set(kinds) - {"email"}:
        parts = []
        for kind, counts in kinds.items():
            shown = [f"{counts[state]} {word}" for state, word in (("sent", "sent"), ("pending", "queued"),
                                                                    ("failed", "failed")) if counts[state]]  # fmt: skip
            parts.append(f"{kind} {', '.join(shown)}")
        lines.append(f"  by kind   {' · '.join(parts)}")
    if not report["runs"]:
        lines.append("Runs        none yet: run `watcher sync`")
    for run in report["runs"]:
        if run["outcome"] == RunOutcome.FAILED:
            detail = run["error"] or ""
        else:
            data = f"registry data {stamp(run['data_timestamp'])} · " if run["data_timestamp"] else ""
            detail = f"{data}{plural(run['requests'], 'request')} · {plural(run['changes'], 'change')}"
        lines.append(f"  {run['started_at'].replace('T', ' ')[:16]}  {run['kind']:<5}  {run['outcome']:<9}  {detail}")
    return "\n".join(lines)


# --- the database ------------------------------------------------------------------------


def db_status_json(display: str, backend: str, found: SchemaStatus) -> dict[str, Any]:
    return {
        "database": display,
        "backend": str(backend),
        "state": found.state.value,
        "current": found.current,
        "head": found.head,
        "pending": [{"revision": r.id, "title": r.title} for r in found.pending],
    }


def format_db_status(display: str, found: SchemaStatus) -> str:
    from watcher.schema import SchemaState

    lines = [f"Database    {display}", f"Revision    {found.current or 'none'} (this trial watcher: {found.head})"]
    state = {
        SchemaState.CURRENT: "up to date",
        SchemaState.EMPTY: "empty: `watcher db upgrade` creates the tables",
        SchemaState.LEGACY: "made by trial watcher 0.1: `watcher db upgrade` adopts it, rows intact",
        SchemaState.BEHIND: "behind: run `watcher db upgrade`",
        SchemaState.NEWER: "written by a newer trial watcher: upgrade trial watcher to use it",
    }[found.state]
    lines.append(f"State       {state}")
    for revision in found.pending:
        lines.append(f"  pending   {revision.id}  {revision.title}")
    return "\n".join(lines)


def format_upgrade(display: str, report: UpgradeReport) -> str:
    if not report.changed:
        return f"{display} is up to date (revision {report.after})."
    before = report.before.current or "empty"
    done = f"{display}: upgraded from {before} to {report.after}"
    return done + (f"; backup of the old file: {report.backup}" if report.backup else "") + "."


def format_copy(report: CopyReport) -> str:
    lines = [f"Copied {plural(report.rows, 'row')} from {report.source} to {report.target} in {report.seconds:.1f} s:"]
    width = max((len(name) for name, _ in report.tables), default=0)
    lines += [f"  {name.ljust(width)}  {count:>9,}" for name, count in report.tables]
    lines.append("Row counts match. Now set [database] url to the target (and password_env), and restart the daemon.")
    return "\n".join(lines)
