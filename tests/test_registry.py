"""The HTTP client against `responses`: paging, retries, and bodies that are not data."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from responses import matchers

from tests.support.fakeapi import FakeRegistry
from tests.support.world import record
from watcher.config import CtgovSettings
from watcher.errors import RegistryError
from watcher.registry import Listed, Registry

BASE = "https://ctgov.test/api/v2"
STUDIES = f"{BASE}/studies"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def registry() -> Registry:
    return Registry(CtgovSettings(base_url=BASE, retries=3, backoff_s=0.5, timeout_s=5))


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """urllib3's backoff sleeps, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr("urllib3.util.retry.time.sleep", slept.append)
    return slept


def page(*ids: str, token: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "studies": [
            {"protocolSection": {"identificationModule": {"nctId": i},
                                 "statusModule": {"lastUpdatePostDateStruct": {"date": "2026-01-02"}}}}
            for i in ids
        ]
    }  # fmt: skip
    if token:
        body["nextPageToken"] = token
    return body


@responses.activate
def test_pages_follow_tokens_with_the_same_parameters(registry: Registry) -> None:
    first = json.loads((FIXTURES / "search_phelan_limit5_20260811.json").read_text())
    second = json.loads((FIXTURES / "search_phelan_next_20260811.json").read_text())
    token, last = first["nextPageToken"], second["nextPageToken"]
    query = {"query.cond": "Phelan-McDermid Syndrome", "fields": "NCTId,LastUpdatePostDate", "pageSize": "1000"}
    responses.get(STUDIES, json={"studies": []}, match=[matchers.query_param_matcher({**query, "pageToken": last})])
    responses.get(
        STUDIES,
        json=second,
        match=[
            matchers.query_param_matcher(
                {
                    "query.cond": "Phelan-McDermid Syndrome",
                    "fields": "NCTId,LastUpdatePostDate",
                    "pageSize": "1000",
                    "pageToken": token,
                }
            )
        ],
    )
    responses.get(
        STUDIES,
        json=first,
        match=[
            matchers.query_param_matcher(
                {"query.cond": "Phelan-McDermid Syndrome", "fields": "NCTId,LastUpdatePostDate", "pageSize": "1000"}
            )
        ],
    )
    listed = list(registry.list_search({"query.cond": "Phelan-McDermid Syndrome"}))
    expected = [s["protocolSection"]["identificationModule"]["nctId"] for s in first["studies"] + second["studies"]]
    assert [item.nct_id for item in listed] == expected
    assert registry.traffic.requests == 3
    assert registry.traffic.bytes == sum(len(c.response.content) for c in responses.calls)


@responses.activate
def test_stops_on_an_empty_page_after_a_full_one(registry: Registry) -> None:
    responses.get(STUDIES, json=page("NCT00000001", token="T1"))
    responses.get(STUDIES, json={"studies": [], "nextPageToken": "T2"})
    assert [s.nct_id for s in registry.list_search({"query.cond": "x"})] == ["NCT00000001"]
    assert len(responses.calls) == 2


@responses.activate
def test_a_repeated_token_is_an_error_not_a_loop(registry: Registry) -> None:
    responses.get(STUDIES, json=page("NCT00000001", token="SAME"))
    responses.get(STUDIES, json=page("NCT00000002", token="SAME"))
    responses.get(STUDIES, json=page("NCT00000003", token="SAME"))
    with pytest.raises(RegistryError, match="repeated a page token"):
        list(registry.list_search({"query.cond": "x"}))
    assert len(responses.calls) == 2


@responses.activate
def test_429_with_retry_after_is_retried(registry: Registry) -> None:
    responses.get(STUDIES, status=429, body="Too Many Requests", headers={"Retry-After": "7"})
    responses.get(STUDIES, json=page("NCT00000001"))
    assert [s.nct_id for s in registry.list_search({"query.cond": "x"})] == ["NCT00000001"]
    assert registry.traffic.requests == 2


@responses.activate
def test_500_then_success(registry: Registry) -> None:
    responses.get(STUDIES, status=500, body="upstream connect error")
    responses.get(STUDIES, status=503, body="unavailable")
    responses.get(STUDIES, json=page("NCT00000001"))
    assert [s.nct_id for s in registry.list_search({"query.cond": "x"})] == ["NCT00000001"]
    assert registry.traffic.requests == 3


def test_waits_as_long_as_retry_after_says_on_a_real_server(sleeps: list[float]) -> None:
    # `responses` does not sleep between retries, so the waiting is checked against the fake API.
    with FakeRegistry([record("NCT01727193")]) as fake:
        fake.faults.rate_limit_next, fake.faults.retry_after = 1, "7"
        client = Registry(CtgovSettings(base_url=fake.base_url, retries=3, backoff_s=0.5))
        assert client.data_timestamp() == fake.data_timestamp
        assert sleeps == [7.0]
        fake.faults.server_error_next = 2
        client.data_timestamp()
        assert len(sleeps) == 2 and 0 < sleeps[1] <= 60  # urllib3 retries the first 503 at once
        assert [s.status for s in fake.log] == [429, 200, 503, 503, 200]


@responses.activate
def test_persistent_429_gives_up_with_a_clear_message(registry: Registry, sleeps: list[float]) -> None:
    responses.get(STUDIES, status=429, body="Too Many Requests")
    with pytest.raises(RegistryError, match=r"rate limiting us \(429\)"):
        list(registry.list_search({"query.cond": "x"}))
    assert len(responses.calls) == registry.traffic.requests == 4  # 1 + 3 retries


@responses.activate
def test_400_text_body_is_shown_and_not_retried(registry: Registry, sleeps: list[float]) -> None:
    responses.get(STUDIES, status=400, body="`filter.phase` is unknown parameter", content_type="text/plain")
    with pytest.raises(RegistryError) as err:
        list(registry.list_search({"query.cond": "x"}))
    assert str(err.value) == "ctgov.test rejected the request (400): `filter.phase` is unknown parameter"
    assert len(responses.calls) == 1 and sleeps == []


@responses.activate
def test_404_is_not_retried(registry: Registry) -> None:
    responses.get(f"{BASE}/version", status=404, body="<html>404 Not Found</html>", content_type="text/html")
    with pytest.raises(RegistryError, match=r"\(404\)"):
        registry.data_timestamp()
    assert len(responses.calls) == 1


@responses.activate
def test_truncated_json_is_an_error_not_data(registry: Registry) -> None:
    body = json.dumps(page("NCT00000001", "NCT00000002"))
    responses.get(STUDIES, body=body[: len(body) // 2], content_type="application/json")
    with pytest.raises(RegistryError, match="not complete JSON"):
        list(registry.list_search({"query.cond": "x"}))


@responses.activate
def test_listing_entries_without_a_usable_nct_id_are_skipped_and_counted(registry: Registry) -> None:
    broken = [{"protocolSection": {}}, {"protocolSection": None}, {"protocolSection": {"statusModule": None}}, 7]
    good = {"protocolSection": {"identificationModule": {"nctId": "NCT00000001"}, "statusModule": None}}
    responses.get(STUDIES, json={"studies": [*broken, good]})
    assert list(registry.list_search({"query.cond": "x"})) == [Listed("NCT00000001", None)]
    assert registry.skipped_listings == 4


@responses.activate
def test_json_of_the_wrong_shape_is_an_error(registry: Registry) -> None:
    responses.get(STUDIES, json={"studies": {"not": "a list"}})
    with pytest.raises(RegistryError, match="without a list of studies"):
        list(registry.list_search({"query.cond": "x"}))
    responses.get(f"{BASE}/version", json={"apiVersion": "2.0.5"})
    with pytest.raises(RegistryError, match="without a dataTimestamp"):
        registry.data_timestamp()


@responses.activate
def test_connection_refused_after_retries(registry: Registry, sleeps: list[float]) -> None:
    responses.get(f"{BASE}/version", body=requests.exceptions.ConnectionError("Connection refused"))
    with pytest.raises(RegistryError, match="did not answer"):
        registry.data_timestamp()


@responses.activate
def test_ids_are_batched_with_filter_ids(registry: Registry) -> None:
    ids = [f"NCT{n:08d}" for n in range(1, 601)]
    responses.get(STUDIES, json=page())
    list(registry.list_ids(ids))
    sent = [parse_qs(urlsplit(c.request.url).query) for c in responses.calls]
    assert len(sent) == 3  # 600 IDs in batches of 250
    assert sorted(i for q in sent for i in q["filter.ids"][0].split(",")) == ids
    assert all(q["fields"] == ["NCTId,NCTIdAlias,LastUpdatePostDate"] for q in sent)


@responses.activate
def test_an_alias_comes_back_under_its_current_id(registry: Registry) -> None:
    current = record("NCT01727193")
    current["protocolSection"]["identificationModule"]["nctIdAliases"] = ["NCT01700000"]
    responses.get(
        STUDIES,
        json={"studies": [current]},
        match=[matchers.query_param_matcher({"filter.ids": "NCT01700000", "pageSize": "1000"})],
    )
    [fetched] = [r for p in registry.fetch(["NCT01700000"]) for r in p]
    assert fetched["protocolSection"]["identificationModule"]["nctId"] == "NCT01727193"


@responses.activate
def test_single_study_redirect_is_followed(registry: Registry) -> None:
    responses.get(f"{BASE}/studies/NCT01700000", status=301, headers={"Location": f"{BASE}/studies/NCT01727193"})
    responses.get(f"{BASE}/studies/NCT01727193", json=record("NCT01727193"))
    body = registry.get_json("studies/NCT01700000")
    assert body["protocolSection"]["identificationModule"]["nctId"] == "NCT01727193"


@responses.activate
def test_user_agent_keeps_the_library_token(registry: Registry) -> None:
    responses.get(f"{BASE}/version", json={"dataTimestamp": "2026-11-25T09:00:05"})
    assert registry.data_timestamp() == "2026-11-25T09:00:05"
    agent = responses.calls[0].request.headers["User-Agent"]
    assert agent.startswith("python-requests/") and "trial-watcher/" in agent
    contact = Registry(CtgovSettings(base_url=BASE, contact="mailto:me@example.org"))
    assert contact.session.headers["User-Agent"].endswith("(+mailto:me@example.org)")
