"""Atom (feedgenerator) and JSON Feed 1.1 of change events, with validators for conditional GETs.

One entry per event (one trial's changes from one sync), newest first, at most 100. An entry's
id is a tag URI built from the public host, the day of the event and its first change's id:
both are fixed once the event is stored, so a feed reader shows each event once. Entry HTML
comes from a template (autoescaped: registry text is untrusted).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import feedgenerator
import jinja2

from watcher.web.views import Event

FEED_VERSION = "1"  # part of every ETag: bump when the entries' shape changes
# Characters XML 1.0 does not allow; registry text is untrusted and must not break the feed.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_safe(text: str) -> str:
    return _NOT_XML.sub("", text)


@dataclass(frozen=True)
class FeedInfo:
    title: str
    subtitle: str
    page_url: str  # the page the feed belongs to
    feed_url: str
    public_url: str


def entry_id(public_url: str, event: Event) -> str:
    host = urlsplit(public_url).hostname or "localhost"
    return f"tag:{host},{event.detected_at:%Y-%m-%d}:trial-watcher/change/{event.first_id}"


def entry_title(event: Event) -> str:
    more = len(event.lines) - 1
    text = f"{event.nct_id}: {event.lines[0].text}"
    return _xml_safe(text + (f" (and {more} more change{'s' if more > 1 else ''})" if more else ""))


def _entry_html(env: jinja2.Environment, info: FeedInfo, event: Event) -> str:
    return _xml_safe(env.get_template("web/feed_entry.html.j2").render(event=event, public_url=info.public_url))


class _Atom(feedgenerator.Atom1Feed):  # type: ignore[misc]  # feedgenerator has no types
    """feedgenerator's Atom, with a fixed <updated> for an empty feed (it would say 'now')."""

    def __init__(self, *args: Any, empty_updated: datetime, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.empty_updated = empty_updated

    def latest_post_date(self) -> datetime:
        return super().latest_post_date() if self.items else self.empty_updated


def atom(env: jinja2.Environment, info: FeedInfo, events: list[Event], since: datetime) -> bytes:
    feed = _Atom(
        title=_xml_safe(info.title),
        link=info.page_url,
        description=_xml_safe(info.subtitle),
        feed_url=info.feed_url,
        feed_guid=info.feed_url,
        language="en",
        author_name="Trial watcher",
        empty_updated=since,
    )
    for event in events:
        feed.add_item(
            title=entry_title(event),
            link=f"{info.public_url}/trial/{event.nct_id}",
            description=_xml_safe(" · ".join(line.text for line in event.lines)),
            content=_entry_html(env, info, event),
            unique_id=entry_id(info.public_url, event),
            pubdate=event.detected_at,
            updateddate=event.detected_at,
        )
    text: str = feed.writeString("utf-8")
    return text.encode()


def json_feed(env: jinja2.Environment, info: FeedInfo, events: list[Event]) -> bytes:
    """JSON Feed 1.1 (https://jsonfeed.org/version/1.1)."""
    data = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": info.title,
        "description": info.subtitle,
        "home_page_url": info.page_url,
        "feed_url": info.feed_url,
        "language": "en",
        "authors": [{"name": "Trial watcher"}],
        "items": [
            {
                "id": entry_id(info.public_url, event),
                "url": f"{info.public_url}/trial/{event.nct_id}",
                "title": entry_title(event),
                "content_html": _entry_html(env, info, event),
                "content_text": "\n".join(line.text for line in event.lines),
                "date_published": _rfc3339(event.detected_at),
                "date_modified": _rfc3339(event.detected_at),
                "tags": sorted({line.category.value for line in event.lines}),
            }
            for event in events
        ],
    }
    return json.dumps(data, ensure_ascii=False, indent=1).encode()


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- conditional GETs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Validators:
    etag: str
    last_modified: datetime | None

    def headers(self) -> dict[str, str]:
        headers = {"ETag": self.etag, "Cache-Control": "public, max-age=300"}
        if self.last_modified is not None:
            headers["Last-Modified"] = format_datetime(self.last_modified.astimezone(UTC), usegmt=True)
        return headers

    def not_modified(self, if_none_match: str | None, if_modified_since: str | None) -> bool:
        """Whether the client's copy is current (RFC 9110: If-None-Match wins over If-Modified-Since)."""
        if if_none_match is not None:
            tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
            return "*" in tags or self.etag in tags
        if if_modified_since and self.last_modified is not None:
            try:
                since = parsedate_to_datetime(if_modified_since)
            except (TypeError, ValueError, IndexError):
                return False
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            return self.last_modified.replace(microsecond=0) <= since
        return False


def validators(kind: str, scope: str, public_url: str, newest_id: int, newest_at: datetime | None) -> Validators:
    """A feed's content depends only on its newest change (the log is append-only) and where it is served."""
    digest = hashlib.sha256(f"{FEED_VERSION}|{kind}|{scope}|{public_url}|{newest_id}".encode()).hexdigest()[:24]
    return Validators(f'"{digest}"', newest_at)
