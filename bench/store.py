"""The store's benchmark: PostgreSQL beside SQLite, several senders, and a standby daemon.

    python bench/store.py [--n 10000] [--digests 10000] [--latency 0.1]

- the baseline sync of N studies and a 1% day, on SQLite and on PostgreSQL: wall, CPU, peak RSS
  (the real `watcher sync` as a child process, the fake API in a process of its own);
- N queued digests sent to aiosmtpd on 127.0.0.1 by 1 sender, by 4 sender processes, by one
  `--workers 4` process, and by 4 senders one of which is killed with SIGKILL midway, on
  PostgreSQL: messages per second, duplicates (must be 0), lost (must be 0);
- failover: from kill -9 of the leading daemon to the standby's first job.

A throwaway PostgreSQL cluster is started for it (tests/support/postgres.py) and stopped after.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import WATCHER, World, measure  # noqa: E402
from tests.support.postgres import PostgresServer, upgrade_to_head  # noqa: E402
from tests.support.smtp import SmtpServer  # noqa: E402


def config_text(base_url: str, database_url: str, smtp_port: int | None = None) -> str:
    text = (
        f'[ctgov]\nbase_url = "{base_url}"\nretries = 2\nbackoff_s = 0.2\ntimeout_s = 120\n\n'
        f'[database]\nurl = "{database_url}"\n\n[[watch]]\nname = "mg"\ncondition = "myasthenia gravis"\n'
    )
    if smtp_port:
        text += (
            f'[mail]\nfrom = "Trial Watcher <watcher@example.org>"\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsecurity = "none"\ntimeout_s = 30\n'
            '[[subscriber]]\nemail = "nobody@example.org"\nwatches = ["mg"]\nfrequency = "weekly"\n'
        )
    return text


def last_changes(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("select changes from syncrun order by id desc limit 1")).scalar() or 0)
    finally:
        engine.dispose()


# --- syncs on both backends ------------------------------------------------------------------------


def syncs(n: int, latency: float, postgres: PostgresServer, work: Path) -> list[dict[str, Any]]:
    rows = []
    world = World(n, latency)
    try:
        for backend in ("sqlite", "postgresql"):
            folder = work / f"sync-{backend}"
            folder.mkdir()
            if backend == "sqlite":
                url, engine_url = "sqlite:///watcher.db", f"sqlite:///{folder / 'watcher.db'}"
            else:
                url = engine_url = postgres.url(postgres.create_database())
                upgrade_to_head(url)
            config = folder / "watcher.toml"
            config.write_text(config_text(world.base_url, url))
            for cycle in ("baseline", "day"):
                planted = world.admin("day?fraction=0.01&new=5")["planted"] if cycle == "day" else 0
                world.admin("stats?reset=1")
                usage, _ = measure([*WATCHER, "--config", str(config), "sync", "--quiet"], folder)
                traffic = world.admin("stats?reset=1")
                rows.append({"backend": backend, "n": n, "cycle": cycle, **usage, "requests": traffic["requests"],
                             "changes": last_changes(engine_url), "planted": planted})  # fmt: skip
                print(f"  sync N={n} {cycle:<8} {backend:<10} {usage['wall_s']:7.2f} s", flush=True)
            world.admin("stats?reset=1")
            # the world moved on: the next backend starts from a baseline of the same world
    finally:
        world.stop()
    return rows


# --- several senders ----------------------------------------------------------------------------------


def queue(url: str, count: int) -> None:
    """`count` digests in the outbox, each its own message (recipient and Message-ID), as queue_due leaves them."""
    from sqlalchemy import create_engine, insert

    from watcher.digest import Rendered
    from watcher.mailer import build_message
    from watcher.models import OutboxMessage, table_of

    text = "Trial watcher · your digest\n\n" + "■ NCT01727193 — Status: Unknown status → Completed\n" * 40
    rendered = Rendered("1 trial update: NCT01727193 completed", text, f"<html><body><pre>{text}</pre></body></html>")
    now = datetime.now(UTC)
    rows = []
    for i in range(count):
        to, message_id = f"s{i:05d}@example.org", f"<digest.bench{i:05d}@example.org>"
        message = build_message(
            rendered, "Trial Watcher <watcher@example.org>", to, message_id, now, "mailto:x@example.org"
        )
        rows.append({"email": to, "message_id": message_id, "subject": rendered.subject, "message": message,
                     "changes": 1, "status": "pending", "attempts": 0, "created_at": now})  # fmt: skip
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(table_of(OutboxMessage)), rows)
    finally:
        engine.dispose()


def outbox_states(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {s: n for s, n in conn.execute(text("select status, count(*) from digest group by status"))}
    finally:
        engine.dispose()


def senders(count: int, postgres: PostgresServer, work: Path) -> list[dict[str, Any]]:
    rows = []
    plans = [
        ("1 sender", [[]], None),
        ("4 senders", [[], [], [], []], None),
        ("1 sender, --workers 4", [["--workers", "4"]], None),
        ("4 senders, 1 killed midway", [[], [], [], []], 0),
    ]
    for name, extras, victim in plans:
        smtp = SmtpServer().start()
        try:
            url = postgres.url(postgres.create_database())
            upgrade_to_head(url)
            queue(url, count)
            folder = work / f"send-{len(rows)}"
            folder.mkdir()
            config = folder / "watcher.toml"
            config.write_text(config_text("http://127.0.0.1:9/api/v2", url, smtp.port))
            command = [*WATCHER, "--config", str(config), "digest", "send"]
            started = time.monotonic()
            logs = [(folder / f"sender-{k}.err").open("w") for k in range(len(extras))]
            procs = [subprocess.Popen([*command, *extra], cwd=folder, stdout=subprocess.DEVNULL,
                                      stderr=log) for extra, log in zip(extras, logs, strict=True)]  # fmt: skip
            if victim is not None:
                while len(smtp.received) < count // 4:
                    time.sleep(0.01)
                procs[victim].send_signal(signal.SIGKILL)
            for proc in procs:
                proc.wait(3600)
            wall = time.monotonic() - started
            for k, (proc, log) in enumerate(zip(procs, logs, strict=True)):
                log.close()
                if proc.returncode not in (0, -signal.SIGKILL):  # a sender that failed says why
                    said = (folder / f"sender-{k}.err").read_text().strip().splitlines()
                    print(f"  ! sender {k} exited {proc.returncode}: {said[-1] if said else '(nothing on stderr)'}")
            ids = Counter(r.message["Message-ID"] for r in smtp.received)
            states = outbox_states(url)
            row = {
                "plan": name, "messages": count, "wall_s": wall, "per_s": len(ids) / wall,
                "duplicates": sum(n - 1 for n in ids.values()), "lost": count - len(ids),
                "left_pending": states.get("pending", 0), "sent_rows": states.get("sent", 0),
            }  # fmt: skip
            rows.append(row)
            print(f"  senders {name:<28} {row['per_s']:7.0f} msg/s  duplicates {row['duplicates']}  "
                  f"lost {row['lost']}", flush=True)  # fmt: skip
        finally:
            smtp.stop()
    return rows


# --- failover -------------------------------------------------------------------------------------------


def failover(postgres: PostgresServer, work: Path) -> dict[str, float]:
    world = World(10, 0.0)
    folder = work / "failover"
    folder.mkdir()
    url = postgres.url(postgres.create_database())
    upgrade_to_head(url)
    config = folder / "watcher.toml"
    config.write_text(config_text(world.base_url, url) + '[schedule]\nsync_every = "1h"\n')
    logs = [folder / "leader.log", folder / "standby.log"]
    handles = [log.open("wb") for log in logs]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for handle, log in zip(handles, logs, strict=True):
            procs.append(subprocess.Popen([*WATCHER, "--config", str(config), "daemon"], cwd=folder,
                                          stdout=handle, stderr=subprocess.STDOUT))  # fmt: skip
            wanted = "daemon started" if log.name == "leader.log" else "standing by"
            _wait(lambda log=log, wanted=wanted: wanted in log.read_text(), 60)
        killed = time.monotonic()
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        _wait(lambda: "sync:" in logs[1].read_text(), 60)
        took = time.monotonic() - killed
        print(f"  failover: kill -9 of the leader to the standby's first sync: {took:.2f} s", flush=True)
        return {"kill_to_first_job_s": took}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        for handle in handles:
            handle.close()
        world.stop()


def _wait(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("bench: timed out waiting")
        time.sleep(0.02)


def report(result: dict[str, Any]) -> str:
    columns = ("backend", 11, "<"), ("cycle", 9, "<"), ("N", 6, ">"), ("requests", 8, ">"), ("wall s", 7, ">")
    columns += ("CPU s", 6, ">"), ("peak MB", 7, ">"), ("changes", 9, ">")
    lines = [" ".join(f"{name:{align}{width}}" for name, width, align in columns)]
    for r in result["syncs"]:
        lines.append(
            f"{r['backend']:<11} {r['cycle']:<9} {r['n']:>6} {r['requests']:>8} {r['wall_s']:>7.2f} {r['cpu_s']:>6.2f} "
            f"{r['peak_mb']:>7.0f} {r['changes']:>4}/{r['planted']:<4}"
        )
    lines.append("")
    lines.append(f"{'senders (PostgreSQL)':<30} {'messages':>8} {'wall s':>7} {'msg/s':>7} {'dupl.':>6} {'lost':>5}")
    for r in result["senders"]:
        lines.append(
            f"{r['plan']:<30} {r['messages']:>8} {r['wall_s']:>7.1f} {r['per_s']:>7.0f} {r['duplicates']:>6} "
            f"{r['lost']:>5}"
        )
    lines.append(f"\nfailover: kill -9 of the leading daemon to the standby's first sync: "
                 f"{result['failover']['kill_to_first_job_s']:.2f} s")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000, help="studies in the world for the syncs")
    parser.add_argument("--digests", type=int, default=10000, help="queued digests for the senders")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per API request")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "store-results.json")
    args = parser.parse_args()
    postgres = PostgresServer()
    postgres.start()
    work = Path(tempfile.mkdtemp(prefix="watcher-bench-store-"))
    try:
        print(
            f"store benchmark: N = {args.n}, {args.digests} digests, latency {args.latency * 1000:.0f} ms", flush=True
        )
        result = {
            "syncs": syncs(args.n, args.latency, postgres, work),
            "senders": senders(args.digests, postgres, work),
            "failover": failover(postgres, work),
        }
    finally:
        postgres.stop()
    print()
    print(report(result))
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
