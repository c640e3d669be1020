"""A simulated SLURM cluster and login node, speaking the same text as the real ones.

The daemon's real `SlurmBackend` runs against it: `SimLink` stands in for `SshLink` (the
SSH connection) and answers the backend's commands (`squeue`, `sacct`, `sbatch`,
`scancel`, the token upload, the run-directory watcher) from an in-memory cluster that
behaves as observed on the mini-cluster (tests/cluster, tests/unit/captured) and as the
SLURM documentation says: queue waits, RUNNING → COMPLETING → an end state, TIMEOUT at
walltime, NODE_FAIL with requeue under the same id (restart count + 1), PREEMPTED,
CANCELLED, squeue forgetting ended jobs after MinJobAge while sacct remembers, a
controller that stops answering, a login node that goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from nbtether.backends import slurm_text
from nbtether.errors import ClusterUnreachable, HostKeyError

if TYPE_CHECKING:
    from tests.sim.world import World

MIN_JOB_AGE = 300.0  # slurm.conf default: squeue lists ended jobs this long
KILL_WAIT = 5.0  # the mini-cluster's KillWait: COMPLETING lasts at most this long
NODES = {"c1": "127.0.0.2", "c2": "127.0.0.3"}
CONTROLLER_DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"


@dataclass
class SimJob:
    """One job as slurmctld knows it."""

    job_id: str
    name: str
    comment: str
    limit: timedelta
    token: str  # the token file's content when the job was submitted
    state: str = "PENDING"
    reason: str = "Priority"
    node: str = ""
    run: int = 0  # SLURM_RESTART_COUNT
    started: datetime | None = None
    ended: datetime | None = None
    port: int = 0
    answering: bool = False  # Jupyter accepts connections with the token
    recorded_at: datetime | None = None  # when sacct starts to know the job
    used_at: datetime | None = None  # the user last ran code in its Jupyter
    busy_until: datetime | None = None  # a kernel computes until then
    cancelled_at: datetime | None = None  # when scancel reached it first

    @property
    def live(self) -> bool:
        """Queued or running, not on its way out."""
        return self.state in ("PENDING", "RUNNING")


@dataclass
class Announcement:
    """A file in the run directory: `<jobid>-<run>.ready|end` and its one line."""

    file: str
    line: str


@dataclass
class SimCluster:
    """slurmctld, slurmdbd, the compute nodes and the shared filesystem, in memory."""

    world: World
    jobs: dict[str, SimJob] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # session → token file
    run_dir: dict[str, Announcement] = field(default_factory=dict)
    controller_up: bool = True
    login_up: bool = True
    host_key_changed: bool = False
    squeue_times: list[tuple[float, int]] = field(default_factory=list)  # (sent, daemon life)
    submissions: list[tuple[float, SimJob]] = field(default_factory=list)
    _next_id: int = 1000
    _events: list[tuple[datetime, int, Callable[[], None]]] = field(default_factory=list)
    _seq: int = 0
    _watchers: list[Callable[[Announcement], None]] = field(default_factory=list)

    # -- time ----------------------------------------------------------------------------

    def at(self, delay: float, action: Callable[[], None]) -> None:
        """Do `action` on the cluster `delay` seconds from now (cluster time is wall time)."""
        self._seq += 1
        heapq.heappush(self._events, (self.world.wall() + timedelta(seconds=delay), self._seq,
                                      action))
        asyncio.get_running_loop().call_later(delay, self.catch_up)

    def catch_up(self) -> None:
        """Run every cluster event that is due (after the laptop slept, many at once)."""
        now = self.world.wall()
        while self._events and self._events[0][0] <= now:
            _, _, action = heapq.heappop(self._events)
            action()

    # -- jobs ----------------------------------------------------------------------------

    def session_of(self, job: SimJob) -> str | None:
        """The session a job belongs to (any daemon instance)."""
        match = re.fullmatch(r"nbtether-[0-9a-f]+-(.+)", job.name)
        return match[1] if match else None

    def live_jobs(self, session: str) -> list[SimJob]:
        """The session's jobs that are queued or running."""
        return [job for job in self.jobs.values() if job.live and self.session_of(job) == session]

    def _start(self, job: SimJob, run: int) -> None:
        if job.state != "PENDING" or job.run != run:
            return
        rng = self.world.rng
        job.state, job.reason, job.node = "RUNNING", "", rng.choice(sorted(NODES))
        job.started = self.world.wall()
        job.port = rng.randrange(40000, 60000)
        self.at(job.limit.total_seconds(), lambda: self._timeout(job, run))
        if rng.random() < self.world.faults.jupyter_fails:
            self.at(rng.uniform(2, 20), lambda: self._exit(job, run, "FAILED", 1))
        else:
            self.at(rng.uniform(2, 30), lambda: self._jupyter_up(job, run))

    def _jupyter_up(self, job: SimJob, run: int) -> None:
        if job.state != "RUNNING" or job.run != run:
            return
        job.answering = True
        self._announce(f"{job.job_id}-{run}.ready", f"{job.node} {NODES[job.node]} {job.port}")

    def _announce(self, file: str, line: str) -> None:
        note = Announcement(file, line)
        self.run_dir[file] = note
        for watcher in list(self._watchers):
            watcher(note)

    def _exit(self, job: SimJob, run: int, final: str, status: int) -> None:
        """Jupyter ended (crash, timeout's SIGTERM, scancel): `.end`, then COMPLETING."""
        if job.state != "RUNNING" or job.run != run:
            return
        job.answering = False
        job.state, job.reason = "COMPLETING", ""
        self._announce(f"{job.job_id}-{run}.end", str(status))
        self.at(self.world.rng.uniform(0.5, KILL_WAIT), lambda: self._end(job, final))

    def _end(self, job: SimJob, final: str) -> None:
        job.state, job.ended, job.answering = final, self.world.wall(), False

    def _timeout(self, job: SimJob, run: int) -> None:
        self._exit(job, run, "TIMEOUT", 143)

    def fail_node(self, job: SimJob, requeue: bool) -> None:
        """The job's node dies: no `.end` is written; with JobRequeue the job queues again."""
        if job.state != "RUNNING":
            return
        job.answering = False
        if requeue:
            job.run += 1
            job.state, job.reason, job.node, job.started = "PENDING", "BeginTime", "", None
            run = job.run
            self.at(self.world.rng.uniform(60, 180), lambda: self._start(job, run))
        else:
            self._end(job, "NODE_FAIL")

    def preempt(self, job: SimJob) -> None:
        """A higher-priority job takes the node."""
        self._exit(job, job.run, "PREEMPTED", 143)

    def crash(self, job: SimJob) -> None:
        """Jupyter dies on its own."""
        self._exit(job, job.run, "FAILED", 1)

    def cancel(self, job: SimJob) -> None:
        """scancel: a queued job ends at once, a running one through COMPLETING."""
        if job.state == "PENDING":
            self._end(job, "CANCELLED")
        elif job.state == "RUNNING":
            self._exit(job, job.run, "CANCELLED", 143)

    # -- the login node's commands --------------------------------------------------------

    def execute(self, command: str, stdin: str | None) -> SimpleNamespace:
        """Run one of the backend's commands; anything else is a gap in the simulation."""
        self.catch_up()
        for token in self.tokens.values():
            assert token not in command, "the token reached a command line"
        if command == slurm_text.POLL_COMMAND:
            return self._squeue()
        if command.startswith("sacct "):
            return self._sacct(command)
        if command == slurm_text.SUBMIT_COMMAND:
            return self._sbatch(stdin or "")
        if command.startswith("scancel "):
            return self._scancel(command)
        if command.startswith("umask 077 && mkdir -p "):
            session = shlex.split(command)[6].rsplit("/", 1)[1]
            self.tokens[session] = stdin or ""
            return _done()
        if command.startswith("rm -f ") and "/run/" in command:  # announcements
            for word in shlex.split(command)[2:]:
                prefix = word.rsplit("/", 1)[1].rstrip("*")
                for file in [f for f in self.run_dir if f.startswith(prefix)]:
                    del self.run_dir[file]
            return _done()
        if command.startswith("rm -f "):  # a deleted session's token
            self.tokens.pop(shlex.split(command)[2].rsplit("/", 2)[1], None)
            return _done()
        raise AssertionError(f"the simulated login node cannot run {command!r}")

    def _squeue(self) -> SimpleNamespace:
        if not self.controller_up:
            return _done(1, stderr=CONTROLLER_DOWN)
        now = self.world.wall()
        rows = []
        for job in self.jobs.values():
            if job.ended is not None and (now - job.ended).total_seconds() > MIN_JOB_AGE:
                continue
            left = ""
            if job.state == "RUNNING" and job.started is not None:
                seconds = max(0, int((job.started + job.limit - now).total_seconds()))
                left = f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
            start = (now + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%S") \
                if job.state == "PENDING" else "N/A"
            rows.append(f"{job.job_id}|{job.state}|{job.reason or 'None'}|{job.node}|{left}|"
                        f"{job.name}|{start}|{job.comment or '(null)'}")
        return _done(stdout="\n".join(rows) + "\n")

    def _sacct(self, command: str) -> SimpleNamespace:
        if not self.controller_up:
            return _done(1, stderr="sacct: error: Problem talking to the database")
        ids = shlex.split(command)[shlex.split(command).index("-j") + 1].split(",")
        now = self.world.wall()
        rows = [f"{job.job_id}|{job.name}|{job.state}|{job.node or 'None assigned'}"
                for job_id in ids if (job := self.jobs.get(job_id))
                and job.recorded_at <= now]  # slurmdbd records jobs asynchronously
        return _done(stdout="\n".join(rows) + "\n")

    def _sbatch(self, script: str) -> SimpleNamespace:
        if not self.controller_up:
            return _done(1, stderr="sbatch: error: Batch job submission failed: Unable to "
                                   "contact slurm controller (connect failure)")
        directives = dict(re.findall(r"^#SBATCH --([a-z-]+)=(.*)$", script, re.MULTILINE))
        name = directives["job-name"]
        session = name.split("-", 2)[2]
        token = self.tokens.get(session, "")
        assert token and token not in script, "a job must find its token in the 0600 file only"
        self._next_id += 1
        days, _, clock = directives["time"].rpartition("-")
        hours, minutes, seconds = (int(part) for part in clock.split(":"))
        job = SimJob(job_id=str(self._next_id), name=name, comment=directives.get("comment", ""),
                     limit=timedelta(days=int(days or 0), hours=hours, minutes=minutes,
                                     seconds=seconds), token=token)
        job.recorded_at = self.world.wall() + timedelta(seconds=self.world.rng.uniform(0, 20))
        self.jobs[job.job_id] = job
        self.submissions.append((asyncio.get_running_loop().time(), job))
        self.at(self.world.rng.uniform(0.5, self.world.faults.queue_wait),
                lambda: self._start(job, 0))
        if self.world.rng.random() < self.world.faults.garbled_sbatch:
            return _done(stdout="job_submit.lua: your job was routed to the default queue\n")
        return _done(stdout=f"{job.job_id}\n")

    def _scancel(self, command: str) -> SimpleNamespace:
        if not self.controller_up:
            return _done(1, stderr="scancel: error: Unable to contact slurm controller "
                                   "(connect failure)")
        words = shlex.split(command.split(";", 1)[0])
        for job_id in words[1:]:
            if job := self.jobs.get(job_id):
                job.cancelled_at = job.cancelled_at or self.world.wall()
                self.cancel(job)
            for file in [f for f in self.run_dir if f.startswith(f"{job_id}-")]:
                del self.run_dir[file]
        return _done()

    def watch(self, on_note: Callable[[Announcement], None]) -> Callable[[], None]:
        """Follow the run directory as the login-node watcher does; returns the unsubscribe."""
        self._watchers.append(on_note)
        return lambda: self._watchers.remove(on_note)


def _done(status: int = 0, stdout: str = "", stderr: str = "") -> SimpleNamespace:
    return SimpleNamespace(exit_status=status, stdout=stdout, stderr=stderr)


class SimLink:
    """`SshLink` for the simulated login node: latency, drops, refused host keys."""

    def __init__(self, world: World, name: str, config: Any,
                 on_up: Callable[[Any], Any], on_change: Callable[[], None],
                 carrier_key: str | None) -> None:
        self.world = world
        self.name = name
        self.config = config
        self.error: Exception | None = ClusterUnreachable("not connected yet")
        self._on_up = on_up
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._lost: asyncio.Event | None = None  # set when the current connection drops
        self._retry_now = asyncio.Event()
        self.life = world.lives  # which daemon process this link belongs to
        world.links.append(self)

    @property
    def cluster(self) -> SimCluster:
        return self.world.cluster

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def retry(self) -> None:
        self._retry_now.set()

    def drop(self) -> None:
        """The TCP connection dies (the login node rebooted, the laptop slept …)."""
        if self._lost is not None:
            self._lost.set()

    async def _supervise(self) -> None:
        rng = self.world.rng
        delay = 1.0
        while True:
            await asyncio.sleep(rng.uniform(0.05, 0.3))  # connecting
            if not self.cluster.login_up or self.cluster.host_key_changed:
                permanent = self.cluster.login_up
                self.error = HostKeyError("host key of the login node has changed") if permanent \
                    else ClusterUnreachable("login node: Connection refused")
                self._on_change()
                wait = 600.0 if permanent else delay * rng.uniform(0.5, 1.0)
                delay = min(delay * 2, 5.0)
                self._retry_now.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._retry_now.wait(), wait)
                continue
            delay = 1.0
            lost = self._lost = asyncio.Event()
            self.error = None
            try:
                await self._on_up(None)
            except Exception as exc:  # as SshLink: a failing handler does not end supervision
                self.world.note(f"connection handler failed: {exc!r}")
            self._on_change()
            await lost.wait()
            self._lost = None
            self.error = ClusterUnreachable("connection to the login node lost")
            self._on_change()

    async def _latency(self, lost: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(lost.wait(), self.world.rng.uniform(0.02, 0.4))
        except TimeoutError:
            return
        raise ClusterUnreachable("connection to the login node lost")

    async def run(self, command: str, *, stdin: str | None = None,
                  timeout: float = 60.0) -> SimpleNamespace:
        lost = self._lost
        if lost is None:
            raise self.error or ClusterUnreachable("not connected")
        if command == slurm_text.POLL_COMMAND:
            self.cluster.squeue_times.append((asyncio.get_running_loop().time(), self.life))
        await self._latency(lost)
        result = self.cluster.execute(command, stdin)
        await self._latency(lost)  # a drop here loses the answer of a command that did run
        return result

    async def stream_lines(self, command: str, on_line: Callable[[str], None]) -> None:
        lost = self._lost
        if lost is None:
            raise self.error or ClusterUnreachable("not connected")
        assert "read -r -t" in command, f"unexpected long-running command {command!r}"
        script = shlex.split(command)[-1]  # `exec bash -c <script>`
        known = set(re.search(r"seen=' ([^']*) '", script)[1].split())  # type: ignore[index]

        def deliver(note: Announcement) -> None:
            later = self.world.rng.uniform(0.1, 1.0)  # the watcher's poll and the channel

            def send() -> None:
                if not lost.is_set():
                    on_line(f"{note.file} {note.line}")

            asyncio.get_running_loop().call_later(later, send)

        for note in sorted(self.cluster.run_dir.values(), key=lambda note: note.file):
            if note.file not in known:
                deliver(note)  # a new watcher reports the files there that it was not told
        unsubscribe = self.cluster.watch(deliver)
        try:
            await lost.wait()
        finally:
            unsubscribe()

    async def open_connection(self, host: str, port: int) -> Any:
        raise ClusterUnreachable("the simulation has no byte streams; see SimTunnel")
