"""Test worlds built from the recorded fixture records."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

Record = dict[str, Any]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TARGET = "NCT01727193"


@cache
def _load(name: str) -> str:
    return (FIXTURES / "records" / f"{name}.json").read_text()


def record(name: str) -> Record:
    """A fresh copy of a fixture record."""
    return json.loads(_load(name))


def variant(
    base: str, new_id: str, title: str, conditions: list[str], interventions: list[str], **status: Any
) -> Record:
    """A real record re-labelled as another study (ID, title, conditions, interventions)."""
    r = record(base)
    p = r["protocolSection"]
    p["identificationModule"]["nctId"] = new_id
    p["identificationModule"]["briefTitle"] = title
    p["identificationModule"].pop("nctIdAliases", None)
    p["conditionsModule"]["conditions"] = conditions
    arms = p.setdefault("armsInterventionsModule", {})
    arms["interventions"] = [{"type": "DRUG", "name": name} for name in interventions]
    p["statusModule"].update(status)
    p["statusModule"]["lastUpdatePostDateStruct"] = {"date": "2026-10-01", "type": "ACTUAL"}
    return r


def related_mg() -> list[Record]:
    return [
        variant("NCT05147467", "NCT90000001", "Low-dose Azathioprine in Ocular Myasthenia Gravis",
                ["Myasthenia Gravis, Ocular"], ["Azathioprine", "Prednisone"], overallStatus="RECRUITING"),
        variant("NCT03934567", "NCT90000002", "Steroid-sparing Strategies in Generalized Myasthenia Gravis",
                ["Myasthenia Gravis, Generalized"], ["Azathioprine", "Mycophenolate mofetil"]),
        variant("NCT00184067", "NCT90000003", "Azathioprine Withdrawal in Stable Myasthenia Gravis",
                ["Myasthenia Gravis"], ["Azathioprine"]),
    ]  # fmt: skip


def new_mg_study() -> Record:
    return variant(
        "NCT05147467", "NCT90000004", "Azathioprine or Rituximab After Thymectomy in Myasthenia Gravis",
        ["Myasthenia Gravis"], ["Azathioprine", "Rituximab"], overallStatus="NOT_YET_RECRUITING",
    )  # fmt: skip


def mg_world() -> dict[str, Record]:
    """The target trial, three related MG/azathioprine trials, and three unrelated real trials."""
    records = [record(TARGET), *related_mg(), record("NCT00184067"), record("NCT03934567"), record("NCT05147467")]
    return {r["protocolSection"]["identificationModule"]["nctId"]: r for r in records}
