"""The Grid Engine edge: directives, refusals, commands, and parsing of real captured output."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nbtether.backends import sge_text as sge
from nbtether.backends.kinds import refusal
from nbtether.config import ClusterConfig
from nbtether.jobs import JobInfo, JobState
from nbtether.spec import SessionSpec

CAPTURED = Path(__file__).parent / "captured"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SITE = ClusterConfig(kind="sge", host="login.example.org")


def tutorial_spec(**resources: Any) -> SessionSpec:
    return SessionSpec.model_validate({
        "cluster": "uni", "local_port": 8888,
        "resources": {"partition": "cpu", "mem": "2G", "cpus": 1, "time": "02:00:00",
                      **resources},
        "environment": {"modules": ["python/3.11.6-gcc-13.2.0"], "venv": "~/jupyter_env"},
    })


def directives(spec: SessionSpec, cluster: ClusterConfig = SITE) -> list[str]:
    script = sge.render_script(spec, instance="abcd1234", session="analysis", cluster=cluster)
    return [line for line in script.splitlines() if line.startswith("#$")]


def test_script_asks_for_the_declared_resources() -> None:
    """Each resource becomes its Grid Engine request; unset ones are left out."""
    assert directives(tutorial_spec(account="research")) == [
        "#$ -N nbtether-abcd1234-analysis",
        "#$ -o $HOME/.nbtether/abcd1234/analysis/sge-$JOB_ID.out",
        "#$ -j y",
        "#$ -S /bin/bash",
        "#$ -r y",
        "#$ -l h_rt=02:00:00",
        "#$ -l h_vmem=2G",
        "#$ -q cpu",
        "#$ -P research",
    ]


def test_cpus_take_slots_of_the_sites_parallel_environment_and_memory_is_per_slot() -> None:
    """cpus: 4 asks the configured PE for 4 slots, and --mem's total is split among them."""
    site = ClusterConfig(kind="sge", host="h", parallel_environment="threaded",
                         memory_resource="mem_free", gpu_resource="gpu")
    lines = directives(tutorial_spec(cpus=4, mem="3G", gpus=2, reservation="17"), site)
    assert "#$ -pe threaded 4" in lines
    assert "#$ -l mem_free=768M" in lines
    assert "#$ -l gpu=2" in lines
    assert "#$ -ar 17" in lines


def test_script_is_valid_bash_in_a_login_shell_and_announces_with_sge_variables() -> None:
    """The job announces itself as $JOB_ID-$RESTARTED from $HOSTNAME; bash accepts it."""
    script = sge.render_script(tutorial_spec(), instance="abcd1234", session="analysis",
                               cluster=SITE)
    assert script.startswith("#!/bin/bash -l\n")
    assert 'announce="$run/$JOB_ID-${RESTARTED:-0}"' in script
    assert 'address="$HOSTNAME"' in script
    assert 'export JUPYTER_TOKEN_FILE="$HOME"/.nbtether/abcd1234/analysis/token' in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


@pytest.mark.parametrize(("resources", "words"), [
    ({"qos": "normal"}, "resources.qos: Grid Engine has no quality of service"),
    ({"constraint": "avx2"}, "resources.constraint: Grid Engine has no node features"),
    ({"reservation": "cpu_introduction"}, "resources.reservation: Grid Engine reservations "
     "are numbers"),
    ({"gpus": 1}, "resources.gpus: this Grid Engine cluster defines no GPU resource"),
])
def test_resources_without_a_grid_engine_equivalent_are_refused(
    resources: dict[str, Any], words: str
) -> None:
    """validate refuses what Grid Engine has no word for, and says so."""
    refuse = refusal({"uni": SITE})
    why = refuse(tutorial_spec(**resources))
    assert why is not None and why.startswith(words)


def test_a_slurm_session_file_fits_grid_engine_unchanged() -> None:
    """The tutorial's resources (partition, cpus, mem, time, account) need no refusal."""
    refuse = refusal({"uni": SITE})
    assert refuse(tutorial_spec(account="research", cpus=2)) is None
    assert refusal({"uni": ClusterConfig(host="h")})(tutorial_spec(qos="normal")) is None


@pytest.mark.parametrize(("letters", "state", "kind"), [
    ("qw", "PENDING", JobState.WAITING),
    ("hqw", "PENDING", JobState.WAITING),
    ("t", "CONFIGURING", JobState.WAITING),
    ("r", "RUNNING", JobState.RUNNING),
    ("Rr", "RUNNING", JobState.RUNNING),
    ("Rq", "REQUEUED", JobState.WAITING),
    ("s", "SUSPENDED", JobState.PAUSED),
    ("S", "SUSPENDED", JobState.PAUSED),
    ("dr", "COMPLETING", JobState.ENDING),
    ("Eqw", "FAILED", JobState.ENDED),
    ("z", "Z", JobState.UNKNOWN),
])
def test_qstat_states_speak_slurms_words(letters: str, state: str, kind: JobState) -> None:
    """Every qstat state maps to the phase a SLURM job in the same situation gets."""
    mapped, _ = sge.classify(letters)
    assert mapped == state
    assert JobInfo(job_id="1", name="", state=mapped).kind is kind


def test_parse_qstat_on_captured_output() -> None:
    """qstat -xml: full job names, nodes from the queue instance, walltime end from h_rt."""
    jobs = {job.job_id: job for job in sge.parse_poll((CAPTURED / "sge-qstat.xml").read_text(),
                                                      NOW)}
    running = jobs["10"]
    assert running.name == "nbtether-abcd1234-analysis"
    assert running.state == "RUNNING" and running.node == "c1"
    assert running.ends_at == datetime(2026, 11, 30, 12, 36, 42, tzinfo=UTC)
    assert (jobs["6"].state, jobs["6"].reason, jobs["6"].node) == ("PENDING", "held", None)
    assert (jobs["7"].state, jobs["7"].reason) == ("FAILED", "Eqw")
    assert sge.parse_poll("error: unable to contact qmaster", NOW) == []


@pytest.mark.parametrize(("file", "state"), [
    ("sge-qacct-completed.txt", "COMPLETED"),
    ("sge-qacct-timeout.txt", "TIMEOUT"),
    ("sge-qacct-qdel.txt", "CANCELLED"),
    ("sge-qacct-failed.txt", "FAILED"),
])
def test_parse_qacct_tells_how_a_job_ended(file: str, state: str) -> None:
    """qacct's failed code and exit status become SLURM's end states."""
    (job,) = sge.parse_final((CAPTURED / file).read_text())
    assert job.state == state
    assert job.kind is JobState.ENDED


def test_a_job_killed_at_its_h_rt_timed_out_whoever_killed_it() -> None:
    """The captured walltime end, as a site whose execd enforces h_rt reports it (failed 100)."""
    text = (CAPTURED / "sge-qacct-timeout.txt").read_text().replace(
        "failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit",
        "failed       100 : assumedly after job")
    (job,) = sge.parse_final(text)
    assert job.state == "TIMEOUT"
    (deleted,) = sge.parse_final((CAPTURED / "sge-qacct-qdel.txt").read_text())
    assert deleted.state == "CANCELLED", "killed before its h_rt: deleted"


def test_qacct_without_a_record_is_no_job() -> None:
    """An empty answer (no record yet, no accounting file) is not a job."""
    assert sge.parse_final("") == []


def test_error_reason_keeps_grid_engines_words() -> None:
    """qstat -j's error reason, without its timestamp and pid."""
    text = (CAPTURED / "sge-qstat-j-error.txt").read_text()
    assert sge.parse_error_reason(text) == (
        'can\'t open output file "/nonexistent/x": No such file or directory')


def test_parse_qsub_and_its_errors() -> None:
    """qsub -terse prints the id (array jobs add a range); rejections keep qsub's words."""
    assert sge.parse_submit("42\n") == "42"
    assert sge.parse_submit("43.1-4:1\n") == "43"
    with pytest.raises(ValueError):
        sge.parse_submit('Your job 42 ("x") has been submitted')
    assert sge.submit_error((CAPTURED / "sge-qsub-bad-queue.txt").read_text()) == (
        'Unable to run job: Job was rejected because job requests unknown queue "nope"')


def test_job_ids_are_checked_before_reaching_a_command() -> None:
    """Only numeric job ids reach qdel, qacct and qstat -j."""
    for command in (sge.cancel_command, sge.final_command,
                    lambda ids: sge.error_command(ids[0])):
        with pytest.raises(ValueError):
            command(["1; rm -rf ~"])


def test_grid_engine_times() -> None:
    """h_rt is seconds or [[HH:]MM:]SS; INFINITY is no limit."""
    assert sge.parse_duration("3600") == timedelta(hours=1)
    assert sge.parse_duration("01:02:03") == timedelta(hours=1, minutes=2, seconds=3)
    assert sge.parse_duration("INFINITY") is None
