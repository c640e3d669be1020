"""The batch backend's cache: what the job's own announcements tell, how often squeue is asked,
and what is forgotten. The SSH link is a recording stub here (a unit test of the cache logic;
the e2e tests run the same code against the mini-cluster); the login-node watcher is real bash.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nbtether.backends import batch, rendezvous, slurm_text
from nbtether.backends.slurm import SlurmBackend
from nbtether.config import ClusterConfig
from nbtether.jobs import JobState

INSTANCE = "0123abcd"
NAME = f"nbtether-{INSTANCE}-analysis"


@dataclass
class Done:
    """What asyncssh's `SSHCompletedProcess` carries, as far as the backend reads it."""

    stdout: str = ""
    stderr: str = ""
    exit_status: int = 0


@dataclass
class StubLink:
    """Answers squeue with `queue` and records every command."""

    queue: str = ""
    commands: list[str] = field(default_factory=list)
    error: None = None

    async def run(self, command: str, *, stdin: str | None = None,
                  timeout: float = 60.0) -> Done:
        self.commands.append(command)
        return Done(stdout=self.queue if command == slurm_text.POLL_COMMAND else "")

    async def stop(self) -> None:
        """Nothing to close."""

    async def stream_lines(self, command: str, on_line: Callable[[str], None]) -> None:
        self.commands.append(command)

    def squeues(self) -> int:
        return sum(command == slurm_text.POLL_COMMAND for command in self.commands)


def backend(queue: str) -> tuple[SlurmBackend, StubLink, list[set[str] | None]]:
    woken: list[set[str] | None] = []
    slurm = SlurmBackend("hpc", ClusterConfig(host="login"), INSTANCE, woken.append)
    link = StubLink(queue)
    slurm.link = link  # type: ignore[assignment]
    return slurm, link, woken


def running(job_id: str, left: str) -> str:
    return f"{job_id}|RUNNING|None|c1|{left}|{NAME}\n"


@pytest.fixture
def no_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "MIN_POLL_GAP", 0.0)


async def test_an_end_announced_at_the_walltime_is_a_timeout_without_asking_squeue() -> None:
    """The job's `.end` at its walltime reads as TIMEOUT at once: no squeue, session woken."""
    slurm, link, woken = backend(running("100", "0:02"))
    await slurm.poll()
    slurm._on_announcement("100-0.ready c1 10.0.0.1 8888")
    woken.clear()
    slurm._on_announcement("100-0.end 143")
    job = await slurm.job("100", None)
    assert job is not None and job.state == "TIMEOUT" and job.kind is JobState.ENDED
    assert slurm.endpoint("100") is None
    assert slurm.active_jobs("analysis") == []
    assert woken == [{"analysis"}]
    assert link.squeues() == 1
    await slurm.stop()


async def test_an_end_after_squeue_showed_the_job_completing_is_still_a_timeout(
        no_gap: None) -> None:
    """SLURM lists a job killed at its walltime as COMPLETING, with no time left, at once:
    a poll in between (a tunnel that failed asks for one) does not hide that walltime end."""
    slurm, link, _ = backend(running("100", "0:02"))
    await slurm.poll()
    slurm._on_announcement("100-0.ready c1 10.0.0.1 8888")
    link.queue = f"100|COMPLETING|None|c1|0:00|{NAME}\n"
    await slurm.poll()
    slurm._on_announcement("100-0.end 143")
    job = await slurm.job("100", None)
    assert job is not None and job.state == "TIMEOUT"
    assert slurm.active_jobs("analysis") == []
    await slurm.stop()


async def test_a_requeued_job_is_not_timed_out_by_the_walltime_of_its_previous_run(
        no_gap: None) -> None:
    """A job that waits again has no walltime end until a poll sees it run: the `.end` of
    its next run is explained by squeue, not taken for a timeout."""
    slurm, link, _ = backend(running("100", "0:02"))
    await slurm.poll()
    link.queue = f"100|PENDING|BeginTime|c1||{NAME}\n"
    await slurm.poll()
    slurm._on_announcement("100-1.ready c2 10.0.0.2 8888")
    slurm._on_announcement("100-1.end 1")
    job = await slurm.job("100", None)
    assert job is not None and job.state == "PENDING"
    await slurm.stop()


async def test_an_end_long_before_the_walltime_waits_for_squeue_to_say_how() -> None:
    """A `.end` hours before the walltime is not taken for a timeout: squeue must tell."""
    slurm, _, _ = backend(running("100", "2:00:00"))
    await slurm.poll()
    slurm._on_announcement("100-0.end 1")
    job = await slurm.job("100", None)
    assert job is not None and job.state == "RUNNING"
    await slurm.stop()


async def test_cancel_returns_at_once_and_the_end_announcement_confirms_it() -> None:
    """cancel() sends one scancel and returns; again sends nothing; the job's `.end` confirms."""
    slurm, link, _ = backend(running("100", "2:00:00"))
    await slurm.poll()
    await asyncio.wait_for(slurm.cancel(["100"]), 1.0)
    await slurm.cancel(["100"])
    assert [c for c in link.commands if c.startswith("scancel")] == ["scancel 100"]
    still = await slurm.job("100", None)
    assert still is not None and still.kind is JobState.RUNNING
    slurm._on_announcement("100-0.end 143")
    job = await slurm.job("100", None)
    assert job is not None and job.state == "CANCELLED"
    assert link.squeues() == 1
    await slurm.stop()


async def test_polls_are_never_closer_than_the_minimum_gap() -> None:
    """Periodic and event-driven polls together never run squeue twice within MIN_POLL_GAP."""
    slurm, link, _ = backend("")
    await slurm.poll()
    await slurm.poll()
    slurm.look_soon()
    await asyncio.sleep(0.2)
    assert link.squeues() == 1
    await slurm.stop()


async def test_ended_jobs_are_forgotten_with_their_announcement_files(no_gap: None) -> None:
    """Once squeue no longer runs a job, its announcements are removed and its memory dropped."""
    slurm, link, _ = backend(running("101", "1:00:00"))
    slurm._on_announcement("100-0.ready c1 10.0.0.1 8888")
    slurm._on_announcement("100-0.end 0")
    slurm._on_announcement("101-0.ready c2 10.0.0.2 8888")
    await asyncio.sleep(0.001)  # let the clock move: announced strictly before the poll
    await slurm.poll()
    await asyncio.gather(*slurm._tasks)  # the removal runs in the background
    removals = [c for c in link.commands if c.startswith("rm -f")]
    assert removals == [f"rm -f {rendezvous.run_dir(INSTANCE)}/100-*"]
    assert slurm.endpoint("101") is not None
    assert "100" not in slurm._runs and "100" not in slurm._reported
    await slurm.stop()


async def test_a_new_watcher_skips_what_the_daemon_already_handled() -> None:
    """After a reconnect the watcher starts from the announcements already reported."""
    slurm, link, _ = backend(running("100", "2:00:00"))
    slurm._on_announcement("100-0.ready c1 10.0.0.1 8888")
    slurm._on_announcement("100-0.end 0")
    await slurm._watch()
    assert " 100-0.end 100-0.ready " in link.commands[-1]
    await slurm.stop()


def test_watcher_reports_new_announcements_once_and_skips_known_ones(tmp_path: Path) -> None:
    """The bash watcher prints each new file once, never the known ones, and exits on EOF."""
    run = tmp_path / rendezvous.run_dir(INSTANCE)
    run.mkdir(parents=True)
    (run / "7-0.ready").write_text("c1 10.0.0.1 8888\n")
    (run / "8-0.ready").write_text("c2 10.0.0.2 9999\n")
    (run / "notes.txt").write_text("ignored\n")
    script = rendezvous.watch_script(INSTANCE, 0.05, ["7-0.ready"])
    with subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env={"HOME": str(tmp_path)},
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as watcher:
        assert watcher.stdout is not None and watcher.stdin is not None
        first = watcher.stdout.readline()
        (run / "8-0.end").write_text("0\n")
        second = watcher.stdout.readline()
        watcher.stdin.close()
        assert watcher.wait(timeout=5) == 0
        rest = watcher.stdout.read()
    assert (first, second, rest) == ("8-0.ready c2 10.0.0.2 9999\n", "8-0.end 0\n", "")


def test_watcher_refuses_known_names_that_are_not_announcements() -> None:
    """Only `<jobid>-<run>.<kind>` names reach the watcher's shell text."""
    with pytest.raises(ValueError, match="not an announcement"):
        rendezvous.watch_script(INSTANCE, 0.1, ["1-0.ready'; rm -rf ~; '"])
