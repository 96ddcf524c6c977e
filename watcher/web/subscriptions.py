"""The pages that change subscriptions: subscribe, confirm, manage, unsubscribe (one click), and a
sent digest in the browser. They call `watcher.accounts` in a worker thread.

Only POSTs change anything (mail scanners prefetch links with GET). Every form but the one-click
unsubscribe carries a CSRF token. Token pages are never cached and send no Referer.
"""

from __future__ import annotations

from email import message_from_bytes, policy

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from watcher import accounts, models, tokens
from watcher.accounts import Account, Link, RateLimited
from watcher.changes import Category
from watcher.mailer import REDACTED
from watcher.states import AccountState, TokenPurpose
from watcher.tokens import TokenState
from watcher.web import forms
from watcher.web.pages import NO_STORE, Site

# The stored digest is the email's own HTML: inline styles, never scripts.
DIGEST_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'none'; " \
    "frame-ancestors 'none'; base-uri 'none'"  # fmt: skip


class Subscriptions:
    """The subscription pages of a site."""

    def __init__(self, site: Site) -> None:
        self.site = site

    async def subscribe_page(self, request: Request) -> Response:
        site = self.site
        if not site.web.subscribe:
            return self.subscriptions_off()
        chosen = request.query_params.get("watch")
        choices = forms.Choices(watches=[chosen] if chosen else [])
        return site.form_page(request, "subscribe", 200, NO_STORE, choices=choices, frequencies=forms.FREQUENCY_LABELS)

    def subscriptions_off(self) -> Response:
        return self.site.message(
            403, "Subscriptions are managed by the operator",
            "Subscribing here is switched off. Ask the people who run this site.", home_link=True,
        )  # fmt: skip

    async def subscribe(self, request: Request) -> Response:
        site = self.site
        if not site.web.subscribe:
            return self.subscriptions_off()
        form = await request.form()
        if not site.csrf_ok(request, form):
            return site.csrf_failed()
        try:
            choices = forms.subscribe_form(site.config, form)
        except forms.FormError as exc:
            wanted = [v for v in form.getlist("watch") if isinstance(v, str)]
            return site.form_page(
                request, "subscribe", 400, NO_STORE, error=str(exc), frequencies=forms.FREQUENCY_LABELS,
                choices=forms.Choices(email=str(form.get("email") or "")[:254], watches=wanted),
            )  # fmt: skip
        client = request.client.host if request.client else "unknown"

        def act() -> int | None:
            with site.store.write() as session:
                return accounts.request_subscription(
                    session, site.config, site.secret(), choices.email, choices.watches, choices.frequency,
                    client, site.clock(),
                )  # fmt: skip

        try:
            queued = await run_in_threadpool(act)
        except RateLimited:
            return site.message(
                429, "Too many requests", "This address has asked to subscribe too often. Try again in an hour.",
                retry=True,
            )  # fmt: skip
        # The same page, at the same speed, whether or not the address was known: the email goes out after.
        task = BackgroundTask(site.send, [queued]) if queued is not None else None
        response = site.page("check_inbox", headers=NO_STORE)
        response.background = task
        return response

    async def confirm(self, request: Request) -> Response:
        site = self.site
        token = request.path_params["token"]
        post = request.method == "POST"
        form = await request.form() if post else None

        def act() -> tuple[Link, Account | None]:
            with site.store.write() as session:
                link = accounts.follow_link(session, site.config, token, TokenPurpose.CONFIRM, site.clock())
                if not post or not link.valid:
                    return link, link.account
                return link, accounts.confirm(session, site.config, link, site.clock())

        if form is not None and not site.csrf_ok(request, form):
            return site.csrf_failed()
        link, account = await run_in_threadpool(act)
        if link.state is TokenState.USED:
            return site.message(
                200, "This link was already used",
                "Your subscription was confirmed with it. Every digest has links to manage it or unsubscribe.",
                home_link=True,
            )  # fmt: skip
        if not link.valid or account is None:
            return site.bad_link(link)
        if post:
            manage = await run_in_threadpool(self._token, account.key, TokenPurpose.MANAGE)
            return site.page("confirmed", headers=NO_STORE, account=account, manage=manage)
        return site.form_page(request, "confirm", headers=NO_STORE, account=account, token=token)

    def _token(self, key: str, purpose: TokenPurpose) -> str:
        site = self.site
        with site.store.write() as session:
            return tokens.one(session, site.secret(), key, purpose, site.clock())

    async def manage(self, request: Request) -> Response:
        site = self.site
        token = request.path_params["token"]
        form = await request.form() if request.method == "POST" else None
        if form is not None and not site.csrf_ok(request, form):
            return site.csrf_failed()
        action = str(form.get("action") or "save") if form is not None else None

        def act() -> tuple[Link, Account | None, str | None, str | None]:
            with site.store.write() as session:
                link = accounts.follow_link(session, site.config, token, TokenPurpose.MANAGE, site.clock())
                account = link.account
                if form is None or not link.valid or account is None:
                    return link, account, None, None
                if action == "unsubscribe":
                    accounts.unsubscribe(session, account.key, site.clock())
                    return link, accounts.account(session, site.config, account.key), "unsubscribed", None
                if account.managed_by_operator or account.state is not AccountState.ACTIVE:
                    return link, account, None, "There is nothing to change here: see above."
                try:
                    choices = forms.manage_form(site.config, form)
                except forms.FormError as exc:
                    return link, account, None, str(exc)
                changed = accounts.update(
                    session,
                    site.config,
                    account.key,
                    choices.watches,
                    choices.frequency,
                    choices.kinds,
                    site.clock(),
                )
                return link, changed, "saved", None

        link, account, done, error = await run_in_threadpool(act)
        if not link.valid or account is None:
            return site.bad_link(link)
        if done == "unsubscribed":
            return site.page("unsubscribed", headers=NO_STORE, account=account)
        return site.form_page(
            request, "manage", 400 if error else 200, NO_STORE, account=account, token=token, saved=done == "saved",
            error=error, frequencies=forms.FREQUENCY_LABELS, kinds=forms.KIND_LABELS,
            chosen_kinds=list(account.kinds) or list(Category),
        )  # fmt: skip

    async def unsubscribe(self, request: Request) -> Response:
        """GET: a page with a button. POST: unsubscribe at once, 200 and a short page (RFC 8058): no cookie,
        no form token; the body may be `List-Unsubscribe=One-Click` (form-encoded or multipart) or empty."""
        site = self.site
        token = request.path_params["token"]
        post = request.method == "POST"
        if post:
            await request.body()  # whatever it holds (size-limited): the POST itself is the request

        def act() -> tuple[Link, Account | None]:
            with site.store.write() as session:
                link = accounts.follow_link(session, site.config, token, TokenPurpose.UNSUBSCRIBE, site.clock())
                if not post or not link.valid or link.account is None:
                    return link, link.account
                accounts.unsubscribe(session, link.account.key, site.clock())
                return link, accounts.account(session, site.config, link.account.key)

        link, account = await run_in_threadpool(act)
        if not link.valid or account is None:
            return site.bad_link(link)
        if post:
            return site.page("unsubscribed", headers=NO_STORE, account=account)
        return site.form_page(request, "unsubscribe", headers=NO_STORE, account=account, token=token)

    async def digest(self, request: Request) -> Response:
        """A sent digest as it was sent. The outbox keeps it without its links' tokens: they are put back
        (the subscriber's current ones), so its Unsubscribe and Manage links work here too."""
        site = self.site
        token = request.path_params["token"]

        def read() -> tuple[bytes, dict[str, str]] | None:
            with site.store.write() as session:
                found = tokens.resolve(session, token, TokenPurpose.VIEW, site.clock())
                if found.state is not TokenState.VALID or found.row is None or found.row.digest_id is None:
                    return None
                row = session.get(models.OutboxMessage, found.row.digest_id)
                if row is None:
                    return None
                links = {"digest": token}
                for purpose in (TokenPurpose.UNSUBSCRIBE, TokenPurpose.MANAGE):
                    links[purpose.value] = tokens.one(session, site.secret(), found.subscriber, purpose, site.clock())
                return bytes(row.message), links

        found = await run_in_threadpool(read)
        if found is None:
            return site.not_valid()
        message, links = found
        body = message_from_bytes(message, policy=policy.default).get_body(preferencelist=("html",))
        html = str(body.get_content()) if body is not None else ""
        for kind, value in links.items():
            html = html.replace(f"/{kind}/{REDACTED}", f"/{kind}/{value}")
        return HTMLResponse(html, headers={**NO_STORE, "Content-Security-Policy": DIGEST_CSP})
