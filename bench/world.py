"""Benchmark worlds: N realistic studies generated from the recorded fixture records, served by
the project's fake API in a process of its own, with admin routes to plant a day of changes.

    python bench/world.py --n 1000 --latency 0.1      # prints "ready <base_url>" when serving

Admin routes (not counted as traffic): `/_admin/day` plants a day of changes and refreshes
the dataTimestamp, answering what it planted; `/_admin/stats?reset=1` answers the requests
and bytes served since the last reset.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fakeapi import FakeRegistry, nct_id  # noqa: E402

Record = dict[str, Any]
FIXTURES = ROOT / "tests" / "fixtures" / "records"
BASES = ["NCT03934567", "NCT05147467", "NCT00184067", "NCT01727193"]
CONDITION = "myasthenia gravis"
STATUSES = ["RECRUITING", "ACTIVE_NOT_RECRUITING", "COMPLETED", "NOT_YET_RECRUITING", "UNKNOWN", "TERMINATED"]
TITLES = [
    "Azathioprine Maintenance in Generalized Myasthenia Gravis",
    "Steroid-sparing Therapy in Ocular Myasthenia Gravis",
    "Thymectomy Outcomes With Immunosuppression in Myasthenia Gravis",
    "Low-dose Azathioprine Versus Mycophenolate in Myasthenia Gravis",
    "Long-term Safety of Immunotherapy in Myasthenia Gravis",
]
CITIES = [
    ("Guangzhou", "China"), ("Shanghai", "China"), ("Milan", "Italy"), ("Lyon", "France"),
    ("Boston", "United States"), ("Leeds", "United Kingdom"), ("Osaka", "Japan"), ("Toronto", "Canada"),
]  # fmt: skip
FIRST_ID = 80_000_000  # NCT8xxxxxxx: a range the registry does not use


def _shift(value: str, months: int) -> str:
    parts = value.split("-")
    if len(parts) < 2:
        return value
    total = int(parts[0]) * 12 + int(parts[1]) - 1 + months
    shifted = f"{total // 12:04d}-{total % 12 + 1:02d}"
    return shifted + (f"-{parts[2]}" if len(parts) > 2 else "")


def make_study(index: int, bases: list[str], rng: random.Random) -> Record:
    record: Record = json.loads(bases[index % len(bases)])
    p = record["protocolSection"]
    ident = p["identificationModule"]
    ident["nctId"] = f"NCT{FIRST_ID + index:08d}"
    ident.pop("nctIdAliases", None)
    ident["briefTitle"] = f"{TITLES[index % len(TITLES)]} ({index})"
    p.setdefault("conditionsModule", {})["conditions"] = [
        "Myasthenia Gravis",
        *p["conditionsModule"].get("conditions", [])[:1],
    ]
    status = p.setdefault("statusModule", {})
    status["overallStatus"] = rng.choice(STATUSES)
    months = rng.randint(-24, 24)
    for key in ("startDateStruct", "primaryCompletionDateStruct", "completionDateStruct"):
        if isinstance(status.get(key), dict) and status[key].get("date"):
            status[key]["date"] = _shift(status[key]["date"], months)
    day = date(2025, 1, 1) + timedelta(days=rng.randint(0, 600))
    status["lastUpdatePostDateStruct"] = {"date": day.isoformat(), "type": "ACTUAL"}
    sites = p.setdefault("contactsLocationsModule", {}).get("locations") or []
    if sites:
        keep = rng.sample(sites, k=max(1, rng.randint(len(sites) // 2, len(sites))))
        for n, site in enumerate(keep):
            city, country = CITIES[(index + n) % len(CITIES)]
            site.update(city=city, country=country)
        p["contactsLocationsModule"]["locations"] = keep
    design = p.setdefault("designModule", {})
    design.setdefault("enrollmentInfo", {})["count"] = rng.randint(20, 800)
    record["hasResults"] = False
    status.pop("resultsFirstPostDateStruct", None)
    return record


def build_world(n: int, seed: int = 7) -> list[Record]:
    bases = [(FIXTURES / f"{name}.json").read_text() for name in BASES]
    rng = random.Random(seed)
    return [make_study(i, bases, rng) for i in range(n)]


def _bump(record: Record) -> None:
    struct = record["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]
    struct["date"] = (date.fromisoformat(struct["date"]) + timedelta(days=400)).isoformat()


def plant_day(fake: FakeRegistry, fraction: float, new: int, seed: int) -> dict[str, int]:
    """Edit `fraction` of the studies (status, sites, enrollment, results in turn) and add `new`
    matching studies. Returns how many changes a correct watcher must record."""
    rng = random.Random(seed)
    ids = list(fake.records)
    edited = rng.sample(ids, k=max(1, round(len(ids) * fraction)))
    planted = 0
    for n, study_id in enumerate(edited):
        record = fake.records[study_id]
        p = record["protocolSection"]
        kind = n % 4
        if kind == 0:
            current = p["statusModule"].get("overallStatus")
            p["statusModule"]["overallStatus"] = next(s for s in STATUSES if s != current)
            planted += 1
        elif kind == 1:
            p["contactsLocationsModule"].setdefault("locations", []).append(
                {"facility": f"Bench Hospital {n}", "status": "RECRUITING", "city": "Shanghai", "country": "China"}
            )
            planted += 1
        elif kind == 2:
            p["designModule"]["enrollmentInfo"]["count"] += 10
            planted += 1
        else:
            record["hasResults"] = True
            p["statusModule"]["resultsFirstPostDateStruct"] = {"date": "2026-11-25", "type": "ACTUAL"}
            planted += 2
        _bump(record)
    bases = [(FIXTURES / f"{name}.json").read_text() for name in BASES]
    start = len(ids) + seed * 1000
    for i in range(new):
        fake.put(make_study(start + i, bases, rng), copy_it=False)
        planted += 1
    fake._hits_cache.clear()
    fake.refresh()
    return {"edited": len(edited), "new": new, "planted": planted}


class BenchRegistry(FakeRegistry):
    """The fake API plus admin routes; counts only non-admin traffic."""

    def __init__(self, records: list[Record]) -> None:
        super().__init__()
        for record in records:
            self.records[nct_id(record)] = record
        self.day = 0

    def latency_for(self, path: str, params: dict[str, str] | None = None) -> float:
        return 0.0 if path.startswith("/_admin") else super().latency_for(path, params)

    def _route(self, path: str, params: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        if path == "/_admin/day":
            self.day += 1
            result = plant_day(self, float(params.get("fraction", "0.01")), int(params.get("new", "5")), self.day)
            return self._json(result)
        if path == "/_admin/stats":
            served = [s for s in self.log if not s.path.startswith("/_admin")]
            stats = {"requests": len(served), "bytes": sum(s.bytes for s in served), "studies": len(self.records)}
            if params.get("reset"):
                self.log.clear()
            return self._json(stats)
        return super()._route(path, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds added to every API request")
    args = parser.parse_args()
    fake = BenchRegistry(build_world(args.n))
    fake.faults.latency_s = args.latency
    fake.start()
    print(f"ready {fake.base_url}", flush=True)
    fake.serve_until_interrupted()


if __name__ == "__main__":
    main()
