"""The site's pages: what every page needs (`Site`: templates, the secret, CSRF, messages), and the
pages that only read: the watches, a watch, a trial, the feeds and /healthz. The handlers run the
store's queries in a worker thread (the database is synchronous) and render a template.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import jinja2
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from watcher import models
from watcher.accounts import Link
from watcher.clock import Clock, iso
from watcher.config import Config, WebSettings, check_nct_id
from watcher.errors import WatcherError
from watcher.fields import status_label
from watcher.render import environment
from watcher.states import RunKind
from watcher.store import Store, digest_counts
from watcher.tokens import Secret, TokenState, load_secret
from watcher.web import feeds, forms, views
from watcher.wording import frequency_words, partial_date

log = logging.getLogger(__name__)

NO_STORE = {"Cache-Control": "no-store"}


TITLES = {
    "home": "Trials we watch",
    "subscribe": "Subscribe",
    "check_inbox": "Check your inbox",
    "confirm": "Confirm your subscription",
    "confirmed": "You are subscribed",
    "manage": "Your subscription",
    "unsubscribe": "Unsubscribe",
    "unsubscribed": "You are unsubscribed",
}


class Site:
    """The web pages of one config and store."""

    def __init__(self, config: Config, store: Store, clock: Clock, send: Callable[[list[int]], None]) -> None:
        assert config.web is not None
        self.config = config
        self.web: WebSettings = config.web
        self.store = store
        self.clock = clock
        self.send = send
        self.env: jinja2.Environment = environment()
        self.zone = ZoneInfo(config.schedule.timezone)
        self.root = urlsplit(self.web.public_url).path.rstrip("/")  # links work behind a proxy's path prefix
        self._secret: Secret | None = None
        self.facts = views.FactsCache()
        self._secret_lock = threading.Lock()

    # --- helpers -------------------------------------------------------------------------------

    def secret(self) -> Secret:
        with self._secret_lock:
            if self._secret is None:
                with self.store.write() as session:
                    self._secret = load_secret(session, self.config, self.clock())
            return self._secret

    def when(self, moment: datetime | None, with_time: bool = True) -> str:
        if moment is None:
            return "never"
        local = moment.astimezone(self.zone)
        return f"{local.day} {local:%b %Y}" + (f", {local:%H:%M} {local.tzname()}" if with_time else "")

    def page(self, template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> Response:
        values = {
            "title": TITLES.get(template, "Trial watcher"), "error": None, "saved": False, "home_link": False,
            "subscribe_link": False, "csrf": "", **context,
        }  # fmt: skip
        html = self.env.get_template(f"web/{template}.html.j2").render(
            web=self.web, root=self.root, watches=self.config.watches, when=self.when, chip=chip_class,
            often=frequency_words, day=partial_date, status_words=status_label, status=status, **values,
        )  # fmt: skip
        return HTMLResponse(html, status_code=status, headers=headers)

    def form_page(
        self, request: Request, template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
    ) -> Response:
        """A page holding forms: with a CSRF token, and the cookie it is bound to."""
        cookie = request.cookies.get(forms.CSRF_COOKIE) or ""
        fresh = len(cookie) < 16 or len(cookie) > 64
        if fresh:
            cookie = forms.new_cookie()
        token = forms.csrf_token(self.secret(), cookie, self.clock())
        response = self.page(template, status, headers, csrf=token, **context)
        if fresh:
            response.set_cookie(
                forms.CSRF_COOKIE, cookie, httponly=True, samesite="lax", secure=self.web.is_https, path="/"
            )
        return response

    def message(self, status: int, title: str, text: str, **context: Any) -> Response:
        return self.page("message", status, NO_STORE, title=title, text=text, **context)

    def csrf_ok(self, request: Request, form: FormData) -> bool:
        token = form.get(forms.CSRF_FIELD)
        return forms.csrf_ok(
            self.secret(),
            request.cookies.get(forms.CSRF_COOKIE),
            token if isinstance(token, str) else None,
            self.clock(),
        )

    def csrf_failed(self) -> Response:
        return self.message(
            403,
            "This form could not be sent",
            "The form was too old, or your browser did not send the cookie that goes with it. "
            "Go back, reload the page and try again.",
        )

    def bad_link(self, link: Link) -> Response:
        if link.state is TokenState.EXPIRED:
            return self.message(410, "This link has expired", "Subscribe again to get a new link.", subscribe_link=True)
        if link.state is TokenState.REVOKED:
            return self.message(
                410, "This link no longer works",
                "A newer email has a link that works; or subscribe again.", subscribe_link=True,
            )  # fmt: skip
        return self.not_valid()

    def not_valid(self) -> Response:
        return self.message(
            404,
            "This link is not valid",
            "It may be cut short: copy the whole link from the email into the address bar.",
        )

    # --- reading pages -------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        def read() -> dict[str, Any]:
            with self.store.read() as session:
                return {"summaries": views.summaries(session, self.config), "last_sync": views.last_sync(session)}

        return self.page("home", **await run_in_threadpool(read))

    async def watch(self, request: Request) -> Response:
        name = request.path_params["name"]
        watch = next((w for w in self.config.watches if w.name == name), None)
        if watch is None:
            return self.message(404, "No such watch", "Choose a watch on the home page.", home_link=True)
        try:
            number = int(request.query_params.get("page", "1"))
        except ValueError:
            number = 1

        def read() -> dict[str, Any]:
            with self.store.read() as session:
                return {
                    "trials": views.trial_list(session, self.facts, name, number),
                    "recent": views.events(session, watch=name, limit=20),
                    "last_sync": views.last_sync(session),
                }

        context = await run_in_threadpool(read)
        return self.form_page(
            request, "watch", title=watch.name, watch=watch, words=views.search_words(watch),
            frequencies=forms.FREQUENCY_LABELS, **context,
        )  # fmt: skip

    async def trial(self, request: Request) -> Response:
        nct_id = _nct_id(request.path_params["nct_id"])
        if nct_id is None:
            return self.message(404, "No such trial", "A trial's ID is NCT followed by 8 digits.", home_link=True)

        def read() -> views.TrialStory | None:
            with self.store.read() as session:
                return views.trial_story(session, nct_id)

        story = await run_in_threadpool(read)
        if story is None:
            return self.message(404, "Trial not followed here", f"{nct_id} is not stored here.", home_link=True)
        return self.page("trial", title=f"{nct_id}: {story.facts.title}", story=story, nct_id=nct_id)

    async def health(self, request: Request) -> Response:
        def read() -> dict[str, Any]:
            with self.store.read() as session:
                runs = session.exec(
                    select(models.SyncRun)
                    .where(models.SyncRun.kind == RunKind.SYNC)
                    .order_by(col(models.SyncRun.id).desc())
                ).first()
                counts = digest_counts(session)
            last = None
            if runs is not None:
                last = {
                    "started_at": iso(runs.started_at), "finished_at": iso(runs.finished_at), "outcome": runs.outcome,
                    "data_timestamp": runs.data_timestamp, "changes": runs.changes, "error": runs.error,
                }  # fmt: skip
            return {
                "status": "ok",
                "last_sync": last,
                "outbox": {"pending": counts["pending"], "failed": counts["failed"]},
            }

        try:
            return JSONResponse(await run_in_threadpool(read), headers=NO_STORE)
        except WatcherError as exc:
            log.warning("health check: %s", exc)
            return JSONResponse({"status": "error", "error": "the database is unavailable"}, 503, NO_STORE)

    # --- feeds ---------------------------------------------------------------------------------

    async def watch_feed(self, request: Request) -> Response:
        name = request.path_params["name"]
        watch = next((w for w in self.config.watches if w.name == name), None)
        if watch is None:
            return self.message(404, "No such watch", "Choose a watch on the home page.", home_link=True)
        kind = "json" if request.url.path.endswith(".json") else "atom"
        info = feeds.FeedInfo(
            title=f"Trial watcher: {name}",
            subtitle=f"Changes in the trials of {name} ({views.search_words(watch)})",
            page_url=self.web.url(f"/watch/{name}"),
            feed_url=self.web.url(f"/watch/{name}/feed.{kind}"),
            public_url=self.web.public_url,
        )
        return await self._feed(request, kind, info, watch=name)

    async def trial_feed(self, request: Request) -> Response:
        nct_id = _nct_id(request.path_params["nct_id"])
        if nct_id is None:
            return self.message(404, "No such trial", "A trial's ID is NCT followed by 8 digits.", home_link=True)
        info = feeds.FeedInfo(
            title=f"Trial watcher: {nct_id}",
            subtitle=f"Changes in {nct_id}, as recorded here",
            page_url=self.web.url(f"/trial/{nct_id}"),
            feed_url=self.web.url(f"/trial/{nct_id}/feed.atom"),
            public_url=self.web.public_url,
        )
        return await self._feed(request, "atom", info, nct_id=nct_id)

    async def _feed(
        self, request: Request, kind: str, info: feeds.FeedInfo, watch: str | None = None, nct_id: str | None = None
    ) -> Response:
        def build() -> tuple[feeds.Validators, bytes | None] | None:
            with self.store.read() as session:
                if nct_id is not None and session.get(models.Study, nct_id) is None:
                    return None
                newest, at = views.newest_change(session, watch=watch, nct_id=nct_id)
                checks = feeds.validators(kind, watch or nct_id or "", self.web.public_url, newest, at)
                if checks.not_modified(request.headers.get("if-none-match"), request.headers.get("if-modified-since")):
                    return checks, None
                found = views.events(session, watch=watch, nct_id=nct_id)
                since = self._since(session, watch, nct_id)
            if kind == "json":
                return checks, feeds.json_feed(self.env, info, found)
            return checks, feeds.atom(self.env, info, found, since)

        result = await run_in_threadpool(build)
        if result is None:
            return self.message(404, "Trial not followed here", f"{nct_id} is not stored here.", home_link=True)
        checks, body = result
        if body is None:
            return Response(status_code=304, headers=checks.headers())
        media = "application/feed+json" if kind == "json" else "application/atom+xml; charset=utf-8"
        return Response(body, media_type=media, headers=checks.headers())

    def _since(self, session: Any, watch: str | None, nct_id: str | None) -> datetime:
        """When an empty feed began: its watch's baseline, or its trial's first record."""
        if nct_id is not None:
            study = session.get(models.Study, nct_id)
            if study is not None:
                return study.first_seen_at  # type: ignore[no-any-return]
        state = session.get(models.WatchState, watch) if watch else None
        return state.baseline_at if state is not None else datetime(2026, 1, 1, tzinfo=self.zone)


def chip_class(status: str) -> str:
    """A status's CSS class: 'Not yet recruiting' → 'chip-not-yet-recruiting'."""
    return "chip-" + "-".join("".join(ch if ch.isalnum() else " " for ch in status.lower()).split())


def _nct_id(value: str) -> str | None:
    try:
        return check_nct_id(value)
    except ValueError:
        return None
