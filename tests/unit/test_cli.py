"""The command line without a cluster: validate, schema, status, version, exit codes."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nbtether import __version__
from nbtether.cli import app
from nbtether.state import Record, StateStore

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config with one SLURM cluster `hpc` and empty sessions and state directories."""
    for variable in ("NBTETHER_CONFIG", "NBTETHER_SESSIONS_DIR", "NBTETHER_STATE_DIR"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "sessions.d").mkdir()
    path = tmp_path / "config.yaml"
    path.write_text(f"sessions_dir: {tmp_path / 'sessions.d'}\nstate_dir: {tmp_path / 'state'}\n"
                    "clusters:\n  hpc:\n    host: login.example.org\n")
    return path


def test_validate_names_each_bad_file_and_exits_1(config: Path) -> None:
    """validate reports file, field and reason for each bad file, ok for good ones."""
    sessions = config.parent / "sessions.d"
    (sessions / "good.yaml").write_text("cluster: hpc\nlocal_port: 8888\n")
    (sessions / "bad.yaml").write_text("cluster: hpc\nlocal_port: 80\n")
    (sessions / "lost.yaml").write_text("cluster: nowhere\nlocal_port: 8889\n")
    result = runner.invoke(app, ["--config", str(config), "validate"])
    assert result.exit_code == 1
    text = result.output.replace("\n", "")
    assert "good.yaml: ok" in text
    assert "bad.yaml: local_port: Input should be greater than or equal to 1024" in text
    assert "lost.yaml: cluster: unknown cluster 'nowhere'" in text


def test_validate_exits_0_when_all_files_are_valid(config: Path, tmp_path: Path) -> None:
    """validate of explicit files exits 0 when every one is valid."""
    good = tmp_path / "one.yaml"
    good.write_text("cluster: hpc\nlocal_port: 8888\n")
    assert runner.invoke(app, ["--config", str(config), "validate", str(good)]).exit_code == 0


def test_a_missing_config_file_exits_3(tmp_path: Path) -> None:
    """An explicit config file that does not exist is exit code 3."""
    result = runner.invoke(app, ["--config", str(tmp_path / "nope.yaml"), "status"])
    assert result.exit_code == 3 and "does not exist" in result.output


def test_a_broken_config_names_the_key(tmp_path: Path) -> None:
    """A config with an unknown key fails with exit 3 and names the key."""
    path = tmp_path / "config.yaml"
    path.write_text("clusters:\n  hpc:\n    hots: typo.example.org\n")
    result = runner.invoke(app, ["--config", str(path), "validate"])
    assert result.exit_code == 3 and "clusters.hpc.hots" in result.output


def test_status_json_reads_the_state_directory(config: Path) -> None:
    """status --json lists the records with the contract's fields, daemon or not."""
    store = StateStore(config.parent / "state")
    store.prepare()
    store.save(Record.new("nb", "hpc", 8888).model_copy(update={"phase": "pending",
                                                                 "message": "queued: Priority"}))
    result = runner.invoke(app, ["--config", str(config), "status", "--json"])
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    row = payload["sessions"][0]
    assert {"name", "phase", "job_id", "node", "local_port", "url", "message",
            "restarts"} <= set(row)
    assert (row["phase"], row["url"], row["message"]) == ("pending", None, "queued: Priority")
    assert payload["daemon"]["running"] is False


def test_schema_is_the_session_models_json_schema() -> None:
    """schema prints a JSON Schema that editors can use for session files."""
    result = runner.invoke(app, ["schema"])
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False
    assert {"cluster", "local_port"} <= set(schema["required"])


def test_version() -> None:
    """--version prints the installed version."""
    assert runner.invoke(app, ["--version"]).stdout.strip() == f"nbtether {__version__}"


def test_login_answers_one_line_per_prompt_when_stdin_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each prompt is shown on stderr as the server wrote it and takes the next input line."""
    from nbtether.cli import _answer
    from nbtether.control import Challenge

    monkeypatch.setattr("sys.stdin", io.StringIO("hunter2\n123456\nleft over\n"))
    challenge = Challenge("Site login", "Two factors", [("Password: ", False), ("Code: ", False)])
    assert _answer(challenge, interactive=False) == ["hunter2", "123456"]
    shown = capsys.readouterr()
    assert shown.err == "Site login\nTwo factors\nPassword: \nCode: \n"
    assert "hunter2" not in shown.out + shown.err


def test_login_escapes_terminal_control_characters_of_the_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt's escape sequences are printed visibly, never sent to the terminal raw."""
    from nbtether.cli import _answer
    from nbtether.control import Challenge

    monkeypatch.setattr("sys.stdin", io.StringIO("x\n"))
    _answer(Challenge("", "", [("\x1b]0;owned\x07Code: ", True)]), interactive=False)
    assert capsys.readouterr().err == "\\x1b]0;owned\\x07Code: \n"


def test_login_without_more_input_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard input that ends before every prompt is answered cancels the login."""
    from nbtether.cli import _answer
    from nbtether.control import Challenge

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(EOFError):
        _answer(Challenge("", "", [("Code: ", False)]), interactive=False)


def test_login_without_a_daemon_says_so_and_exits_1(config: Path) -> None:
    """`nbtether login` with no daemon running explains how to start one."""
    result = runner.invoke(app, ["--config", str(config), "login", "hpc"], input="123456\n")
    assert result.exit_code == 1
    assert "the daemon is not running" in result.output


def test_login_shows_a_challenge_without_prompts_and_reads_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A message-only round (a Duo push notice) is shown and answered with no answers."""
    from nbtether.cli import _answer
    from nbtether.control import Challenge

    monkeypatch.setattr("sys.stdin", io.StringIO("not for this round\n"))
    assert _answer(Challenge("Duo", "Pushed a login request to your phone.", []),
                   interactive=False) == []
    assert capsys.readouterr().err == "Duo\nPushed a login request to your phone.\n"
    assert sys.stdin.read() == "not for this round\n"


def test_validate_reports_a_sessions_directory_others_can_write(tmp_path: Path) -> None:
    """`validate` fails on a world-writable sessions directory, as the daemon would."""
    sessions = tmp_path / "sessions.d"
    sessions.mkdir()
    sessions.chmod(0o777)
    config = tmp_path / "config.yaml"
    config.write_text(f"sessions_dir: {sessions}\nstate_dir: {tmp_path / 'state'}\n")
    result = runner.invoke(app, ["--config", str(config), "validate"])
    assert result.exit_code == 1
    assert f"sessions_dir: {sessions} is writable by others (mode 0777)" in result.stdout
