"""The login-node run directory stays bounded however many jobs a session has run.

The jobs are real SLURM jobs with a session's job name, but instead of starting Jupyter each
writes its `.ready` and `.end` announcements the way the batch script does and exits at
once, so a hundred of them take seconds. The backend is the daemon's own (its SSH link,
login-node watcher and squeue polls, at their real rate limit).
"""

from __future__ import annotations

import asyncio
import secrets
import shlex
import time
from collections.abc import Callable

import pytest

from nbtether.backends import batch, rendezvous
from nbtether.backends.slurm import SlurmBackend
from nbtether.config import ClusterConfig
from tests.cluster import Cluster

pytestmark = pytest.mark.e2e

JOBS = 100
WAVE = 10  # jobs submitted together, so that other tests' jobs still find free nodes


def announcing_job(instance: str, session: str) -> str:
    """sbatch for a job that announces its notebook and its end, then exits."""
    announce = f'"$HOME"/{rendezvous.run_dir(instance)}/"$SLURM_JOB_ID-${{SLURM_RESTART_COUNT:-0}}"'
    body = (f"printf '%s %s 1\\n' \"$SLURMD_NODENAME\" \"$SLURMD_NODENAME\" > {announce}.ready; "
            f"printf '0\\n' > {announce}.end")
    return (f"sbatch --parsable --job-name={rendezvous.job_name(instance, session)} "
            f"--output=/dev/null --time=1 --mem=20M --wrap {shlex.quote(body)}")


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Await until `predicate` holds, checking every 0.5 s, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.5)


async def test_a_hundred_jobs_leave_the_run_directory_empty_once_they_ended(
    cluster: Cluster,
) -> None:
    """After 100 announced and ended jobs of a session, no announcement file remains."""
    instance = secrets.token_hex(4)
    run = rendezvous.run_dir(instance)
    config = ClusterConfig(host=cluster.host, port=cluster.port, user=cluster.user,
                           identity_file=cluster.identity_file, known_hosts=cluster.known_hosts)
    backend = SlurmBackend("testbed", config, instance, lambda _sessions: None)
    backend.start()

    def files() -> int:
        listing = cluster.ssh(f"ls -A {run} | wc -l").stdout
        return int(listing.strip())

    started = time.monotonic()
    try:
        assert await backend.link.wait_up(30)
        for _ in range(JOBS // WAVE):
            submit = "; ".join([f"mkdir -p {run}", *[announcing_job(instance, "churn")] * WAVE])
            await asyncio.to_thread(cluster.ssh, submit, timeout=120)
        await eventually(lambda: files() == 0, 180, "the run directory to empty")
        await eventually(lambda: not backend._runs and not backend._reported, 10,
                         "the backend to forget the ended jobs")
    finally:
        await backend.stop()
        cluster.ssh(f"scancel --name={rendezvous.job_name(instance, 'churn')}; "
                    f"rm -rf {rendezvous.remote_dir(instance)}", check=False)
    squeues_allowed = 1 + (time.monotonic() - started) // batch.MIN_POLL_GAP
    assert backend.rpc_count <= squeues_allowed
