"""Benchmark worlds: N realistic studies generated from the recorded fixture records, served by
the project's fake API in a process of its own, with admin routes to plant a day of changes.

    python bench/world.py --n 1000 --latency 0.1      # prints "ready <base_url>" when serving

Admin routes (not counted as traffic): `/_admin/day` plants a day of changes and refreshes
the dataTimestamp, answering what it planted; `/_admin/stats?reset=1` answers the requests
and bytes served since the last reset; `/_admin/history?trials=T&versions=V` gives T studies a
version history of V versions each; `/_admin/versions_day?trials=T&versions=V` makes T studies
move V versions each (as between two polls) and refreshes the dataTimestamp.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fakeapi import FakeRegistry, FakeVersion, nct_id  # noqa: E402

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


# Updates touching only modules without a tracked field. An assumption of this world: one update in
# three is of that kind (in the one recorded index every update touched Study Status; on trials like
# that every version is fetched, and the figures grow by half).
UNTRACKED_UPDATES = (["Eligibility"], ["Outcome Measures"], ["References", "Study Description"])


def _version_day(number: int) -> str:
    return (date(2015, 1, 5) + timedelta(days=60 * number)).isoformat()


def _dated(record: Record, day: str) -> None:
    status = record["protocolSection"]["statusModule"]
    status["lastUpdateSubmitDate"] = day
    status["lastUpdatePostDateStruct"] = {"date": (date.fromisoformat(day) + timedelta(days=1)).isoformat(),
                                          "type": "ACTUAL"}  # fmt: skip


def plant_history(fake: FakeRegistry, trials: int, versions: int) -> dict[str, Any]:
    """Give the first `trials` studies a history of `versions` versions each, ending at their current
    record: sites opening, dates moving, enrollment growing, the status going from not yet
    recruiting to recruiting, active and completed; and one update in three touching no tracked field."""
    ids = list(fake.records)[:trials]
    fetchable = 0
    for n, study_id in enumerate(ids):
        current = fake.records[study_id]
        p = current["protocolSection"]
        sites = p.setdefault("contactsLocationsModule", {}).setdefault("locations", [])
        record = copy.deepcopy(current)
        record["protocolSection"]["contactsLocationsModule"]["locations"] = sites[:1]
        record["protocolSection"]["statusModule"]["overallStatus"] = "NOT_YET_RECRUITING"
        _dated(record, _version_day(0))
        history = [FakeVersion(_version_day(0), copy.deepcopy(record), [])]
        fetchable += 1
        for k in range(1, versions):
            record = copy.deepcopy(record)
            r = record["protocolSection"]
            if k % 3 == 0:
                labels = UNTRACKED_UPDATES[(k // 3 + n) % len(UNTRACKED_UPDATES)]
                r.setdefault("eligibilityModule", {})["minimumAge"] = f"{18 + k % 5} Years"
            else:
                labels = ["Study Status"]
                status = r["statusModule"]
                status["overallStatus"] = (
                    "COMPLETED" if k == versions - 1 else "ACTIVE_NOT_RECRUITING" if k >= versions - 4 else "RECRUITING"
                )
                if k % 3 == 1:
                    labels.append("Contacts/Locations")
                    shown = r["contactsLocationsModule"]["locations"]
                    extra = {"facility": f"Bench Hospital {k}", "city": "Shanghai", "country": "China"}
                    shown.append(sites[len(shown)] if len(shown) < len(sites) else extra)
                else:
                    labels.append("Study Design")
                    r.setdefault("designModule", {}).setdefault("enrollmentInfo", {})["count"] = 20 + 5 * k
                fetchable += 1
            _dated(record, _version_day(k))
            history.append(FakeVersion(_version_day(k), record, labels))
        fake.set_history(study_id, history)
    fake._hits_cache.clear()
    return {"ids": ids, "versions": versions, "fetchable": fetchable}


def plant_versions_day(fake: FakeRegistry, trials: int, versions: int, day: str) -> dict[str, int]:
    """`trials` studies each move `versions` versions since the last poll: the status changes every
    time (recruiting → active → completed ...). Returns the changes a plain diff can see
    (status once, flattened) and those the versions hold (one per version)."""
    cycle = ["RECRUITING", "ACTIVE_NOT_RECRUITING", "COMPLETED", "TERMINATED"]
    ids = list(fake.records)[:trials]
    for study_id in ids:
        start = fake.records[study_id]["protocolSection"]["statusModule"].get("overallStatus")
        steps = [s for s in cycle if s != start][:versions]
        for k, status in enumerate(steps):
            stamp = (date.fromisoformat(day) + timedelta(days=k)).isoformat()
            fake.add_version(
                study_id, stamp, lambda r, s=status: r["protocolSection"]["statusModule"].update(overallStatus=s)
            )
    fake.refresh()
    return {"trials": len(ids), "versions": versions * len(ids), "flattened": len(ids), "replayed": versions * len(ids)}


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
        if path == "/_admin/history":
            return self._json(plant_history(self, int(params["trials"]), int(params["versions"])))
        if path == "/_admin/versions_day":
            day = (date.fromisoformat(self.data_timestamp[:10]) - timedelta(days=6)).isoformat()
            return self._json(plant_versions_day(self, int(params["trials"]), int(params["versions"]), day))
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
