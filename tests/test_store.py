"""The store: its migrations, a 0.1 database adopted, PostgreSQL with its password, `db copy`,
several senders at once and a standby daemon."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import DateTime, MetaData, String, Table, create_engine, insert, inspect, select, text
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import UTCDateTime

from tests.conftest import Runner, ScratchDatabase, mail_config, write_config
from tests.support.fakeapi import FakeRegistry
from tests.support.postgres import PostgresServer, upgrade_to_head
from tests.support.smtp import SmtpServer
from tests.support.world import TARGET
from tests.test_daemon import Daemon, wait_for
from watcher import db, present, schema, store
from watcher.changes import Change, ChangeKind
from watcher.history import Version, VersionIndex

ROOT = Path(__file__).resolve().parent.parent
HEAD = schema.head()
LEGACY = Path(__file__).parent / "fixtures" / "watcher-0.1.db"  # made by trial watcher 0.1: see fixtures/README.md
# The columns of the first revision: what a 0.1 database holds, and what must survive every upgrade.


def first_revision_tables() -> list[Table]:
    """The tables and columns of the first revision, as the 0.1 fixture has them (parents first)."""
    metadata = MetaData()
    engine = create_engine(f"sqlite:///{LEGACY}")
    try:
        metadata.reflect(engine)
    finally:
        engine.dispose()
    for table in metadata.tables.values():
        for column in table.columns:
            if isinstance(column.type, DateTime):
                column.type = UTCDateTime()  # read back as aware UTC datetimes, as the models do
    return list(metadata.sorted_tables)


def first_revision_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the first revision's tables and columns. 0.1's `subscriberstate` lives on in
    `subscriber` after revision 0003, so it is read from there when it is gone."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            result = {}
            for table in first_revision_tables():
                if table.name == "subscriberstate" and table.name not in present:
                    query = text("select key, since, last_slot from subscriber where source = 'config'")
                    query = query.columns(key=String(), since=UTCDateTime(), last_slot=UTCDateTime())
                else:
                    query = select(*table.columns)
                rows = conn.execute(query).all()
                result[table.name] = sorted(
                    (tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows), key=repr
                )
            return result
    finally:
        engine.dispose()


def load_legacy_rows(url: str) -> None:
    """Fill a database at revision 0001 with the 0.1 fixture's rows."""
    source, target = create_engine(f"sqlite:///{LEGACY}"), create_engine(url)
    try:
        with source.connect() as reading, target.begin() as writing:
            for table in first_revision_tables():
                rows = [r._asdict() for r in reading.execute(select(table))]
                if rows:
                    writing.execute(insert(table), rows)
            for name in ("snapshot", "change", "syncrun", "digest"):
                writing.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT max(id) FROM {name}))"
                )
    finally:
        source.dispose()
        target.dispose()


def open_target(url: str) -> tuple[db.Database, Any]:
    target = db.parse_database(url)
    return target, db.create(target)


# --- migrations ------------------------------------------------------------------------------


def test_the_head_the_store_knows_is_the_migrations_head() -> None:
    assert schema.head() == store.HEAD_REVISION


@pytest.mark.both_backends
def test_the_models_and_the_head_migration_agree(database: ScratchDatabase, tmp_path: Path) -> None:
    if database.backend == "sqlite":
        store.Store(database.path).close()  # a new file is created at the head revision
    engine = create_engine(database.engine_url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    finally:
        engine.dispose()
    assert differences == []


@pytest.mark.both_backends
@pytest.mark.empty_database
def test_a_database_at_the_first_revision_upgrades_with_every_row_intact(
    tmp_path: Path, fake: FakeRegistry, database: ScratchDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    if database.backend == "sqlite":
        shutil.copy(LEGACY, database.path)  # a file written by trial watcher 0.1: adopted as revision 0001
    else:
        target, engine = open_target(database.url)
        schema.upgrade(engine, target, target="0001")
        engine.dispose()
        load_legacy_rows(database.url)
    before = first_revision_rows(database.engine_url)
    assert sum(len(rows) for rows in before.values()) > 40 and before["digest"] and before["subscriberstate"]
    assert [len(t.columns) for t in first_revision_tables() if t.name == "digest"] == [11]
    run = Runner(write_config(tmp_path, fake.base_url))
    status = json.loads(run("db", "status", "--json").stdout)
    assert (status["current"], status["head"]) == ("0001", schema.head())
    assert status["state"] == ("legacy" if database.backend == "sqlite" else "behind")
    assert status["pending"][0]["revision"] == "0002" and status["pending"][-1]["revision"] == HEAD
    refused = run("changes", code=1).stderr
    assert refused.endswith(f"is at revision 0001 and this trial watcher needs {HEAD}; run `watcher db upgrade`\n")
    if database.backend == "sqlite":  # a writing command upgrades a SQLite file by itself, after a backup
        run("digest", "send")
        backup = database.path.with_name("watcher.db.bak-0001")
        [logged] = [r.getMessage() for r in caplog.records if r.name == "watcher.schema"]
        assert logged == f"upgraded the database {database.path} from revision 0001 to {HEAD} (backup: {backup})"
        assert first_revision_rows(f"sqlite:///{backup}") == before
        assert database.rows("pragma user_version") == [(2,)]  # so that 0.1 refuses it now
    else:  # on PostgreSQL commands refuse until the operator upgrades
        assert "run `watcher db upgrade`" in run("sync", code=1).stderr
        assert run("db", "upgrade").stdout.endswith(f"upgraded from 0001 to {HEAD}.\n")
    assert first_revision_rows(database.engine_url) == before
    assert json.loads(run("db", "status", "--json").stdout)["state"] == "current"
    assert len(json.loads(run("changes", "--json").stdout)) == len(before["change"])
    run("sync")  # and it works on: new rows after the old ones
    assert len(database.rows("select id from syncrun")) == len(before["syncrun"]) + 1


def test_a_new_sqlite_file_starts_at_the_head_without_a_backup(run: Runner, database: ScratchDatabase) -> None:
    run("changes")  # even a reading command may create an empty file
    assert database.rows("select version_num from alembic_version") == [(schema.head(),)]
    assert not list(database.folder.glob("*.bak-*"))
    assert run("db", "upgrade").stdout == f"{database.path} is up to date (revision {schema.head()}).\n"


@pytest.mark.both_backends
def test_a_newer_database_is_refused_and_left_untouched(run: Runner, database: ScratchDatabase) -> None:
    run("sync")
    database.execute("update alembic_version set version_num = 'ffff'")
    before = database.dump()
    for command in (("sync",), ("changes",), ("db", "upgrade")):
        stderr = run(*command, code=1).stderr
        assert "this database was written by a newer trial watcher (revision ffff" in stderr, command
        assert stderr.count("\n") == 1
    assert database.dump() == before


@pytest.mark.both_backends
@pytest.mark.empty_database
def test_postgresql_asks_for_db_upgrade_and_two_upgrades_never_collide(
    run: Runner, database: ScratchDatabase, backend: str
) -> None:
    if backend == "postgresql":
        stderr = run("sync", code=1).stderr
        assert stderr.endswith(
            "the database has no trial watcher tables yet; run `watcher db upgrade` to create them\n"
        )
    target, engine = open_target(database.engine_url)
    reports: list[schema.UpgradeReport] = []
    errors: list[BaseException] = []

    def upgrade() -> None:
        try:
            reports.append(schema.upgrade(engine, target))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    engine.dispose()
    assert errors == []
    assert sorted(r.changed for r in reports) == [False, False, True]  # one did it; the others found it done
    assert database.rows("select version_num from alembic_version") == [(schema.head(),)]
    run("sync")


@pytest.mark.slow
def test_the_wheel_finds_its_migrations_without_alembic_ini(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )  # fmt: skip
    [wheel] = tmp_path.glob("trial_watcher-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True
    )
    config = tmp_path / "w.toml"
    config.write_text('[[watch]]\nname = "w"\nnct_ids = ["NCT01727193"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "watcher", "--config", str(config), "db", "upgrade"],
        cwd="/", env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout == f"{tmp_path / 'watcher.db'}: upgraded from empty to {schema.head()}.\n"
    assert not list(site.rglob("alembic.ini")) and (site / "watcher" / "migrations" / "env.py").exists()


# --- PostgreSQL: the password, and moving there ---------------------------------------------------


def test_the_database_password_comes_from_the_environment_and_is_never_shown(
    tmp_path: Path, fake: FakeRegistry, postgres: PostgresServer, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.app_url(pg_database).replace(f":{postgres.app_password}@", "@")
    assert postgres.app_password not in url
    extra = '[database]\npassword_env = "WATCHER_DB_PASSWORD"\n'
    config = write_config(tmp_path, fake.base_url, extra="")
    config.write_text(
        config.read_text().replace('url = "sqlite:///watcher.db"', f'url = "{url}"\n{extra.splitlines()[1]}')
    )
    run = Runner(config)
    monkeypatch.delenv("WATCHER_DB_PASSWORD", raising=False)
    assert run("sync", code=2).stderr == (
        "error: [database] password_env: environment variable WATCHER_DB_PASSWORD is not set\n"
    )
    monkeypatch.setenv("WATCHER_DB_PASSWORD", "wrong-password")
    wrong = run("sync", code=1).stderr
    assert "password authentication failed" in wrong and wrong.count("\n") == 1 and "wrong-password" not in wrong
    monkeypatch.setenv("WATCHER_DB_PASSWORD", postgres.app_password)
    outputs = [run("db", "upgrade"), run("--log-level", "debug", "sync"), run("status", "--json"), run("db", "status")]
    for result in outputs:
        assert postgres.app_password not in result.output
    assert json.loads(run("status", "--json").stdout)["database"].startswith("postgresql+psycopg://watcher@/")


def test_db_copy_moves_an_installation_to_postgresql(
    tmp_path: Path, fake: FakeRegistry, postgres: PostgresServer, pg_database: str
) -> None:
    subscribers = (
        '[[subscriber]]\nemail = "alice@example.org"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n'
    )
    run = Runner(write_config(tmp_path, fake.base_url, extra=mail_config(None, subscribers)))
    run("sync")
    fake.edit(TARGET, lambda r: r["protocolSection"]["statusModule"].update(overallStatus="COMPLETED"))
    fake.refresh()
    run("sync")
    run("digest", "send")
    sqlite_changes = run("changes", "--json").stdout
    target = postgres.url(pg_database)
    out = run("db", "copy", target).stdout
    assert out.startswith("Copied ") and "Row counts match." in out
    local = ScratchDatabase("sqlite", "sqlite:///watcher.db", tmp_path).dump()
    remote = ScratchDatabase("postgresql", target, tmp_path).dump()
    assert {t: len(rows) for t, rows in remote.items()} == {t: len(rows) for t, rows in local.items()}
    assert remote["change"] == local["change"] and remote["digest"] == local["digest"]
    again = run("db", "copy", target, code=1).stderr
    assert "the target is not empty" in again and again.count("\n") == 1
    run.config.write_text(run.config.read_text().replace('url = "sqlite:///watcher.db"', f'url = "{target}"'))
    moved = run  # the same config, now pointing at PostgreSQL
    assert moved("changes", "--json").stdout == sqlite_changes
    fake.edit(TARGET, lambda r: r["protocolSection"]["statusModule"].update(overallStatus="TERMINATED"))
    fake.refresh()
    moved("sync")  # new rows get ids after the copied ones
    assert [c["new"] for c in json.loads(moved("changes", "--json").stdout)] == ["COMPLETED", "TERMINATED"]


# --- several senders, and a standby daemon -----------------------------------------------------------


@pytest.mark.both_backends
@pytest.mark.slow
def test_several_senders_at_once_send_every_digest_exactly_once(
    tmp_path: Path, fake: FakeRegistry, smtp: SmtpServer, database: ScratchDatabase
) -> None:
    people = [f"p{i:02d}@example.org" for i in range(40)]
    subscribers = "".join(
        f'[[subscriber]]\nemail = "{p}"\nwatches = ["mg-azathioprine"]\nfrequency = "immediate"\n' for p in people
    )
    run = Runner(write_config(tmp_path, fake.base_url, extra=mail_config(smtp.port, subscribers)))
    run("sync")
    fake.edit(TARGET, lambda r: r["protocolSection"]["statusModule"].update(overallStatus="COMPLETED"))
    fake.refresh()
    run("sync")
    smtp.recorder.data_delay_s = 0.05  # a mail server that takes its time, so that the senders overlap
    command = [sys.executable, "-m", "watcher", "--config", str(run.config), "digest", "send"]
    senders = [subprocess.Popen([*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for extra in ([], [], ["--workers", "3"])]  # fmt: skip
    for sender in senders:
        _, err = sender.communicate(timeout=120)
        assert sender.returncode == 0, err
        assert "Traceback" not in err
    assert sorted(r.recipients[0] for r in smtp.received) == people  # each once: no duplicate, none lost
    assert database.rows("select status, count(*) from digest group by status") == [("sent", 40)]
    assert database.rows("select count(*) from digest where claimed_by is not null") == [(0,)]


@pytest.mark.slow
def test_a_standby_daemon_takes_over_when_the_leader_is_killed(
    tmp_path: Path, fake: FakeRegistry, postgres: PostgresServer, pg_database: str, measured: Callable[[str], None]
) -> None:
    url = postgres.url(pg_database)
    upgrade_to_head(url)
    config = write_config(tmp_path, fake.base_url, extra='[schedule]\nsync_every = "1h"\n')
    config.write_text(config.read_text().replace('url = "sqlite:///watcher.db"', f'url = "{url}"'))
    leader = Daemon(config)
    wait_for(lambda: "daemon started" in leader.output, what="the leader to start")
    standby = Daemon(config)
    try:
        wait_for(lambda: "standing by: another daemon leads" in standby.output, what="the standby")
        assert f"(pid {leader.proc.pid})" in standby.output
        status = json.loads(Runner(config)("status", "--json").stdout)
        assert status["daemon"]["running"] and status["daemon"]["pid"] == leader.proc.pid
        syncs_before = standby.output.count("sync:")
        killed = time.monotonic()
        leader.stop(signal.SIGKILL)
        wait_for(lambda: "sync:" in standby.output[standby.output.find("taking over"):] if "taking over" in standby.output else False,
                 timeout=30, what="the standby's first job")  # fmt: skip
        took = time.monotonic() - killed
        assert syncs_before == 0
    finally:
        code, _ = standby.stop()
    assert code == 0 and "Traceback" not in standby.output
    measured(f"daemon: kill -9 of the leader to the standby's first sync: {took:.2f} s")
    assert took < 30


# --- the registry's versions -----------------------------------------------------------------


def version_index(*dates: str, labels: tuple[str, ...] | None = ("Study Status",)) -> VersionIndex:
    return VersionIndex(TARGET, tuple(Version(n, d, "RECRUITING", labels) for n, d in enumerate(dates)))


@pytest.mark.both_backends
def test_versions_are_stored_once_and_kept_while_the_registry_agrees(database: ScratchDatabase, tmp_path: Path) -> None:
    opened = store.Store(db.parse_database(database.engine_url))
    now = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    record = {"protocolSection": {"identificationModule": {"nctId": TARGET, "briefTitle": "Ünïcode title"}}}
    try:
        index = version_index("2012-11-14", "2013-02-01", "2014-05-20", labels=None)
        with opened.write() as session:
            store.save_version_index(session, index, now)
            store.save_version(session, TARGET, index.versions[0], record, now)
            store.save_version(session, TARGET, index.versions[2], {**record, "hasResults": True}, now)
        with opened.read() as session:
            assert store.fetched_versions(session, TARGET) == {0, 2}
            assert store.load_versions(session, TARGET, [0, 1, 2]) == {0: record, 2: {**record, "hasResults": True}}
        # the same index again, then one whose version 2 has another date and which lost version 3
        with opened.write() as session:
            store.save_version_index(session, version_index("2012-11-14", "2013-02-01", "2014-05-20"), now)
        with opened.read() as session:
            assert store.fetched_versions(session, TARGET) == {0, 2}
        with opened.write() as session:
            store.save_version_index(session, version_index("2012-11-14", "2013-02-01", "2014-06-02"), now)
        with opened.read() as session:
            assert store.fetched_versions(session, TARGET) == {0}  # version 2 is fetched again
        with opened.write() as session:
            store.save_version_index(session, version_index("2012-11-14"), now)
        assert database.rows("select version, submitted, status from registryversion") == [
            (0, "2012-11-14", "RECRUITING")
        ]
    finally:
        opened.close()


@pytest.mark.both_backends
def test_a_replayed_change_keeps_its_version_date_and_number(database: ScratchDatabase) -> None:
    opened = store.Store(db.parse_database(database.engine_url))
    now = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    change = Change(TARGET, ChangeKind.CHANGED, "protocolSection.statusModule.overallStatus", "RECRUITING", "COMPLETED")
    try:
        with opened.write() as session:
            store.add_change(session, change, ["w"], now, None, effective_date="2026-11-20", registry_version=13)
            store.add_change(session, change, ["w"], now, None)
        with opened.read() as session:
            first, second = store.query_changes(session)
        assert (first.effective_date, first.registry_version) == ("2026-11-20", 13)
        assert (second.effective_date, second.registry_version) == (None, None)
        shown = present.change_json(first, {TARGET: "A title"})
        assert (shown["effective_date"], shown["registry_version"]) == ("2026-11-20", 13)
    finally:
        opened.close()
