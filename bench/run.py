"""The trial watcher benchmark: `make bench` (full) or `python bench/run.py --quick`.

For N studies served by the fake API in its own process (bench/world.py) with a per-request
latency, it runs the real `watcher sync` as a child process through three cycles (baseline, a
day of changes, a quiet poll) and a naive poller through the same, then renders 1,000 digests,
and times the start-up of one-off commands. Per cycle it reports requests and bytes (counted
by the server), wall and CPU seconds and peak resident memory (of the child process), and the
changes found against those the world planted. Then the web pages (bench/web.py): page and feed
medians over HTTP with 1,104 trials and 10,000 stored changes, and 500 one-click unsubscribes from
50 concurrent clients. Prints a table; writes bench/results.json.

It also measures `watcher history NCT… --registry` (one child process per trial) on trials with a
version history of 30 versions, at the real pace of one request a second to the internal API:
a first pass (the index and every version that may touch a tracked field) and a second (the
index alone); at that pace 100 trials take about 40 minutes, so by default 5 are measured and
the first pass is extrapolated to 100 (`--history-trials 100` measures them all). Then a day on
which 10 trials each moved 3 versions: the requests and changes a sync records with
`history = "gaps"` (an ordinary day: no replay) and with `history = "always"` (replayed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WATCHER = [sys.executable, "-m", "watcher"]
HEAVY = ("requests", "sqlalchemy", "sqlmodel", "apscheduler", "jinja2", "rich", "pydantic")


@dataclass
class Row:
    n: int | str
    cycle: str
    who: str  # watcher | naive | naive (extrapolated)
    requests: int = 0
    bytes: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_mb: float = 0.0
    changes: int | None = None
    planted: int | None = None


# --- processes ----------------------------------------------------------------------------


def measure(cmd: list[str], cwd: Path) -> tuple[dict[str, float], str]:
    """Run a child; its wall time, CPU time and peak RSS (from wait4), and its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed ({proc.returncode}):\n{stderr or stdout}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}, stdout


class World:
    def __init__(self, n: int, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "world.py"), "--n", str(n), "--latency", str(latency)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            raise SystemExit("bench: the fake API did not start")
        self.base_url = line[1]
        self.root = self.base_url.rsplit("/api/v2", 1)[0]

    def admin(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.root}/_admin/{path}", timeout=120) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def write_config(folder: Path, base_url: str, history: str = "gaps") -> Path:
    path = folder / "watcher.toml"
    path.write_text(
        f'[ctgov]\nbase_url = "{base_url}"\nretries = 2\nbackoff_s = 0.2\ntimeout_s = 120\nhistory = "{history}"\n\n'
        '[[watch]]\nname = "mg"\ncondition = "myasthenia gravis"\n'
    )
    return path


def last_run_changes(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select changes from syncrun order by id desc limit 1").fetchone()[0]


# --- cycles -------------------------------------------------------------------------------


def run_size(n: int, latency: float, naive: bool, work: Path) -> list[Row]:
    rows: list[Row] = []
    world = World(n, latency)
    folder = work / f"n{n}"
    folder.mkdir()
    config = write_config(folder, world.base_url)
    try:
        plans = {"baseline": {"planted": 0}, "day": None, "quiet": {"planted": 0}}
        for cycle in plans:
            planted = world.admin("day?fraction=0.01&new=5")["planted"] if cycle == "day" else 0
            world.admin("stats?reset=1")
            usage, _ = measure([*WATCHER, "--config", str(config), "sync", "--quiet"], folder)
            traffic = world.admin("stats?reset=1")
            rows.append(Row(n, cycle, "watcher", traffic["requests"], traffic["bytes"], planted=planted,
                            changes=last_run_changes(folder / "watcher.db"), **usage))  # fmt: skip
            print(
                f"  N={n:>6} {cycle:<8} watcher  {rows[-1].requests:>6} requests {rows[-1].wall_s:7.2f} s", flush=True
            )
        if naive:
            state = folder / "naive-state.json"
            for cycle in plans:
                planted = world.admin("day?fraction=0.01&new=5")["planted"] if cycle == "day" else 0
                world.admin("stats?reset=1")
                cmd = [
                    sys.executable,
                    str(ROOT / "bench" / "naive.py"),
                    "--base-url",
                    world.base_url,
                    "--state",
                    str(state),
                ]
                usage, out = measure(cmd, folder)
                traffic = world.admin("stats?reset=1")
                rows.append(Row(n, cycle, "naive", traffic["requests"], traffic["bytes"], planted=planted,
                                changes=json.loads(out)["changes"], **usage))  # fmt: skip
                print(
                    f"  N={n:>6} {cycle:<8} naive    {rows[-1].requests:>6} requests {rows[-1].wall_s:7.2f} s",
                    flush=True,
                )
    finally:
        world.stop()
    return rows


def run_history(measured: int, total: int, versions: int, movers: int, latency: float, work: Path) -> dict[str, Any]:
    """`history --registry` for `measured` of `total` trials of `versions` versions (two passes), then a
    day on which `movers` trials each moved 3 versions, synced."""
    world = World(total, latency)
    folder = work / "history"
    folder.mkdir()
    config = write_config(folder, world.base_url)
    result: dict[str, Any] = {"trials": total, "measured": measured, "versions": versions, "latency_s": latency}
    try:
        planted = world.admin(f"history?trials={total}&versions={versions}")
        result["fetchable_versions"] = planted["fetchable"]
        for name in ("first", "second"):
            totals = {"requests": 0, "bytes": 0, "wall_s": 0.0, "cpu_s": 0.0, "peak_mb": 0.0, "fetched": 0}
            for nct in planted["ids"][:measured]:
                world.admin("stats?reset=1")
                usage, out = measure(
                    [*WATCHER, "--config", str(config), "history", nct, "--registry", "--json"], folder
                )
                traffic = world.admin("stats?reset=1")
                totals["requests"] += traffic["requests"]
                totals["bytes"] += traffic["bytes"]
                totals["fetched"] += json.loads(out)["fetched"]
                totals["wall_s"] += usage["wall_s"]
                totals["cpu_s"] += usage["cpu_s"]
                totals["peak_mb"] = max(totals["peak_mb"], usage["peak_mb"])
            result[name] = totals
            print(f"  history --registry, {name} pass: {totals['requests']} requests in {totals['wall_s']:.1f} s",
                  flush=True)  # fmt: skip
        if measured < total:
            factor = total / measured
            result["first_extrapolated"] = {
                k: (v * factor if k != "peak_mb" else v) for k, v in result["first"].items()
            }  # peak memory is per process: it does not grow with the number of trials
        # the day, synced by a watcher in each history mode: "gaps" (the default: an ordinary day asks
        # no history) and "always" (as after downtime: the versions are replayed)
        modes = {}
        for mode in ("gaps", "always"):
            modes[mode] = mode_folder = folder / mode
            mode_folder.mkdir()
            write_config(mode_folder, world.base_url, history=mode)
            measure([*WATCHER, "--config", str(mode_folder / "watcher.toml"), "sync", "--quiet"], mode_folder)
        day = world.admin(f"versions_day?trials={movers}&versions=3")
        for mode, mode_folder in modes.items():
            world.admin("stats?reset=1")
            usage, _ = measure(
                [*WATCHER, "--config", str(mode_folder / "watcher.toml"), "sync", "--quiet"], mode_folder
            )
            traffic = world.admin("stats?reset=1")
            recorded = last_run_changes(mode_folder / "watcher.db")
            result[f"day_{mode}"] = {**day, "requests": traffic["requests"], "bytes": traffic["bytes"],
                                     "wall_s": usage["wall_s"], "recorded": recorded}  # fmt: skip
    finally:
        world.stop()
    return result


def history_table(h: dict[str, Any]) -> str:
    head = f"  {'pass':<28} {'trials':>6} {'requests':>8} {'received':>10} {'versions':>8} {'wall s':>8} {'peak MB':>7}"
    lines = [
        f"watcher history NCT… --registry: trials of {h['versions']} versions, {h['latency_s'] * 1000:.0f} ms a "
        f"request, 1 request/s to /api/int ({h['fetchable_versions']} of {h['trials'] * h['versions']} versions "
        "may touch a tracked field)",
        head,
        "  " + "-" * (len(head) - 2),
    ]

    def row(label: str, trials: int, t: dict[str, float]) -> str:
        return (f"  {label:<28} {trials:>6} {round(t['requests']):>8} {size_text(round(t['bytes'])):>10} "
                f"{round(t['fetched']):>8} {t['wall_s']:>8.1f} {t['peak_mb']:>7.0f}")  # fmt: skip

    lines.append(row("first (index + versions)", h["measured"], h["first"]))
    if "first_extrapolated" in h:
        lines.append(row("first, extrapolated", h["trials"], h["first_extrapolated"]))
    lines.append(row("second (index only)", h["measured"], h["second"]))
    d = h["day_gaps"]
    lines.append(
        f"\nA day on which {d['trials']} trials each moved 3 versions ({d['versions']} versions; a plain diff sees "
        f"{d['flattened']} changes, the versions hold {d['replayed']}), synced:"
    )
    for mode, words in (
        ("gaps", 'history = "gaps", an ordinary day'),
        ("always", 'history = "always" (or after downtime)'),
    ):
        d = h[f"day_{mode}"]
        lines.append(
            f"  {words:<40} {d['requests']:>4} requests ({size_text(d['bytes'])}) in {d['wall_s']:.1f} s, "
            f"{d['recorded']} changes recorded"
        )
    return "\n".join(lines)


def extrapolate(rows: list[Row], from_n: int, to_n: int) -> list[Row]:
    """The naive poller's cost grows linearly with N: one request and one record per study."""
    factor = to_n / from_n
    out = []
    for r in rows:
        if r.who == "naive" and r.n == from_n:
            out.append(Row(to_n, r.cycle, "naive (extrapolated)", round(r.requests * factor), round(r.bytes * factor),
                           r.wall_s * factor, r.cpu_s * factor, r.peak_mb * factor))  # fmt: skip
    return out


def digest_cycle(subscribers: int, per_digest: int) -> dict[str, float]:
    """Child process: the real digest path for `subscribers` subscribers of one watch holding
    `per_digest` pending changes: pending changes from the store, build, render, MIME, and
    persist to the outbox table. Nothing is sent (no SMTP)."""
    sys.path.insert(0, str(ROOT))
    from bench.world import build_world, plant_day
    from tests.support.fakeapi import FakeRegistry
    from watcher.clock import utcnow
    from watcher.config import load_config
    from watcher.delivery import queue_due
    from watcher.registry import Registry
    from watcher.store import Store
    from watcher.subscribers import enroll_subscribers
    from watcher.sync import run_sync

    studies = 60
    folder = Path(tempfile.mkdtemp(prefix="watcher-bench-digests-"))
    with FakeRegistry(build_world(studies)) as fake:
        people = "".join(
            f'[[subscriber]]\nemail = "s{i}@example.org"\nwatches = ["mg"]\nfrequency = "immediate"\n'
            for i in range(subscribers)
        )
        (folder / "watcher.toml").write_text(
            f'[ctgov]\nbase_url = "{fake.base_url}"\n[[watch]]\nname = "mg"\ncondition = "myasthenia gravis"\n'
            f'[mail]\nfrom = "Trial Watcher <watcher@example.org>"\n{people}'
        )
        config = load_config(folder / "watcher.toml")
        store = Store(config.database_path)
        enroll_subscribers(config, store, utcnow())
        run_sync(config, store, Registry(config.ctgov))
        # every 4 edited studies plant 5 changes (status, site, enrollment, results x2)
        planted = plant_day(fake, per_digest * 4 / 5 / studies, 0, seed=1)["planted"]
        run_sync(config, store, Registry(config.ctgov))
    started, cpu = time.monotonic(), time.process_time()
    queued = queue_due(config, store, utcnow())
    result = {
        "digests": len(queued),
        "changes_each": planted,
        "build_wall_s": time.monotonic() - started,
        "build_cpu_s": time.process_time() - cpu,
    }
    shutil.rmtree(folder, ignore_errors=True)
    return result


def startup(config: Path, nct_id: str) -> dict[str, Any]:
    def median(cmd: list[str], runs: int = 5) -> float:
        return statistics.median(measure(cmd, config.parent)[0]["wall_s"] for _ in range(runs))

    watcher = str(BIN / "watcher") if (BIN / "watcher").exists() else None
    base = [watcher] if watcher else WATCHER
    probe = (
        "import sys; sys.argv=['watcher','--help']\nfrom watcher.cli import main\ntry: main()\n"
        "except SystemExit: pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})), file=sys.stderr)"
    )
    heavy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stderr.strip()
    return {
        "python -c pass": median([sys.executable, "-c", "pass"]),
        "watcher --help": median([*base, "--help"]),
        "watcher changes --json": median([*base, "--config", str(config), "changes", "--json"]),
        "watcher check": median([*base, "--config", str(config), "check", nct_id], runs=3),
        "heavy modules imported by --help": heavy,
    }


# --- report -------------------------------------------------------------------------------


def size_text(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.3f}" if theirs else "-"


def table(rows: list[Row]) -> str:
    head = (
        f"{'N':>6}  {'cycle':<8} {'who':<21} {'requests':>8} {'received':>10} {'wall s':>7} {'CPU s':>6} "
        f"{'peak MB':>7}  {'changes':>9}  {'vs naive: req / bytes / wall':>28}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        naive = next((x for x in rows if x.n == r.n and x.cycle == r.cycle and x.who.startswith("naive")), None)
        vs = ""
        if r.who == "watcher" and naive is not None:
            vs = (
                f"{ratio(r.requests, naive.requests)} / {ratio(r.bytes, naive.bytes)} / {ratio(r.wall_s, naive.wall_s)}"
            )
        found = "" if r.changes is None else f"{r.changes}/{r.planted}"
        lines.append(
            f"{r.n!s:>6}  {r.cycle:<8} {r.who:<21} {r.requests:>8} {size_text(r.bytes):>10} {r.wall_s:>7.2f} "
            f"{r.cpu_s:>6.2f} {r.peak_mb:>7.0f}  {found:>9}  {vs:>28}"
        )
    return "\n".join(lines)


def web_cycle(quick: bool) -> dict[str, Any]:
    """bench/web.py in a process of its own (it runs `watcher serve` in another)."""
    size = ["--trials", "200", "--changes", "2000", "--posts", "100", "--clients", "20", "--repeat", "10"]
    full = ["--trials", "1104", "--changes", "10000", "--posts", "500", "--clients", "50", "--repeat", "30"]
    usage, out = measure([sys.executable, str(ROOT / "bench" / "web.py"), *(size if quick else full)], ROOT)
    return {**json.loads(out), "wall_s": usage["wall_s"]}


def web_text(web: dict[str, Any]) -> str:
    pages = " · ".join(f"{path} {m['median_ms']:.0f} ms" for path, m in web["pages"].items())
    click = web["one_click"]
    return (
        f"Web pages, {web['trials']:,} trials and {web['changes']:,} stored changes, median of repeated requests over "
        f"HTTP: {pages}\n{click['posts']} one-click unsubscribes from {click['clients']} concurrent clients: "
        f"{click['ok']} answered 200, {click['errors']} errors, {click['honoured']} unsubscribed, "
        f"in {click['wall_s']:.2f} s ({click['per_second']:.0f}/s)"
    )


def web_targets(web: dict[str, Any]) -> list[tuple[str, bool, str]]:
    pages, click = web["pages"], web["one_click"]
    slowest_feed = max(m["median_ms"] for path, m in pages.items() if "feed" in path)
    return [
        ("/watch/{name} under 150 ms median", pages["/watch/{name}"]["median_ms"] < 150,
         f"{pages['/watch/{name}']['median_ms']:.0f} ms"),
        ("/trial/{nct_id} under 150 ms median", pages["/trial/{nct_id}"]["median_ms"] < 150,
         f"{pages['/trial/{nct_id}']['median_ms']:.0f} ms"),
        ("feeds under 100 ms median", slowest_feed < 100, f"slowest {slowest_feed:.0f} ms"),
        (f"{click['posts']} one-click POSTs from {click['clients']} clients all honoured, no error",
         click["ok"] == click["honoured"] == click["posts"] and click["errors"] == 0,
         f"{click['honoured']} honoured, {click['errors']} errors"),
    ]  # fmt: skip


def targets(rows: list[Row], digest: dict[str, float], n: int, web: dict[str, Any] | None = None) -> list[str]:
    def get(cycle: str) -> Row | None:
        return next((r for r in rows if r.n == n and r.cycle == cycle and r.who == "watcher"), None)

    base, day, quiet = get("baseline"), get("day"), get("quiet")
    if not (base and day and quiet):
        return []
    checks = [
        (f"quiet poll at N={n}: exactly 1 request", quiet.requests == 1, f"{quiet.requests}"),
        (f"day at N={n}: at most 20 requests", day.requests <= 20, f"{day.requests}"),
        (f"day at N={n}: at most 1/20 of a full refetch's bytes", day.bytes * 20 <= base.bytes,
         f"{day.bytes / base.bytes:.4f} of {size_text(base.bytes)}"),
        (f"baseline at N={n}: under 60 s", base.wall_s < 60, f"{base.wall_s:.1f} s"),
        (f"baseline at N={n}: peak memory under 300 MB", base.peak_mb < 300, f"{base.peak_mb:.0f} MB"),
        ("1,000 digests rendered in under 10 s", digest["build_wall_s"] < 10, f"{digest['build_wall_s']:.2f} s"),
        ("changes found equal changes planted", all(r.changes == r.planted for r in rows if r.who == "watcher"), ""),
        *(web_targets(web) if web else []),
    ]  # fmt: skip
    return [f"{'PASS' if ok else 'MISS'}  {what}" + (f" ({value})" if value else "") for what, ok, value in checks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 10 and 1,000, zero latency (a smoke test)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 10,1000,10000")
    parser.add_argument("--latency", type=float, help="seconds per API request (default 0.1; 0 with --quick)")
    parser.add_argument("--naive-max", type=int, default=1000, help="run the naive poller up to this N")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--history-trials", type=int, help="trials measured by history --registry (default 5 of 100)")
    parser.add_argument("--history-only", action="store_true", help="only the history --registry measurements")
    parser.add_argument("--digest-cycle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.digest_cycle:
        print(json.dumps(digest_cycle(1000, 50)))
        return
    sizes = args.sizes or ([10, 1000] if args.quick else [10, 1000, 10000])
    latency = args.latency if args.latency is not None else (0.0 if args.quick else 0.1)
    if args.quick:
        h_total, h_measured, h_versions, h_movers = 2, 2, 4, 2
    else:
        h_total, h_versions, h_movers = 100, 30, 10
        h_measured = min(args.history_trials or 5, h_total)
    work = Path(tempfile.mkdtemp(prefix="watcher-bench-"))
    rows: list[Row] = []
    digest: dict[str, Any] = {}
    times: dict[str, Any] = {}
    try:
        print(f"trial watcher benchmark: N = {sizes}, latency {latency * 1000:.0f} ms per request", flush=True)
        web: dict[str, Any] = {}
        if not args.history_only:
            for n in sizes:
                rows += run_size(n, latency, naive=n <= args.naive_max, work=work)
            largest_naive = max((n for n in sizes if n <= args.naive_max), default=None)
            for n in sizes:
                if n > args.naive_max and largest_naive:
                    rows += extrapolate(rows, largest_naive, n)
            usage, out = measure([sys.executable, str(Path(__file__).resolve()), "--digest-cycle"], ROOT)
            digest = {**json.loads(out), **usage}
            rows.append(Row("-", "digests", "watcher", 0, 0, usage["wall_s"], usage["cpu_s"], usage["peak_mb"]))
            print("  web pages", flush=True)
            web = web_cycle(args.quick)
            probe_n = min(sizes, key=lambda n: abs(n - 1000))
            world = World(probe_n, latency)
            try:
                config = write_config(work / f"n{probe_n}", world.base_url)
                times = startup(config, f"NCT{80_000_000:08d}")
            finally:
                world.stop()
        history = run_history(h_measured, h_total, h_versions, h_movers, latency, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    if rows:
        print(table(rows))
        print(
            f"\n{digest['digests']:,} digests of {digest['changes_each']} changes built, rendered and queued in "
            f"{digest['build_wall_s']:.2f} s ({digest['build_cpu_s']:.2f} s CPU; the whole process with its set-up "
            f"{digest['wall_s']:.2f} s, {digest['peak_mb']:.0f} MB peak)"
        )
        print("\nStart-up (median wall seconds): " + " · ".join(
            f"{k} {v:.3f}" for k, v in times.items() if isinstance(v, float)))  # fmt: skip
        print(f"Heavy modules imported by `watcher --help`: {times['heavy modules imported by --help']}")
        print("\n" + web_text(web))
    print("\n" + history_table(history))
    checks = targets(rows, digest, max(sizes), web) if rows else []
    if checks:
        print("\nTargets:\n" + "\n".join(checks))
    args.out.write_text(
        json.dumps(
            {
                "sizes": sizes,
                "latency_s": latency,
                "rows": [asdict(r) for r in rows],
                "digests": digest,
                "startup_s": times,
                "web": web,
                "targets": checks,
                "history": history,
            },
            indent=2,
        )
    )
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
