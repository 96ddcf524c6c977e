"""The web pages with Starlette's TestClient: every endpoint's success, bad and used tokens, rate limits,
CSRF failures and wrong methods; the digests' one-click unsubscribe exactly as mail providers send it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.conftest import FakeClock, ScratchDatabase
from tests.support.fakeapi import FakeRegistry
from tests.support.web import (
    ALICE,
    CONFIG_ALICE,
    Site,
    html_of,
    link,
    mails,
    page_text,
    site_for,
    text_of,
)
from tests.support.world import TARGET

BOB = "bob@example.org"
CHECK_INBOX = "We sent a link to confirm. Nothing else will be sent until you confirm."


@pytest.fixture
def site(tmp_path: Path, fake: FakeRegistry) -> Iterator[Site]:
    with site_for(tmp_path, fake, subscribers=CONFIG_ALICE) as found:
        yield found


def state_of(database: ScratchDatabase, email: str) -> tuple[str, str] | None:
    rows = database.rows("select source, state from subscriber where key = :k", k=email.lower())
    return rows[0] if rows else None


def outbox_rows(database: ScratchDatabase, email: str) -> list[tuple[str, str]]:
    return database.rows("select kind, status from digest where email = :k order by id", k=email.lower())


# --- reading ------------------------------------------------------------------------------------------


def test_home_lists_the_watches_with_trials_last_sync_and_latest_changes(site: Site) -> None:
    site.change()
    page = site.client.get("/")
    assert page.status_code == 200
    assert '<a href="/watch/mg-azathioprine">mg-azathioprine</a>' in page.text
    assert "condition: myasthenia gravis · intervention: azathioprine · trial NCT01727193 · 4 trials" in page.text
    assert "lymphoma" in page.text and "Last sync " in page.text
    assert "Status: Unknown status → Completed" in page.text


def test_watch_page_has_its_trials_changes_subscribe_form_and_feeds(site: Site) -> None:
    site.change()
    page = site.client.get("/watch/mg-azathioprine")
    assert page.status_code == 200
    text = page.text
    assert text.index("NCT01727193") < text.index("NCT90000001")  # the most recently changed first
    assert '<span class="chip chip-completed">Completed</span>' in text
    assert "100 participants (estimated)" in text and "sites: 1 · Guangzhou, China" in text
    assert "Status: Unknown status → Completed" in text  # the digest's words
    assert '<form method="post" action="/subscribe">' in text and 'name="csrf"' in text
    assert 'href="/watch/mg-azathioprine/feed.atom"' in text and 'href="/watch/mg-azathioprine/feed.json"' in text
    assert "tw_csrf" in page.headers["set-cookie"] and "HttpOnly" in page.headers["set-cookie"]


def test_trial_page_has_facts_timeline_watches_and_the_registry(site: Site) -> None:
    site.change()
    site.change("TERMINATED")
    page = site.client.get("/trial/nct01727193")  # any case
    assert page.status_code == 200
    text = page.text
    assert "The Efficacy and Safety of Leflunomide or Azathioprine Therapy" in text
    assert "<dt>Sites</dt><dd>1 · Guangzhou, China</dd>" in text
    assert text.index("Completed → Terminated") < text.index("Unknown status → Completed")  # newest first
    assert '<a href="/watch/mg-azathioprine">mg-azathioprine</a>' in text
    assert 'href="https://clinicaltrials.gov/study/NCT01727193"' in text


def test_trial_page_dates_replayed_changes_and_tells_the_registry_story(site: Site, paced_clock: FakeClock) -> None:
    site.run("sync")
    site.fake.add_version("NCT90000001", "2026-11-18", lambda r: r["protocolSection"]["statusModule"].update(
        overallStatus="SUSPENDED"))  # fmt: skip
    site.fake.add_version("NCT90000001", "2026-11-21", lambda r: r["protocolSection"]["statusModule"].update(
        overallStatus="RECRUITING"))  # fmt: skip
    site.fake.refresh("2026-11-26T09:00:05")  # two days of data at once: the versions missed are replayed
    site.run("sync")
    text = page_text(site.client.get("/trial/NCT90000001").text)
    assert "18 Nov 2026 · registry version 1, found" in text and "21 Nov 2026 · registry version 2, found" in text
    assert "Status: Recruiting → Suspended" in text and "Status: Suspended → Recruiting" in text
    assert "Its story in the registry 3 registry versions since " in text  # the index, stored by the sync
    site.run("history", "NCT90000001", "--registry")  # reads every version: the page tells what each changed
    text = page_text(site.client.get("/trial/NCT90000001").text)
    assert "18 Nov 2026 · version 1 Status: Recruiting → Suspended" in text
    assert "21 Nov 2026 · version 2 Status: Suspended → Recruiting" in text
    site.fake.add_version("NCT90000001", "2026-11-27", lambda r: r["protocolSection"]["statusModule"].update(
        overallStatus="COMPLETED"))  # fmt: skip
    site.fake.refresh("2026-11-29T09:00:05")
    site.run("sync")  # a replay stores the record it ends at as its version: the story goes on
    text = page_text(site.client.get("/trial/NCT90000001").text)
    assert "27 Nov 2026 · version 3 Status: Recruiting → Completed" in text


def test_unknown_pages_are_404_pages(site: Site) -> None:
    for path in ("/watch/nope", "/trial/NCT09999999", "/trial/NCT123", "/nope", "/watch/nope/feed.atom"):
        response = site.client.get(path)
        assert response.status_code == 404, path
        assert "text/html" in response.headers["content-type"] and "Trial watcher" in response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/"), ("POST", "/watch/mg-azathioprine"), ("POST", "/trial/NCT01727193"), ("PUT", "/subscribe"),
     ("DELETE", "/confirm/x"), ("PUT", "/manage/x"), ("DELETE", "/unsubscribe/x"), ("POST", "/digest/x"),
     ("POST", "/healthz"), ("POST", "/watch/mg-azathioprine/feed.atom")],
)  # fmt: skip
def test_wrong_method_is_405_with_allow(site: Site, method: str, path: str) -> None:
    response = site.client.request(method, path)
    assert response.status_code == 405
    assert "GET" in response.headers["allow"] or "POST" in response.headers["allow"]
    assert response.headers["content-security-policy"].startswith("default-src 'none'")


def test_every_answer_sets_a_csp_and_registry_text_is_escaped(site: Site) -> None:
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    site.fake.edit(TARGET, lambda r: r["protocolSection"]["identificationModule"].update(briefTitle=f"Trial {evil}"))
    site.change(f"COMPLETED{evil}")
    for path in ("/", "/watch/mg-azathioprine", "/trial/NCT01727193", "/subscribe", "/nope"):
        response = site.client.get(path)
        assert "script-src" not in response.headers["content-security-policy"]
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in response.text and "<img src=x" not in response.text, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in site.client.get("/trial/NCT01727193").text


def test_request_bodies_are_limited(site: Site) -> None:
    big = b"email=" + b"a" * 70_000
    for path in ("/subscribe", "/unsubscribe/whatever"):
        response = site.client.post(path, content=big, headers={"content-type": "application/x-www-form-urlencoded"})
        assert response.status_code == 413, path
        assert response.headers["content-security-policy"].startswith("default-src 'none'")


def test_healthz_reports_the_last_sync_and_the_outbox(site: Site) -> None:
    response = site.client.get("/healthz")
    assert response.status_code == 200
    data = response.json()
    assert data["status"] == "ok" and data["outbox"] == {"pending": 0, "failed": 0}
    assert data["last_sync"]["outcome"] == "ok" and data["last_sync"]["finished_at"].endswith("Z")


# --- subscribing --------------------------------------------------------------------------------------


@pytest.mark.both_backends
def test_subscribe_sends_one_confirmation_at_once_and_nothing_else_until_confirmed(
    site: Site, database: ScratchDatabase
) -> None:
    response = site.subscribe(BOB)
    assert response.status_code == 200 and CHECK_INBOX in response.text
    assert response.headers["cache-control"] == "no-store"
    [confirmation] = mails(site.folder, BOB)  # sent at once by the web process, through the outbox
    assert confirmation["Subject"] == "Confirm your trial watcher subscription"
    assert confirmation["List-Unsubscribe"] is None
    assert outbox_rows(database, BOB) == [("confirm", "sent")]
    assert state_of(database, BOB) == ("web", "pending")
    site.change()
    site.run("digest", "send")
    assert len(mails(site.folder, BOB)) == 1  # no digest before confirming
    path = link(confirmation, "confirm")
    assert path.rsplit("/", 1)[1] not in repr(database.dump())  # the outbox keeps what it sent without the token
    page = site.client.get(path)  # a mail scanner's prefetch: changes nothing
    assert (
        page.status_code == 200
        and ">Confirm</button>" in page.text
        and '<span class="name">mg-azathioprine</span>, as soon as something changes' in page.text
    )
    assert state_of(database, BOB) == ("web", "pending")
    site.clock.advance(seconds=1)  # clearly after the change
    done = site.client.post(path, data={"csrf": site.form(path)})
    assert done.status_code == 200 and "You are subscribed" in done.text
    assert state_of(database, BOB) == ("web", "active")
    listing = json.loads(site.run("subscribers", "--json").stdout)
    bob = next(s for s in listing if s["email"] == BOB)
    assert {k: bob[k] for k in ("source", "state", "watches", "frequency")} == {
        "source": "web", "state": "active", "watches": ["mg-azathioprine"], "frequency": "immediate",
    }  # fmt: skip
    assert bob["pending_changes"] == 0  # news from the confirmation on, not what happened before
    again = site.client.post(path, data={"csrf": site.form("/subscribe")})
    assert again.status_code == 200 and "already used" in again.text


def test_subscribe_answers_the_same_whoever_asks(site: Site, database: ScratchDatabase) -> None:
    site.confirm("carol@example.org")
    pages = [site.subscribe(email).text for email in (BOB, BOB, ALICE, "carol@example.org")]
    assert all(CHECK_INBOX in page for page in pages)
    assert len({page for page in pages}) == 1  # word for word
    assert [m["Subject"] for m in mails(site.folder, BOB)] == ["Confirm your trial watcher subscription"] * 2
    # active addresses change nothing and get their manage link, once a day at most
    [alice] = mails(site.folder, ALICE)
    assert alice["Subject"] == "Your trial watcher subscription" and "/manage/" in text_of(alice)
    assert state_of(database, ALICE) == ("config", "active")
    carol = mails(site.folder, "carol@example.org")
    assert [m["Subject"] for m in carol][-1] == "Your trial watcher subscription"
    site.subscribe(ALICE)
    assert len(mails(site.folder, ALICE)) == 1


def test_at_most_three_emails_per_address_a_day(site: Site) -> None:
    for _ in range(5):
        assert CHECK_INBOX in site.subscribe(BOB).text
    assert len(mails(site.folder, BOB)) == 3
    site.clock.advance(hours=24, seconds=1)
    site.subscribe(BOB)
    assert len(mails(site.folder, BOB)) == 4


def test_at_most_ten_requests_per_client_an_hour(site: Site) -> None:
    for n in range(10):
        assert site.subscribe(f"p{n}@example.org").status_code == 200
    refused = site.subscribe("p10@example.org")
    assert refused.status_code == 429 and "Try again in an hour" in refused.text
    assert mails(site.folder, "p10@example.org") == []
    site.clock.advance(minutes=61)
    assert site.subscribe("p10@example.org").status_code == 200


def test_a_form_without_its_csrf_token_or_cookie_is_refused(site: Site, database: ScratchDatabase) -> None:
    data = {"email": BOB, "watch": "mg-azathioprine", "frequency": "daily"}
    assert site.client.post("/subscribe", data=data).status_code == 403
    assert site.client.post("/subscribe", data={**data, "csrf": "1.forged"}).status_code == 403
    token = site.form()
    stranger = TestClient(site.client.app)  # another browser: no cookie
    refused = stranger.post("/subscribe", data={**data, "csrf": token})
    assert refused.status_code == 403 and "reload the page" in refused.text
    site.clock.advance(hours=13)  # a form left open too long
    assert site.client.post("/subscribe", data={**data, "csrf": token}).status_code == 403
    assert state_of(database, BOB) is None and mails(site.folder) == []


def test_form_mistakes_are_shown_with_the_form(site: Site) -> None:
    bad = site.subscribe("not-an-address")
    assert bad.status_code == 400 and "Enter an email address like name@example.org." in bad.text
    assert 'value="not-an-address"' in bad.text
    unknown = site.subscribe(BOB, watches=("nope",))
    assert unknown.status_code == 400 and "Choose watches from the list." in unknown.text
    none = site.subscribe(BOB, watches=())
    assert none.status_code == 400 and "Choose at least one watch." in none.text
    assert mails(site.folder) == []


def test_subscribing_can_be_switched_off(tmp_path: Path, fake: FakeRegistry) -> None:
    with site_for(tmp_path, fake, web="subscribe = false") as site:
        assert "/subscribe" not in site.client.get("/watch/mg-azathioprine").text
        assert site.client.get("/subscribe").status_code == 403
        response = site.client.post("/subscribe", data={"email": BOB, "watch": "mg-azathioprine"})
        assert response.status_code == 403 and mails(site.folder) == []


def test_confirm_links_that_are_wrong_expired_or_replaced(site: Site) -> None:
    assert site.client.get("/confirm/not-a-token").status_code == 404
    assert site.client.post("/confirm/not-a-token", data={"csrf": site.form()}).status_code == 404
    site.subscribe(BOB)
    first = link(mails(site.folder, BOB)[-1], "confirm")
    site.clock.advance(days=3, seconds=1)
    expired = site.client.get(first)
    assert expired.status_code == 410 and "expired" in expired.text
    site.subscribe(BOB)  # a new link; the old one stays dead
    second = link(mails(site.folder, BOB)[-1], "confirm")
    assert second != first and site.client.get(second).status_code == 200
    assert site.client.post(first, data={"csrf": site.form()}).status_code == 410
    unsubscribe_token = "/unsubscribe/" + second.rsplit("/", 1)[1]
    assert site.client.get(unsubscribe_token).status_code == 404  # a token works for its own purpose only


def test_confirm_post_needs_its_csrf_token(site: Site, database: ScratchDatabase) -> None:
    site.subscribe(BOB)
    path = link(mails(site.folder, BOB)[-1], "confirm")
    assert site.client.post(path).status_code == 403
    assert state_of(database, BOB) == ("web", "pending")


# --- the digests' links and the one-click unsubscribe -------------------------------------------------------


def digest_for(site: Site, email: str = ALICE, status: str = "COMPLETED") -> EmailMessage:
    site.change(status)
    site.run("digest", "send")
    return mails(site.folder, email)[-1]


@pytest.mark.both_backends
def test_digests_carry_one_click_headers_and_visible_links(site: Site, database: ScratchDatabase) -> None:
    digest = digest_for(site)
    unsubscribe, manage, view = (f"http://127.0.0.1:8080{link(digest, k)}" for k in ("unsubscribe", "manage", "digest"))
    assert digest["List-Unsubscribe"] == f"<{unsubscribe}>, <mailto:watcher@example.org?subject=unsubscribe>"
    assert digest["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = text_of(digest)
    assert f"Unsubscribe: {unsubscribe}\nManage your subscription: {manage}\nView in browser: {view}\n" in text
    html = html_of(digest)
    for url, words in ((unsubscribe, "Unsubscribe"), (manage, "Manage your subscription"), (view, "View in browser")):
        assert f'<a href="{url}" style="color:#5f6368;">{words}</a>' in html
    stored = repr(database.dump())  # the token store keeps hashes; the outbox, what it sent without the tokens
    assert not [url for url in (unsubscribe, manage, view) if url.rsplit("/", 1)[1] in stored]
    second = digest_for(site, status="TERMINATED")
    assert link(second, "unsubscribe") == link(digest, "unsubscribe")  # same link every time
    assert link(second, "digest") != link(digest, "digest")  # one view link per digest


@pytest.mark.both_backends
def test_one_click_unsubscribe_as_a_mail_provider_posts_it(site: Site, database: ScratchDatabase) -> None:
    path = link(digest_for(site), "unsubscribe")
    provider = TestClient(site.client.app, follow_redirects=False)  # no cookie, no form token
    response = provider.post(
        path, content=b"List-Unsubscribe=One-Click", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200 and "location" not in response.headers
    assert 'You will get no more digests for <span class="name">mg-azathioprine</span>.' in response.text
    assert state_of(database, ALICE) == ("config", "unsubscribed")
    again = provider.post(path, content=b"List-Unsubscribe=One-Click",
                          headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert again.status_code == 200  # harmless to repeat
    site.change("TERMINATED")
    assert site.run("digest", "send").stdout == "No digest is due.\n"
    assert len(mails(site.folder, ALICE)) == 1
    listed = site.run("subscribers")
    assert f"warning: {ALICE} unsubscribed by link: skipped until they subscribe again" in listed.stderr


def test_one_click_takes_a_multipart_or_an_empty_body(site: Site, database: ScratchDatabase) -> None:
    site.confirm(BOB)
    alice = link(digest_for(site), "unsubscribe")
    bob = link(mails(site.folder, BOB)[-1], "unsubscribe")
    provider = TestClient(site.client.app)
    multipart = provider.post(alice, files={"List-Unsubscribe": (None, "One-Click")})
    assert multipart.status_code == 200 and state_of(database, ALICE) == ("config", "unsubscribed")
    empty = provider.post(bob)
    assert empty.status_code == 200 and state_of(database, BOB) == ("web", "unsubscribed")


def test_the_unsubscribe_page_changes_nothing_until_its_button(site: Site, database: ScratchDatabase) -> None:
    path = link(digest_for(site), "unsubscribe")
    page = site.client.get(path)
    assert page.status_code == 200 and ">Unsubscribe</button>" in page.text
    assert state_of(database, ALICE) == ("config", "active")
    done = site.client.post(path, data={"csrf": site.form(path)})
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert "already unsubscribed" not in site.client.get(path).text and "gets no digests" in site.client.get(path).text
    assert site.client.get("/unsubscribe/nope").status_code == 404
    assert site.client.post("/unsubscribe/nope").status_code == 404


def test_unsubscribing_cancels_what_is_still_queued(site: Site, database: ScratchDatabase) -> None:
    site.change()
    from watcher.delivery import queue_due

    queue_due(site.config, site.stores[0], site.clock())  # queued, not sent (the mail server is down, say)
    path = link(mails_in_db(database, ALICE), "unsubscribe")
    TestClient(site.client.app).post(path)
    assert outbox_rows(database, ALICE) == [("digest", "cancelled")]
    site.run("digest", "send")
    assert mails(site.folder, ALICE) == []


def mails_in_db(database: ScratchDatabase, email: str) -> EmailMessage:
    [(raw,)] = database.rows("select message from digest where email = :k", k=email)
    return message_from_bytes(bytes(raw), policy=policy.default)  # type: ignore[return-value]


def test_subscribing_again_after_unsubscribing_needs_a_confirmation(site: Site, database: ScratchDatabase) -> None:
    path = link(digest_for(site), "unsubscribe")
    TestClient(site.client.app).post(path)
    site.subscribe(ALICE)
    assert state_of(database, ALICE) == ("config", "pending")
    confirm = link(mails(site.folder, ALICE)[-1], "confirm")
    site.client.post(confirm, data={"csrf": site.form(confirm)})
    assert state_of(database, ALICE) == ("config", "active")
    digest = digest_for(site, status="TERMINATED")
    assert "Completed → Terminated" in text_of(digest)


# --- managing -------------------------------------------------------------------------------------------


def test_manage_changes_watches_frequency_and_kinds(site: Site, database: ScratchDatabase) -> None:
    site.confirm(BOB)
    site.change()
    assert "Status: Unknown status → Completed" in site.run("digest", "preview", BOB, "--text").stdout
    site.run("digest", "send")
    path = link(mails(site.folder, BOB)[-1], "manage")
    page = site.client.get(path)
    assert page.status_code == 200 and 'name="watch" value="lymphoma"' in page.text
    data = {"action": "save", "watch": ["mg-azathioprine", "lymphoma"], "frequency": "weekly", "kind": ["status"]}
    assert site.client.post(path, data=data).status_code == 403  # no CSRF token
    saved = site.client.post(path, data={**data, "csrf": site.form(path)})
    assert saved.status_code == 200 and "Saved." in saved.text
    bob = next(s for s in json.loads(site.run("subscribers", "--json").stdout) if s["email"] == BOB)
    assert (bob["watches"], bob["frequency"], bob["kinds"]) == (["lymphoma", "mg-azathioprine"], "weekly", ["status"])
    empty = site.client.post(path, data={"action": "save", "frequency": "daily", "kind": ["status"],
                                         "csrf": site.form(path)})  # fmt: skip
    assert empty.status_code == 400 and "Choose at least one watch." in empty.text
    gone = site.client.post(path, data={"action": "unsubscribe", "csrf": site.form(path)})
    assert gone.status_code == 200 and "You are unsubscribed" in gone.text
    assert state_of(database, BOB) == ("web", "unsubscribed")
    assert "You are unsubscribed: you get no digests." in site.client.get(path).text


def test_the_operators_subscribers_can_only_unsubscribe_on_the_manage_page(
    site: Site, database: ScratchDatabase
) -> None:
    path = link(digest_for(site), "manage")
    page = site.client.get(path)
    assert "set this subscription up" in page.text and 'name="watch"' not in page.text
    refused = site.client.post(path, data={"action": "save", "watch": "lymphoma", "csrf": site.form(path)})
    assert refused.status_code == 400 and state_of(database, ALICE) == ("config", "active")
    site.client.post(path, data={"action": "unsubscribe", "csrf": site.form(path)})
    assert state_of(database, ALICE) == ("config", "unsubscribed")


def test_a_removed_subscribers_manage_link_stops_working(site: Site, database: ScratchDatabase) -> None:
    digest = digest_for(site)
    assert site.run("subscribers", "remove", "Alice@Example.org").stdout == (
        f"{ALICE} is unsubscribed: no more digests (listed in the config: skipped until they subscribe again themselves).\n"
    )
    assert state_of(database, ALICE) == ("config", "unsubscribed")
    revoked = site.client.get(link(digest, "manage"))
    assert revoked.status_code == 410 and "no longer works" in revoked.text
    assert site.client.post(link(digest, "unsubscribe")).status_code == 200  # still harmless
    assert site.run("subscribers", "remove", ALICE).stdout == f"{ALICE} was already unsubscribed.\n"
    unknown = site.run("subscribers", "remove", "nobody@example.org", code=1)
    assert unknown.stderr == "error: nobody@example.org: no such subscriber (see: watcher subscribers)\n"
    assert site.client.get("/manage/nope").status_code == 404


# --- a sent digest in the browser -----------------------------------------------------------------------


def test_view_in_browser_shows_the_digest_sent(site: Site) -> None:
    digest = digest_for(site)
    page = site.client.get(link(digest, "digest"))
    assert page.status_code == 200 and "Status: Unknown status → Completed" in page.text
    assert f'<a href="http://127.0.0.1:8080{link(digest, "unsubscribe")}"' in page.text  # its links work here too
    assert page.headers["content-security-policy"].startswith("default-src 'none'; style-src 'unsafe-inline'")
    assert page.headers["cache-control"] == "no-store"
    assert site.client.get("/digest/nope").status_code == 404


def test_full_tokens_never_reach_the_logs(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    digest = digest_for(site)
    paths = [link(digest, kind) for kind in ("unsubscribe", "manage", "digest")]
    for path in paths:
        site.client.get(path)
    site.subscribe(BOB)
    paths.append(link(mails(site.folder, BOB)[-1], "confirm"))
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))  # the test's client
    assert "/unsubscribe/" in logged  # requests are logged (at DEBUG), cut short
    for path in paths:
        assert path.rsplit("/", 1)[1] not in logged


def test_a_confirmation_the_mail_server_did_not_take_goes_out_with_the_next_send(
    tmp_path: Path, fake: FakeRegistry, database: ScratchDatabase
) -> None:
    from tests.support.smtp import SmtpServer, free_port

    smtp = SmtpServer(port=free_port())  # not started yet: connection refused
    smtp_table = f'[smtp]\nhost = "127.0.0.1"\nport = {smtp.port}\nsecurity = "none"\ntimeout_s = 5\n'
    with site_for(tmp_path, fake, extra=smtp_table) as site:
        assert CHECK_INBOX in site.subscribe(BOB).text  # the page does not wait for the mail server
        assert outbox_rows(database, BOB) == [("confirm", "pending")]
        smtp.start()
        try:
            out = site.run("digest", "send").stdout
        finally:
            smtp.stop()
    assert f"sent        {BOB}  Confirm your trial watcher subscription" in out
    [received] = smtp.received
    assert received.recipients == [BOB] and "/confirm/" in received.part("plain")
    assert outbox_rows(database, BOB) == [("confirm", "sent")]


def test_a_plain_http_public_address_on_another_host_is_warned_about_once(
    tmp_path: Path, fake: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.support.smtp import free_port
    from watcher.config import load_config
    from watcher.db import database_of
    from watcher.store import Store
    from watcher.web.app import serve

    port = free_port()
    with site_for(tmp_path, fake, public_url="http://trials.example.org", web=f'listen = "127.0.0.1:{port}"') as site:
        config = load_config(site.config_path)
        store = Store(database_of(config))
        server = serve(config, store)
        server.stop()
        store.close()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "[web] public_url http://trials.example.org is plain http: mail providers expect an https:// one-click "
        "unsubscribe (RFC 8058); put a TLS reverse proxy in front and give its https:// address"
    ]
