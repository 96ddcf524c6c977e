"""The daemon: scheduling with an injected clock, the real scheduler's jobs, then the real process with signals
and kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Runner, ScratchDatabase, mail_config, write_config
from tests.support.fakeapi import FakeRegistry
from tests.support.smtp import SmtpServer
from tests.support.world import TARGET
from watcher.config import Config, load_config
from watcher.db import database_of
from watcher.scheduler import Worker, build_scheduler
from watcher.store import Store

ALICE = "alice@example.org"


class Clock:
    def __init__(self, at: str) -> None:
        self.now = datetime.fromisoformat(at).replace(tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def set(self, at: str) -> None:
        self.now = datetime.fromisoformat(at).replace(tzinfo=UTC)


def complete_target(fake: FakeRegistry, status: str = "COMPLETED") -> None:
    fake.edit(TARGET, lambda r: r["protocolSection"]["statusModule"].update(overallStatus=status))
    fake.refresh()


def make_worker(tmp_path: Path, fake: FakeRegistry, smtp_port: int | None, frequency: str, schedule: str, clock: Clock,
                operator: str = "") -> Worker:  # fmt: skip
    subscribers = f'[[subscriber]]\nemail = "{ALICE}"\nwatches = ["mg-azathioprine"]\nfrequency = "{frequency}"\n'
    extra = mail_config(smtp_port, subscribers, mail_extra=operator) + f"\n[schedule]\n{schedule}\n"
    config = load_config(write_config(tmp_path, fake.base_url, extra=extra))
    return Worker(config, Store(database_of(config)), clock)


# --- scheduling logic, injected time -------------------------------------------------------


@pytest.mark.both_backends
def test_immediate_digest_follows_a_sync_with_changes(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> None:
    clock = Clock("2026-11-25T10:00:00")
    worker = make_worker(tmp_path, fake, smtp.port, "immediate", "", clock)
    worker.sync_job()  # baseline: nothing to tell
    assert smtp.received == []
    complete_target(fake)
    clock.set("2026-11-25T16:00:00")
    worker.sync_job()
    [received] = smtp.received
    assert "Status: Unknown status → Completed" in received.part("plain")
    worker.sync_job()
    assert len(smtp.received) == 1


def test_daily_digest_waits_for_its_time_in_the_zone(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> None:
    clock = Clock("2026-11-24T22:00:00")  # 06:00 on the 25th in Shanghai
    schedule = 'digest_time = "08:00"\ntimezone = "Asia/Shanghai"'
    worker = make_worker(tmp_path, fake, smtp.port, "daily", schedule, clock)
    worker.sync_job()
    complete_target(fake)
    clock.set("2026-11-24T23:00:00")
    worker.sync_job()
    clock.set("2026-11-24T23:59:00")  # 07:59 in Shanghai
    worker.digest_job()
    assert smtp.received == []
    clock.set("2026-11-25T00:00:00")  # 08:00 in Shanghai
    worker.digest_job()
    assert len(smtp.received) == 1
    worker.digest_job()
    clock.set("2026-11-25T06:00:00")
    worker.digest_job()
    assert len(smtp.received) == 1


@pytest.mark.both_backends
def test_catch_up_after_downtime_runs_once(
    tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer, database: ScratchDatabase
) -> None:
    clock = Clock("2026-11-20T07:00:00")
    worker = make_worker(tmp_path, fake, smtp.port, "daily", 'digest_time = "08:00"', clock)
    worker.sync_job()
    complete_target(fake)
    clock.set("2026-11-20T07:30:00")
    worker.sync_job()  # the change is found, the digest waits for 08:00 ... and the daemon stops
    assert smtp.received == []
    complete_target(fake, "TERMINATED")  # more news during the downtime
    clock.set("2026-11-24T12:00:00")  # back four days (four digest times) later
    worker.sync_job()  # the start-up sync, then the overdue digest: once
    worker.digest_job()
    worker.sync_job()
    [received] = smtp.received
    assert "Status: Unknown status → Terminated" in received.part("plain")
    assert database.rows("select count(*) from syncrun where outcome = 'ok'") == [(3,)]


# --- the real scheduler: overlapping runs and downtime -------------------------------------------

DEADLINE_S = 10.0


class Probe(Worker):
    """The daemon's worker with its work replaced: each sync and digest run records itself, and waits
    while `gate` is closed. The jobs around that work (cancel, the busy lock) are the real ones."""

    def __init__(self, config: Config, store: Store, changed: threading.Condition) -> None:
        super().__init__(config, store)
        self.gate = threading.Event()
        self.gate.set()
        self.changed = changed
        self.runs: list[str] = []
        self.running = 0
        self.most_at_once = 0

    def _work(self, what: str) -> None:
        with self.changed:
            self.runs.append(what)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.changed.notify_all()
        try:
            assert self.gate.wait(DEADLINE_S), "the gate never opened"
        finally:
            with self.changed:
                self.running -= 1
                self.changed.notify_all()

    def _sync(self) -> None:
        self._work("sync")

    def _digests(self) -> None:
        self._work("digests")


class Jobs:
    """A scheduler made by `build_scheduler`, running in a thread, with what became of each job's runs."""

    def __init__(
        self,
        tmp_path: Path,
        start_at: Callable[[datetime], datetime] = lambda now: now,
        sync: str = 'sync_every = "6h"',
    ) -> None:
        from apscheduler import events

        self.changed = threading.Condition()
        config = load_config(write_config(tmp_path, "http://127.0.0.1:9", extra=f"[schedule]\n{sync}\n"))
        self.worker = Probe(config, Store(database_of(config)), self.changed)
        self.now = datetime.now(UTC)  # APScheduler reads the real clock; runs are moved relative to it
        self.scheduler = build_scheduler(self.worker, start_at(self.now))
        self.events: list[Any] = []
        self.codes = {"submitted": events.EVENT_JOB_SUBMITTED, "skipped": events.EVENT_JOB_MAX_INSTANCES,
                      "executed": events.EVENT_JOB_EXECUTED, "missed": events.EVENT_JOB_MISSED,
                      "error": events.EVENT_JOB_ERROR}  # fmt: skip
        self.scheduler.add_listener(self._record, sum(self.codes.values()))
        self.thread = threading.Thread(target=self.scheduler.start, daemon=True)

    def _record(self, event: Any) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def count(self, what: str, job: str) -> int:
        return sum(1 for e in self.events if e.code == self.codes[what] and e.job_id == job)

    def handed(self) -> int:
        """Runs handed to the executor (the scheduler tells so once it is done with that round of due jobs)."""
        return sum(len(e.scheduled_run_times) for e in self.events if e.code == self.codes["submitted"])

    def settled(self) -> bool:
        """Every run handed to the executor has ended (run, missed or failed)."""
        ended = sum(
            1 for e in self.events if e.code in (self.codes["executed"], self.codes["missed"], self.codes["error"])
        )
        return self.handed() == ended

    def wait_until(self, condition: Callable[[], object], what: str) -> None:
        with self.changed:
            assert self.changed.wait_for(condition, DEADLINE_S), f"timed out waiting for {what}"

    def move(self, job: str, when: datetime) -> None:
        self.scheduler.modify_job(job, next_run_time=when)

    def __enter__(self) -> Jobs:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.gate.set()
        self.scheduler.shutdown(wait=True)
        self.thread.join(DEADLINE_S)


@pytest.mark.parametrize("sync", ['sync_every = "6h"', 'sync_cron = "0 */6 * * *"'])
def test_the_first_sync_runs_at_start(tmp_path: Path, sync: str) -> None:
    jobs = Jobs(tmp_path, sync=sync)
    for other in ("digests", "sync") if "cron" in sync else ("digests",):  # whatever the time of day: not due
        jobs.move(other, jobs.now + timedelta(days=1))
    with jobs:
        jobs.wait_until(lambda: jobs.handed() and jobs.settled(), "the first round of jobs")
    assert jobs.worker.runs == ["sync", "digests"]  # the sync, then the digests it made due


def test_a_sync_never_overlaps_itself_nor_a_digest_run(tmp_path: Path) -> None:
    jobs = Jobs(tmp_path)  # the first sync is due at once
    jobs.worker.gate.clear()  # ... and runs until the gate opens
    jobs.move("digests", jobs.now + timedelta(days=1))  # whatever the time of day, no digest run of its own
    with jobs:
        jobs.wait_until(lambda: jobs.worker.runs == ["sync"], "the first sync to start")
        jobs.move("sync", datetime.now(UTC))  # the next sync falls due while the first still runs
        jobs.wait_until(
            lambda: jobs.count("skipped", "sync") + jobs.count("submitted", "sync") == 2,
            "the second sync to be handled",
        )
        jobs.move("digests", datetime.now(UTC))  # and so do the digests
        jobs.wait_until(lambda: jobs.count("submitted", "digests") == 1, "the digests to be handed over")
        assert jobs.worker.runs == ["sync"]
        jobs.worker.gate.set()
        jobs.wait_until(lambda: jobs.count("executed", "digests") == 1 and jobs.settled(), "every run to end")
    assert jobs.worker.most_at_once == 1
    # the sync due during the first one is dropped, not run after it; its own digests, then the digest job's
    assert jobs.worker.runs == ["sync", "digests", "digests"]


def test_after_downtime_each_job_catches_up_once(tmp_path: Path) -> None:
    # As after a suspended machine: every job's next run lies in the past, several run times missed
    jobs = Jobs(tmp_path, start_at=lambda now: now - timedelta(hours=25))  # syncs every 6 h: 5 missed
    jobs.move("digests", jobs.now - timedelta(days=4))  # then daily at 08:00: 5 missed
    jobs.move("retry", jobs.now - timedelta(hours=2))  # then every 15 minutes: 9 missed
    names = ("sync", "digests", "retry")
    with jobs:
        jobs.wait_until(lambda: all(jobs.count("submitted", n) for n in names) and jobs.settled(), "the catch-ups")
        upcoming = {job.id: job.next_run_time for job in jobs.scheduler.get_jobs()}
    assert all(when > jobs.now for when in upcoming.values()), upcoming  # nothing is left to catch up
    assert {n: jobs.count("executed", n) for n in names} == dict.fromkeys(names, 1)
    assert jobs.worker.runs.count("sync") == 1 and jobs.worker.most_at_once == 1


def test_operator_is_told_once_after_repeated_failures_and_on_recovery(
    tmp_path: Path, fake: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock("2026-11-25T10:00:00")
    operator = 'operator = "ops@example.org"'
    worker = make_worker(tmp_path, fake, None, "daily", "alert_after_failures = 2", clock, operator=operator)
    outbox = tmp_path / "outbox"
    fake.faults.version_down = True
    for _ in range(4):
        worker.sync_job()
    alerts = sorted(outbox.glob("*-operator.eml"))
    assert len(alerts) == 1
    assert b"syncing has failed 2 times in a row" in alerts[0].read_bytes()
    assert [r.levelname for r in caplog.records if "times in a row" in r.getMessage()] == ["ERROR"]
    fake.faults.version_down = False
    worker.sync_job()
    recovered = [a for a in outbox.glob("*-operator.eml") if b"recovered" in a.read_bytes()]
    assert len(list(outbox.glob("*-operator.eml"))) == 2 and len(recovered) == 1
    assert any("syncing recovered after 4 failed syncs in a row" in r.getMessage() for r in caplog.records)


# --- the real process ------------------------------------------------------------------------


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    def __init__(self, config: Path) -> None:
        self.log = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self.handle = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "--config", str(config), "daemon"],
            stdout=self.handle, stderr=subprocess.STDOUT, cwd=config.parent,
        )  # fmt: skip

    @property
    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0, times: int = 1) -> tuple[int, float]:
        started = time.monotonic()
        for _ in range(times):
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.handle.close()
        return code, time.monotonic() - started


@pytest.fixture
def daemon_config(tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer) -> Iterator[Path]:
    subscribers = f'[[subscriber]]\nemail = "{ALICE}"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n'
    extra = mail_config(smtp.port, subscribers) + '\n[schedule]\nsync_every = "1h"\n'
    path = write_config(tmp_path, fake.base_url, extra=extra)
    Runner(path)("sync")  # the baseline, so that the daemon's first sync has news
    complete_target(fake)
    yield path


def changes_in(config: Path) -> list[dict[str, object]]:
    return json.loads(Runner(config)("changes", "--json").stdout)


@pytest.mark.slow
def test_daemon_syncs_sends_refuses_a_twin_and_stops_on_sigterm(
    daemon_config: Path, smtp: SmtpServer, measured: Callable[[str], None]
) -> None:
    daemon = Daemon(daemon_config)
    try:
        wait_for(lambda: smtp.received, what="the first digest")
        assert "Status: Unknown status → Completed" in smtp.received[0].part("plain")
        twin = subprocess.run(
            [sys.executable, "-m", "watcher", "--config", str(daemon_config), "daemon"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert twin.returncode == 1
        assert twin.stderr.strip().splitlines() == [
            f"error: another watcher daemon (pid {daemon.proc.pid}) is already running on {daemon_config.parent / 'watcher.db'}"
        ]
        status = json.loads(Runner(daemon_config)("status", "--json").stdout)
        assert status["daemon"]["running"] and status["daemon"]["pid"] == daemon.proc.pid
        assert status["daemon"]["next_sync"] is not None
        assert len(changes_in(daemon_config)) == 1  # one-off commands work while it runs
    finally:
        code, seconds = daemon.stop(signal.SIGTERM, times=2)  # as when the whole process group is signalled
    assert code == 0, daemon.output
    assert seconds < 5
    assert daemon.output.count("SIGTERM received: stopping") == 1 and "daemon stopped" in daemon.output
    assert "Traceback" not in daemon.output
    measured(f"daemon: SIGTERM to exit: {seconds:.2f} s")
    assert json.loads(Runner(daemon_config)("status", "--json").stdout)["daemon"]["running"] is False


@pytest.mark.both_backends
@pytest.mark.slow
def test_kill_9_during_a_sync_loses_nothing(daemon_config: Path, fake: FakeRegistry, smtp: SmtpServer) -> None:
    fake.faults.latency_s = 0.5
    fake.log.clear()
    daemon = Daemon(daemon_config)
    wait_for(lambda: fake.requests_to("/studies"), what="the sync to reach /studies")
    daemon.stop(signal.SIGKILL)
    assert changes_in(daemon_config) == [] and smtp.received == []
    fake.faults.latency_s = 0
    daemon = Daemon(daemon_config)
    try:
        wait_for(lambda: "digests: " in daemon.output, what="the digests after restart")
    finally:
        assert daemon.stop()[0] == 0
    assert "digests: 1 sent" in daemon.output
    assert [c["new"] for c in changes_in(daemon_config)] == ["COMPLETED"]
    assert len(smtp.received) == 1


@pytest.mark.both_backends
@pytest.mark.slow
def test_kill_9_during_a_send_sends_at_most_once_more(
    daemon_config: Path, smtp: SmtpServer, database: ScratchDatabase
) -> None:
    # The worst moment: the server has taken the digest, and the watcher dies before it hears so.
    smtp.recorder.take_and_hang = True
    daemon = Daemon(daemon_config)
    wait_for(lambda: smtp.recorder.data_started, what="the send to start")
    daemon.stop(signal.SIGKILL)
    wait_for(lambda: smtp.recorder.data_ended == smtp.recorder.data_started, what="the server to see the watcher go")
    smtp.recorder.take_and_hang = False
    daemon = Daemon(daemon_config)
    try:
        wait_for(lambda: "digests: " in daemon.output, what="the resend")
    finally:
        assert daemon.stop()[0] == 0
    assert "digests: 1 sent" in daemon.output
    # sent once more, under the same Message-ID, so that mail clients can tell it is the same digest
    assert len(smtp.received) == 2 and len({r.message["Message-ID"] for r in smtp.received}) == 1
    assert database.rows("select status, attempts from digest") == [("sent", 1)]
    assert len(changes_in(daemon_config)) == 1


@pytest.mark.slow
def test_sigterm_during_a_sync_rolls_it_back_and_exits_0(
    daemon_config: Path, fake: FakeRegistry, measured: Callable[[str], None]
) -> None:
    fake.faults.latency_s = 1.0
    fake.log.clear()
    daemon = Daemon(daemon_config)
    wait_for(lambda: fake.requests_to("/studies"), what="the sync to reach /studies")
    code, seconds = daemon.stop(signal.SIGTERM)
    assert code == 0 and seconds < 5, daemon.output
    assert "sync stopped for shutdown; nothing was stored" in daemon.output
    assert changes_in(daemon_config) == []
    measured(f"daemon: SIGTERM during a sync to exit: {seconds:.2f} s")
    fake.faults.latency_s = 0
    Runner(daemon_config)("sync")
    assert [c["new"] for c in changes_in(daemon_config)] == ["COMPLETED"]
