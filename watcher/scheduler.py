"""The daemon: APScheduler jobs that call the same sync and digest code as the one-off commands.

- syncs once at start, then every `sync_every` (or on `sync_cron`); immediate digests and
  any queued or overdue digests go out after each sync;
- daily and weekly digests at `digest_time` in `timezone`; queued digests are retried every
  15 minutes;
- one daemon per database (an OS lock that dies with its process);
- SIGTERM / SIGINT: the job in flight stops at its next request and rolls back, then exit 0.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from watcher.clock import Clock, iso, utcnow
from watcher.config import Config
from watcher.errors import Cancelled, WatcherError
from watcher.models import DaemonState
from watcher.states import RunOutcome
from watcher.store import Store, consecutive_failures, digest_counts, recent_runs

log = logging.getLogger(__name__)

RETRY_EVERY_S = 15 * 60
# never two runs of a job at once; after downtime, missed runs coalesce into one, however late
JOB_OPTIONS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
STOP_GRACE_S = 8.0


# --- one daemon per database -------------------------------------------------------------


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


@contextmanager
def daemon_lock(database: Path) -> Iterator[None]:
    path = lock_path(database)
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "unknown"
            raise WatcherError(f"another watcher daemon (pid {pid}) is already running on {database}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock; the file stays, harmlessly


def lock_holder(database: Path) -> int | None:
    """The pid of the daemon running on this database, or None."""
    path = lock_path(database)
    if not path.exists():
        return None
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def status_report(store: Store) -> dict[str, Any]:
    """What `watcher status` shows: the daemon, its next runs, recent runs and the outbox."""
    with store.read() as session:
        runs = recent_runs(session, 5)
        digests = digest_counts(session)
        state = session.get(DaemonState, 1)
    pid = lock_holder(store.path)
    running = pid is not None and state is not None
    return {
        "database": str(store.path),
        "daemon": {
            "running": pid is not None,
            "pid": pid,
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

    def _sync(self) -> None:
        from watcher.delivery import enroll_subscribers
        from watcher.registry import Registry
        from watcher.sync import run_sync

        with self.store.read() as session:
            failures_before = consecutive_failures(session)
        started = time.monotonic()
        try:
            enroll_subscribers(self.config, self.store, self.clock())
            with Registry(self.config.ctgov, cancel=self.cancel) as registry:
                report = run_sync(self.config, self.store, registry, clock=self.clock)
        except Cancelled:
            log.info("sync stopped for shutdown; nothing was stored")
            return
        except WatcherError as exc:
            log.warning("sync failed after %.1f s: %s; next try at the next slot", time.monotonic() - started, exc)
            log.debug("sync failure details", exc_info=True)
            self._maybe_alert(failures_before)
            return
        if report.outcome is RunOutcome.UNCHANGED:
            log.info(
                "sync: registry data unchanged since %s; 1 request in %.1f s", report.data_timestamp, report.seconds
            )
        else:
            members = sum(w.members for w in report.watches)
            log.info(
                "sync: %d trials, %d fetched, %d changes, %d requests (%d bytes) in %.1f s (registry data %s)",
                members, report.fetched, report.changes, report.requests, report.bytes, report.seconds,
                report.data_timestamp,
            )  # fmt: skip
        if failures_before >= self.config.schedule.alert_after_failures:
            message = f"syncing recovered after {failures_before} failed syncs in a row"
            log.warning(message)
            self._tell_operator("trial watcher: syncing recovered", message)

    def _maybe_alert(self, failures_before: int) -> None:
        """Tell the operator once, when the failures in a row reach the threshold (or jump past it)."""
        with self.store.read() as session:
            failures = consecutive_failures(session)
            last = recent_runs(session, 1)
        threshold = self.config.schedule.alert_after_failures
        if failures_before < threshold <= failures:
            reason = last[0].error if last else "unknown"
            message = f"syncing has failed {failures} times in a row; the last error: {reason}"
            log.error(message)
            self._tell_operator(f"trial watcher: syncing has failed {failures} times in a row", message)

    def _tell_operator(self, subject: str, text: str) -> None:
        operator = self.config.mail.operator
        if not operator:
            return
        from watcher.mailer import build_alert, make_transport, new_message_id

        now = self.clock()
        sender = self.config.mail.from_
        message_id = new_message_id(sender, "alert")
        text = f"{text}\n\nDatabase: {self.store.path}\nThis goes to the operator only, never to subscribers.\n"
        message = build_alert(subject, text, sender, operator, message_id, now)
        try:
            with make_transport(self.config) as transport:
                transport.send(message, sender, operator, f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}-operator")
        except WatcherError as exc:
            log.error("could not tell the operator %s: %s", operator, exc)

    def _digests(self) -> None:
        if not self.config.subscribers:
            return
        from watcher.delivery import send_due

        started = time.monotonic()
        try:
            report = send_due(self.config, self.store, clock=self.clock, cancel=self.cancel)
        except WatcherError as exc:
            log.warning("digests failed: %s", exc)
            log.debug("digest failure details", exc_info=True)
            return
        if report.outcomes:
            counts: dict[str, int] = {}
            for outcome in report.outcomes:
                counts[outcome.status] = counts.get(outcome.status, 0) + 1
            summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            log.info("digests: %s via %s in %.1f s", summary, report.transport, time.monotonic() - started)
            for outcome in report.outcomes:
                if outcome.status != "sent":
                    log.warning("digest to %s %s: %s", outcome.email, outcome.status, outcome.detail)


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
    return scheduler


def next_runs(scheduler: Any) -> dict[str, datetime | None]:
    runs: dict[str, datetime | None] = {}
    for job in scheduler.get_jobs():
        when = getattr(job, "next_run_time", None)
        key = "sync" if job.id in ("sync", "first-sync") else "digests" if job.id == "digests" else job.id
        if when is not None and (runs.get(key) is None or when < runs[key]):
            runs[key] = when
        runs.setdefault(key, when)
    return runs


def _record_state(store: Store, scheduler: Any, started_at: datetime) -> None:
    runs = next_runs(scheduler)
    try:
        with store.write() as session:
            state = session.get(DaemonState, 1) or DaemonState(id=1, pid=os.getpid(), started_at=started_at)
            state.pid, state.started_at = os.getpid(), started_at
            state.next_sync, state.next_digest = runs.get("sync"), runs.get("digests")
            state.heartbeat = utcnow()
            session.add(state)
    except WatcherError as exc:
        log.debug("could not record the daemon's state: %s", exc)


def run_daemon(config: Config, store: Store) -> None:
    """Run until SIGTERM / SIGINT. Raises WatcherError if another daemon holds the database."""
    with daemon_lock(store.path):
        worker = Worker(config, store)
        started_at = utcnow()
        scheduler = build_scheduler(worker, started_at)

        def shutdown() -> None:
            from apscheduler.schedulers import SchedulerNotRunningError

            try:
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

        def after_job(_event: object) -> None:
            _record_state(store, scheduler, started_at)

        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED

        scheduler.add_listener(after_job, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        sync_desc = config.schedule.sync_cron or f"every {config.schedule.sync_every or '6h'}"
        log.info(
            "daemon started (pid %d): %d watches, %d subscribers, sync %s, digests at %s %s, database %s",
            os.getpid(), len(config.watches), len(config.subscribers), sync_desc, config.schedule.digest_time,
            config.schedule.timezone, store.path,
        )  # fmt: skip
        scheduler.start()  # blocks until stop()
        if not worker.busy.acquire(timeout=STOP_GRACE_S):
            log.warning(
                "the job in flight did not stop within %.0f s; exiting (its transaction rolls back)", STOP_GRACE_S
            )
            logging.shutdown()
            os._exit(0)
        worker.busy.release()
        log.info("daemon stopped")
