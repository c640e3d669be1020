"""Session files: strict validation, hostile values rejected, cross-file checks."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from nbtether.spec import (
    MAX_FILE_BYTES,
    InvalidSpec,
    SessionSpec,
    format_walltime,
    load_sessions,
    parse_session,
    parse_walltime,
)

VALID = """\
cluster: hpc
local_port: 8888
resources:
  partition: cpu
  mem: 2G
  time: 02:00:00
environment:
  modules: [python/3.11.6-gcc-13.2.0]
  venv: ~/jupyter_env
"""


def test_the_contract_example_is_valid() -> None:
    """The example from the contract parses, with an unquoted walltime kept as h:m:s."""
    spec = parse_session("analysis", VALID)
    assert isinstance(spec, SessionSpec)
    assert spec.resources.time == timedelta(hours=2)
    assert spec.environment.modules == ["python/3.11.6-gcc-13.2.0"]


@pytest.mark.parametrize(("text", "value"), [
    ("90", timedelta(minutes=90)), ("5:30", timedelta(minutes=5, seconds=30)),
    ("1:02:03", timedelta(hours=1, minutes=2, seconds=3)), ("2-0", timedelta(days=2)),
    ("1-12:30", timedelta(days=1, hours=12, minutes=30)),
    ("1-00:00:01", timedelta(days=1, seconds=1)),
])
def test_walltime_formats(text: str, value: timedelta) -> None:
    """Every --time format of sbatch is understood."""
    assert parse_walltime(text) == value


@pytest.mark.parametrize("text", ["0", "", "-5", "abc", "1:2:3:4", "999-00:00:00"])
def test_bad_walltimes_are_rejected(text: str) -> None:
    """Zero, empty, negative, malformed and absurd walltimes are errors."""
    with pytest.raises(ValueError):
        parse_walltime(text)


def test_walltime_renders_in_slurm_format() -> None:
    """The walltime reaches sbatch as D-HH:MM:SS."""
    assert format_walltime(timedelta(days=1, hours=2, seconds=5)) == "1-02:00:05"


HOSTILE = ["x; touch /tmp/pwned", "$(touch /tmp/pwned)", "`touch /tmp/pwned`",
           "a\ntouch /tmp/pwned", "a b", "'quoted'"]
FIELDS = [
    ("resources.partition", "resources:\n  partition: {v}\n"),
    ("resources.account", "resources:\n  account: {v}\n"),
    ("resources.qos", "resources:\n  qos: {v}\n"),
    ("resources.reservation", "resources:\n  reservation: {v}\n"),
    ("resources.constraint", "resources:\n  constraint: {v}\n"),
    ("resources.mem", "resources:\n  mem: {v}\n"),
    ("resources.time", "resources:\n  time: {v}\n"),
    ("environment.modules.0", "environment:\n  modules: [{v}]\n"),
    ("environment.venv", "environment:\n  venv: {v}\n"),
    ("environment.conda", "environment:\n  conda: {v}\n"),
    ("jupyter.root_dir", "jupyter:\n  root_dir: {v}\n"),
    ("jupyter.address_prefix", "jupyter:\n  address_prefix: {v}\n"),
    ("cluster", "cluster: {v}\n"),
]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(("field", "template"), FIELDS, ids=[f[0] for f in FIELDS])
def test_hostile_values_are_rejected_naming_the_field(field: str, template: str,
                                                     value: str) -> None:
    """Shell metacharacters and newlines in any field make the file invalid, naming it."""
    import json

    base = "cluster: hpc\nlocal_port: 8888\n" if field != "cluster" else "local_port: 8888\n"
    spec = parse_session("nb", base + template.format(v=json.dumps(value)))
    assert isinstance(spec, InvalidSpec)
    assert spec.reason.startswith(field)


@pytest.mark.parametrize(("text", "field"), [
    ("cluster: hpc\nlocal_port: 80\n", "local_port"),
    ("cluster: hpc\nlocal_port: 70000\n", "local_port"),
    ("cluster: hpc\nlocal_port: 8888\nresources:\n  cpus: 0\n", "resources.cpus"),
    ("cluster: hpc\nlocal_port: 8888\nresourcs: {}\n", "resourcs"),
    ("cluster: hpc\nlocal_port: 8888\nrestart:\n  policy: sometimes\n", "restart.policy"),
    ("cluster: hpc\nlocal_port: 8888\njupyter:\n  app: vscode\n", "jupyter.app"),
    ("local_port: 8888\n", "cluster"),
])
def test_bad_values_name_the_field(text: str, field: str) -> None:
    """Out-of-range ports, unknown keys and wrong choices each name their field."""
    spec = parse_session("nb", text)
    assert isinstance(spec, InvalidSpec)
    assert spec.reason.startswith(field)


@pytest.mark.parametrize("text", ["", "cluster: hpc\nlocal_port: [", "- a list\n"])
def test_half_written_files_are_invalid(text: str) -> None:
    """Empty, truncated and non-mapping files are invalid, not errors."""
    assert isinstance(parse_session("nb", text), InvalidSpec)


def test_bad_session_names_are_invalid() -> None:
    """A file name that could not be a job name is rejected."""
    spec = parse_session("my notebook;rm", VALID)
    assert isinstance(spec, InvalidSpec) and spec.reason.startswith("file name")


def test_unknown_cluster_is_invalid(tmp_path: Path) -> None:
    """A session on a cluster the config does not name is invalid."""
    (tmp_path / "a.yaml").write_text(VALID)
    spec = load_sessions(tmp_path, ["other"])["a"]
    assert isinstance(spec, InvalidSpec) and spec.reason.startswith("cluster")


def test_two_sessions_on_one_port(tmp_path: Path) -> None:
    """Of two files on one port, the later is invalid, unless the earlier is new."""
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yaml").write_text(VALID)
    specs = load_sessions(tmp_path, ["hpc"])
    assert isinstance(specs["a"], SessionSpec)
    assert isinstance(specs["b"], InvalidSpec) and "already used by session 'a'" in \
        specs["b"].reason
    held = load_sessions(tmp_path, ["hpc"], port_holders={8888: "b"})
    assert isinstance(held["b"], SessionSpec) and isinstance(held["a"], InvalidSpec)


def test_only_yaml_files_are_sessions(tmp_path: Path) -> None:
    """Disabled examples, hidden files and editor leftovers are not sessions."""
    for name in ("a.yaml.example", ".b.yaml", "c.yaml~", "d.yml"):
        (tmp_path / name).write_text(VALID)
    assert set(load_sessions(tmp_path, ["hpc"])) == {"d"}


def test_a_session_whose_file_is_invalid_keeps_the_port_it_serves(tmp_path: Path) -> None:
    """An invalid file (broken, or asking for a taken port) keeps its session's port, and
    a file asking for that port is the one marked invalid (and still names its cluster)."""
    (tmp_path / "gamma.yaml").write_text("local_port: [8801\n")
    (tmp_path / "alpha.yaml").write_text("cluster: hpc\nlocal_port: 8801\n")
    (tmp_path / "beta.yaml").write_text("cluster: hpc\nlocal_port: 8803\n")
    specs = load_sessions(tmp_path, ["hpc"], port_holders={8801: "gamma", 8803: "alpha"})
    assert specs["alpha"] == InvalidSpec("local_port: 8801 is already used by session 'gamma'",
                                         "hpc")
    assert specs["beta"] == InvalidSpec("local_port: 8803 is already used by session 'alpha'",
                                        "hpc")
    assert specs["gamma"] == InvalidSpec(specs["gamma"].reason)  # no cluster read from it


SECRET = "hunter2-not-for-anyone"


@pytest.mark.parametrize(("text", "reason"), [
    ("extra: " + "[" * 2000 + "]" * 2000, "not valid YAML: nested deeper than 16 levels"),
    ("[" * 60_000, "not valid YAML: nested deeper than 16 levels"),
    ("a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 40)),
     "not valid YAML: nested deeper than 16 levels"),
    ("a: &x [1]\nb: *x\n", "not valid YAML: aliases (*name) are not supported"),
])
def test_deep_nesting_and_aliases_are_invalid_not_errors(text: str, reason: str) -> None:
    """Nesting beyond the limit or aliases make the file invalid instead of raising."""
    spec = parse_session("nb", text)
    assert isinstance(spec, InvalidSpec) and spec.reason.startswith(reason), spec


def test_a_newline_in_the_file_name_is_rejected() -> None:
    """A session name must match in full: `x\\n` is no session name."""
    spec = parse_session("x\n", VALID)
    assert isinstance(spec, InvalidSpec) and spec.reason.startswith("file name: 'x\\n'")


@pytest.mark.parametrize("text", [
    f"root:$6${SECRET}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
    f"[default]\naws_secret_access_key = {SECRET}\n",
    f"token: {SECRET}\npassword: '{SECRET}'\n",
    f"cluster: !{SECRET} x\n",
    f"a: *{SECRET}\n",
    f'cluster: "{SECRET}\\q"\n',
    f"cluster: hpc\nlocal_port: {SECRET}\n",
    f"cluster: hpc\nlocal_port: 8888\nresources:\n  partition: '{SECRET} x'\n",
    f"{SECRET}: [1, 2\n",
])
def test_messages_never_quote_the_files_content(text: str) -> None:
    """Whatever the file holds, the reason names fields and positions, never values."""
    spec = parse_session("nb", text)
    assert isinstance(spec, InvalidSpec) and SECRET not in spec.reason, spec


def test_typos_of_field_names_are_still_named() -> None:
    """An unknown key close to a field's name is quoted, so the typo can be found."""
    spec = parse_session("nb", "cluster: hpc\nlocal_port: 8888\nresources:\n  partitoin: x\n")
    assert isinstance(spec, InvalidSpec)
    assert spec.reason == "resources.partitoin: unknown key"


def test_many_problems_make_a_short_message() -> None:
    """A list of 2,000 bad items gives five problems and a count, not a huge message."""
    items = ", ".join(['"a b"'] * 2000)
    spec = parse_session("nb", f"cluster: hpc\nlocal_port: 8888\nenvironment:\n"
                               f"  modules: [{items}]\n")
    assert isinstance(spec, InvalidSpec)
    assert spec.reason.endswith("; and 1995 more problems") and len(spec.reason) < 1000


def test_files_over_the_size_limit_are_not_read(tmp_path: Path) -> None:
    """A file bigger than the limit is invalid by its size, whatever it holds."""
    (tmp_path / "big.yaml").write_text(VALID + "# " + "x" * MAX_FILE_BYTES + "\n")
    spec = load_sessions(tmp_path, ["hpc"])["big"]
    assert isinstance(spec, InvalidSpec) and spec.reason.startswith("the file is larger than")


def test_special_files_are_invalid_without_being_opened(tmp_path: Path) -> None:
    """A FIFO (which would block a reader) and a device are reported, not skipped."""
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    (tmp_path / "dir.yaml").mkdir()
    specs = load_sessions(tmp_path, ["hpc"])
    assert specs == {
        "dir": InvalidSpec("not a regular file but a directory; nothing was read"),
        "pipe": InvalidSpec("not a regular file but a named pipe (FIFO); nothing was read"),
        "zero": InvalidSpec("not a regular file but a character device; nothing was read"),
    }


def test_symlinks_are_followed_to_the_users_own_files(tmp_path: Path) -> None:
    """A symlink to a file of the user's is a session; a dangling one is invalid."""
    (tmp_path / "real").write_text(VALID)
    (tmp_path / "linked.yaml").symlink_to(tmp_path / "real")
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "missing")
    specs = load_sessions(tmp_path, ["hpc"])
    assert isinstance(specs["linked"], SessionSpec)
    assert specs["dangling"] == InvalidSpec("cannot read the file: No such file or directory")


def test_files_others_can_write_are_not_trusted(tmp_path: Path) -> None:
    """A session file that anyone may change is invalid until it is chmod go-w."""
    path = tmp_path / "open.yaml"
    path.write_text(VALID)
    path.chmod(0o666)
    spec = load_sessions(tmp_path, ["hpc"])["open"]
    assert spec == InvalidSpec("others can write to the file (mode 0666); run chmod go-w on it")


def test_a_directory_others_can_write_invalidates_every_file(tmp_path: Path) -> None:
    """Files in a world-writable sessions directory are all invalid, saying why."""
    sessions = tmp_path / "sessions.d"
    sessions.mkdir()
    (sessions / "a.yaml").write_text(VALID)
    sessions.chmod(0o777)
    spec = load_sessions(sessions, ["hpc"])["a"]
    assert spec == InvalidSpec(f"sessions_dir: {sessions} is writable by others (mode 0777); "
                               f"run chmod go-w {sessions}")
