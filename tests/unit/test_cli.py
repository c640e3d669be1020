"""The command line without a cluster: validate, schema, status, version, exit codes."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from typer.testing import CliRunner

from nbtether import __version__
from nbtether.cli import app
from nbtether.install import jupyter_hint
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


@pytest.fixture
def held(config: Path) -> Iterator[StateStore]:
    """The state directory held the way a running daemon holds it: its real lock, taken."""
    store = StateStore(config.parent / "state")
    fd = store.lock()
    yield store
    os.close(fd)


def test_status_json_reads_the_state_directory(config: Path, held: StateStore) -> None:
    """status --json lists the records with the contract's fields while a daemon runs."""
    held.save(Record.new("nb", "hpc", 8888).model_copy(update={"phase": "pending",
                                                                "message": "queued: Priority"}))
    result = runner.invoke(app, ["--config", str(config), "status", "--json"])
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    row = payload["sessions"][0]
    assert {"name", "phase", "job_id", "node", "local_port", "url", "message",
            "restarts"} <= set(row)
    assert (row["phase"], row["url"], row["message"]) == ("pending", None, "queued: Priority")
    assert payload["daemon"]["running"] is True


def ready_record(name: str = "nb") -> Record:
    """A record as a daemon leaves it for a ready session."""
    return Record.new(name, "hpc", 8888).model_copy(update={"phase": "ready", "job_id": "42"})


def test_status_without_a_daemon_says_so_first_shows_no_url_and_exits_4(config: Path) -> None:
    """With no daemon holding the state directory, status says so before anything else, no
    session has a URL (a ready one says what it last was), and the exit code is 4."""
    store = StateStore(config.parent / "state")
    store.prepare()
    store.save(ready_record())
    (config.parent / "sessions.d" / "nb.yaml").write_text("cluster: hpc\nlocal_port: 8888\n")
    result = runner.invoke(app, ["--config", str(config), "status"], env={"COLUMNS": "200"})
    assert result.exit_code == 4
    assert result.output.splitlines()[0].startswith("the daemon is not running")
    assert "token=" not in result.output
    assert "the daemon is not running (last: ready)" in result.output

    as_json = runner.invoke(app, ["--config", str(config), "status", "--json"])
    assert as_json.exit_code == 4
    payload = json.loads(as_json.stdout)
    assert payload["daemon"]["running"] is False
    assert payload["sessions"][0]["url"] is None


def test_status_without_a_daemon_tells_a_deleted_session_from_a_new_one(config: Path) -> None:
    """A record whose file is gone says so; a file the daemon never saw is listed as not
    started, and an invalid one as invalid."""
    store = StateStore(config.parent / "state")
    store.prepare()
    store.save(ready_record("gone"))
    sessions = config.parent / "sessions.d"
    (sessions / "fresh.yaml").write_text("cluster: hpc\nlocal_port: 8890\n")
    (sessions / "broken.yaml").write_text("cluster: hpc\nlocal_port: 80\n")
    result = runner.invoke(app, ["--config", str(config), "status", "--json"])
    rows = {row["name"]: row for row in json.loads(result.stdout)["sessions"]}
    assert rows["gone"]["message"] == "the daemon is not running (last: ready; its file is deleted)"
    assert (rows["fresh"]["phase"], rows["fresh"]["message"]) == (
        "pending", "not started: the daemon is not running")
    assert rows["broken"]["phase"] == "invalid"


def test_status_with_a_daemon_shows_the_url_whole(config: Path, held: StateStore) -> None:
    """While a daemon holds the state directory, a ready session's URL is printed whole."""
    record = ready_record()
    held.save(record)
    result = runner.invoke(app, ["--config", str(config), "status"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert f"nb: {record.url}" in result.output.splitlines()


BROKEN_YAML = "clusters:\n  hpc:\n    host: a: b\n"


@pytest.mark.parametrize("command", [
    ["status"], ["status", "--json"], ["validate"], ["open", "nb"], ["logs", "nb"], ["check"],
    ["run"], ["demo"],
])
def test_a_yaml_error_in_the_config_ends_every_command_with_exit_3(
    tmp_path: Path, command: list[str]
) -> None:
    """A config that is not valid YAML: `config error: FILE:LINE:COLUMN: …`, exit 3, and no
    traceback, whatever the command."""
    path = tmp_path / "config.yaml"
    path.write_text(BROKEN_YAML)
    result = runner.invoke(app, ["--config", str(path), *command])
    assert result.exit_code == 3, result.output
    assert result.output.startswith(
        f"config error: {path}:3:12: not valid YAML: mapping values are not allowed here")
    assert "Traceback" not in result.output and result.exception is not None \
        and isinstance(result.exception, SystemExit)


def test_validate_shows_a_config_yaml_error_with_its_pointer_and_status_in_one_line(
    tmp_path: Path
) -> None:
    """validate keeps PyYAML's offending line and `^` pointer on lines of their own; status
    says it in one line."""
    path = tmp_path / "config.yaml"
    path.write_text(BROKEN_YAML)
    validated = runner.invoke(app, ["--config", str(path), "validate"]).output.splitlines()
    assert "        host: a: b" in validated
    assert validated[validated.index("        host: a: b") + 1] == "               ^"
    assert len(runner.invoke(app, ["--config", str(path), "status"]).output.splitlines()) == 1


@pytest.mark.parametrize(("text", "expected"), [
    ("clusters:\n  hpc:\n    hots: typo.example.org\n",
     ":3: clusters.hpc.hots: Extra inputs are not permitted"),
    ("state_dir: /tmp/x\nnotifications: maybe\n",
     ":2: notifications: Input should be a valid boolean, unable to interpret input"),
    ("clusters:\n  hpc:\n    user: me\n",
     ":2: clusters.hpc: Value error, a cluster of kind slurm needs `host`"),
    ("- just\n- a list\n", ":1: the config must be a mapping of keys to values"),
])
def test_a_config_error_names_the_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    """Unknown keys, wrong types and missing values name FILE:LINE and the key, exit 3."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["--config", str(path), "status"])
    assert result.exit_code == 3
    assert result.output.strip() == f"config error: {path}{expected}"


@pytest.mark.parametrize("command", [
    ["status"], ["validate"], ["open", "nb"], ["logs", "nb"], ["check"], ["run"], ["demo"],
])
def test_config_is_accepted_after_the_command_too(tmp_path: Path, command: list[str]) -> None:
    """`nbtether CMD --config FILE` reads FILE, like `nbtether --config FILE CMD`."""
    missing = tmp_path / "nope.yaml"
    result = runner.invoke(app, [*command, "--config", str(missing)])
    assert result.exit_code == 3
    assert result.output.strip() == f"config error: {missing}: the config file does not exist"


def test_without_a_config_file_there_is_the_builtin_local_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no config file, a session on `local` validates, and one on another cluster is
    told which file was looked for and what is built in."""
    for variable in [v for v in os.environ if v.startswith("NBTETHER_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    sessions = tmp_path / "xdg" / "nbtether" / "sessions.d"
    sessions.mkdir(parents=True)
    (sessions / "here.yaml").write_text("cluster: local\nlocal_port: 8888\n")
    (sessions / "there.yaml").write_text("cluster: there\nlocal_port: 8889\n")
    result = runner.invoke(app, ["validate"], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert f"{sessions / 'here.yaml'}: ok" in result.output
    assert (f"{sessions / 'there.yaml'}: cluster: unknown cluster 'there' (no config file at "
            f"{tmp_path / 'xdg' / 'nbtether' / 'config.yaml'}; built in: local); add it under "
            "`clusters:` in the config") in result.output


def test_an_unknown_cluster_names_the_config_file_that_lacks_it(config: Path) -> None:
    """A session on a cluster the config does not define names the file and what it has."""
    (config.parent / "sessions.d" / "lost.yaml").write_text("cluster: there\nlocal_port: 8889\n")
    result = runner.invoke(app, ["--config", str(config), "validate"], env={"COLUMNS": "300"})
    assert f"lost.yaml: cluster: unknown cluster 'there' ({config} defines: hpc); " \
           "add it under `clusters:` in the config" in result.output


def test_validate_reports_files_the_daemon_ignores(config: Path, tmp_path: Path) -> None:
    """Named explicitly, `x.txt` and `X.YAML` are not session files (exit 1); in the sessions
    directory they, and a `.yml` shadowed by its `.yaml`, are reported as ignored."""
    sessions = config.parent / "sessions.d"
    for name in ("notes.txt", "LOUD.YAML"):
        (sessions / name).write_text("cluster: hpc\nlocal_port: 8888\n")
    (sessions / "twin.yaml").write_text("cluster: hpc\nlocal_port: 8890\n")
    (sessions / "twin.yml").write_text("cluster: hpc\nlocal_port: 8891\n")
    explicit = runner.invoke(app, ["--config", str(config), "validate",
                                   str(sessions / "notes.txt"), str(sessions / "LOUD.YAML")],
                             env={"COLUMNS": "300"})
    assert explicit.exit_code == 1
    assert "notes.txt: not a session file: only NAME.yaml and NAME.yml files are sessions; " \
           "the daemon ignores it" in explicit.output
    assert "LOUD.YAML: not a session file: the name must end in .yaml or .yml (lower case)" \
        in explicit.output
    scan = runner.invoke(app, ["--config", str(config), "validate"], env={"COLUMNS": "300"})
    assert scan.exit_code == 0
    assert f"{sessions / 'twin.yaml'}: ok" in scan.output
    for ignored in ("notes.txt: not a session file", "LOUD.YAML: not a session file",
                    "twin.yml: not read: twin.yaml already defines session 'twin'"):
        assert ignored in scan.output


def test_a_yaml_error_in_a_session_names_line_and_column_on_one_line(config: Path) -> None:
    """validate and status give one line with line and column, quoting nothing of the file
    (it may be a secret saved here by mistake)."""
    (config.parent / "sessions.d" / "typo.yaml").write_text(
        "cluster: hpc\nlocal_port: 8888\nresources:\n  cpus: 2\n mem: 2G\n")
    reason = "not valid YAML: expected <block end>, but found '<block mapping start>' " \
        "(line 5, column 2)"
    lines = runner.invoke(app, ["--config", str(config), "validate"],
                          env={"COLUMNS": "300"}).output.splitlines()
    assert lines == [f"{config.parent / 'sessions.d' / 'typo.yaml'}: {reason}"]
    status = runner.invoke(app, ["--config", str(config), "status", "--json"])
    assert json.loads(status.stdout)["sessions"][0]["message"] == reason


def test_logs_shows_the_last_job_when_there_is_none_now(config: Path) -> None:
    """Between failed starts, logs prints the last job's output and says that it is the last."""
    store = StateStore(config.parent / "state")
    store.prepare()
    config.write_text(config.read_text() + "  here:\n    kind: local\n")
    store.save(Record.new("nb", "here", 8888).model_copy(update={
        "previous_job_id": "1234", "message": "Jupyter exited; resubmitting in 20s"}))
    output = config.parent / "state" / "local" / "nb" / "job-1234.out"
    output.parent.mkdir(parents=True)
    output.write_text("ModuleNotFoundError: No module named 'jupyterlab'\n")
    result = runner.invoke(app, ["--config", str(config), "logs", "nb"])
    assert result.exit_code == 0
    assert "nb has no job now (pending: Jupyter exited; resubmitting in 20s); the output of " \
           "its last job, 1234:" in result.output
    assert "No module named 'jupyterlab'" in result.output


def test_logs_before_any_job_says_when_there_will_be_output(config: Path) -> None:
    """A session that never had a job: exit 1, with its phase and when output appears."""
    store = StateStore(config.parent / "state")
    store.prepare()
    store.save(Record.new("nb", "hpc", 8888).model_copy(update={"message": "submitting"}))
    result = runner.invoke(app, ["--config", str(config), "logs", "nb"])
    assert result.exit_code == 1
    assert "nb has had no job yet (pending: submitting); its output is here once one starts" \
        in result.output


def test_the_jupyter_hint_installs_the_way_nbtether_was_installed() -> None:
    """Installed from a directory, the hint reinstalls from that directory into this Python,
    not `nbtether[local]` from an index."""
    direct = json.loads(metadata.distribution("nbtether").read_text("direct_url.json") or "{}")
    source = unquote(urlparse(direct["url"]).path)
    editable = "-e " if direct.get("dir_info", {}).get("editable") else ""
    assert jupyter_hint() == f"{sys.executable} -m pip install {editable}'{source}[local]'"


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
