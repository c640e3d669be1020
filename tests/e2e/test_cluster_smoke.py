"""Smoke tests of the mini-cluster itself: when these fail, no end-to-end test can pass."""

from __future__ import annotations

import re

import pytest

from tests.cluster import Cluster, wait_for

pytestmark = pytest.mark.e2e

MODULE = "python/3.11.6-gcc-13.2.0"
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")

# Loads the module as a site's job would, then holds the node until the test
# releases it, so the test sees the job RUNNING however slowly it polls.
JOB_SCRIPT = f"""#!/bin/bash -l
#SBATCH --job-name=smoke
#SBATCH --time=00:02:00
#SBATCH --output=smoke-%j.out
module load {MODULE}
python --version
while [ ! -e ~/smoke-$SLURM_JOB_ID.release ]; do sleep 0.2; done
"""


def test_batch_job_runs_on_a_compute_node_and_ends_in_sacct(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job sent over SSH runs on c1 or c2, loads the module, and ends COMPLETED in sacct."""
    submitted = cluster.ssh(f"sbatch --parsable <<'EOF'\n{JOB_SCRIPT}EOF")
    job_id = submitted.stdout.strip().split(";")[0]
    assert job_id.isdigit(), submitted.stdout
    try:

        def running_node() -> str | None:
            state_node = cluster.ssh(f"squeue -h -j {job_id} -o '%T %N'").stdout.split()
            return state_node[1] if state_node[:1] == ["RUNNING"] else None

        node = wait_for(running_node, timeout=60, message=f"job {job_id} to run")
        with capsys.disabled():
            print(f"\nsmoke job {job_id} is RUNNING on {node}")
        assert node in {"c1", "c2"}

        cluster.ssh(f"touch ~/smoke-{job_id}.release")

        def final_record() -> str | None:
            record = cluster.ssh(f"sacct -n -X -P -j {job_id} -o State,ExitCode").stdout.strip()
            return record if record.startswith(FINAL_STATES) else None

        record = wait_for(final_record, timeout=60, message=f"sacct to record job {job_id} ended")
        assert record == "COMPLETED|0:0"
        assert cluster.ssh(f"cat ~/smoke-{job_id}.out").stdout.startswith("Python 3.11")
    finally:
        cluster.ssh(f"scancel {job_id}; rm -f ~/smoke-{job_id}.*", check=False)


def test_login_shell_loads_the_python_module_and_runs_jupyterlab(cluster: Cluster) -> None:
    """Over SSH a login shell loads the module (Python 3.11), and ~/jupyter_env runs jupyter-lab."""
    python = cluster.ssh(f"bash -lc 'module load {MODULE} && python --version'")
    assert python.stdout.startswith("Python 3.11")
    lab = cluster.ssh("~/jupyter_env/bin/jupyter-lab --version")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*\s*", lab.stdout), lab.stdout


@pytest.mark.parametrize(
    ("option", "error"),
    [
        ("--partition=nope", "Invalid partition name specified"),
        ("--account=nope", "Invalid account or account/partition combination specified"),
        ("--qos=nope", "Invalid qos specification"),
    ],
)
def test_sbatch_rejects_an_unknown_partition_account_or_qos(
    cluster: Cluster, option: str, error: str
) -> None:
    """sbatch refuses an unknown partition, account or QOS with SLURM's own error message."""
    result = cluster.ssh(f"sbatch --parsable {option} --wrap true", check=False)
    assert result.returncode != 0, result.stdout
    assert error in result.stderr


def test_partitions_are_cpu_by_default_and_short_with_five_minutes(cluster: Cluster) -> None:
    """sinfo shows partitions cpu (default, unlimited) and short (5 minutes) on both nodes."""
    partitions = cluster.admin("sinfo", "-h", "-o", "%P %l %N").stdout.split("\n")
    assert sorted(filter(None, partitions)) == ["cpu* infinite c[1-2]", "short 5:00 c[1-2]"]
