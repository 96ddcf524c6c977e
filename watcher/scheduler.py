"""The daemon: APScheduler jobs that call the same sync and digest code as the one-off commands.

- syncs once at start, then every `sync_every` (or on `sync_cron`); immediate digests and
  any queued or overdue digests go out after each sync;
- daily and weekly digests at `digest_time` in `timezone`; every 15 minutes whatever is due or
  queued goes out, and every minute a deferred message whose wait is over is tried again (the
  wait grows from 2 minutes: see `watcher.outbox.retry_delay`);
- one daemon per database (an OS lock that dies with its process);
- SIGTERM / SIGINT: the job in flight stops at its next request and rolls back, then exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from watcher import db
from watcher.clock import Clock, iso, utcnow
from watcher.config import Config
from watcher.db import Backend
from watcher.errors import Cancelled, WatcherError
from watcher.models import DaemonState
from watcher.present import plural
from watcher.states import RunOutcome
from watcher.store import (
    Store,
    consecutive_failures,
    digest_counts,
    digest_counts_by_channel,
    failure_streak,
    recent_runs,
)

log = logging.getLogger(__name__)

RETRY_EVERY_S = 15 * 60
RETRY_FIRST_S = 5 * 60  # a failed sync is tried again this soon, then after twice as long, ...
DEFAULT_SYNC_S = 6 * 3600
RESEND_EVERY_S = 60  # deferred messages wait 2 minutes, then longer: tried within a minute of their time
# never two runs of a job at once; after downtime, missed runs coalesce into one, however late
JOB_OPTIONS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
STOP_GRACE_S = 8.0


# --- one daemon per database -------------------------------------------------------------
# On SQLite a second daemon exits with one line. On PostgreSQL it waits as a hot standby and
# takes over when the leader's session lock dies with it (also on kill -9).

STANDBY_POLL_S = 5.0
WATCHDOG_S = 10.0


def daemon_pid(store: Store) -> int | None:
    with store.read() as session:
        state = session.get(DaemonState, 1)
    return state.pid if state else None


@contextmanager
def leadership(store: Store, stopping: threading.Event) -> Iterator[db.SessionLock | None]:
    """Lead this database's schedule for the block; a standby (PostgreSQL) waits here first.

    Yields the PostgreSQL session lock (to watch it), or None on SQLite. Returns without
    running the block body's work only when stopping while still on standby.
    """
    if store.backend is Backend.SQLITE:
        try:
            with db.exclusive(store.engine, store.database, "daemon"):
                yield None
        except db.LockHeld:
            pid = daemon_pid(store)  # unknown when reached through a hard link: SQLite's WAL is per path
            who = f"another watcher daemon (pid {pid})" if pid else "another watcher daemon"
            raise WatcherError(f"{who} is already running on {store.database.display}") from None
        return
    lock = db.SessionLock(store.database, "daemon")
    try:
        announced = False
        while not lock.try_acquire():
            if not announced:
                log.info(
                    "standing by: another daemon leads %s (pid %s); taking over when it stops",
                    store.database.display, daemon_pid(store) or "unknown",
                )  # fmt: skip
                announced = True
            if stopping.wait(STANDBY_POLL_S):
                raise _StoppedOnStandby
        if announced:
            log.info("taking over: this daemon now leads %s", store.database.display)
        yield lock
    finally:
        lock.close()


class _StoppedOnStandby(Exception):
    pass


def daemon_running(store: Store) -> bool:
    return db.lock_is_held(store.engine, store.database, "daemon")


def status_report(store: Store) -> dict[str, Any]:
    """What `watcher status` shows: the daemon, its next runs, recent runs and the outbox."""
    with store.read() as session:
        runs = recent_runs(session, 5)
        digests = digest_counts(session)
        by_channel = digest_counts_by_channel(session)
        state = session.get(DaemonState, 1)
    running = daemon_running(store)
    return {
        "database": store.database.display,
        "daemon": {
            "running": running,
            "pid": state.pid if running and state else None,
            "host": state.host if running and state else None,
            "next_sync": iso(state.next_sync) if running and state else None,
            "next_digests": iso(state.next_digest) if running and state else None,
        },
        "runs": [
            {
                "id": r.id, "kind": r.kind, "started_at": iso(r.started_at), "finished_at": iso(r.finished_at),
                "outcome": r.outcome, "data_timestamp": r.data_timestamp, "requests": r.requests,
                "bytes": r.bytes, "changes": r.changes, "error": r.error,
            }
            for r in runs
        ],
        "digests": digests,
        "digests_by_channel": by_channel,
    }  # fmt: skip


# --- the jobs ----------------------------------------------------------------------------


class Worker:
    """What the daemon does at each tick; also driven directly by tests with a fake clock."""

    def __init__(self, config: Config, store: Store, clock: Clock = utcnow) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.cancel = threading.Event()
        self.busy = threading.Lock()
        self.scheduler: Any = None  # set by the daemon: the retry of a failed sync is a job of its own
        self.next_retry: datetime | None = None

    def sync_job(self) -> None:
        """One sync, then the digests it made due. Never raises: a failure waits for the next slot."""
        if self.cancel.is_set():
            return
        with self.busy:
            self._sync()
            if not self.cancel.is_set():
                self._digests()

    def digest_job(self) -> None:
        if self.cancel.is_set():
            return
        with self.busy:
            self._digests()

    def resend_job(self) -> None:
        """Deferred messages whose wait is over, without queueing anything (cheap when there are none)."""
        if self.cancel.is_set():
            return
        from watcher.outbox import pending_due

        with self.busy:
            try:
                if not pending_due(self.store, self.clock()):
                    return
                from watcher.delivery import resend_due

                started = time.monotonic()
                report = resend_due(self.config, self.store, clock=self.clock, cancel=self.cancel)
            except Exception as exc:  # the daemon must never go quiet
                reason = str(exc) if isinstance(exc, WatcherError) else f"unexpected error: {type(exc).__name__}: {exc}"
                log.error("resending deferred messages failed: %s; they are tried again in a minute", reason)
                log.debug("resend failure details", exc_info=True)
                return
            self._log_report(report, started)

    def _sync(self) -> None:
        from watcher.registry import Registry
        from watcher.runs import record_failure
        from watcher.subscribers import enroll_subscribers
        from watcher.sync import SyncRunning, run_sync

        with self.store.read() as session:
            streak = failure_streak(session)
        failures_before, alerted = len(streak), any(r.alerted for r in streak)
        started, started_at = time.monotonic(), self.clock()
        try:
            enroll_subscribers(self.config, self.store, self.clock())
            with Registry(self.config.ctgov, cancel=self.cancel) as registry:
                report = run_sync(self.config, self.store, registry, clock=self.clock)
        except Cancelled:
            log.info("sync stopped for shutdown; nothing was stored")
            return
        except SyncRunning as exc:
            log.info("sync skipped: %s", exc)
            return
        except Exception as exc:  # the daemon must never go quiet: any failure is logged and counted
            reason = str(exc) if isinstance(exc, WatcherError) else f"unexpected error: {type(exc).__name__}: {exc}"
            with self.store.read() as session:
                recorded = consecutive_failures(session) > failures_before
            if not recorded:  # it failed before the sync could note it
                record_failure(self.store, None, started_at, reason, self.clock)
            retry = self._retry_later(failures_before + 1)
            log.error("sync failed after %.1f s: %s; %s", time.monotonic() - started, reason, retry)
            log.debug("sync failure details", exc_info=True)
            self._maybe_alert()
            return
        self._cancel_retry()
        if report.outcome is RunOutcome.UNCHANGED:
            log.info(
                "sync: registry data unchanged since %s; 1 request in %.1f s", report.data_timestamp, report.seconds
            )
        else:
            members = sum(w.members for w in report.watches)
            log.info(
                "sync: %s, %d fetched, %s, %s (%d bytes) in %.1f s (registry data %s)",
                plural(members, "trial"), report.fetched, plural(report.changes, "change"),
                plural(report.requests, "request"), report.bytes, report.seconds, report.data_timestamp,
            )  # fmt: skip
        if report.rejected:
            self._alert_rejected()
        if alerted:
            message = f"syncing recovered after {failures_before} failed syncs in a row"
            log.warning(message)
            self._tell_operator("trial watcher: syncing recovered", message)

    def _retry_later(self, failures: int) -> str:
        """Try a failed sync again sooner than the next slot: 5 minutes, then doubling up to the interval."""
        interval = self.config.schedule.sync_seconds or DEFAULT_SYNC_S
        delay = min(RETRY_FIRST_S * 2 ** max(failures - 1, 0), interval)
        when = self.clock() + timedelta(seconds=delay)
        if self.scheduler is not None:
            from apscheduler.triggers.date import DateTrigger

            self.scheduler.add_job(
                self.sync_job, DateTrigger(when), id="sync-retry", replace_existing=True, **JOB_OPTIONS
            )
        self.next_retry = when
        return f"next try in {_duration(delay)} (at {when:%H:%M} UTC)"

    def _cancel_retry(self) -> None:
        self.next_retry = None
        if self.scheduler is not None and self.scheduler.get_job("sync-retry") is not None:
            self.scheduler.remove_job("sync-retry")

    def _maybe_alert(self) -> None:
        """Tell the operator once per run of failures, as soon as it reaches the threshold, even when it
        got there (or past it) by failures the daemon did not see (one-off commands)."""
        with self.store.write() as session:
            streak = failure_streak(session)
            if len(streak) < self.config.schedule.alert_after_failures or any(r.alerted for r in streak):
                return
            streak[0].alerted = True
            session.add(streak[0])
        message = f"syncing has failed {len(streak)} times in a row; the last error: {streak[0].error or 'unknown'}"
        log.error(message)
        self._tell_operator(f"trial watcher: syncing has failed {len(streak)} times in a row", message)

    def _tell_operator(self, subject: str, text: str) -> None:
        """By email (`[mail] operator`) and through `[alerts] notify`; never to subscribers."""
        where = self.store.database.display
        text = f"{text}\n\nDatabase: {where}\nThis goes to the operator only, never to subscribers.\n"
        if self.config.alerts.notify:
            from watcher.channels import send_alert

            try:
                failures = send_alert(self.config.alerts.notify, subject, text)
            except WatcherError as exc:
                failures = [str(exc)]
            for failure in failures:
                log.error("could not tell the operator: %s", failure)
        operator = self.config.mail.operator
        if not operator:
            return
        from watcher.mailer import build_alert, make_transport, new_message_id

        now = self.clock()
        sender = self.config.mail.from_
        message_id = new_message_id(sender, "alert")
        message = build_alert(subject, text, sender, operator, message_id, now)
        try:
            with make_transport(self.config) as transport:
                transport.send(message, sender, operator, f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}-operator")
        except WatcherError as exc:
            log.error("could not tell the operator %s: %s", operator, exc)

    def _digests(self) -> None:
        if not self.config.subscribers and not self.config.webhooks and self.config.web is None:
            return
        from watcher.delivery import send_due

        started = time.monotonic()
        try:
            report = send_due(self.config, self.store, clock=self.clock, cancel=self.cancel, respect_backoff=True)
        except Exception as exc:  # the daemon must never go quiet
            reason = str(exc) if isinstance(exc, WatcherError) else f"unexpected error: {type(exc).__name__}: {exc}"
            log.error("digests failed: %s; queued digests are retried every %d minutes", reason, RETRY_EVERY_S // 60)
            log.debug("digest failure details", exc_info=True)
            return
        self._log_report(report, started)

    def _alert_rejected(self) -> None:
        """Tell the operator, once per streak, of each record skipped `alert_after_failures` syncs in a
        row or more (syncs run by hand count too)."""
        from watcher.store import claim_rejected_alerts

        with self.store.write() as session:
            due = claim_rejected_alerts(session, self.config.schedule.alert_after_failures, self.clock())
        for rejected in due:
            message = (
                f"{rejected.nct_id} has been skipped {rejected.times} syncs in a row: its record is malformed "
                f"({rejected.reason}); its last good state stays"
            )
            log.error(message)
            self._tell_operator(f"trial watcher: {rejected.nct_id} keeps failing the shape check", message)

    @staticmethod
    def _log_report(report: Any, started: float) -> None:
        from watcher.outbox import SendStatus

        if report.outcomes:
            counts: dict[str, int] = {}
            for outcome in report.outcomes:
                counts[outcome.status] = counts.get(outcome.status, 0) + 1
            summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            log.info("digests: %s via %s in %.1f s", summary, report.transport, time.monotonic() - started)
            for outcome in report.outcomes:
                if outcome.status is not SendStatus.SENT:
                    log.warning("digest to %s %s: %s", outcome.recipient, outcome.status, outcome.detail)


# --- wiring ------------------------------------------------------------------------------


def build_scheduler(worker: Worker, start_at: datetime) -> Any:
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.date import DateTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    schedule = worker.config.schedule
    zone = schedule.timezone
    scheduler = BlockingScheduler(
        timezone=zone,
        executors={"default": ThreadPoolExecutor(1)},  # jobs never run side by side
        job_defaults=JOB_OPTIONS,
    )
    if schedule.sync_cron:
        scheduler.add_job(
            worker.sync_job, CronTrigger.from_crontab(schedule.sync_cron, timezone=zone), id="sync", **JOB_OPTIONS
        )
        scheduler.add_job(worker.sync_job, DateTrigger(start_at), id="first-sync", **JOB_OPTIONS)
    else:
        interval = IntervalTrigger(seconds=schedule.sync_seconds or 6 * 3600, timezone=zone)
        scheduler.add_job(worker.sync_job, interval, id="sync", next_run_time=start_at, **JOB_OPTIONS)
    hour, minute = (int(p) for p in schedule.digest_time.split(":"))
    scheduler.add_job(
        worker.digest_job, CronTrigger(hour=hour, minute=minute, timezone=zone), id="digests", **JOB_OPTIONS
    )
    retry_start = start_at + timedelta(seconds=RETRY_EVERY_S)
    scheduler.add_job(
        worker.digest_job, IntervalTrigger(seconds=RETRY_EVERY_S, start_date=retry_start), id="retry", **JOB_OPTIONS
    )
    resend_start = start_at + timedelta(seconds=RESEND_EVERY_S)
    scheduler.add_job(
        worker.resend_job, IntervalTrigger(seconds=RESEND_EVERY_S, start_date=resend_start), id="resend", **JOB_OPTIONS
    )
    return scheduler


def next_runs(scheduler: Any) -> dict[str, datetime | None]:
    runs: dict[str, datetime | None] = {}
    for job in scheduler.get_jobs():
        when = getattr(job, "next_run_time", None)
        key = "sync" if job.id in ("sync", "first-sync", "sync-retry") else "digests" if job.id == "digests" else job.id
        if when is not None and (runs.get(key) is None or when < runs[key]):
            runs[key] = when
        runs.setdefault(key, when)
    return runs


def _record_state(store: Store, scheduler: Any, started_at: datetime) -> None:
    runs = next_runs(scheduler) if scheduler is not None else {}
    try:
        with store.write() as session:
            state = session.get(DaemonState, 1) or DaemonState(id=1, pid=os.getpid(), started_at=started_at)
            state.pid, state.host, state.started_at = os.getpid(), socket.gethostname(), started_at
            state.next_sync, state.next_digest = runs.get("sync"), runs.get("digests")
            state.heartbeat = utcnow()
            session.add(state)
    except WatcherError as exc:
        log.debug("could not record the daemon's state: %s", exc)


def run_daemon(config: Config, store: Store) -> None:
    """Run until SIGTERM / SIGINT. On SQLite, raises WatcherError if another daemon holds the
    database; on PostgreSQL, waits as a standby until it can lead."""
    worker = Worker(config, store)
    scheduler: Any = None

    def shutdown() -> None:
        from apscheduler.schedulers import SchedulerNotRunningError

        try:
            if scheduler is not None:
                scheduler.shutdown(wait=False)
        except SchedulerNotRunningError:
            pass

    def stop(signum: int, _frame: object) -> None:
        if worker.cancel.is_set():  # a second signal (e.g. to the whole process group)
            return
        worker.cancel.set()
        log.info("%s received: stopping", signal.Signals(signum).name)
        # shut down from another thread: the handler may interrupt the scheduler holding its locks
        threading.Thread(target=shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    lost = threading.Event()
    web: Any = None
    try:
        with leadership(store, worker.cancel) as lock:
            if config.web is not None:  # a small install is one process: the pages too
                from watcher.web.app import serve

                web = serve(config, store)
            started_at = utcnow()
            _record_state(store, None, started_at)
            scheduler = build_scheduler(worker, started_at)
            worker.scheduler = scheduler
            if lock is not None:
                scheduler.add_job(_watchdog(lock, lost, shutdown), "interval", seconds=WATCHDOG_S, id="watchdog")

            def after_job(_event: object) -> None:
                _record_state(store, scheduler, started_at)

            from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED

            scheduler.add_listener(after_job, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
            sync_desc = config.schedule.sync_cron or f"every {config.schedule.sync_every or '6h'}"
            hooks = f", {len(config.webhooks)} webhooks" if config.webhooks else ""
            log.info(
                "daemon started (pid %d): %d watches, %d subscribers%s, sync %s, digests at %s %s, database %s%s",
                os.getpid(), len(config.watches), len(config.subscribers), hooks, sync_desc,
                config.schedule.digest_time, config.schedule.timezone, store.database.display,
                f", pages on {web.url}" if web is not None else "",
            )  # fmt: skip
            if not worker.cancel.is_set():
                scheduler.start()  # blocks until stop()
            if not worker.busy.acquire(timeout=STOP_GRACE_S):
                log.warning(
                    "the job in flight did not stop within %.0f s; exiting (its transaction rolls back)", STOP_GRACE_S
                )
                logging.shutdown()
                os._exit(0)
            worker.busy.release()
    except _StoppedOnStandby:
        pass
    finally:
        if web is not None:
            web.stop()
    if lost.is_set():
        raise WatcherError(f"lost the connection holding the lead on {store.database.display}; stopped")
    log.info("daemon stopped")


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes / 60:.0f} h"


def _watchdog(lock: db.SessionLock, lost: threading.Event, shutdown: Any) -> Any:
    """A job that stops the daemon when its lead is gone (the database restarted, the network broke):
    a standby may already be leading, and two leaders must never run the schedule."""

    def check() -> None:
        if not lock.alive():
            log.error("the connection holding this daemon's lead is gone; stopping so that a standby can lead")
            lost.set()
            threading.Thread(target=shutdown, daemon=True).start()

    return check
