"""The web pages under load: `python bench/web.py --trials 1104 --changes 10000 --posts 500 --clients 50`.

Builds a database of N realistic studies (a real sync from the fake API) holding C stored changes
(status, sites, enrollment and dates, spread over past syncs, written straight into the change log),
and P subscribers; then runs the real `watcher serve` in a process of its own on 127.0.0.1 and
measures, over HTTP, the median of repeated requests to `/watch/{name}`, `/trial/{nct_id}` and the
feeds, and P one-click unsubscribe POSTs (the body mail providers send, no cookie, a new connection
each) from K concurrent clients. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.world import CITIES, STATUSES, build_world  # noqa: E402
from tests.support.fakeapi import FakeRegistry  # noqa: E402

WATCH = "mg"
OVERALL = "protocolSection.statusModule.overallStatus"
ENROLLMENT = "protocolSection.designModule.enrollmentInfo.count"
LOCATIONS = "protocolSection.contactsLocationsModule.locations"
COMPLETION = "protocolSection.statusModule.primaryCompletionDateStruct.date"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plant_changes(store: Any, nct_ids: list[str], count: int, seed: int = 3) -> None:
    """`count` changes of realistic kinds, a few per trial per sync, over the past 300 days."""
    from sqlalchemy import insert

    from watcher.clock import utcnow
    from watcher.models import ChangeEntry, ChangeWatch, SyncRun, table_of

    rng = random.Random(seed)
    now = utcnow()
    runs = max(1, count // 50)
    rows: list[dict[str, Any]] = []
    with store.write() as session:
        run_ids = []
        for n in range(runs):
            at = now - timedelta(days=300) + timedelta(days=300 * n / runs)
            run = SyncRun(kind="sync", started_at=at, finished_at=at, outcome="ok", changes=50)
            session.add(run)
            session.flush()
            run_ids.append((run.id, at))
        for i in range(count):
            run_id, at = run_ids[min(i // 50, runs - 1)]
            nct_id = rng.choice(nct_ids)
            kind = i % 4
            if kind == 0:
                old, new = rng.sample(STATUSES, 2)
                row = {"kind": "changed", "field": OVERALL, "old_json": json.dumps(old), "new_json": json.dumps(new)}
            elif kind == 1:
                city, country = rng.choice(CITIES)
                site = {"facility": f"Hospital {i}", "status": "RECRUITING", "city": city, "country": country}
                row = {"kind": "added", "field": LOCATIONS, "new_json": json.dumps(site), "site_json": json.dumps(site)}
            elif kind == 2:
                old_count = rng.randint(20, 800)
                row = {"kind": "changed", "field": ENROLLMENT, "old_json": str(old_count),
                       "new_json": str(old_count + rng.randint(5, 50))}  # fmt: skip
            else:
                row = {"kind": "changed", "field": COMPLETION, "old_json": json.dumps("2025-06"),
                       "new_json": json.dumps(f"202{rng.randint(6, 9)}-0{rng.randint(1, 9)}")}  # fmt: skip
            rows.append({"nct_id": nct_id, "detected_at": at, "run_id": run_id, "old_json": None, "site_json": None,
                         **row})  # fmt: skip
        change = table_of(ChangeEntry)
        ids = session.execute(insert(change).returning(change.c.id), rows).scalars().all()
        session.execute(insert(table_of(ChangeWatch)), [{"change_id": i, "watch": WATCH} for i in ids])


def add_subscribers(store: Any, config: Any, count: int) -> list[str]:
    """`count` active web subscribers of the watch; their unsubscribe tokens."""
    from watcher import tokens
    from watcher.clock import utcnow
    from watcher.models import SubscriberAccount, Subscription
    from watcher.states import TokenPurpose

    now = utcnow()
    keys = [f"reader{i:04d}@example.org" for i in range(count)]
    with store.write() as session:
        for key in keys:
            session.add(SubscriberAccount(key=key, email=key, source="web", state="active", frequency="daily",
                                          since=now, created_at=now))  # fmt: skip
        session.flush()
        for key in keys:
            session.add(Subscription(subscriber=key, watch=WATCH, since=now))
        secret = tokens.load_secret(session, config, now)
        found = tokens.current(session, secret, keys, TokenPurpose.UNSUBSCRIBE, now)
    return [found[key] for key in keys]


def get(port: int, path: str) -> tuple[int, float, int]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, time.perf_counter() - started, len(body)


def median_ms(port: int, paths: list[str]) -> dict[str, float]:
    timings, statuses, sizes = [], [], []
    for path in paths:
        status, seconds, size = get(port, path)
        statuses.append(status)
        timings.append(seconds * 1000)
        sizes.append(size)
    if any(s != 200 for s in statuses):
        raise SystemExit(f"bench: {paths[0]} answered {sorted(set(statuses))}")
    return {"median_ms": round(statistics.median(timings), 1), "first_ms": round(timings[0], 1),
            "max_ms": round(max(timings), 1), "kb": round(statistics.median(sizes) / 1024, 1)}  # fmt: skip


def one_click(port: int, token: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "POST", f"/unsubscribe/{token}", body=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


def run(trials: int, changes: int, posts: int, clients: int, repeat: int) -> dict[str, Any]:
    from watcher.clock import utcnow
    from watcher.config import load_config
    from watcher.registry import Registry
    from watcher.store import Store
    from watcher.subscribers import enroll_subscribers
    from watcher.sync import run_sync

    folder = Path(tempfile.mkdtemp(prefix="watcher-bench-web-"))
    port = free_port()
    server = None
    try:
        with FakeRegistry(build_world(trials)) as fake:
            (folder / "watcher.toml").write_text(
                f'[ctgov]\nbase_url = "{fake.base_url}"\n[[watch]]\nname = "{WATCH}"\ncondition = "myasthenia gravis"\n'
                f'[mail]\nfrom = "Trial Watcher <watcher@example.org>"\n'
                f'[web]\npublic_url = "http://127.0.0.1:{port}"\nlisten = "127.0.0.1:{port}"\n'
            )
            config = load_config(folder / "watcher.toml")
            store = Store(config.database_path)
            enroll_subscribers(config, store, utcnow())
            run_sync(config, store, Registry(config.ctgov))
            nct_ids = sorted(fake.records)
        plant_changes(store, nct_ids, changes)
        unsubscribe = add_subscribers(store, config, posts)
        store.close()
        serve = ["serve", "--log-level", "warning"]
        server = subprocess.Popen(
            [sys.executable, "-m", "watcher", "--config", str(folder / "watcher.toml"), *serve],
            cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("bench: watcher serve did not start")
            time.sleep(0.05)
        rng = random.Random(5)
        sample = rng.sample(nct_ids, min(repeat, len(nct_ids)))
        pages = {
            "/watch/{name}": median_ms(port, [f"/watch/{WATCH}"] * repeat),
            "/trial/{nct_id}": median_ms(port, [f"/trial/{n}" for n in sample]),
            "/watch/{name}/feed.atom": median_ms(port, [f"/watch/{WATCH}/feed.atom"] * repeat),
            "/watch/{name}/feed.json": median_ms(port, [f"/watch/{WATCH}/feed.json"] * repeat),
            "/trial/{nct_id}/feed.atom": median_ms(port, [f"/trial/{n}/feed.atom" for n in sample]),
        }
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            statuses = list(pool.map(lambda token: one_click(port, token), unsubscribe))
        wall = time.perf_counter() - started
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        with sqlite3.connect(folder / "watcher.db") as conn:
            honoured = conn.execute(
                "select count(*) from subscriber where source = 'web' and state = 'unsubscribed'"
            ).fetchone()[0]
            stored = conn.execute("select count(*) from change").fetchone()[0]
        return {
            "trials": trials,
            "changes": stored,
            "pages": pages,
            "one_click": {
                "posts": posts, "clients": clients, "ok": statuses.count(200),
                "errors": len(statuses) - statuses.count(200), "honoured": honoured, "wall_s": round(wall, 2),
                "per_second": round(posts / wall, 1),
            },
            "server_exit": server.returncode,
            "server_stderr": server.stderr.read().decode()[-2000:] if server.stderr else "",
        }  # fmt: skip
    finally:
        if server is not None and server.poll() is None:
            server.kill()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1104)
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=30, help="requests per page for the medians")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    print(json.dumps(run(args.trials, args.changes, args.posts, args.clients, args.repeat)))


if __name__ == "__main__":
    main()
