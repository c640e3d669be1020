"""Batch schedulers over SSH: the I/O every scheduler backend shares.

The scheduler is asked as little as possible: one poll (`squeue`, `qstat`) for all sessions
per poll interval, never two polls closer than MIN_POLL_GAP, the accounting (`sacct`,
`qacct`) only for jobs that left the poll, and nothing in between. Jobs announce their
notebook and their end by writing files that a watcher on the login node reports at once,
so readiness, a walltime end and a confirmed cancellation cost no scheduler call at all.
What differs between schedulers is text only: a `Scheduler` (`slurm_text`, `sge_text`).
"""

from __future__ import annotations

import asyncio
import re
import shlex
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, Protocol

import asyncssh
import structlog

from nbtether import jupyter
from nbtether.backends import Streams, rendezvous
from nbtether.clock import Clock, monotonic, system_clock
from nbtether.config import ClusterConfig
from nbtether.errors import (
    ClusterUnreachable,
    NbtetherError,
    SubmissionRejected,
    SubmissionUnconfirmed,
)
from nbtether.jobs import Endpoint, JobInfo, JobState, unknown
from nbtether.openssh import Forward, OnEnd
from nbtether.remote import SshLink, bash
from nbtether.spec import SessionSpec

log = structlog.get_logger(__name__)

SUBMIT_TIMEOUT = 180.0  # sbatch retries busy controllers by itself for about two minutes
# Any two polls, periodic or asked for by an event, are at least this far apart: with
# squeue's 2 RPCs per call that is at most 3 RPCs per minute, whatever happens.
MIN_POLL_GAP = 40.0
SUBMIT_LOOK_DELAY = 3.0  # look at a new job soon after submitting, for its reason/node/end
TIMEOUT_SLACK = timedelta(seconds=5)  # an end this close to the walltime is the walltime
CANCEL_AGAIN_AFTER = 60.0  # a cancelled job still running this long later is cancelled again
PRUNE_EVERY = 600.0  # seconds between prunings of cached final states nobody asks about

LinkFactory = Callable[
    [str, ClusterConfig, Callable[[asyncssh.SSHClientConnection], Awaitable[None]],
     Callable[[], None], str | None],
    SshLink,
]


class Scheduler(Protocol):
    """A scheduler's text, without I/O: a module such as `slurm_text` satisfies it."""

    SUBMIT_COMMAND: str  # reads the batch script on stdin, prints the job id
    POLL_NAME: str  # the poll command's name, for messages: `squeue`
    POLL_COMMAND: str  # lists the user's jobs, including those that ended recently
    CONTROLLER_DOWN: re.Pattern[str]  # an error that means "not answering", not "no"
    ACCOUNTING_DELAY: float  # seconds an ended job may be missing from the accounting

    def render_script(self, spec: SessionSpec, *, instance: str, session: str,
                      cluster: ClusterConfig) -> str:
        """The batch script for one job of a session, with the site's settings."""

    def output_path(self, instance: str, session: str, job_id: str) -> str:
        """The job's output file, relative to the home directory."""

    def parse_submit(self, stdout: str) -> str:
        """The job id from SUBMIT_COMMAND's output."""

    def submit_error(self, stderr: str) -> str:
        """The scheduler's own words for a rejected submission."""

    def parse_poll(self, stdout: str, now: datetime) -> list[JobInfo]:
        """The jobs in POLL_COMMAND's output, states in SLURM's words."""

    def final_command(self, job_ids: list[str]) -> str:
        """Asks the accounting for jobs that the poll no longer lists."""

    def parse_final(self, stdout: str) -> list[JobInfo]:
        """The jobs in final_command's output."""

    def cancel_command(self, job_ids: list[str]) -> str:
        """Cancels jobs; cancelling a finished job is not an error."""


class BatchBackend:
    """One batch cluster reached over SSH; `scheduler` says how to speak to it."""

    scheduler: Scheduler

    def __init__(
        self,
        name: str,
        config: ClusterConfig,
        instance: str,
        on_change: Callable[[set[str] | None], None],
        watch_interval: float = 0.25,  # each wake-up of bash costs the login node CPU
        clock: Clock = system_clock,
        link: LinkFactory = SshLink,  # the simulation passes a simulated login node
        tunnels: bool = False,  # the daemon's: its sessions' connections may go to OpenSSH
    ) -> None:
        self.name = name
        self.config = config
        self.instance = instance
        self._notify = on_change
        self._watch_interval = watch_interval
        self._clock = clock
        carrier_key = f"{instance}-{name}" if tunnels and config.use_openssh else None
        self.link = link(name, config, self._on_connected, lambda: on_change(None), carrier_key)
        self._jobs: dict[str, JobInfo] = {}
        # The walltime end the poll gave while each job ran, kept while it is ending: a job
        # killed at its walltime may be listed as COMPLETING before its `.end` arrives.
        self._walltime_ends: dict[str, datetime] = {}
        self._finished: dict[str, JobInfo] = {}  # final states from the accounting
        self._forgotten: set[str] = set()  # jobs neither the poll nor the accounting knows
        self._polled_at: datetime | None = None
        self._last_seen: dict[str, datetime] = {}  # when each job was last in the poll
        self._scheduler_error: str | None = None
        self._endpoints: dict[str, Endpoint] = {}
        self._announced_at: dict[str, datetime] = {}
        self._runs: dict[str, int] = {}  # the latest run (SLURM_RESTART_COUNT) seen per job
        self._ended: dict[str, datetime] = {}  # the job's latest run announced its end
        self._reported: dict[str, set[str]] = {}  # announcement files the watcher reported
        self._cancelled: dict[str, float] = {}  # cancel sent (monotonic), end not yet seen
        self._asked: set[str] = set()  # jobs asked about since the last pruning
        self._unconfirmed: dict[str, datetime] = {}  # session → when a submission got lost
        self._pruned_at = -PRUNE_EVERY
        self._poll_lock = asyncio.Lock()
        self._last_poll = -MIN_POLL_GAP
        self._look_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.rpc_count = 0

    def start(self) -> None:
        """Connect in the background."""
        self.link.start()

    async def stop(self) -> None:
        """Disconnect; jobs keep running."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.link.stop()

    def problem(self) -> NbtetherError | None:
        """Why jobs cannot be observed right now."""
        if self.link.error is not None:
            return self.link.error
        if self._polled_at is None:
            return ClusterUnreachable(f"waiting for the first {self.scheduler.POLL_NAME}")
        return ClusterUnreachable(self._scheduler_error) if self._scheduler_error else None

    async def _on_connected(self, conn: asyncssh.SSHClientConnection) -> None:
        self._soon(self._watch())
        if self._polled_at is None:
            await self.poll()
        else:
            self.look_soon()  # a connection that comes and goes does not poll more often

    async def _watch(self) -> None:
        # Announcements already handled are not reported again after a reconnect.
        known = sorted(name for names in self._reported.values() for name in names)
        script = rendezvous.watch_script(self.instance, self._watch_interval, known)
        try:
            await self.link.stream_lines(bash(script), self._on_announcement)
        except (OSError, asyncssh.Error, ClusterUnreachable) as exc:
            log.info("job watcher stopped", cluster=self.name, error=str(exc))

    def _on_announcement(self, line: str) -> None:
        parsed = rendezvous.parse_announcement(line)
        if parsed is None:
            return
        job_id, run, kind, fields = parsed
        self._reported.setdefault(job_id, set()).add(f"{job_id}-{run}.{kind}")
        if run < self._runs.get(job_id, 0):
            return  # from before a requeue
        if run > self._runs.get(job_id, 0):
            self._ended.pop(job_id, None)
        self._runs[job_id] = run
        now = self._clock()
        if job_id in self._ended:
            return  # this run has ended already (the watcher lists files in name order)
        if kind == "ready" and len(fields) == 3 and fields[2].isdigit():
            self._endpoints[job_id] = Endpoint(node=fields[0], address=fields[1],
                                               port=int(fields[2]))
            self._announced_at[job_id] = now
            cached = self._jobs.get(job_id)
            if cached is None or cached.ends_at is None:
                self.look_soon()  # learn its walltime end, to recognise that end at once
        elif kind == "end":
            self._endpoints.pop(job_id, None)
            self._announced_at[job_id] = self._ended[job_id] = now
            if self._ended_by(job_id) is None:
                self.look_soon()  # neither its walltime nor our cancel: ask how it ended
        else:
            return
        self._notify(self._sessions_of([job_id]) or None)

    def _ended_by(self, job_id: str) -> JobInfo | None:
        """How a job that announced its end ended, when its own announcements tell."""
        ended_at = self._ended.get(job_id)
        cached = self._jobs.get(job_id)
        if ended_at is None or (cached is not None and cached.kind is JobState.ENDED):
            return None  # still running, or the poll already knows better
        name = cached.name if cached else ""
        node = cached.node if cached else None
        if job_id in self._cancelled:
            return JobInfo(job_id=job_id, name=name, state="CANCELLED", node=node)
        walltime_end = self._walltime_ends.get(job_id)
        if walltime_end is not None and ended_at >= walltime_end - TIMEOUT_SLACK:
            return JobInfo(job_id=job_id, name=name, state="TIMEOUT", node=node)
        return None

    def reconnect(self) -> None:
        """Log in again now (a person may have fixed the host key or the credentials)."""
        self.link.retry()

    def look_soon(self, delay: float = 0.0) -> None:
        """Poll soon after an event; events close together share one call, and no poll
        comes sooner than MIN_POLL_GAP after the previous one."""
        if self._look_scheduled:
            return
        due = max(monotonic() + delay, self._last_poll + MIN_POLL_GAP)
        self._look_scheduled = True
        self._soon(self._look_at(due))

    async def _look_at(self, due: float) -> None:
        try:
            await asyncio.sleep(max(0.0, due - monotonic()))
        finally:
            self._look_scheduled = False
        await self.poll()

    def _soon(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sessions_of(self, job_ids: list[str]) -> set[str]:
        sessions = set()
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            session = rendezvous.session_of(job.name, self.instance) if job else None
            if session:
                sessions.add(session)
        return sessions

    async def poll(self) -> None:
        """Refresh the cache of this daemon's jobs with one poll, then wake sessions.

        Skipped when the previous poll was less than MIN_POLL_GAP ago."""
        async with self._poll_lock:
            if monotonic() - self._last_poll < MIN_POLL_GAP:
                return
            self._last_poll = monotonic()
            started = self._clock()
            try:
                result = await self.link.run(self.scheduler.POLL_COMMAND)
            except NbtetherError as exc:  # a refused login too: problem() tells the sessions
                log.info("poll skipped", cluster=self.name, error=str(exc))
                return
            self.rpc_count += 1
            if result.exit_status != 0:
                self._scheduler_error = (f"{self.scheduler.POLL_NAME} failed: "
                                         f"{_text(result.stderr).strip()}")
                log.warning("poll failed", cluster=self.name, error=self._scheduler_error)
                self.look_soon()  # again as soon as the gap allows, not a whole interval later
            else:
                self._scheduler_error = None
                self._jobs = await self._observed({
                    job.job_id: job
                    for job in self.scheduler.parse_poll(_text(result.stdout), started)
                    if rendezvous.session_of(job.name, self.instance) is not None
                })
                self._walltime_ends = self._walltime_ends_of(self._jobs)
                self._last_seen.update(dict.fromkeys(self._jobs, started))
                self._polled_at = started
                self._unconfirmed = {s: at for s, at in self._unconfirmed.items() if at > started}
                self._forget_stale_endpoints(started)
                self._prune(started)
        self._notify(None)

    def _walltime_ends_of(self, jobs: dict[str, JobInfo]) -> dict[str, datetime]:
        """Each running job's walltime end, and the one remembered for each job that is
        ending; a job that waits again (requeued) gets its end anew once it runs."""
        ends: dict[str, datetime] = {}
        for job_id, job in jobs.items():
            if job.kind is JobState.RUNNING:
                end = job.ends_at
            elif job.kind is JobState.ENDING:
                end = self._walltime_ends.get(job_id)
            else:
                continue
            if end is not None:
                ends[job_id] = end
        return ends

    async def _observed(self, jobs: dict[str, JobInfo]) -> dict[str, JobInfo]:
        """This daemon's jobs as the poll lists them; a scheduler may add what it lacks."""
        return jobs

    def _forget_stale_endpoints(self, polled_at: datetime) -> None:
        """A job that waits again (requeued) or that the poll no longer lists at all (its
        node died unseen, long ago) no longer serves where it announced before this poll."""
        for job_id in list(self._endpoints):
            job = self._jobs.get(job_id)
            serving = job is not None and job.kind is JobState.RUNNING
            if not serving and self._announced_at.get(job_id, polled_at) < polled_at:
                del self._endpoints[job_id]
                self._ended.pop(job_id, None)  # requeued after it announced its end

    def _prune(self, polled_at: datetime) -> None:
        """Forget jobs that have ended for good, here and in the run directory, so neither
        grows with the number of jobs ever run."""
        gone = [
            job_id for job_id in self._runs
            if self._announced_at.get(job_id, polled_at) < polled_at
            and (job_id not in self._jobs or self._jobs[job_id].kind is JobState.ENDED)
        ]
        for job_id in gone:
            for memo in (self._runs, self._endpoints, self._announced_at, self._ended,
                         self._reported):
                memo.pop(job_id, None)
        for job_id in self._cancelled:
            if job_id not in self._jobs:
                # A cancelled job that left the poll has ended: no need to wait for the
                # accounting to say so (Grid Engine's qacct lags behind qstat).
                self._finished.setdefault(job_id, JobInfo(
                    job_id=job_id, name="", state="CANCELLED", reason="by nbtether"))
        self._cancelled = {job_id: at for job_id, at in self._cancelled.items()
                           if job_id in self._jobs
                           and self._jobs[job_id].kind is not JobState.ENDED}
        self._last_seen = {
            job_id: at for job_id, at in self._last_seen.items()
            if job_id in self._jobs
            or (polled_at - at).total_seconds() < self.scheduler.ACCOUNTING_DELAY
        }
        if gone:
            self._soon(self._forget_files(gone))
        if monotonic() - self._pruned_at >= PRUNE_EVERY:
            self._finished = {j: i for j, i in self._finished.items() if j in self._asked}
            self._forgotten &= self._asked
            self._asked.clear()
            self._pruned_at = monotonic()

    async def _forget_files(self, job_ids: list[str]) -> None:
        try:
            await self.link.run(rendezvous.forget_command(self.instance, job_ids))
        except ClusterUnreachable as exc:
            log.info("announcements not removed", cluster=self.name, error=str(exc))

    async def job(self, job_id: str, submitted_at: datetime | None) -> JobInfo | None:
        """The job as last seen; the accounting for jobs that the poll no longer lists."""
        problem = self.problem()
        if problem is not None:
            return unknown(job_id, str(problem))
        self._asked.add(job_id)
        if (ended := self._ended_by(job_id)) is not None:
            return ended
        cached = self._jobs.get(job_id)
        endpoint = self._endpoints.get(job_id)
        fresh = bool(self._polled_at and submitted_at and submitted_at >= self._polled_at)
        if endpoint and (cached.kind is JobState.WAITING if cached else fresh):
            # The job announced its notebook after the last poll: it runs. (An announcement
            # of a job the poll no longer lists is stale: a job killed by its walltime
            # leaves its `.ready` behind.)
            return JobInfo(job_id=job_id, name="", state="RUNNING", node=endpoint.node)
        if cached is not None:
            return cached
        if fresh:
            return JobInfo(job_id=job_id, name="", state="PENDING", reason="submitted")
        if job_id in self._finished:
            return self._finished[job_id]
        if job_id in self._forgotten:
            return None
        return await self._final(job_id)

    async def _final(self, job_id: str) -> JobInfo | None:
        try:
            result = await self.link.run(self.scheduler.final_command([job_id]))
        except NbtetherError as exc:
            return unknown(job_id, str(exc))
        self.rpc_count += 1
        if result.exit_status != 0:
            return unknown(job_id, f"accounting failed: {_text(result.stderr).strip()}")
        for job in self.scheduler.parse_final(_text(result.stdout)):
            if job.job_id == job_id:
                if job.kind is JobState.ENDED:
                    self._finished[job_id] = job
                return job
        seen = self._last_seen.get(job_id)
        if seen and (self._clock() - seen).total_seconds() < self.scheduler.ACCOUNTING_DELAY:
            return unknown(job_id, "waiting for the accounting record")
        self._forgotten.add(job_id)  # no accounting record: asking again will not help
        return None

    def endpoint(self, job_id: str) -> Endpoint | None:
        """Where the job's notebook listens, once announced."""
        return self._endpoints.get(job_id)

    def active_jobs(self, session: str) -> list[JobInfo]:
        """Jobs of this daemon for `session` that are queued or running."""
        return [
            job for job in self._jobs.values()
            if rendezvous.session_of(job.name, self.instance) == session
            and job.kind not in (JobState.ENDED, JobState.UNKNOWN)
            and self._ended_by(job.job_id) is None
        ]

    def unconfirmed(self, session: str) -> bool:
        """A submission's answer was lost and no poll since could show the job it made."""
        return session in self._unconfirmed

    async def submit(self, session: str, spec: SessionSpec, token: str) -> str:
        """Store the token (0600, through stdin) and submit the batch script (through stdin).

        When a submission's answer was lost, the next waits for a poll that could show
        the job it may have made (and that the reconciler then adopts).
        """
        lost = self._unconfirmed.get(session)
        if lost is not None:
            raise SubmissionUnconfirmed(
                f"waiting for {self.scheduler.POLL_NAME} to show the job an earlier "
                "submission may have made", delay=MIN_POLL_GAP)
        prepare = rendezvous.prepare_command(self.instance, session)
        prepared = await self.link.run(prepare, stdin=token)
        if prepared.exit_status != 0:
            raise ClusterUnreachable(f"cannot prepare {rendezvous.remote_dir(self.instance)}: "
                                     f"{_text(prepared.stderr).strip()}")
        script = self.scheduler.render_script(spec, instance=self.instance, session=session,
                                              cluster=self.config)
        try:
            result = await self.link.run(self.scheduler.SUBMIT_COMMAND, stdin=script,
                                         timeout=SUBMIT_TIMEOUT)
        except ClusterUnreachable as exc:  # sent, maybe run, answer lost
            self._unconfirmed[session] = self._clock()
            self.look_soon(SUBMIT_LOOK_DELAY)
            raise SubmissionUnconfirmed(str(exc), delay=MIN_POLL_GAP) from exc
        self.rpc_count += 1
        if result.exit_status != 0:
            message = self.scheduler.submit_error(_text(result.stderr))
            if self.scheduler.CONTROLLER_DOWN.search(message):
                raise ClusterUnreachable(message)
            raise SubmissionRejected(message)
        self.look_soon(SUBMIT_LOOK_DELAY)
        try:
            job_id = self.scheduler.parse_submit(_text(result.stdout))
        except ValueError as exc:  # the job may exist: the poll will show it, to be adopted
            self._unconfirmed[session] = self._clock()
            raise SubmissionUnconfirmed(str(exc), delay=MIN_POLL_GAP) from exc
        log.info("job submitted", cluster=self.name, session=session, job_id=job_id)
        return job_id

    async def cancel(self, job_ids: list[str]) -> None:
        """Ask the scheduler to cancel the jobs, without waiting for them to end.

        The end is confirmed later, by the job's own end announcement or by a poll; until
        then the jobs still count as running, and cancelling them again sends nothing."""
        now = monotonic()
        job_ids = [job_id for job_id in job_ids
                   if now - self._cancelled.get(job_id, -CANCEL_AGAIN_AFTER) >= CANCEL_AGAIN_AFTER]
        if not job_ids:
            return
        result = await self.link.run(self.scheduler.cancel_command(job_ids))
        self.rpc_count += 1
        # The command's exit status is that of the cleanup after it: judge by the words.
        if self.scheduler.CONTROLLER_DOWN.search(_text(result.stderr)):
            raise ClusterUnreachable(_text(result.stderr).strip())
        for job_id in job_ids:
            self._endpoints.pop(job_id, None)
            self._cancelled[job_id] = now
        self.look_soon(1.0)  # a queued job announces no end: the next poll confirms it
        log.info("jobs cancelled", cluster=self.name, job_ids=job_ids)

    async def release(self, session: str) -> None:
        """Remove the session's token file (and what Jupyter kept next to it) from the
        cluster."""
        directory = rendezvous.session_dir(self.instance, session)
        files = " ".join(shlex.quote(f"{directory}/{name}") for name in jupyter.SESSION_FILES)
        await self.link.run(f"rm -f {files}")

    async def open_connection(self, host: str, port: int) -> Streams:
        """A channel from the login node to the compute node's notebook."""
        return await self.link.open_connection(host, port)

    def carry(self, client: socket.socket, host: str, port: int,
              on_end: OnEnd) -> Forward | None:
        """Hand a connection to OpenSSH, to the compute node's notebook."""
        return self.link.carry(client, host, port, on_end)

    async def output(self, session: str, job_id: str, follow: bool) -> AsyncIterator[str]:
        """The job's output file, optionally followed."""
        path = shlex.quote(self.scheduler.output_path(self.instance, session, job_id))
        command = f"tail -n +1 {'-F' if follow else ''} {path}"
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                await self.link.stream_lines(command, queue.put_nowait)
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(pump())
        try:
            while (line := await queue.get()) is not None:
                yield line
        finally:
            task.cancel()


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""
