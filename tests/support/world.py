"""Test worlds built from the recorded fixture records."""

from __future__ import annotations

import copy
import html
import json
import re
from datetime import date, timedelta
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


# --- a study's version history: the real index of NCT03690141, with made-up version records ------

HISTORY_STUDY = "NCT03690141"
_HL_MARK = re.compile(r"</?mark[^>]*>")


def _plain(text: str) -> str:
    """The recorded body's HTML text as the API v2 would give it (no search highlights, no entities)."""
    return html.unescape(_HL_MARK.sub("", text))


def history_sample() -> dict[str, Any]:
    """The recorded `?history=true` body of NCT03690141 (real; see fixtures/README.md)."""
    return json.loads((FIXTURES / "history" / "NCT03690141_int-history-true_2023.json").read_text())


def history_versions() -> list[Any]:
    """NCT03690141's ten versions for the fake API.

    Real: the index (version numbers, dates, statuses, module labels) and the last version's
    record (the recorded current record, 2020-04-27). Made up, plausibly and consistently with
    that index: the records of versions 0 to 8 (sites opening one by one, the drug's name added
    to the title, dates and enrollment; the original enrollment of 30 and the version that
    changed it, 7, are the index's own `originalData` and `lastUpdateVersions`).
    """
    from tests.support.fakeapi import FakeVersion

    body = history_sample()
    current = {k: v for k, v in body["study"].items() if k != "derivedSection"}
    ident = current["protocolSection"]["identificationModule"]
    for key in ("briefTitle", "officialTitle"):
        ident[key] = _plain(ident[key])
    conditions = current["protocolSection"]["conditionsModule"]
    conditions["conditions"] = [_plain(c) for c in conditions["conditions"]]
    conditions["keywords"] = [_plain(k) for k in conditions["keywords"]]
    sites = current["protocolSection"]["contactsLocationsModule"]["locations"]
    opened = {1: 2, 2: 4, 3: 5, 4: 7, 5: 9, 6: 10}  # sites listed by each version (the last has all 10)
    records: list[Record] = []
    for entry in body["history"]["changes"]:
        number = entry["version"]
        record = copy.deepcopy(current)
        p = record["protocolSection"]
        status = p["statusModule"]
        status["overallStatus"] = entry["status"]
        status["lastUpdateSubmitDate"] = entry["date"]
        posted = (date.fromisoformat(entry["date"]) + timedelta(days=1)).isoformat()
        status["lastUpdatePostDateStruct"] = {"date": posted, "type": "ACTUAL"}
        if number < 9:
            status["statusVerifiedDate"] = entry["date"][:7]
            status["primaryCompletionDateStruct"] = {"date": "2020-06", "type": "ESTIMATED"}
            status["completionDateStruct"] = {"date": "2020-12", "type": "ESTIMATED"}
        if number == 8:
            status["primaryCompletionDateStruct"] = {"date": "2020-04", "type": "ESTIMATED"}
            status["completionDateStruct"] = {"date": "2020-04", "type": "ESTIMATED"}
        if number == 0:
            status["startDateStruct"] = {"date": "2018-10", "type": "ESTIMATED"}
        if number < 7:
            p["designModule"]["enrollmentInfo"] = dict(body["history"]["originalData"]["enrollmentInfo"])
        if number < 2:
            p["identificationModule"]["briefTitle"] = p["identificationModule"]["briefTitle"].replace(
                "Tomivosertib (eFT508)", "eFT508"
            )
        p["contactsLocationsModule"]["locations"] = sites[: opened.get(number, 1 if number == 0 else 10)]
        records.append(record)
    return [
        FakeVersion(e["date"], r, list(e["moduleLabels"]))
        for e, r in zip(body["history"]["changes"], records, strict=True)
    ]
