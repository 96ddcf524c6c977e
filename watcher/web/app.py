"""The web app (Starlette) and its server (uvicorn in a thread, stopped with the process).

Every response carries a Content-Security-Policy and no Referer leaves a page (links hold
tokens). Request bodies are limited to `MAX_BODY` bytes. Requests are logged at DEBUG with
tokens cut short: a full token never reaches a log.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from watcher.clock import Clock, utcnow
from watcher.config import Config
from watcher.errors import ConfigError, WatcherError
from watcher.render import templates_dir
from watcher.store import Store
from watcher.web.pages import Site
from watcher.web.subscriptions import Subscriptions

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
_TOKEN_PATH = re.compile(r"^/(confirm|manage|unsubscribe|digest)/([^/]{6})[^/]*")


def redacted(path: str) -> str:
    """A path as logs show it: a token cut to its first characters."""
    return _TOKEN_PATH.sub(r"/\1/\2…", path)


class Guard:
    """Outermost (pure ASGI): security headers on every response, also errors; a redacted access log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s %d in %.0f ms",
                    scope.get("method"), redacted(scope.get("path", "")), status, (time.monotonic() - started) * 1000,
                )  # fmt: skip


def _stylesheet() -> bytes:
    return (templates_dir() / "web" / "style.css").read_bytes()


def create_app(config: Config, store: Store, clock: Clock = utcnow, send_at_once: bool = True) -> ASGIApp:
    """The pages of `config` ([web] must be set) on `store`. `send_at_once`: a confirmation goes out
    right after the page is answered (else it waits in the outbox for the next `digest send`)."""
    if config.web is None:
        raise ConfigError(f"{config.path.name}: no [web] table: add one to serve the pages (see the README)")

    def send(ids: list[int]) -> None:
        if not send_at_once:
            return
        from watcher.delivery import Couriers
        from watcher.outbox import SendStatus, send_pending

        try:
            for outcome in send_pending(store, lambda: Couriers(config), clock, only=ids):
                if outcome.status is not SendStatus.SENT:
                    log.warning("a confirmation to %s is %s: %s", outcome.recipient, outcome.status, outcome.detail)
        except WatcherError as exc:
            log.warning("a confirmation could not be sent now (%s); it stays queued", exc)

    site = Site(config, store, clock, send)
    subscriptions = Subscriptions(site)
    site.secret()  # made or read once at start: a missing secret_env is an error now, not at the first form
    css = _stylesheet()

    async def stylesheet(request: Request) -> Response:
        return Response(css, media_type="text/css", headers={"Cache-Control": "public, max-age=86400"})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        texts = {
            404: ("Page not found", "There is nothing at this address."),
            405: ("Not allowed", "This address does not take that kind of request."),
            413: ("Too large", "What was sent is larger than this site accepts."),
        }
        title, text = texts.get(status, ("Something went wrong", "The page could not be shown. Try again later."))
        response = site.message(status, title, text, home_link=True)
        if isinstance(exc, HTTPException) and exc.headers:
            response.headers.update(exc.headers)
        return response

    routes = [
        Route("/", site.home),
        Route("/watch/{name}", site.watch),
        Route("/watch/{name}/feed.atom", site.watch_feed),
        Route("/watch/{name}/feed.json", site.watch_feed),
        Route("/trial/{nct_id}", site.trial),
        Route("/trial/{nct_id}/feed.atom", site.trial_feed),
        Route("/subscribe", subscriptions.subscribe_page, methods=["GET"]),
        Route("/subscribe", subscriptions.subscribe, methods=["POST"]),
        Route("/confirm/{token}", subscriptions.confirm, methods=["GET", "POST"]),
        Route("/manage/{token}", subscriptions.manage, methods=["GET", "POST"]),
        Route("/unsubscribe/{token}", subscriptions.unsubscribe, methods=["GET", "POST"]),
        Route("/digest/{token}", subscriptions.digest),
        Route("/healthz", site.health),
        Route("/static/style.css", stylesheet),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestBodyLimitMiddleware, max_body_size=MAX_BODY)],
        exception_handlers={HTTPException: http_error, 500: http_error},
    )
    return Guard(app)


# --- the server --------------------------------------------------------------------------------------


class WebServer:
    """uvicorn serving the app in a thread of its own; `stop()` ends it within a fraction of a second.
    Signals stay with the caller (the daemon or `watcher serve` owns them)."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        import uvicorn

        self.host, self.port = host, port
        # No access log (its lines would hold full tokens: Guard logs redacted paths at DEBUG), and uvicorn's
        # own lines go through the process's logging as they are set up.
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off", server_header=False
        )
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)

    def start(self, timeout: float = 10.0) -> WebServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise WatcherError(f"cannot serve the pages on {self.host}:{self.port} (is the port in use?)")
            if time.monotonic() > deadline:
                raise WatcherError(f"the web server on {self.host}:{self.port} did not start in {timeout:.0f} s")
            time.sleep(0.01)
        if self.port == 0:
            self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)


def serve(config: Config, store: Store, **kwargs: Any) -> WebServer:
    """Start serving `config`'s pages on its [web] listen address; warns once about a plain-http public URL."""
    assert config.web is not None
    web = config.web
    if web.plain_http_in_public:
        log.warning(
            "[web] public_url %s is plain http: mail providers expect an https:// one-click unsubscribe "
            "(RFC 8058); put a TLS reverse proxy in front and give its https:// address",
            web.public_url,
        )
    server = WebServer(create_app(config, store, **kwargs), web.host, web.port).start()
    public = "" if web.public_url == server.url else f" (public address {web.public_url})"
    log.info("web pages on %s%s", server.url, public)
    return server


def run_until_stopped(config: Config, store: Store, listen: str | None = None) -> None:
    """`watcher serve`: the pages alone, until SIGTERM or SIGINT."""
    import dataclasses
    import signal

    from watcher.config import check_listen

    if config.web is None:
        raise ConfigError(f"{config.path.name}: no [web] table: add one to serve the pages (see the README)")
    if listen is not None:
        try:
            config = dataclasses.replace(config, web=dataclasses.replace(config.web, listen=check_listen(listen)))
        except ValueError as exc:
            raise ConfigError(f"--listen: {exc}") from None
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            log.info("%s received: stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = serve(config, store)
    try:
        while not stopping.wait(0.5):
            if not server.thread.is_alive():
                raise WatcherError("the web server stopped unexpectedly (see the lines above)")
    finally:
        server.stop()
    log.info("web server stopped")
