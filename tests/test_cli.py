"""The one-off commands as a user runs them: output, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Runner, dump_db
from tests.support.fakeapi import FakeRegistry
from tests.support.world import TARGET


def completed(fake: FakeRegistry) -> None:
    def change(r: dict) -> None:
        r["protocolSection"]["statusModule"].update(overallStatus="COMPLETED")
        r["protocolSection"]["statusModule"]["completionDateStruct"] = {"date": "2019-12", "type": "ACTUAL"}
        r["protocolSection"]["designModule"]["enrollmentInfo"] = {"count": 96, "type": "ACTUAL"}

    fake.edit(TARGET, change)


def test_check_first_time_then_changes(run: Runner, fake: FakeRegistry) -> None:
    out = run("check", "nct01727193").stdout
    assert out.startswith("NCT01727193  The Efficacy and Safety of Leflunomide or Azathioprine Therapy in")
    assert "  Status       Unknown status (last known: Recruiting)\n" in out
    assert "  Enrollment   100 participants (estimated)\n" in out
    assert "  Sites        1 · Guangzhou, China\n" in out
    assert "First check" in out
    completed(fake)
    out = run("check", TARGET).stdout
    assert "  Status       Completed\n" in out
    assert "Changed since the last stored record" in out
    assert "  • Status: Unknown status → Completed\n" in out
    assert "  • Completion: Jan 2020 (estimated) → Dec 2019 (actual), 1 month earlier\n" in out
    assert "  • Enrollment: 100 (estimated) → 96 (actual)\n" in out
    assert "No change since the last stored record" in run("check", TARGET).stdout


def test_check_records_changes_once_shared_with_sync(run: Runner, fake: FakeRegistry) -> None:
    run("sync")
    completed(fake)
    run("check", TARGET)
    fake.refresh()
    run("sync")
    found = json.loads(run("changes", "--json").stdout)
    assert [c["field"].rsplit(".", 1)[1] for c in found] == ["overallStatus", "date", "type", "count", "type"]
    assert all(c["watches"] == ["mg-azathioprine"] for c in found)


def test_check_unknown_trial_exits_1(run: Runner, fake: FakeRegistry) -> None:
    result = run("check", "NCT09999999", code=1)
    assert result.stdout == ""
    assert result.stderr == f"error: NCT09999999 was not found on {fake.base_url.split('/')[2]}\n"


def test_check_json(run: Runner, fake: FakeRegistry) -> None:
    data = json.loads(run("check", TARGET, "--json").stdout)
    assert data["studies"][0]["facts"]["status"] == "Unknown status"
    assert data["studies"][0]["first_check"] is True
    assert data["missing"] == [] and data["requests"] == 1


@pytest.mark.parametrize(
    ("args", "bad"),
    [
        (["check", "NCT123"], "NCT123"),
        (["check", "NCT01727193", "12345678"], "12345678"),
        (["changes", "--nct", "NCT1"], "NCT1"),
        (["show", "x"], "x"),
        (["history", "NCT017271930"], "NCT017271930"),
    ],
)
def test_malformed_ids_are_rejected_before_any_request(
    run: Runner, fake: FakeRegistry, args: list[str], bad: str
) -> None:
    result = run(*args, code=2)
    assert result.stderr == f'error: "{bad}" is not an NCT ID (expected NCT followed by 8 digits, e.g. NCT01727193)\n'
    assert fake.log == []


def test_changes_filters_and_json_shape(run: Runner, fake: FakeRegistry) -> None:
    run("sync")
    completed(fake)
    fake.edit("NCT90000001", lambda r: r["protocolSection"]["statusModule"].update(overallStatus="SUSPENDED"))
    fake.refresh()
    run("sync")
    everything = json.loads(run("changes", "--json").stdout)
    assert {"id", "nct_id", "kind", "field", "old", "new", "detected_at", "watches"} <= set(everything[0])
    assert all(c["effective_date"] is None and c["registry_version"] is None for c in everything)  # not replayed
    only = json.loads(run("changes", "--json", "--nct", "NCT90000001").stdout)
    assert [(c["old"], c["new"]) for c in only] == [("RECRUITING", "SUSPENDED")]
    assert json.loads(run("changes", "--json", "--since", "2999-01-01").stdout) == []
    assert len(json.loads(run("changes", "--json", "--since", "today").stdout)) == len(everything)
    text = run("changes", "--watch", "mg-azathioprine").stdout
    assert "NCT90000001  Status: Recruiting → Suspended  [mg-azathioprine]" in text


def test_changes_errors(run: Runner) -> None:
    result = run("changes", "--since", "last tuesday", code=2)
    assert result.stderr.startswith('error: --since: "last tuesday" is not a date')
    result = run("changes", "--watch", "nope", code=2)
    assert result.stderr == 'error: no watch named "nope" in watcher.toml (watches: mg-azathioprine)\n'
    assert run("changes").stdout == "No changes recorded.\n"


def test_show_and_history(run: Runner, fake: FakeRegistry) -> None:
    run("sync")
    completed(fake)
    fake.refresh()
    run("sync")
    shown = json.loads(run("show", TARGET, "--json").stdout)
    assert shown[0]["status"] == "Completed" and shown[0]["watches"] == ["mg-azathioprine"]
    assert shown[0]["url"] == "https://clinicaltrials.gov/study/NCT01727193"
    text = run("show", TARGET).stdout
    assert "Watches      mg-azathioprine" in text
    lines = run("history", TARGET).stdout.splitlines()
    assert lines[0].startswith("NCT01727193  The Efficacy")
    assert lines[1].endswith("first stored")
    day = lines[1].split()[0]
    assert lines[2:] == [  # one sync's changes read together, as in a digest
        f"  {day}  Status: Unknown status → Completed",
        f"  {day}  Completion: Jan 2020 (estimated) → Dec 2019 (actual), 1 month earlier",
        f"  {day}  Enrollment: 100 (estimated) → 96 (actual)",
    ]
    result = run("show", "NCT09999999", code=1)
    assert result.stderr == "error: NCT09999999: not stored yet; run: watcher check NCT09999999\n"


def test_commands_do_not_write_on_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "watcher.toml"
    path.write_text('[[watch]]\nname = "x"\nnct_ids = ["NCT0172719"]\n')
    result = Runner(path)("sync", code=2)
    assert "Traceback" not in result.output
    assert not (tmp_path / "watcher.db").exists()


def test_every_command_has_help(run: Runner) -> None:
    import click

    from watcher.cli import cli

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    commands = [([name], command) for name, command in cli.commands.items()]
    for path, command in commands:
        assert command.help, path
        assert f"watcher {' '.join(path)}" in readme, f"the README does not show `watcher {' '.join(path)}`"
        run(*path, "--help")
        if isinstance(command, click.Group):
            commands += [([*path, name], sub) for name, sub in command.commands.items()]


def test_database_untouched_by_a_failed_check(run: Runner, fake: FakeRegistry, config_file: Path) -> None:
    run("check", TARGET)
    before = dump_db(config_file.parent / "watcher.db")
    fake.faults.truncate_next = 1
    result = run("check", TARGET, code=1)
    assert result.stderr.startswith(f"error: {fake.base_url.split('/')[2]} sent a body that is not complete JSON")
    assert dump_db(config_file.parent / "watcher.db") == before


def test_registry_text_cannot_drive_the_terminal(run: Runner, fake: FakeRegistry) -> None:
    evil = "Trial \x1b[2J\x1b]0;pwned\x07 title\r\nwith a break"
    fake.edit(TARGET, lambda r: r["protocolSection"]["identificationModule"].update(briefTitle=evil))
    out = run("check", TARGET).stdout
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "NCT01727193  Trial [2J]0;pwned title with a break" in out
    data = json.loads(run("show", TARGET, "--json").stdout)
    assert data[0]["title"] == "Trial [2J]0;pwned title with a break"  # the facts are words: cleaned there too


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (["--help"], set()),
        (["changes", "--json"], {"sqlalchemy", "sqlmodel"}),
        (["subscribers"], {"sqlalchemy", "sqlmodel"}),
    ],
)
@pytest.mark.slow
def test_commands_import_only_what_they_need(config_file: Path, args: list[str], allowed: set[str]) -> None:
    import subprocess
    import sys

    heavy = {"requests", "urllib3", "sqlalchemy", "sqlmodel", "apscheduler", "jinja2", "rich", "pydantic"}
    probe = (
        f"import sys\nsys.argv = ['watcher', '--config', {str(config_file)!r}, *{args!r}]\n"
        "from watcher.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    imported = set(result.stderr.strip().splitlines()[-1].split(","))
    assert imported & heavy <= allowed | ({"pydantic"} if "sqlmodel" in allowed else set())


def test_status_shows_runs_and_the_outbox(run: Runner, fake: FakeRegistry) -> None:
    assert "Runs        none yet: run `watcher sync`" in run("status").stdout
    run("sync")
    fake.faults.version_down = True
    run("sync", code=1)
    lines = run("status").stdout.splitlines()
    assert lines[0] == "Daemon      not running"
    assert lines[1] == "Digests     0 queued · 0 failed · 0 sent"
    assert lines[2].endswith(f"sync   failed     {fake.base_url.split('/')[2]} answered 503 unavailable")
    assert lines[3].endswith("sync   ok         registry data 2026-11-24 09:00 · 4 requests · 0 changes")
    data = json.loads(run("status", "--json").stdout)
    assert [r["outcome"] for r in data["runs"]] == ["failed", "ok"] and data["daemon"]["running"] is False


def test_a_database_that_is_not_ours_is_one_line(config_file: Path, run: Runner) -> None:
    db = config_file.parent / "watcher.db"
    db.write_bytes(b"this is not a database, just text " * 100)
    result = run("changes", code=1)
    assert result.stderr == f"error: {db}: cannot open the database (file is not a database)\n"


def test_a_database_from_a_newer_version_is_refused_and_left_untouched(config_file: Path, run: Runner) -> None:
    import sqlite3

    from watcher.schema import head

    run("sync")
    path = config_file.parent / "watcher.db"
    with sqlite3.connect(path) as conn:
        conn.execute("update alembic_version set version_num = '9999'")
    before = dump_db(path)
    result = run("sync", code=1)
    assert result.stderr == (
        f"error: {path}: this database was written by a newer trial watcher (revision 9999; "
        f"this one knows up to {head()}); upgrade trial watcher to use it\n"
    )
    assert dump_db(path) == before and not list(path.parent.glob("*.bak-*"))


def test_a_usage_mistake_is_one_line_like_every_other_error(run: Runner) -> None:
    result = run("history", TARGET, "NCT90000001", code=2)
    assert result.stderr == "error: Got unexpected extra argument (NCT90000001) (see watcher history --help)\n"
    assert run("nope", code=2).stderr == "error: No such command 'nope' (see watcher --help)\n"
