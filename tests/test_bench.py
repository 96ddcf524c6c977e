"""`bench/run.py --quick` as a smoke test, so the benchmark cannot rot. No timing thresholds here:
speed and memory targets are checked by `make bench`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmark_runs_and_counts_right(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert "vs naive" in result.stdout and "Targets:" in result.stdout
    data = json.loads(out.read_text())
    rows = data["rows"]
    cycles = {(r["n"], r["cycle"], r["who"]) for r in rows}
    for n in (10, 1000):
        for cycle in ("baseline", "day", "quiet"):
            assert {(n, cycle, "watcher"), (n, cycle, "naive")} <= cycles
    ours = [r for r in rows if r["who"] == "watcher" and r["cycle"] != "digests"]
    assert all(r["changes"] == r["planted"] for r in ours)  # every planted change found, once
    assert all(r["requests"] == 1 for r in ours if r["cycle"] == "quiet")
    assert data["digests"]["digests"] == 1000 and data["digests"]["changes_each"] == 50
    assert data["startup_s"]["heavy modules imported by --help"] == "[]"
    web = data["web"]  # the pages over HTTP, and one-click unsubscribes from concurrent clients
    assert set(web["pages"]) == {"/watch/{name}", "/trial/{nct_id}", "/watch/{name}/feed.atom",
                                 "/watch/{name}/feed.json", "/trial/{nct_id}/feed.atom"}  # fmt: skip
    assert web["one_click"]["ok"] == web["one_click"]["honoured"] == web["one_click"]["posts"] == 100
    assert web["one_click"]["errors"] == 0 and web["server_exit"] == 0
    history = data["history"]
    assert "watcher history NCT… --registry" in result.stdout
    assert history["first"]["requests"] == history["measured"] + history["first"]["fetched"]  # index + versions
    assert history["first"]["fetched"] == history["fetchable_versions"]  # only those that may touch a tracked field
    assert history["second"]["requests"] == history["measured"] and history["second"]["fetched"] == 0
    gaps, always = history["day_gaps"], history["day_always"]
    assert gaps["recorded"] == gaps["flattened"]  # an ordinary day asks no history: one change per trial
    assert always["recorded"] == always["replayed"]  # replayed: one change per version
    # per trial its index and the 2 versions before the third (which is the record the sync fetched)
    assert always["requests"] - gaps["requests"] == always["trials"] * (1 + 2)
