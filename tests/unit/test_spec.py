"""Session files: strict validation, hostile values rejected, cross-file checks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from nbtether.spec import (
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
    a file asking for that port is the one marked invalid."""
    (tmp_path / "gamma.yaml").write_text("local_port: [8801\n")
    (tmp_path / "alpha.yaml").write_text("cluster: hpc\nlocal_port: 8801\n")
    (tmp_path / "beta.yaml").write_text("cluster: hpc\nlocal_port: 8803\n")
    specs = load_sessions(tmp_path, ["hpc"], port_holders={8801: "gamma", 8803: "alpha"})
    assert specs["alpha"] == InvalidSpec("local_port: 8801 is already used by session 'gamma'")
    assert specs["beta"] == InvalidSpec("local_port: 8803 is already used by session 'alpha'")
