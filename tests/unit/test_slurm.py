"""The SLURM edge: batch script rendering, commands, and parsing of real captured output."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nbtether.backends import rendezvous
from nbtether.backends import slurm_text as slurm
from nbtether.jobs import JobInfo, JobState
from nbtether.spec import SessionSpec

CAPTURED = Path(__file__).parent / "captured"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def tutorial_spec(**jupyter: str) -> SessionSpec:
    return SessionSpec.model_validate({
        "cluster": "hpc", "local_port": 8888,
        "resources": {"partition": "cpu", "reservation": "cpu_introduction", "mem": "2G",
                      "cpus": 1, "time": "02:00:00"},
        "environment": {"modules": ["python/3.11.6-gcc-13.2.0"], "venv": "~/jupyter_env"},
        "jupyter": jupyter,
    })


def test_script_asks_for_the_declared_resources() -> None:
    """Each resource becomes one #SBATCH directive; unset ones are left out."""
    spec = tutorial_spec()
    script = slurm.render_script(spec, instance="abcd1234", session="analysis")
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=nbtether-abcd1234-analysis",
        f"#SBATCH --comment=nbtether:{spec.job_fingerprint()}",
        "#SBATCH --output=.nbtether/abcd1234/analysis/slurm-%j.out",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --time=0-02:00:00",
        "#SBATCH --partition=cpu",
        "#SBATCH --reservation=cpu_introduction",
        "#SBATCH --mem=2G",
    ]
    assert script.startswith("#!/bin/bash -l\n")


def test_script_loads_modules_then_venv_and_is_valid_bash() -> None:
    """Modules load in order before the venv is activated, and bash accepts the script."""
    script = slurm.render_script(tutorial_spec(root_dir="~/work"),
                                 instance="abcd1234", session="analysis")
    lines = script.splitlines()
    assert lines.index("module load python/3.11.6-gcc-13.2.0") < lines.index(
        'source "$HOME"/jupyter_env/bin/activate')
    assert '--ServerApp.root_dir="$HOME"/work' in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_script_never_holds_the_token() -> None:
    """The token reaches Jupyter through JUPYTER_TOKEN_FILE only."""
    script = slurm.render_script(tutorial_spec(), instance="abcd1234", session="analysis")
    assert 'export JUPYTER_TOKEN_FILE="$HOME"/.nbtether/abcd1234/analysis/token' in script
    assert "--IdentityProvider.token" not in script and "--token" not in script


def test_jupyter_binds_a_port_the_kernel_picks_and_announces_only_its_own() -> None:
    """No port is chosen before Jupyter binds it (`--port=0`), and the announced port is the
    one Jupyter's own process listens on, found by the node helper."""
    script = slurm.render_script(tutorial_spec(), instance="abcd1234", session="analysis")
    assert "--port=0" in script and "port_retries" not in script
    assert 'if port=$(python -c ' in script and "def held_port(" in script
    assert 'export JUPYTER_RUNTIME_DIR="$private/runtime"' in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_the_jobs_own_jupyter_config_comes_first_and_sets_the_token_from_its_file() -> None:
    """JUPYTER_CONFIG_PATH starts with the job's private config directory, written under
    every name a Jupyter app reads; the config reads the token file, it does not hold it."""
    script = slurm.render_script(tutorial_spec(), instance="abcd1234", session="analysis")
    assert ('export JUPYTER_CONFIG_PATH="$private/config${JUPYTER_CONFIG_PATH:+:'
            '$JUPYTER_CONFIG_PATH}"') in script
    assert "for name in jupyter_server_config jupyter_lab_config jupyter_notebook_config" \
        in script
    assert 'c.IdentityProvider.token = token_file.read()' in script


def test_address_prefix_selects_an_interface() -> None:
    """With address_prefix the job binds to the node address starting with it."""
    script = slurm.render_script(tutorial_spec(address_prefix="10.211.4."),
                                 instance="abcd1234", session="analysis")
    assert "awk -v p=10.211.4." in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_token_file_is_written_from_stdin_with_umask() -> None:
    """The prepare command creates 0600 files from stdin: the token is not in argv."""
    command = rendezvous.prepare_command("abcd1234", "analysis")
    assert command.startswith("umask 077 && ")
    assert "cat > .nbtether/abcd1234/analysis/token.new" in command


def test_job_names_identify_daemon_and_session() -> None:
    """A job name maps back to its session only for the daemon instance that made it."""
    name = rendezvous.job_name("abcd1234", "analysis")
    assert rendezvous.session_of(name, "abcd1234") == "analysis"
    assert rendezvous.session_of(name, "ffff0000") is None


@pytest.mark.parametrize(("state", "kind"), [
    ("PENDING", JobState.WAITING), ("RUNNING", JobState.RUNNING),
    ("COMPLETING", JobState.ENDING), ("SUSPENDED", JobState.PAUSED),
    ("TIMEOUT", JobState.ENDED), ("CANCELLED by 1001", JobState.ENDED),
    ("NODE_FAIL", JobState.ENDED), ("SPECIAL_EXIT", JobState.HELD),
    ("BRAND_NEW_STATE", JobState.UNKNOWN), ("REQUEUED", JobState.WAITING),
])
def test_states_are_classified(state: str, kind: JobState) -> None:
    """Every SLURM state maps to what the daemon does; unknown ones are UNKNOWN."""
    assert JobInfo(job_id="1", name="x", state=state).kind is kind


def test_parse_sbatch() -> None:
    """`sbatch --parsable` prints `id` or `id;cluster`."""
    assert slurm.parse_submit("42\n") == "42"
    assert slurm.parse_submit("42;cluster\n") == "42"
    with pytest.raises(ValueError):
        slurm.parse_submit("Submitted batch job 42")


def test_parse_time_left() -> None:
    """squeue's %L in all its shapes."""
    assert slurm.parse_time_left("1-02:03:04") == timedelta(days=1, hours=2, minutes=3,
                                                             seconds=4)
    assert slurm.parse_time_left("03:04") == timedelta(minutes=3, seconds=4)
    assert slurm.parse_time_left("UNLIMITED") is None


def test_job_ids_are_checked_before_reaching_a_command() -> None:
    """Only numeric job ids reach scancel and sacct."""
    for command in (slurm.cancel_command, slurm.final_command,
                    lambda ids: rendezvous.forget_command("abcd1234", ids)):
        with pytest.raises(ValueError):
            command(["1; rm -rf ~"])


def test_parse_squeue_on_captured_output() -> None:
    """Real `squeue --me --states=all` output: states, reasons, nodes and end times."""
    jobs = {job.job_id: job for job in
            slurm.parse_poll((CAPTURED / "squeue.txt").read_text(), NOW)}
    assert jobs["13"].state == "RUNNING" and jobs["13"].node == "c1"
    assert jobs["13"].ends_at == NOW + timedelta(minutes=4, seconds=56)
    assert jobs["14"].kind is JobState.WAITING and jobs["14"].reason == "BeginTime"
    assert jobs["14"].node is None and jobs["14"].ends_at is None
    assert jobs["16"].kind is JobState.ENDED and jobs["16"].reason == "NonZeroExitCode"
    assert jobs["17"].name == "other job" and jobs["17"].ends_at is None
    assert jobs["3"].reason == ""


def test_parse_sacct_on_captured_output() -> None:
    """Real `sacct -X -n -P` output, including `CANCELLED by <uid>`."""
    jobs = {job.job_id: job for job in slurm.parse_final((CAPTURED / "sacct.txt").read_text())}
    assert jobs["6"].state == "CANCELLED by 1001" and jobs["6"].base_state == "CANCELLED"
    assert jobs["14"].node is None
    assert jobs["16"].kind is JobState.ENDED


@pytest.mark.parametrize(("file", "message"), [
    ("sbatch-bad-partition.txt",
     "invalid partition specified: nope; Batch job submission failed: "
     "Invalid partition name specified"),
    ("sbatch-bad-account.txt", "Batch job submission failed: Invalid account or "
     "account/partition combination specified"),
])
def test_sbatch_errors_keep_slurms_words(file: str, message: str) -> None:
    """A rejection is reported in SLURM's own words, without the `sbatch: error:` prefix."""
    assert slurm.submit_error((CAPTURED / file).read_text()) == message


def test_announcements_name_job_and_run() -> None:
    """Watcher lines carry the job id and its run (requeue) number."""
    assert rendezvous.parse_announcement("12-1.ready c1 127.0.0.2 4000") == (
        "12", 1, "ready", ["c1", "127.0.0.2", "4000"])
    assert rendezvous.parse_announcement("12-0.end 0") == ("12", 0, "end", ["0"])
    assert rendezvous.parse_announcement("garbage") is None


def test_parse_squeue_reads_the_shape_from_the_comment() -> None:
    """A job's `nbtether:` comment gives its fingerprint; `(null)` (no comment) gives none."""
    jobs = {job.job_id: job for job in
            slurm.parse_poll((CAPTURED / "squeue-comments.txt").read_text(), NOW)}
    assert jobs["15"].fingerprint == "abc123" and jobs["15"].name == "nbtether-simcap-x"
    assert jobs["14"].fingerprint is None


def test_parse_squeue_reads_the_expected_start_of_queued_jobs() -> None:
    """Real output with `%S` (run with TZ=UTC): a queued job's expected start, in UTC;
    ended jobs (whose `%S` is when they started) have none."""
    jobs = {job.job_id: job for job in
            slurm.parse_poll((CAPTURED / "squeue-start.txt").read_text(), NOW)}
    assert jobs["862"].reason == "BeginTime" and jobs["862"].fingerprint == "0123456789abcdef"
    assert jobs["862"].starts_at == datetime(2026, 11, 30, 16, 58, 34, tzinfo=UTC)
    assert jobs["852"].starts_at is None and jobs["852"].fingerprint == "141c6519cddef171"
    assert slurm.parse_start("N/A") is None
