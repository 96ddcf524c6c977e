from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from watcher.cli import cli
from watcher.config import HistoryMode, int_base_of, load_config, parse_duration
from watcher.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_parses() -> None:
    config = load_config(ROOT / "config.example.toml")
    assert [w.name for w in config.watches] == ["mg-azathioprine", "mg-recruiting"]
    watch = config.watch("mg-azathioprine")
    assert watch.nct_ids == ("NCT01727193",)
    assert watch.search_params() == {"query.cond": "myasthenia gravis", "query.intr": "azathioprine"}
    assert config.ctgov.base_url == "https://clinicaltrials.gov/api/v2"
    assert config.database_path == ROOT / "watcher.db"


def test_defaults_when_sections_are_missing(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text('[[watch]]\nname = "one"\nnct_ids = ["nct01727193"]\n')
    config = load_config(path)
    assert config.ctgov.timeout_s == 30 and config.ctgov.retries == 5
    assert config.watches[0].nct_ids == ("NCT01727193",)
    assert config.database_path == tmp_path / "watcher.db"
    assert config.outbox_path == tmp_path / "outbox"
    assert config.smtp is None
    assert config.ctgov.history is HistoryMode.GAPS
    assert config.ctgov.int_base == "https://clinicaltrials.gov/api/int"


@pytest.mark.parametrize(
    ("base_url", "int_base"),
    [
        ("https://clinicaltrials.gov/api/v2", "https://clinicaltrials.gov/api/int"),
        ("https://www.clinicaltrials.gov/api/v2/", "https://www.clinicaltrials.gov/api/int"),
        ("http://127.0.0.1:8765/api/v2", "http://127.0.0.1:8765/api/int"),
        ("https://mirror.example.org/ctgov/v2", "https://mirror.example.org/ctgov/int"),
        ("https://mirror.example.org/v2", "https://mirror.example.org/int"),
        ("https://mirror.example.org", "https://mirror.example.org/int"),
    ],
)
def test_the_internal_api_sits_next_to_the_api_v2(base_url: str, int_base: str) -> None:
    assert int_base_of(base_url) == int_base


def test_history_modes(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    for mode in ("gaps", "always", "off"):
        path.write_text(f'[ctgov]\nhistory = "{mode}"\n[[watch]]\nname = "w"\nnct_ids = ["NCT01727193"]\n')
        assert load_config(path).ctgov.history is HistoryMode(mode)


BAD = [
    ('[ctgov]\nbase_urll = "http://x"\n', 'w.toml: [ctgov] unknown key "base_urll" (did you mean "base_url"?)'),
    ('[ctgov]\ntimeout_s = "fast"\n', 'w.toml: [ctgov] timeout_s: "fast" should be a number, not a string'),
    ("[ctgov]\nretries = -1\n", "w.toml: [ctgov] retries: -1 must be 0 or more"),
    ('[ctgov]\nbase_url = "ftp://x"\n', 'w.toml: [ctgov] base_url: "ftp://x" is not an http(s) URL'),
    ('[databse]\nurl = "x"\n', 'w.toml: unknown key "databse" (did you mean "database"?)'),
    ('[database]\nurl = "mysql://x"\n', 'w.toml: [database] url: "mysql://x" is not a database URL (sqlite:///FILE or postgresql+psycopg://USER@HOST/DB)'),
    ('[database]\nurl = "postgresql://w:hunter2@db/w"\n', 'w.toml: [database] url: holds a password: take it out of the URL and name the environment variable that holds it in password_env (e.g. password_env = "WATCHER_DB_PASSWORD")'),
    ('[[watch]]\nname = "a"\nnct_ids = ["NCT123"]\n',
     'w.toml: [watch "a"] nct_ids: "NCT123" is not an NCT ID (expected NCT followed by 8 digits, e.g. NCT01727193)'),
    ('[[watch]]\nname = "a"\ncondition = "x"\nstatuses = ["OPEN"]\n',
     'w.toml: [watch "a"] statuses: "OPEN" is not a study status (one of RECRUITING, NOT_YET_RECRUITING, '
     "ENROLLING_BY_INVITATION, ACTIVE_NOT_RECRUITING, SUSPENDED, TERMINATED, WITHDRAWN, COMPLETED, UNKNOWN, "
     "AVAILABLE, NO_LONGER_AVAILABLE, TEMPORARILY_NOT_AVAILABLE, APPROVED_FOR_MARKETING, WITHHELD)"),
    ('[[watch]]\nname = "a"\ncondition = "x"\n[[watch]]\nname = "a"\nterm = "y"\n',
     'w.toml: [watch "a"] name: "a" is used by more than one watch'),
    ('[[watch]]\nname = "a"\n', 'w.toml: [watch "a"] nct_ids: empty: give nct_ids or a search (condition, intervention or term)'),
    ('[[watch]]\nnct_ids = ["NCT01727193"]\n', "w.toml: [[watch]] #1 name: is required"),
    ('[[watch]]\nname = "a"\nnct_ids = "NCT01727193"\n', 'w.toml: [watch "a"] nct_ids: "NCT01727193" should be a list of strings, not a string'),
    ('[[watch]]\nname = "a"\ncondtion = "x"\n', 'w.toml: [watch "a"] unknown key "condtion" (did you mean "condition"?)'),
    ("[ctgov]\nretries = true\n", "w.toml: [ctgov] retries: true should be an integer, not a boolean"),
    ('[ctgov]\nhistory = "sometimes"\n', 'w.toml: [ctgov] history: "sometimes" is not one of gaps, always, off'),
    ("[ctgov]\nhistory = false\n", "w.toml: [ctgov] history: false should be a string, not a boolean"),
    ("watch = 3\n", "w.toml: watch must be written as [[watch]] tables"),
    ("[ctgov\n", "w.toml: not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 7)"),
    ('[web]\nlisten = "127.0.0.1:8080"\n', "w.toml: [web] public_url: is required"),
    ('[web]\npublic_url = "trials.example.org"\n',
     'w.toml: [web] public_url: "trials.example.org" is not an http(s) URL (like "https://trials.example.org")'),
    ('[web]\npublic_url = "https://trials.example.org/?a=1"\n',
     'w.toml: [web] public_url: "https://trials.example.org/?a=1" must be a plain address (no query, fragment or user)'),
    ('[web]\npublic_url = "https://t.example.org"\nlisten = "8080"\n',
     'w.toml: [web] listen: "8080" is not a HOST:PORT to listen on (like "127.0.0.1:8080")'),
    ('[web]\npublic_url = "https://t.example.org"\nlisten = "0.0.0.0:70000"\n',
     'w.toml: [web] listen: "0.0.0.0:70000" is not a HOST:PORT to listen on (like "127.0.0.1:8080")'),
    ('[web]\npublic_url = "https://t.example.org"\nsubscribe = "yes"\n',
     'w.toml: [web] subscribe: "yes" should be true or false, not a string'),
    ('[web]\npublic_url = "https://t.example.org"\nsecret_env = "my secret"\n',
     'w.toml: [web] secret_env: "my secret" is not an environment variable name'),
    ('[web]\npublic_url = "https://t.example.org"\nsecret = "hunter2"\n',
     'w.toml: [web] unknown key "secret" (did you mean "secret_env"?)'),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(": ", 1)[1][:40] for _, m in BAD])
def test_config_errors_name_file_key_and_value(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "w.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == message.replace("w.toml", str(path))


def test_the_web_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_config(ROOT / "config.example.toml").web
    assert example is not None and example.listen == "127.0.0.1:8080" and example.subscribe
    assert (example.host, example.port, example.plain_http_in_public) == ("127.0.0.1", 8080, False)
    path = tmp_path / "w.toml"
    path.write_text(
        '[[watch]]\nname = "w"\nnct_ids = ["NCT01727193"]\n'
        '[web]\npublic_url = "http://trials.example.org/tw/"\nlisten = "[::1]:9000"\nsecret_env = "TW_SECRET"\n'
    )
    web = load_config(path).web
    assert (
        web is not None and web.public_url == "http://trials.example.org/tw" and (web.host, web.port) == ("::1", 9000)
    )
    assert web.plain_http_in_public  # the daemon and serve warn about it
    monkeypatch.delenv("TW_SECRET", raising=False)
    with pytest.raises(ConfigError, match=r"^\[web\] secret_env: environment variable TW_SECRET is not set$"):
        web.secret()
    monkeypatch.setenv("TW_SECRET", "short")
    with pytest.raises(ConfigError, match="too short"):
        web.secret()
    monkeypatch.setenv("TW_SECRET", "x" * 32)
    assert web.secret() == "x" * 32


def test_cli_config_error_is_one_line_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text('[ctgov]\nbase_urll = "http://x"\n')
    result = CliRunner().invoke(cli, ["--config", str(path), "sync"])
    assert result.exit_code == 2
    assert result.stderr == f'error: {path}: [ctgov] unknown key "base_urll" (did you mean "base_url"?)\n'
    assert result.stdout == ""
    assert not (tmp_path / "watcher.db").exists()


def test_missing_default_config_says_how_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WATCHER_CONFIG", raising=False)
    result = CliRunner().invoke(cli, ["changes"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: watcher.toml: no such config file (copy config.example.toml to start one, or pass --config FILE)\n"
    )


def test_config_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text('[[watch]]\nname = "one"\nnct_ids = ["NCT01727193"]\n')
    monkeypatch.setenv("WATCHER_CONFIG", str(path))
    assert load_config(None).path == path


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("6h", 21600), ("1d", 86400), ("1h30m", 5400)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["6", "h", "10s", "6 hours", "-1h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_server_config_in_deploy_parses() -> None:
    config = load_config(ROOT / "deploy" / "watcher.toml")
    assert config.database_path == Path("/var/lib/trial-watcher/watcher.db")
    assert config.schedule.sync_cron == "30 15 * * 1-5" and config.smtp is not None


SCHEDULE_ERRORS = [
    ('sync_every = "6 hours"', '[schedule] sync_every: "6 hours" is not a duration (like "30m", "6h" or "1d")'),
    ('sync_cron = "0 */6 * *"', '[schedule] sync_cron: "0 */6 * *" is not a crontab line (Wrong number of fields; got 4, expected 5)'),
    ('sync_every = "6h"\nsync_cron = "0 * * * *"', "[schedule] sync_cron: give sync_every or sync_cron, not both"),
    ('digest_time = "25:00"', '[schedule] digest_time: "25:00" is not a time of day (HH:MM, e.g. "08:00")'),
    ('weekly_day = "monday"', '[schedule] weekly_day: "monday" is not one of mon, tue, wed, thu, fri, sat, sun'),
    ('timezone = "Mars/Olympus"', '[schedule] timezone: "Mars/Olympus" is not an IANA time zone (e.g. "Europe/London")'),
    ("alert_after_failures = 0", "[schedule] alert_after_failures: 0 must be greater than 0"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), SCHEDULE_ERRORS)
def test_schedule_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "w.toml"
    path.write_text(f'[[watch]]\nname = "w"\nnct_ids = ["NCT01727193"]\n[schedule]\n{text}\n')
    result = CliRunner().invoke(cli, ["--config", str(path), "daemon"])
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}: {message}\n"


@pytest.mark.slow
def test_wheel_ships_the_templates(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    [wheel] = tmp_path.glob("trial_watcher-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"watcher/templates/digest.txt.j2", "watcher/templates/digest.html.j2", "watcher/cli.py"} <= set(names)
    web = {"watcher/templates/web/watch.html.j2", "watcher/templates/web/style.css", "watcher/templates/confirm.txt.j2",
           "watcher/web/app.py", "watcher/migrations/versions/0005_web.py"}  # fmt: skip
    assert web <= set(names)
    assert not any(n.startswith("tests/") for n in names)
