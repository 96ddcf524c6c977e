"""`make demo`: the daemon against the fake API on 127.0.0.1, with the registry changing every minute.

Writes `demo-run/watcher.toml` (from config.example.toml, pointed at the fake API, syncing
every minute) and runs the real daemon on it. Digests land in `demo-run/outbox/`. Ctrl-C stops.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from tests.support.fakeapi import FakeRegistry
from tests.support.world import TARGET, mg_world, new_mg_study
from watcher.cli import main as watcher_main

ROOT = Path(__file__).resolve().parents[2]
EDITS = [
    ("the target trial completes", TARGET, lambda r: r["protocolSection"]["statusModule"].update(overallStatus="COMPLETED")),
    ("a site opens", "NCT90000001", lambda r: r["protocolSection"]["contactsLocationsModule"]["locations"].append(
        {"facility": "Huashan Hospital", "status": "RECRUITING", "city": "Shanghai", "country": "China"})),
    ("results are posted", "NCT90000003", lambda r: r.update(hasResults=True)),
]  # fmt: skip


def prepare(folder: Path, base_url: str) -> Path:
    """A fresh demo folder (the registry starts fresh too, so an old database would only tell
    reversals) with the example config pointed at the fake registry; returns the config."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    text = (ROOT / "config.example.toml").read_text()
    text = text.replace("https://clinicaltrials.gov/api/v2", base_url).replace('sync_every = "6h"', 'sync_every = "1m"')
    config = folder / "watcher.toml"
    config.write_text(text)
    return config


def main() -> None:
    folder = ROOT / "demo-run"
    fake = FakeRegistry(mg_world().values()).start()
    prepare(folder, fake.base_url)
    print(
        f"fake registry at {fake.base_url}; config and outbox in {folder}; Ctrl-C to stop\n"
        f"in another terminal: .venv/bin/watcher --config {folder / 'watcher.toml'} changes",
        flush=True,
    )
    stop = threading.Event()

    def change_the_world() -> None:
        steps = [*EDITS, ("a new trial matches the search", None, None)]
        for what, nct_id, edit in steps:
            if stop.wait(45):
                return
            if nct_id and edit:
                fake.edit(nct_id, edit)
            else:
                fake.put(new_mg_study())
            fake.refresh()
            logging.getLogger("demo").warning("registry: %s (new dataTimestamp %s)", what, fake.data_timestamp)

    threading.Thread(target=change_the_world, daemon=True).start()
    try:
        watcher_main_args = ["--config", str(folder / "watcher.toml"), "daemon"]
        import sys

        sys.argv = ["watcher", *watcher_main_args]
        watcher_main()
    finally:
        stop.set()
        fake.stop()


if __name__ == "__main__":
    main()
