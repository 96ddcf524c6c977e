"""The `watcher` command line: parse options, call one service function, print.

Heavy libraries (requests, SQLAlchemy, Jinja2, APScheduler, Rich) are imported inside the
commands that need them, so `watcher --help` starts fast. Errors the user can act on are
`WatcherError`s and end as one line on stderr: exit 2 for usage/config, 1 at run time.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from watcher import __version__, present
from watcher.config import Config, check_nct_id, load_config
from watcher.errors import ConfigError, WatcherError

if TYPE_CHECKING:
    from watcher.registry import Registry
    from watcher.replay import Progress as PhaseProgress
    from watcher.store import Store

LOG_LEVELS = ("debug", "info", "warning", "error")


def echo(message: str = "", err: bool = False, nl: bool = True) -> None:
    """Registry text is untrusted: no control character or bidi override reaches the terminal."""
    from watcher.text import strip_hidden

    click.echo(strip_hidden(message).replace("\r", ""), err=err, nl=nl)


class App:
    """What a command needs, built on first use."""

    def __init__(self, config_arg: str | None) -> None:
        self.config_arg = config_arg
        self._config: Config | None = None
        self._store: Store | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_arg)
        return self._config

    def open_store(self, writing: bool) -> Store:
        if self._store is None:
            from watcher.db import database_of
            from watcher.store import Store

            self._store = Store(database_of(self.config), writing=writing)
        return self._store

    @property
    def store(self) -> Store:
        """The store for a command that writes (on SQLite it upgrades an older schema first)."""
        return self.open_store(writing=True)

    @property
    def reader(self) -> Store:
        """The store for a command that only reads."""
        return self.open_store(writing=False)

    def registry(self) -> Registry:
        from watcher.registry import Registry

        return Registry(self.config.ctgov)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class WatcherGroup(click.Group):
    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """As Click's, but a usage mistake is one line on stderr like every other error."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "watcher"
            echo(f"error: {exc.format_message().rstrip('.')} (see {where} --help)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WatcherError as exc:
            echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            echo("interrupted; nothing was half-written.", err=True)
            ctx.exit(130)
        finally:
            if isinstance(ctx.obj, App):
                ctx.obj.close()


def setup_logging(level: str, force: bool = False) -> None:
    logging.basicConfig(
        force=force,
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )
    if level.lower() != "debug":
        # urllib3 logs each retry at WARNING; our own one-line error says what happened
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        # Alembic says a dozen INFO lines when it creates a database; our own line says what it did
        logging.getLogger("alembic").setLevel(logging.WARNING)
    from watcher import masking

    masking.install()  # secrets read from the environment never reach a log line; Apprise stays at WARNING


@click.group(cls=WatcherGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    "config_arg",
    metavar="FILE",
    help="Config file (default: $WATCHER_CONFIG, else ./watcher.toml).",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="warning",
    show_default=True,
    help="How much to log on stderr.",
)
@click.version_option(__version__, prog_name="trial watcher")
@click.pass_context
def cli(ctx: click.Context, config_arg: str | None, log_level: str) -> None:
    """Watch ClinicalTrials.gov trials and searches, record what changes, tell subscribers.

    \b
    Start with:  watcher --config config.example.toml sync
    Then:        watcher changes
    """
    setup_logging(log_level)
    ctx.obj = App(config_arg)


def main() -> None:
    import signal

    def terminate(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # ends like Ctrl-C: the transaction in flight rolls back

    signal.signal(signal.SIGTERM, terminate)
    cli(prog_name="watcher")


# --- helpers ---------------------------------------------------------------------------


def _nct_ids(values: Sequence[str]) -> list[str]:
    try:
        return list(dict.fromkeys(check_nct_id(v) for v in values))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _print_json(data: Any) -> None:
    echo(json.dumps(data, indent=2, ensure_ascii=False))


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """ISO 8601 date/time, 'today', 'yesterday', or an age as in the config ('10m', '6h', '7d', '2w') → UTC."""
    from watcher.config import parse_age

    now = now or datetime.now(UTC)
    text = value.strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if text == "today":
        return midnight
    if text == "yesterday":
        return midnight - timedelta(days=1)
    try:
        return now - timedelta(seconds=parse_age(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f'--since: "{value}" is not a date '
            '(use ISO 8601 like 2026-11-24 or 2026-11-24T09:00Z, "today", or an age like "10m", "6h" or "7d")'
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@contextmanager
def _progress(enabled: bool, label: str = "fetching updated records") -> Iterator[PhaseProgress | None]:
    """A progress bar on stderr when it is a terminal; nothing otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int, phase: str | None = None) -> None:
            if phase is not None:
                bar.update(task, description=phase)
            bar.update(task, completed=done, total=total)

        yield update


# --- sync / check ----------------------------------------------------------------------


@cli.command()
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
@click.pass_obj
def sync(app: App, quiet: bool) -> None:
    """Poll every watch once and record what changed.

    Asks the registry's /version first: when its data has not moved since the last sync
    and the watches are the same, nothing else is requested.
    """
    from watcher.clock import utcnow
    from watcher.subscribers import enroll_subscribers
    from watcher.sync import run_sync

    config, store = app.config, app.store
    enroll_subscribers(config, store, utcnow())
    with app.registry() as registry, _progress(not quiet) as progress:
        report = run_sync(config, store, registry, progress=progress)
    if not quiet:
        echo(present.format_sync_report(report))


@cli.command()
@click.argument("nct_ids", nargs=-1, required=True, metavar="NCT_ID...")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def check(app: App, nct_ids: tuple[str, ...], as_json: bool) -> None:
    """Check trials now: show their key facts and what changed since the last stored record.

    Changes found are recorded exactly as a sync would record them.
    """
    from watcher.check import run_check
    from watcher.clock import utcnow
    from watcher.subscribers import enroll_subscribers

    ids = _nct_ids(nct_ids)
    config, store = app.config, app.store
    enroll_subscribers(config, store, utcnow())
    with app.registry() as registry:
        report = run_check(config, store, registry, ids)
    if as_json:
        _print_json(
            {
                "studies": [present.checked_json(s) for s in report.studies],
                "missing": report.missing,
                "rejected": [{"nct_id": n, "reason": r} for n, r in report.rejected.items()],
                "requests": report.requests,
            }
        )
    else:
        blocks = [present.format_checked(s) for s in report.studies]
        if blocks:
            echo("\n\n".join(blocks))
    for nct_id in report.missing:
        echo(f"error: {nct_id} was not found on {registry.host}", err=True)
    for nct_id, reason in report.rejected.items():
        echo(f"error: {nct_id}: the registry's record is malformed ({reason}); nothing was stored", err=True)
    if report.missing or report.rejected:
        raise click.exceptions.Exit(1)


def _titles(store: Store, nct_ids: Sequence[str]) -> dict[str, str | None]:
    from watcher.store import study_rows

    with store.read() as session:
        return {n: row.brief_title for n, row in study_rows(session, nct_ids).items()}


@cli.command()
@click.option("--since", metavar="WHEN", help='Only changes detected since WHEN (ISO 8601, "today", "7d").')
@click.option("--watch", "watch_names", multiple=True, metavar="NAME", help="Only changes in this watch (repeatable).")
@click.option("--nct", "nct_ids", multiple=True, metavar="NCT_ID", help="Only changes of this trial (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array for scripts.")
@click.pass_obj
def changes(app: App, since: str | None, watch_names: tuple[str, ...], nct_ids: tuple[str, ...], as_json: bool) -> None:
    """The change log, oldest first."""
    from watcher.store import query_changes

    moment = parse_since(since) if since else None
    ids = _nct_ids(nct_ids)
    config = app.config
    for name in watch_names:
        config.watch(name)
    with app.reader.read() as session:
        found = query_changes(session, since=moment, watches=list(watch_names) or None, nct_ids=ids or None)
    titles = _titles(app.reader, sorted({c.nct_id for c in found}))
    if as_json:
        _print_json([present.change_json(c, titles) for c in found])
        return
    if not found:
        echo("No changes recorded" + (f" since {moment:%Y-%m-%d %H:%M} UTC" if moment else "") + ".")
        return
    echo(present.format_changes(found, titles))


@cli.command()
@click.argument("nct_ids", nargs=-1, required=True, metavar="NCT_ID...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array for scripts.")
@click.pass_obj
def show(app: App, nct_ids: tuple[str, ...], as_json: bool) -> None:
    """The stored facts of trials (no request to the registry)."""
    from watcher.clock import iso
    from watcher.store import load_records, study_rows, watches_of

    ids = _nct_ids(nct_ids)
    with app.reader.read() as session:
        records = load_records(session, ids)
        rows = study_rows(session, ids)
        member_of = watches_of(session, ids)
    unknown = [n for n in ids if n not in records]
    if as_json:
        _print_json(
            [
                {
                    **present.facts_json(records[n]),
                    "watches": member_of.get(n, []),
                    "first_seen_at": iso(rows[n].first_seen_at),
                    "checked_at": iso(rows[n].checked_at),
                    "changed_at": iso(rows[n].changed_at),
                }
                for n in ids
                if n in records
            ]
        )
    else:
        blocks = []
        for n in ids:
            if n in records:
                note = f"  {'Watches':<12} {', '.join(member_of.get(n, [])) or 'none (checked by hand)'}"
                note += f"\n  {'Stored':<12} fetched {rows[n].checked_at:%Y-%m-%d %H:%M} UTC"
                blocks.append("\n".join(present.format_facts(records[n], note)))
        if blocks:
            echo("\n\n".join(blocks))
    if unknown:
        raise WatcherError(f"{', '.join(unknown)}: not stored yet; run: watcher check {' '.join(unknown)}")


@cli.command()
@click.argument("nct_id", metavar="NCT_ID")
@click.option(
    "--registry", "from_registry", is_flag=True,
    help="The whole story since first registration, from the registry's version history.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def history(app: App, nct_id: str, from_registry: bool, as_json: bool) -> None:
    """A trial's change timeline, as recorded here; with --registry, its whole story from the registry.

    \b
    --registry reads the registry's version history (an internal API of the website, one
    request a second): its index, then each version that may touch a tracked field. Versions
    are stored, so the next call costs one request. Dates are submission dates.
    """
    if from_registry:
        _registry_history(app, nct_id, as_json)
        return
    from watcher.store import query_changes, study_rows

    [nct] = _nct_ids([nct_id])
    with app.reader.read() as session:
        row = study_rows(session, [nct]).get(nct)
        found = query_changes(session, nct_ids=[nct])
    if row is None and not found:
        raise WatcherError(f"{nct}: not stored yet; run: watcher check {nct}")
    titles = {nct: row.brief_title if row else None}
    if as_json:
        _print_json([present.change_json(c, titles) for c in found])
        return
    from itertools import groupby

    from watcher.text import clean
    from watcher.wording import describe_all

    echo(f"{nct}  {clean(titles[nct] or '')}".rstrip())
    if row is not None:
        echo(f"  {row.first_seen_at:%Y-%m-%d}  first stored")
    # one sync's changes (one registry version's, when replayed) read together, as in a digest
    for (at, version, day), group in groupby(
        found, key=lambda c: (c.detected_at, c.registry_version, c.effective_date)
    ):
        told = f" (registry version {version} of {day})" if day else ""
        for line in describe_all(list(group)):
            echo(f"  {at:%Y-%m-%d}  {line.text}{told}")
    if not found:
        echo("  no change recorded since")


def _registry_history(app: App, nct_id: str, as_json: bool) -> None:
    from watcher.versions import check_enabled, registry_history

    [nct] = _nct_ids([nct_id])
    check_enabled(app.config)
    store = app.store
    with app.registry() as registry, _progress(not as_json, "reading registry versions") as progress:
        story = registry_history(store, registry, nct, progress=progress)
    if as_json:
        _print_json(present.registry_history_json(story))
    else:
        echo(present.format_registry_history(story))


# --- digests ---------------------------------------------------------------------------


@cli.group()
def digest() -> None:
    """Email digests: send the due ones, or preview the next one."""


@digest.command("send")
@click.option("--dry-run", is_flag=True, help="Show what would be sent; send and mark nothing.")
@click.option("--all", "everyone", is_flag=True, help="Treat every subscriber as due, whatever their frequency.")
@click.option("--retry-failed", is_flag=True, help="Queue digests the mail server refused for another try.")
@click.option(
    "--workers", type=click.IntRange(1, 32), default=1, show_default=True, metavar="N",
    help="Send over N connections to the mail server at once.",
)  # fmt: skip
@click.pass_obj
def digest_send(app: App, dry_run: bool, everyone: bool, retry_failed: bool, workers: int) -> None:
    """Build and send every due digest, and retry the ones still queued.

    `immediate` subscribers are due whenever there are undelivered changes; `daily` and
    `weekly` ones at [schedule] digest_time. Exit 1 when any digest did not go out.
    """
    from watcher.delivery import send_due
    from watcher.outbox import SendStatus
    from watcher.outbox import retry_failed as requeue

    config, store = app.config, app.store
    if not config.subscribers and not config.webhooks and config.web is None:
        echo(f"No subscribers in {config.path.name}: add [[subscriber]] tables to send digests.")
        return
    if retry_failed and not dry_run:
        count = requeue(store)
        echo(f"{present.plural(count, 'failed digest')} queued again.")
    report = send_due(config, store, everyone=everyone, dry_run=dry_run, workers=workers)
    if not report.outcomes:
        echo("No digest is due.")
        return
    width = max(len(o.recipient) for o in report.outcomes)
    for o in report.outcomes:
        changes = present.plural(o.changes, "change")
        via = f" via {o.via}" if o.via else ""
        if o.status is SendStatus.WOULD_SEND:
            echo(f"would send  {o.recipient.ljust(width)}  {o.subject} ({changes}){via}")
        elif o.status is SendStatus.SENT:
            echo(f"sent        {o.recipient.ljust(width)}  {o.subject} ({changes}){via}")
        elif o.status is SendStatus.DEFERRED:
            echo(f"error: {o.recipient}: {o.detail}; it stays queued and will be retried.", err=True)
        else:
            echo(f"error: {o.recipient}: {o.detail}; the digest is marked failed (see: watcher subscribers).", err=True)
    if not report.ok:
        raise click.exceptions.Exit(1)


@digest.command("preview")
@click.argument("email")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True), help="Write the HTML part here.")
@click.option("--text", "text_only", is_flag=True, help="Print only the plain-text part.")
@click.pass_obj
def digest_preview(app: App, email: str, html_file: str | None, text_only: bool) -> None:
    """Render the next digest of a subscriber without sending or marking anything."""
    from pathlib import Path

    from watcher.clock import utcnow
    from watcher.delivery import preview

    result = preview(app.config, app.reader, email, utcnow())
    if result is None:
        echo(f"Nothing new for {email} since their last digest.")
        return
    digest, rendered = result
    if html_file:
        try:
            Path(html_file).write_text(rendered.html, encoding="utf-8")
        except OSError as exc:
            raise WatcherError(f"{html_file}: cannot write the HTML part ({exc.strerror or exc})") from None
    if not text_only:
        echo(f"Subject: {rendered.subject}\nTo: {digest.email}\n")
    echo(rendered.text, nl=False)
    if html_file and not text_only:
        echo(f"\n(HTML part written to {html_file})")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array for scripts.")
@click.pass_context
def subscribers(ctx: click.Context, as_json: bool) -> None:
    """Who follows what: source (config or web), state, last digest, pending changes, queued and failed mail.

    \b
    watcher subscribers remove EMAIL   unsubscribes someone by hand
    """
    if ctx.invoked_subcommand is not None:
        return
    from watcher.clock import iso
    from watcher.subscribers import statuses as subscriber_statuses

    app: App = ctx.obj
    statuses, unsubscribed = subscriber_statuses(app.config, app.reader)
    for who in unsubscribed:
        echo(f"warning: {who} unsubscribed by link: skipped until they subscribe again", err=True)
    if as_json:
        _print_json(
            [
                {
                    "email": s.email, "name": s.name, "notify": list(s.notify), "webhook": s.webhook,
                    "source": s.source.value, "state": s.state.value, "watches": list(s.watches),
                    "frequency": s.frequency, "kinds": list(s.kinds),
                    "since": iso(s.since), "last_delivered": iso(s.last_delivered),
                    "pending_changes": s.pending_changes, "queued_digests": s.queued,
                    "failed_digests": [{"id": i, "error": e} for i, e in s.failed],
                }
                for s in statuses
            ]
        )  # fmt: skip
        return
    if not statuses:
        echo("No subscribers: add [[subscriber]] tables to the config, or let people subscribe on the pages ([web]).")
        return
    states = {"pending": "not confirmed yet", "unsubscribed": "unsubscribed"}
    for s in statuses:
        last = f"{s.last_delivered:%Y-%m-%d %H:%M} UTC" if s.last_delivered else "never"
        state = f", {states[s.state]}" if s.state in states else ""
        source = " · web" if s.source == "web" else ""
        echo(f"{s.who}  ({s.frequency}{state}) follows {', '.join(s.watches) or 'nothing'}{source}")
        if s.name and s.email:
            echo(f"  email {s.email}")
        for url in s.notify:
            echo(f"  channel {url}")
        kinds = f" · only {', '.join(s.kinds)}" if s.kinds else ""
        echo(f"  last digest {last} · {present.plural(s.pending_changes, 'change')} pending · {s.queued} queued{kinds}")
        for digest_id, error in s.failed:
            echo(f"  failed digest #{digest_id}: {error}")


@subscribers.command("remove")
@click.argument("email")
@click.pass_obj
def subscribers_remove(app: App, email: str) -> None:
    """Unsubscribe EMAIL by hand: no more digests (queued ones are cancelled), and their manage links stop working.

    A subscriber from the config stays off until they subscribe again themselves on the pages.
    """
    from watcher.accounts import remove
    from watcher.clock import utcnow

    with app.store.write() as session:
        removed = remove(session, app.config, email, utcnow())
    if removed.was == "unsubscribed":
        echo(f"{removed.email} was already unsubscribed.")
        return
    note = (
        " (listed in the config: skipped until they subscribe again themselves)" if removed.source == "config" else ""
    )
    echo(f"{removed.email} is unsubscribed: no more digests{note}.")


@cli.command("test-email")
@click.argument("email")
@click.pass_obj
def test_email(app: App, email: str) -> None:
    """Send a sample digest with one change of every kind, to check mail settings and the look."""
    from watcher.config import check_email
    from watcher.delivery import send_sample

    try:
        check_email(email)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    via = send_sample(app.config, email)
    echo(f"Sample digest sent to {email} via {via}.")


@cli.command("test-notify")
@click.argument("url")
@click.pass_obj
def test_notify(app: App, url: str) -> None:
    """Send a sample digest through one Apprise URL (a chat or push channel), to check it and the look.

    Write secrets as {env:NAME}: they are read from the environment, never shown.
    """
    from watcher.channels import check_url
    from watcher.config import check_notify_url
    from watcher.delivery import send_sample_notify
    from watcher.masking import shown_url

    try:
        check_notify_url(url)
        check_url(url)
    except ValueError as exc:
        raise ConfigError(f"test-notify: {exc}") from None
    count = send_sample_notify(url)
    echo(f"Sample digest sent through {shown_url(url)}" + (f" in {count} messages." if count > 1 else "."))


# --- the daemon --------------------------------------------------------------------------


@cli.command()
@click.option(
    "--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info", show_default=True,
    help="How much to log on stderr.",
)  # fmt: skip
@click.pass_obj
def daemon(app: App, log_level: str) -> None:
    """Run the scheduled worker: sync at start and on schedule, send digests when due.

    Stops cleanly on SIGTERM or Ctrl-C. Only one daemon runs per database; the one-off
    commands stay usable meanwhile.
    """
    setup_logging(log_level, force=True)
    if log_level.lower() != "debug":
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    from watcher.scheduler import run_daemon

    run_daemon(app.config, app.store)


@cli.command()
@click.option("--listen", metavar="HOST:PORT", help="Where to bind (default: [web] listen).")
@click.option(
    "--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info", show_default=True,
    help="How much to log on stderr.",
)  # fmt: skip
@click.pass_obj
def serve(app: App, listen: str | None, log_level: str) -> None:
    """Serve the web pages alone ([web] in the config): watches, trials, feeds, subscribing.

    `watcher daemon` serves them too when [web] is set. Stops cleanly on SIGTERM or Ctrl-C.
    """
    setup_logging(log_level, force=True)
    from watcher.web.app import run_until_stopped

    run_until_stopped(app.config, app.store, listen)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object for scripts.")
@click.pass_obj
def status(app: App, as_json: bool) -> None:
    """Recent syncs, the next scheduled runs, queued and failed digests, and the daemon."""
    from watcher.scheduler import status_report

    report = status_report(app.reader)
    if as_json:
        _print_json(report)
    else:
        echo(present.format_status(report))


# --- the database ------------------------------------------------------------------------


@cli.group("db")
def db_group() -> None:
    """The database: its schema version, upgrades, and moving to PostgreSQL."""


@db_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object for scripts.")
@click.pass_obj
def db_status(app: App, as_json: bool) -> None:
    """The database's schema revision, the newest this trial watcher knows, and what an upgrade would do."""
    from watcher import db, schema

    database = db.database_of(app.config)
    with db.opened(database) as engine:
        found = schema.status(engine, database)
    if as_json:
        _print_json(present.db_status_json(database.display, database.backend, found))
    else:
        echo(present.format_db_status(database.display, found))


@db_group.command("upgrade")
@click.pass_obj
def db_upgrade(app: App) -> None:
    """Bring the database's schema up to date (on SQLite, after a backup next to the file)."""
    from watcher import db, schema

    database = db.database_of(app.config)
    with db.opened(database) as engine:
        report = schema.upgrade(engine, database)
    echo(present.format_upgrade(database.display, report))


@db_group.command("copy")
@click.argument("target_url", metavar="TARGET_URL")
@click.option(
    "--password-env", metavar="NAME", default="WATCHER_DB_PASSWORD", show_default=True,
    help="Environment variable with the target's password (if it needs one).",
)  # fmt: skip
@click.pass_obj
def db_copy(app: App, target_url: str, password_env: str) -> None:
    """Copy every table into an empty PostgreSQL database (how an installation outgrows SQLite).

    The target gets the current schema, then every row in one transaction; the counts are
    compared before it commits. Then point [database] url at the target.
    """
    import os

    from watcher import db
    from watcher.dbcopy import copy_database

    target = db.parse_database(target_url, password_env if os.environ.get(password_env) else None)
    report = copy_database(app.store, target, progress=None)
    echo(present.format_copy(report))
