"""The local backend (`kind: local`): notebooks as processes on this machine, no SSH, no SLURM.

A "job" is a Jupyter process in its own process group, so it outlives a daemon restart the
way a SLURM job does; its id is its pid, and a small 0600 file per job lets a restarted
daemon adopt it. Walltime and restart policy work as on a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from nbtether.backends import Streams
from nbtether.clock import Clock, system_clock
from nbtether.errors import NbtetherError, SubmissionRejected
from nbtether.jobs import Endpoint, JobInfo
from nbtether.spec import SessionSpec

log = structlog.get_logger(__name__)

STOP_GRACE = 5.0


@dataclass
class _Job:
    session: str
    pid: int
    port: int
    ends_at: datetime
    fingerprint: str | None = None
    state: str = "RUNNING"
    announced: bool = False


class LocalBackend:
    """Jupyter processes on this machine, managed like jobs."""

    def __init__(
        self,
        name: str,
        root: Path,
        on_change: Callable[[set[str] | None], None],
        clock: Clock = system_clock,
    ) -> None:
        self.name = name
        self.root = root
        self._clock = clock
        self._notify = on_change
        self._jobs: dict[str, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Adopt the processes a previous daemon left running."""
        (self.root / "jobs").mkdir(mode=0o700, parents=True, exist_ok=True)
        for meta in (self.root / "jobs").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                data = json.loads(meta.read_text())
                job = _Job(data["session"], int(data["pid"]), int(data["port"]),
                           datetime.fromisoformat(data["ends_at"]), data.get("fingerprint"))
                if _alive(job.pid):
                    self._jobs[str(job.pid)] = job
                    self._supervise(job, None)
                    continue
            meta.unlink(missing_ok=True)

    async def stop(self) -> None:
        """Stop supervising; the notebooks keep running."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def problem(self) -> NbtetherError | None:
        """A local backend can always be observed."""
        return None

    async def job(self, job_id: str, submitted_at: datetime | None) -> JobInfo | None:
        """The process's state in SLURM's words."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        return JobInfo(job_id=job_id, name=job.session, state=job.state, node="localhost",
                       ends_at=job.ends_at if job.state == "RUNNING" else None)

    def reconnect(self) -> None:
        """There is no login to retry."""

    def look_soon(self, delay: float = 0.0) -> None:
        """Local processes report their own ends; nothing to refresh."""

    def endpoint(self, job_id: str) -> Endpoint | None:
        """Where the notebook listens, once it accepts connections."""
        job = self._jobs.get(job_id)
        if job is None or not job.announced or job.state != "RUNNING":
            return None
        return Endpoint(node="localhost", address="127.0.0.1", port=job.port)

    def active_jobs(self, session: str) -> list[JobInfo]:
        """Running notebooks of a session."""
        return [
            JobInfo(job_id=job_id, name=session, state="RUNNING", node="localhost",
                    fingerprint=job.fingerprint)
            for job_id, job in self._jobs.items()
            if job.session == session and job.state == "RUNNING"
        ]

    def _dir(self, session: str) -> Path:
        path = self.root / session
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    async def submit(self, session: str, spec: SessionSpec, token: str) -> str:
        """Start Jupyter with the token in a 0600 file, on a free loopback port."""
        directory = self._dir(session)
        token_file = directory / "token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token)
        port = _free_port()
        root_dir = Path(spec.jupyter.root_dir).expanduser()
        env = {k: v for k, v in os.environ.items() if k != "JUPYTER_TOKEN"}
        env["JUPYTER_TOKEN_FILE"] = str(token_file)
        as_root = ["--allow-root"] if os.geteuid() == 0 else []  # Jupyter refuses root otherwise
        output = directory / f"job-{secrets.token_hex(4)}.out"
        with output.open("wb") as log_file:
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "jupyter", spec.jupyter.app, "--no-browser",
                    "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
                    f"--ServerApp.root_dir={root_dir}", *as_root,
                    stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                    env=env, start_new_session=True,
                )
            except OSError as exc:
                raise SubmissionRejected(f"cannot start Jupyter: {exc}") from exc
        job_id = str(process.pid)
        output.rename(directory / f"job-{job_id}.out")
        job = _Job(session, process.pid, port, self._clock() + spec.resources.time,
                   spec.job_fingerprint())
        self._jobs[job_id] = job
        meta = {"session": session, "pid": process.pid, "port": port,
                "ends_at": job.ends_at.isoformat(), "fingerprint": job.fingerprint}
        (self.root / "jobs" / f"{job_id}.json").write_text(json.dumps(meta))
        self._supervise(job, process)
        return job_id

    def _supervise(self, job: _Job, process: asyncio.subprocess.Process | None) -> None:
        task = asyncio.create_task(self._follow(job, process))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self, job: _Job, process: asyncio.subprocess.Process | None) -> None:
        while _alive(job.pid) and not job.announced:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", job.port)
                writer.close()
                job.announced = True
                self._notify({job.session})
                break
            await asyncio.sleep(0.1)
        left = (job.ends_at - self._clock()).total_seconds()
        exited = await _wait_exit(job.pid, process, max(left, 0.0))
        if exited is None:
            job.state = "TIMEOUT"
            await _terminate(job.pid, process)
        elif job.state == "RUNNING":
            job.state = "COMPLETED" if exited == 0 else "FAILED"
        (self.root / "jobs" / f"{job.pid}.json").unlink(missing_ok=True)
        self._notify({job.session})

    async def cancel(self, job_ids: list[str]) -> None:
        """Stop the processes (TERM, then KILL after a grace period)."""
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is None:
                continue
            job.state = "CANCELLED"
            await _terminate(job.pid, None)

    async def release(self, session: str) -> None:
        """Remove the session's token file."""
        (self.root / session / "token").unlink(missing_ok=True)

    async def open_connection(self, host: str, port: int) -> Streams:
        """A plain TCP connection on this machine."""
        return await asyncio.open_connection(host, port)

    async def output(self, session: str, job_id: str, follow: bool) -> AsyncIterator[str]:
        """The notebook's log file."""
        path = self.root / session / f"job-{job_id}.out"
        with path.open(errors="replace") as handle:
            while True:
                line = handle.readline()
                if line:
                    yield line.rstrip("\n")
                elif follow:
                    await asyncio.sleep(0.5)
                else:
                    return


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _wait_exit(
    pid: int, process: asyncio.subprocess.Process | None, timeout: float
) -> int | None:
    """The exit code, 1 when unknown (not our child), None on timeout."""
    if process is not None:
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            return None
    deadline = asyncio.get_running_loop().time() + timeout
    while _alive(pid):
        if asyncio.get_running_loop().time() >= deadline:
            return None
        await asyncio.sleep(0.5)
    return 1


async def _terminate(pid: int, process: asyncio.subprocess.Process | None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(_gone(pid), STOP_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


async def _gone(pid: int) -> None:
    while _alive(pid):  # noqa: ASYNC110 (a pid has no event to wait on)
        await asyncio.sleep(0.05)

