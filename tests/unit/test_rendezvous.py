"""The job's side of the rendezvous, run by bash as a batch job runs it, with a stand-in for
Jupyter: when the job announces its notebook and its end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nbtether.backends import rendezvous
from nbtether.backends import slurm_text as slurm
from nbtether.spec import SessionSpec
from tests.cluster import wait_for

INSTANCE, SESSION, JOB = "abcd1234", "analysis", "77"

# Listens on a port the kernel picks and names it in its runtime file, as Jupyter does.
# Signalled, it goes on running (as Jupyter does while it shuts its kernels down) until the
# file $RELEASE exists; then it exits with $EXIT_STATUS.
FAKE_JUPYTER = f"""#!{sys.executable}
import json, os, pathlib, signal, socket, sys, time
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
runtime = pathlib.Path(os.environ["JUPYTER_RUNTIME_DIR"])
port = sock.getsockname()[1]
(runtime / f"jpserver-{{os.getpid()}}.json").write_text(json.dumps({{"port": port}}))
signal.signal(signal.SIGTERM, lambda *_: None)
signal.signal(signal.SIGINT, lambda *_: None)
release = pathlib.Path(os.environ["RELEASE"])
while not release.exists():
    time.sleep(0.02)
sys.exit(int(os.environ["EXIT_STATUS"]))
"""


@dataclass
class Job:
    """The batch script running under bash in its own process group, as slurmstepd runs it."""

    process: subprocess.Popen[str]
    run: Path
    release: Path

    def file(self, kind: str) -> str | None:
        """The announcement `77-0.<kind>`'s content, or None before it exists."""
        try:
            return (self.run / f"{JOB}-0.{kind}").read_text()
        except FileNotFoundError:
            return None

    def jupyter_running(self) -> bool:
        """True while the stand-in Jupyter has not been let go."""
        return not self.release.exists()


def start_job(tmp_path: Path, exit_status: int) -> Job:
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    run = home / rendezvous.run_dir(INSTANCE)
    run.mkdir(parents=True)
    token = home / rendezvous.token_path(INSTANCE, SESSION)
    token.parent.mkdir()
    token.write_text("secret")
    bin_dir.mkdir()
    (bin_dir / "jupyter").write_text(FAKE_JUPYTER)
    (bin_dir / "jupyter").chmod(0o700)
    (bin_dir / "python").symlink_to(sys.executable)
    spec = SessionSpec.model_validate({"cluster": "hpc", "local_port": 8888,
                                       "resources": {"time": "00:10:00"}})
    script = slurm.render_script(spec, instance=INSTANCE, session=SESSION)
    release = tmp_path / "release"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "SLURM_JOB_ID": JOB,
           "SLURMD_NODENAME": "127.0.0.1", "RELEASE": str(release),
           "EXIT_STATUS": str(exit_status)}
    process = subprocess.Popen(["bash", "-c", script], env=env, text=True,
                               start_new_session=True, stderr=subprocess.DEVNULL)
    job = Job(process, run, release)
    wait_for(lambda: job.file("ready"), 30, interval=0.05, message="the .ready announcement")
    return job


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[list[Job]]:
    started: list[Job] = []
    yield started
    for job in started:
        job.release.touch()
        job.process.wait(30)


def test_a_signalled_job_announces_its_end_before_jupyter_has_shut_down(
        tmp_path: Path, jobs: list[Job]) -> None:
    """SLURM's SIGTERM at the walltime (or a cancel) reaches every process of the job:
    the notebook stops answering at once, so `.end` is written at once, not after Jupyter's
    shutdown; and only once, although the script writes it again when Jupyter exits."""
    job = start_job(tmp_path, exit_status=0)
    jobs.append(job)
    os.killpg(job.process.pid, signal.SIGTERM)
    assert wait_for(lambda: job.file("end"), 10, interval=0.02,
                    message="the .end announcement") == "143\n"
    assert job.jupyter_running() and job.process.poll() is None
    announced = (job.run / f"{JOB}-0.end").stat().st_ino
    job.release.touch()
    job.process.wait(30)
    assert (job.run / f"{JOB}-0.end").stat().st_ino == announced, "written again"
    assert sorted(path.name for path in job.run.iterdir()) == [f"{JOB}-0.end", f"{JOB}-0.ready"]


def test_a_notebook_that_exits_by_itself_announces_its_status(
        tmp_path: Path, jobs: list[Job]) -> None:
    """Jupyter ending on its own (shut down from its page, crashed): `.end` holds its exit
    status, written once it has exited."""
    job = start_job(tmp_path, exit_status=3)
    jobs.append(job)
    assert job.file("end") is None
    job.release.touch()
    assert job.process.wait(30) == 3
    assert job.file("end") == "3\n"
    assert sorted(path.name for path in job.run.iterdir()) == [f"{JOB}-0.end", f"{JOB}-0.ready"]
