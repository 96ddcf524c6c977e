"""The feeds: Atom checked with a feed parser, JSON Feed 1.1, stable entry ids, at most 100 entries, 304s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import feedparser
import pytest

from tests.support.fakeapi import FakeRegistry
from tests.support.web import Site, site_for
from tests.support.world import TARGET
from watcher.changes import Change, ChangeKind
from watcher.clock import utcnow
from watcher.fields import OVERALL_STATUS
from watcher.store import add_change

FEED = "/watch/mg-azathioprine/feed.atom"


@pytest.fixture
def site(tmp_path: Path, fake: FakeRegistry) -> Iterator[Site]:
    with site_for(tmp_path, fake) as found:
        yield found


def parsed(site: Site, path: str = FEED) -> feedparser.FeedParserDict:
    response = site.client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    feed = feedparser.parse(response.content)
    assert not feed.bozo, feed.bozo_exception
    assert feed.version == "atom10"
    return feed


def test_the_watch_feed_has_one_entry_per_event_newest_first_with_ids_that_never_change(site: Site) -> None:
    assert parsed(site).entries == []  # no change yet: a valid, empty feed
    site.change()  # status, in one sync: one entry
    first = parsed(site)
    assert first.feed.title == "Trial watcher: mg-azathioprine"
    [entry] = first.entries
    assert entry.title == "NCT01727193: Status: Unknown status → Completed"
    assert entry.link == "http://127.0.0.1:8080/trial/NCT01727193"
    assert entry.id.startswith("tag:127.0.0.1,") and ":trial-watcher/change/" in entry.id
    assert "Status: Unknown status → Completed" in entry.content[0].value
    site.fake.edit(TARGET, lambda r: r["protocolSection"]["designModule"]["enrollmentInfo"].update(count=96))
    site.change("TERMINATED")  # two changes of one trial in one sync: still one entry
    second = parsed(site)
    assert [e.title for e in second.entries] == [
        "NCT01727193: Status: Completed → Terminated (and 1 more change)",
        "NCT01727193: Status: Unknown status → Completed",
    ]
    assert second.entries[1].id == entry.id  # a reader shows each event once
    assert second.entries[0].updated_parsed >= second.entries[1].updated_parsed


def test_the_json_feed_is_json_feed_1_1(site: Site) -> None:
    site.change()
    response = site.client.get("/watch/mg-azathioprine/feed.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/feed+json"
    feed = json.loads(response.content)
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["feed_url"] == "http://127.0.0.1:8080/watch/mg-azathioprine/feed.json"
    assert feed["home_page_url"] == "http://127.0.0.1:8080/watch/mg-azathioprine"
    [item] = feed["items"]
    atom = parsed(site).entries[0]
    assert item["id"] == atom.id and item["url"] == atom.link and item["title"] == atom.title
    assert item["content_text"] == "Status: Unknown status → Completed" and item["tags"] == ["status"]
    assert item["date_published"].endswith("Z")


def test_the_trial_feed(site: Site) -> None:
    site.change()
    feed = parsed(site, "/trial/NCT01727193/feed.atom")
    assert [e.title for e in feed.entries] == ["NCT01727193: Status: Unknown status → Completed"]
    assert feed.entries[0].id == parsed(site).entries[0].id  # the same event, the same id
    assert site.client.get("/trial/NCT09999999/feed.atom").status_code == 404


def test_at_most_100_entries(site: Site) -> None:
    site.change()
    store = site.stores[0]
    start = utcnow()
    with store.write() as session:
        for n in range(130):
            change = Change(
                TARGET, ChangeKind.CHANGED, OVERALL_STATUS, "RECRUITING", "COMPLETED" if n % 2 else "RECRUITING"
            )
            add_change(session, change, ["mg-azathioprine"], start + timedelta(minutes=n), None)
    feed = parsed(site)
    assert len(feed.entries) == 100
    assert len({e.id for e in feed.entries}) == 100
    stamps = [e.updated_parsed for e in feed.entries]
    assert stamps == sorted(stamps, reverse=True)


def test_conditional_gets_answer_304_until_something_changes(site: Site) -> None:
    site.change()
    first = site.client.get(FEED)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert modified.endswith(" GMT")
    again = site.client.get(FEED, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert site.client.get(FEED, headers={"If-Modified-Since": modified}).status_code == 304
    assert site.client.get(FEED, headers={"If-None-Match": '"other"'}).status_code == 200
    json_etag = site.client.get("/watch/mg-azathioprine/feed.json").headers["etag"]
    assert json_etag != etag
    site.change("TERMINATED")
    changed = site.client.get(FEED, headers={"If-None-Match": etag, "If-Modified-Since": modified})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


def test_hostile_registry_text_cannot_break_or_script_the_feeds(site: Site) -> None:
    evil = "<script>alert(1)</script>\x0b\x00]]>&"
    site.fake.edit(TARGET, lambda r: r["protocolSection"]["identificationModule"].update(briefTitle=f"Trial {evil}"))
    site.change(f"COMPLETED{evil}")
    feed = parsed(site)  # still well-formed XML
    [entry] = feed.entries
    assert "<script>" not in entry.content[0].value and "&lt;script&gt;" in entry.content[0].value
    items = json.loads(site.client.get("/watch/mg-azathioprine/feed.json").content)["items"]
    assert "<script>" not in items[0]["content_html"]
