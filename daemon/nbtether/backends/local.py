"""The local backend (`kind: local`): notebooks as processes on this machine, no SSH, no SLURM.

A "job" is a Jupyter process in its own process group, so it outlives a daemon restart the
way a SLURM job does; its id is its pid, and a small 0600 file per job lets a restarted
daemon adopt it. That file also records the process's identity (boot and start time): a
pid that now belongs to another program is never adopted or signalled. Walltime and
restart policy work as on a cluster; the port is found as on a node (`jupyter_port`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from nbtether import jupyter, jupyter_port
from nbtether.backends import Streams
from nbtether.clock import Clock, system_clock
from nbtether.errors import NbtetherError, SubmissionRejected
from nbtether.jobs import Endpoint, JobInfo
from nbtether.openssh import Forward, OnEnd
from nbtether.spec import SessionSpec

log = structlog.get_logger(__name__)

STOP_GRACE = 5.0


@dataclass
class _Job:
    session: str
    pid: int
    identity: str  # process_identity(pid) when it was started
    private: Path  # the job's own runtime and config directories
    ends_at: datetime
    fingerprint: str | None = None
    port: int = 0  # known once Jupyter listens on it
    state: str = "RUNNING"

    def alive(self) -> bool:
        """The process still runs and is still this job's (not a reused pid)."""
        return process_identity(self.pid) == self.identity


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
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / "jobs").mkdir(mode=0o700, exist_ok=True)
        for meta in (self.root / "jobs").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                data = json.loads(meta.read_text())
                job = _Job(data["session"], int(data["pid"]), str(data["identity"]),
                           self.root / data["session"] / data["private"],
                           datetime.fromisoformat(data["ends_at"]), data.get("fingerprint"))
                inside = job.private.resolve().parent.parent == self.root.resolve()
                if inside and job.alive():
                    self._jobs[str(job.pid)] = job
                    self._supervise(job, None)
                    continue
                log.info("not adopting a stale or foreign notebook record", pid=job.pid)
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
        if job is None or not job.port or job.state != "RUNNING":
            return None
        return Endpoint(node="localhost", address="127.0.0.1", port=job.port)

    def unconfirmed(self, session: str) -> bool:
        """Never: a start either returns the process or fails without one."""
        return False

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
        """Start Jupyter with the token in a 0600 file, on a port the kernel picks."""
        directory = self._dir(session)
        token_file = directory / "token"
        _write_private(token_file, token)
        private = directory / f"job-{secrets.token_hex(4)}"
        for path in (private, private / "runtime", private / "config"):
            path.mkdir(mode=0o700)
        for name in jupyter.CONFIG_NAMES:
            _write_private(private / "config" / f"{name}.py", jupyter.CONFIG)
        root_dir = Path(spec.jupyter.root_dir).expanduser()
        env = {k: v for k, v in os.environ.items() if k != "JUPYTER_TOKEN"}
        env["JUPYTER_TOKEN_FILE"] = str(token_file)
        env["JUPYTER_RUNTIME_DIR"] = str(private / "runtime")
        env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
            [str(private / "config"), *filter(None, [os.environ.get("JUPYTER_CONFIG_PATH")])])
        as_root = ["--allow-root"] if os.geteuid() == 0 else []  # Jupyter refuses root otherwise
        output = private / "output"
        with os.fdopen(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                       "wb") as log_file:
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "jupyter", spec.jupyter.app, "--no-browser",
                    "--ip=127.0.0.1", "--port=0", f"--ServerApp.root_dir={root_dir}", *as_root,
                    stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                    env=env, start_new_session=True,
                    umask=0o077,  # Jupyter's own files (the browser-open file) name the token
                )
            except OSError as exc:
                shutil.rmtree(private, ignore_errors=True)
                raise SubmissionRejected(f"cannot start Jupyter: {exc}") from exc
        job_id = str(process.pid)
        output.rename(directory / f"job-{job_id}.out")
        job = _Job(session, process.pid, process_identity(process.pid) or "", private,
                   self._clock() + spec.resources.time, spec.job_fingerprint())
        self._jobs[job_id] = job
        meta = {"session": session, "pid": process.pid, "identity": job.identity,
                "private": private.name, "ends_at": job.ends_at.isoformat(),
                "fingerprint": job.fingerprint}
        _write_private(self.root / "jobs" / f"{job_id}.json", json.dumps(meta))
        self._supervise(job, process)
        return job_id

    def _supervise(self, job: _Job, process: asyncio.subprocess.Process | None) -> None:
        task = asyncio.create_task(self._follow(job, process))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self, job: _Job, process: asyncio.subprocess.Process | None) -> None:
        runtime = str(job.private / "runtime")
        while job.alive() and not job.port:
            port = await asyncio.to_thread(_serving_port, job.pid, runtime)
            job.port = port or 0
            if job.port:
                self._notify({job.session})
            else:
                await asyncio.sleep(jupyter_port.POLL)
        left = (job.ends_at - self._clock()).total_seconds()
        exited = await _wait_exit(job, process, max(left, 0.0))
        if exited is None:
            job.state = "TIMEOUT"
            await _terminate(job, process)
        elif job.state == "RUNNING":
            job.state = "COMPLETED" if exited == 0 else "FAILED"
        (self.root / "jobs" / f"{job.pid}.json").unlink(missing_ok=True)
        shutil.rmtree(job.private, ignore_errors=True)
        self._notify({job.session})

    async def cancel(self, job_ids: list[str]) -> None:
        """Stop the processes (TERM, then KILL after a grace period)."""
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is None:
                continue
            job.state = "CANCELLED"
            await _terminate(job, None)

    async def release(self, session: str) -> None:
        """Remove the session's token file and what Jupyter kept next to it."""
        for name in jupyter.SESSION_FILES:
            (self.root / session / name).unlink(missing_ok=True)

    async def open_connection(self, host: str, port: int) -> Streams:
        """A plain TCP connection on this machine."""
        return await asyncio.open_connection(host, port)

    def carry(self, client: socket.socket, host: str, port: int,
              on_end: OnEnd) -> Forward | None:
        """Local notebooks are one hop away: the tunnel copies their bytes itself."""
        return None

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


def _write_private(path: Path, text: str) -> None:
    """Write a file only this user can read (0600, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _serving_port(pid: int, runtime_dir: str) -> int | None:
    """Jupyter's port, proven by its own listening socket where /proc allows (Linux);
    elsewhere the port of its 0600 runtime file, once it accepts connections."""
    if Path("/proc/net/tcp").exists():
        return jupyter_port.held_port(pid, runtime_dir)
    port = jupyter_port.runtime_port(pid, runtime_dir)
    if port is not None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return port
    return None


def process_identity(pid: int) -> str | None:
    """What tells this process from a later one with the same pid: the boot and its start
    time (from /proc on Linux, from ps elsewhere). None when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # Linux, and no such process
        started = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True,
                                 text=True, check=False).stdout.strip()
        return started or None
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else f"{boot}:{fields[19]}"  # field 22: start time


async def _wait_exit(
    job: _Job, process: asyncio.subprocess.Process | None, timeout: float
) -> int | None:
    """The exit code, 1 when unknown (not our child), None on timeout."""
    if process is not None:
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            return None
    deadline = asyncio.get_running_loop().time() + timeout
    while job.alive():
        if asyncio.get_running_loop().time() >= deadline:
            return None
        await asyncio.sleep(0.5)
    return 1


async def _terminate(job: _Job, process: asyncio.subprocess.Process | None) -> None:
    """TERM, then KILL, the job's process group; never a group that a reused pid leads."""
    if not _ours(job, process):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(_gone(job), STOP_GRACE)
    except TimeoutError:
        if _ours(job, process):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, signal.SIGKILL)


def _ours(job: _Job, process: asyncio.subprocess.Process | None) -> bool:
    # An unreaped child keeps its pid; any other pid must still be the job's process.
    return (process is not None and process.returncode is None) or job.alive()


async def _gone(job: _Job) -> None:
    while job.alive():  # noqa: ASYNC110 (a pid has no event to wait on)
        await asyncio.sleep(0.05)

