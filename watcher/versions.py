"""A trial's whole story from the registry's version history: read once, stored, told.

The I/O edge of `watcher.history`: the registry's internal API (through `Registry`, paced) and
the store. Versions never change, so a version's record is fetched once; after that a trial's
story costs one request (the version index).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from watcher.clock import Clock, utcnow
from watcher.config import Config, HistoryMode
from watcher.differ import Record
from watcher.errors import ConfigError
from watcher.history import Timeline, VersionIndex, comparable, timeline, versions_to_fetch
from watcher.registry import Registry
from watcher.store import Store, load_versions, save_version, save_version_index
from watcher.wording import title_of

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (versions fetched, versions to fetch)


@dataclass(frozen=True)
class RegistryHistory:
    nct_id: str
    title: str  # as the latest version read says it
    timeline: Timeline
    fetched: int  # versions fetched from the registry now
    from_store: int  # versions read from the store (fetched before)
    requests: int  # to the registry, retries included


def check_enabled(config: Config) -> None:
    """Reading the version history is refused with `[ctgov] history = "off"`."""
    if config.ctgov.history is HistoryMode.OFF:
        raise ConfigError(
            f'{config.path.name}: [ctgov] history is "off", so the registry\'s version history is not read; '
            'set it to "gaps" or "always" to use --registry'
        )


def fetch_versions(
    store: Store,
    registry: Registry,
    index: VersionIndex,
    wanted: Sequence[int],
    limit: int | None = None,
    progress: Progress | None = None,
    clock: Clock = utcnow,
) -> tuple[dict[int, Record], int]:
    """The records of the `wanted` versions of a study, and how many were fetched now.

    Stored versions come from the store; the others from the registry, each stored as soon as
    it arrives, in a short transaction of its own (an interrupted run keeps what it read). With
    `limit`, at most that many are fetched; the versions left out are missing from the result
    (the next call fetches them). Raises HistoryUnavailable when the registry fails.
    """
    nct_id = index.nct_id
    with store.read() as session:
        records = load_versions(session, nct_id, wanted)
    missing = [n for n in wanted if n not in records]
    todo = missing if limit is None else missing[: max(limit, 0)]
    for done, number in enumerate(todo, 1):
        record = registry.version(nct_id, number)
        with store.write() as session:
            save_version(session, nct_id, index.versions[number], record, clock())
        records[number] = record
        if progress is not None:
            progress(done, len(todo))
    return records, len(todo)


def registry_history(
    store: Store,
    registry: Registry,
    nct_id: str,
    progress: Progress | None = None,
    clock: Clock = utcnow,
) -> RegistryHistory:
    """A trial's story since its first registration: the version index (one request), then every
    version that may touch a tracked field and is not stored yet (one request each, paced)."""
    before = registry.traffic.requests
    index = registry.version_index(nct_id)
    with store.write() as session:
        save_version_index(session, index, clock())
    wanted = versions_to_fetch(index)
    records, fetched = fetch_versions(store, registry, index, wanted, progress=progress, clock=clock)
    log.info("%s: %d registry versions, %d read (%d fetched now)", nct_id, len(index), len(records), fetched)
    latest = records[max(records)]
    return RegistryHistory(
        nct_id=nct_id,
        title=title_of(comparable(latest)),
        timeline=timeline(index, records),
        fetched=fetched,
        from_store=len(records) - fetched,
        requests=registry.traffic.requests - before,
    )
