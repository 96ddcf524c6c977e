"""The HTTP client against `responses`: paging, retries, and bodies that are not data."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from responses import matchers

from tests.conftest import FakeClock
from tests.support.fakeapi import FakeRegistry
from tests.support.world import record
from watcher.config import CtgovSettings
from watcher.errors import Cancelled, HistoryUnavailable, RegistryError
from watcher.registry import Listed, Pacer, Registry

BASE = "https://ctgov.test/api/v2"
STUDIES = f"{BASE}/studies"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def registry() -> Registry:
    return Registry(CtgovSettings(base_url=BASE, retries=3, backoff_s=0.5, timeout_s=5))


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


# --- retries: urllib3's real retries against a real local server ----------------------------------------
# (`responses` answers before urllib3 ever retries, so it cannot show how many tries were made.)


@pytest.fixture
def served() -> Iterator[FakeRegistry]:
    with FakeRegistry([record("NCT01727193")]) as fake:
        yield fake


def client(fake: FakeRegistry, waits: list[float], retries: int = 3) -> Registry:
    return Registry(CtgovSettings(base_url=fake.base_url, retries=retries, backoff_s=0.5), sleep=waits.append)


def test_429_is_retried_after_waiting_as_long_as_retry_after_says(served: FakeRegistry) -> None:
    waits: list[float] = []
    served.faults.rate_limit_next, served.faults.retry_after = 1, "7"
    registry = client(served, waits)
    assert registry.data_timestamp() == served.data_timestamp
    assert waits == [7.0]
    assert [s.status for s in served.log] == [429, 200] and registry.traffic.requests == 2


def test_server_errors_are_retried_with_growing_backoff(served: FakeRegistry) -> None:
    waits: list[float] = []
    served.faults.server_error_next = 3
    registry = client(served, waits)
    registry.data_timestamp()
    assert [s.status for s in served.log] == [503, 503, 503, 200] and registry.traffic.requests == 4
    assert waits[0] == 0 and 0 < waits[1] < waits[2] <= 60  # the first retry at once, then exponential backoff


def test_persistent_429_gives_up_after_every_try_with_a_clear_message(served: FakeRegistry) -> None:
    waits: list[float] = []
    served.faults.rate_limit_next, served.faults.retry_after = 10, "1"
    registry = client(served, waits)
    with pytest.raises(RegistryError, match=r"rate limiting us \(429\) and kept doing so"):
        registry.data_timestamp()
    assert len(served.log) == registry.traffic.requests == 4  # 1 + 3 retries, each really sent
    assert waits == [1.0, 1.0, 1.0]


def test_connection_refused_is_retried_then_named(served: FakeRegistry) -> None:
    waits: list[float] = []
    registry = client(served, waits, retries=2)
    address = served.base_url.split("/")[2]
    served.stop()
    with pytest.raises(RegistryError) as err:
        registry.data_timestamp()
    assert str(err.value) == f"{address} did not answer after 3 tries (connection refused)"
    assert len(waits) == 2 and registry.traffic.requests == 3  # every retry waited (the first for 0 s)


@responses.activate
def test_400_text_body_is_shown_and_not_retried(registry: Registry) -> None:
    responses.get(STUDIES, status=400, body="`filter.phase` is unknown parameter", content_type="text/plain")
    with pytest.raises(RegistryError) as err:
        list(registry.list_search({"query.cond": "x"}))
    assert str(err.value) == "ctgov.test rejected the request (400): `filter.phase` is unknown parameter"
    assert len(responses.calls) == 1


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


# --- the internal API: version history -----------------------------------------------------

INT = "https://ctgov.test/api/int"
SAMPLE = json.loads((FIXTURES / "history" / "NCT03690141_int-history-true_2023.json").read_text())
NCT = "NCT03690141"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps() -> list[float]:
    """The waits between retries, recorded instead of slept."""
    return []


@pytest.fixture
def paced(clock: FakeClock, sleeps: list[float]) -> Registry:
    settings = CtgovSettings(base_url=BASE, retries=3, backoff_s=0.5, timeout_s=5)
    return Registry(settings, pacer=Pacer(clock=clock, wait=clock.wait), sleep=sleeps.append)


def served_at(clock: FakeClock, body: object, latency: float = 0.1, log: list[float] | None = None):  # type: ignore[no-untyped-def]
    """A `responses` callback noting the (fake) time each request arrives, then taking `latency`."""

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        assert log is not None
        log.append(clock.now)
        clock.now += latency
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    return answer


@responses.activate
def test_the_version_index_and_a_version_come_from_the_internal_api(paced: Registry) -> None:
    responses.get(f"{INT}/studies/{NCT}/history", json=SAMPLE["history"])
    responses.get(f"{INT}/studies/{NCT}/history/9", json={"studyVersion": 9, "study": SAMPLE["study"]})
    index = paced.version_index(NCT)
    assert len(index) == 10 and index.latest.status == "COMPLETED"
    assert paced.version(NCT, 9)["protocolSection"]["statusModule"]["overallStatus"] == "COMPLETED"
    assert paced.traffic.requests == paced.traffic.history_requests == 2
    assert paced.traffic.history_bytes == sum(len(c.response.content) for c in responses.calls)
    agent = responses.calls[0].request.headers["User-Agent"]
    assert agent.startswith("python-requests/") and "trial-watcher/" in agent


@responses.activate
def test_at_most_one_request_a_second_to_the_internal_api(paced: Registry, clock: FakeClock) -> None:
    arrivals: list[float] = []
    responses.add_callback("GET", f"{INT}/studies/{NCT}/history", served_at(clock, SAMPLE["history"], log=arrivals))
    for n in range(4):
        body = {"studyVersion": n, "study": SAMPLE["study"]}
        responses.add_callback("GET", f"{INT}/studies/{NCT}/history/{n}", served_at(clock, body, log=arrivals))
    paced.version_index(NCT)
    for n in range(4):
        paced.version(NCT, n)
    assert len(arrivals) == 5
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(arrivals))
    assert clock.waits == [1.0] * 4  # the first request waits for nothing; each next one a second after an answer
    responses.get(f"{BASE}/version", json={"dataTimestamp": "2026-11-25T09:00:05"})
    paced.data_timestamp()
    paced.data_timestamp()
    assert len(clock.waits) == 4  # the API v2 is not paced by it


def test_the_wait_ends_at_once_when_the_daemon_stops() -> None:
    stop = threading.Event()
    pacer = Pacer(interval_s=3600, cancel=stop)
    pacer.after()
    stop.set()
    with pytest.raises(Cancelled):
        pacer.before()  # returns at once: it waits on the event, not for an hour


@pytest.mark.parametrize(
    ("status", "body", "content_type", "message"),
    [
        (404, "Study not found", "text/plain", "ctgov.test has no version history for this trial (404)"),
        (403, "<html>Forbidden</html>", "text/html", "ctgov.test refused the request for its version history (403)"),
        (400, "Invalid nctId", "text/plain", "ctgov.test answered 400 to the request for its version history: Invalid nctId"),
        (200, "<!DOCTYPE html><html><body>Please enable JavaScript</body></html>", "text/html",
         "ctgov.test sent a web page instead of its version history"),
        (200, '{"changes": [', "application/json",
         "ctgov.test sent its version history in a body that is not complete JSON (application/json, 13 bytes)"),
        (200, '{"changes": {}}', "application/json",
         "the registry's version history has an unexpected shape (no list of versions)"),
    ],
)  # fmt: skip
@responses.activate
def test_history_failures_are_one_line_and_not_retried(
    paced: Registry, sleeps: list[float], status: int, body: str, content_type: str, message: str
) -> None:
    responses.get(f"{INT}/studies/{NCT}/history", status=status, body=body, content_type=content_type)
    with pytest.raises(HistoryUnavailable) as err:
        paced.version_index(NCT)
    assert str(err.value) == f"{NCT}: {message}"
    assert isinstance(err.value, RegistryError) and len(responses.calls) == 1 and sleeps == []


@responses.activate
def test_a_version_that_is_not_the_one_asked_for_is_refused(paced: Registry) -> None:
    responses.get(f"{INT}/studies/{NCT}/history/3", json={"studyVersion": 4, "study": SAMPLE["study"]})
    with pytest.raises(HistoryUnavailable, match=r"asked for version 3, got version 4"):
        paced.version(NCT, 3)


@responses.activate
def test_the_internal_api_down_is_history_unavailable(paced: Registry, sleeps: list[float]) -> None:
    responses.get(f"{INT}/studies/{NCT}/history", body=requests.exceptions.ConnectionError("Connection refused"))
    with pytest.raises(
        HistoryUnavailable,
        match=r"its version history could not be read: ctgov.test did not answer after \d tries \(connection refused\)",
    ):
        paced.version_index(NCT)
