"""Observe, plan, act, persist: one pass over one session.

`plan()` decides; this module gathers what it needs to see (the file, the record, the
job, the tunnel) and carries out its actions against the backends and the tunnels. The
outcome of a failed `Listen` or `Submit` is observed like anything else and planned on at
once, in the same pass; the record is written before the cluster is touched, so a daemon
killed at any point restarts from what it meant to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import replace

import structlog

from nbtether.backends import Backend, Streams
from nbtether.backends.kinds import refusal
from nbtether.clock import Clock, system_clock
from nbtether.config import Settings
from nbtether.errors import LoginRequired, NbtetherError, PermanentError
from nbtether.jobs import Endpoint
from nbtether.jupyter_api import Opener, carry_kernels
from nbtether.openssh import Forward, OnEnd
from nbtether.plan import (
    Activity,
    Cancel,
    CarryKernels,
    Forget,
    Listen,
    Plan,
    Reconnect,
    Route,
    Seen,
    Sever,
    Submit,
    SubmitFailed,
    Unlisten,
    plan,
)
from nbtether.portpage import Waiting
from nbtether.spec import SUFFIXES, InvalidSpec, SessionSpec, Spec, load_sessions, session_files
from nbtether.state import Record, StateStore
from nbtether.trust import settled_listing
from nbtether.tunnel import Answer, Carrier, Tunnel, jupyter_activity, port_holder, probe

log = structlog.get_logger(__name__)

SERVING = ("pending", "starting", "ready", "handover", "login", "idle")
ROUNDS = 4  # plans per pass: a failed Listen or Submit is planned on at once

TunnelFactory = Callable[[int, Opener, Callable[[], None]], Tunnel]
Prober = Callable[[Opener, Endpoint, str], Awaitable[Answer]]
ActivityProbe = Callable[[Opener, Endpoint, str], Awaitable[Activity | None]]


class Reconciler:
    """Makes each session's reality follow its file."""

    def __init__(  # each part of the world it acts on is injectable, for the simulation
        self,
        settings: Settings,
        store: StateStore,
        backends: Mapping[str, Backend],
        wake: Callable[[str], None],
        clock: Clock = system_clock,
        on_phase: Callable[[str, Record], None] | None = None,
        tunnel: TunnelFactory = Tunnel,
        prober: Prober = probe,
        who_holds: Callable[[int], str | None] = port_holder,
        activity: ActivityProbe = jupyter_activity,
    ) -> None:
        self.settings = settings
        self.store = store
        self.backends = backends
        self.records = store.load_all()
        self.tunnels: dict[str, Tunnel] = {}
        self._port_errors: dict[str, str] = {}
        self._submit_failures: dict[str, SubmitFailed] = {}
        self._unreachable: set[str] = set()  # sessions whose tunnel failed to reach the job
        self._demanded: set[str] = set()  # sessions someone asked for while no notebook answered
        self._activity = activity
        self._wake = wake
        self._clock = clock
        self._on_phase = on_phase  # told (old phase, new record) after each phase change
        self._tunnel = tunnel
        self._probe = prober
        self._who_holds = who_holds
        # The last load of the session files: the settings and what it read, and its result.
        self._loaded: tuple[Settings, Hashable, dict[str, Spec]] | None = None

    def names(self) -> set[str]:
        """Every session that has a file or a record."""
        files = session_files(self.settings.sessions_dir)
        return {path.stem for path in files} | set(self.records)

    async def load_specs(self) -> dict[str, Spec]:
        """All session files, with ports already served kept by their sessions (an invalid
        file keeps its port: it changes nothing that runs).

        Read and parsed in a thread: however big or odd a file is, the tunnels keep moving.
        """
        holders = {
            record.local_port: record.name
            for record in self.records.values()
            if record.local_port is not None and record.phase in (*SERVING, "invalid")
        }
        holders.update({tunnel.port: name for name, tunnel in self.tunnels.items()})
        return await asyncio.to_thread(self._read_specs, self.settings, holders)

    def _read_specs(self, settings: Settings, holders: dict[int, str]) -> dict[str, Spec]:
        """`load_sessions`, or its last result (shared, not to be changed) while the
        settings, the ports held and every entry of the directory (by its stat) are as they
        were: a pass over one session validates every file, and most passes find all of them
        unchanged."""
        listing = settled_listing(settings.sessions_dir)
        read = (listing, tuple(sorted(holders.items())))
        loaded = self._loaded
        if listing is not None and loaded is not None and loaded[0] is settings \
                and loaded[1] == read:
            return loaded[2]
        specs = load_sessions(settings.sessions_dir, settings.clusters, holders,
                              refusal(settings.clusters),
                              clusters_from=settings.describe_clusters())
        self._loaded = (settings, read, specs) if listing is not None else None
        return specs

    async def reconcile(self, name: str) -> float | None:
        """One pass over one session; returns when to look again (None: on events only)."""
        spec = (await self.load_specs()).get(name)
        before = self.records.get(name)
        if before is None:
            if spec is None:
                return None
            before = Record.new(name)
        record = before.model_copy()
        if isinstance(spec, SessionSpec):
            record.cluster = spec.cluster
        elif isinstance(spec, InvalidSpec) and spec.cluster and not record.cluster:
            record.cluster = spec.cluster  # so that saving it retries a refused login
        backend = self.backends.get(record.cluster)
        outcome = Plan(record)
        watch_idle = isinstance(spec, SessionSpec) and spec.idle_stop is not None
        for _ in range(ROUNDS):
            seen = await self._observe(record, backend, watch_idle=watch_idle)
            outcome = plan(spec, record, seen, self._clock())
            if outcome.record is not None:
                self._save(outcome.record)  # the intent, before anything is done about it
            done = await self._act(name, spec, outcome, backend)
            if outcome.record is None:
                return None
            record = outcome.record
            self._save(record)
            if done:
                break
        if tunnel := self.tunnels.get(name):
            tunnel.show(waiting(record))
        self._remember(before, record)
        return outcome.requeue_after

    def _file_version(self, name: str) -> str:
        """The session file's modification time: touching the file retries a failed session."""
        for suffix in SUFFIXES:
            with contextlib.suppress(OSError):
                return str((self.settings.sessions_dir / f"{name}{suffix}").stat().st_mtime_ns)
        return ""

    async def _observe(
        self, record: Record, backend: Backend | None, *, watch_idle: bool = False
    ) -> Seen:
        name = record.name
        tunnel = self.tunnels.get(name)
        listening = tunnel.port if tunnel else None
        routed = tunnel.target if tunnel else None
        own = Seen(
            file_version=self._file_version(name),
            listening=listening,
            routed=routed,
            port_error=self._port_errors.pop(name, None),
            submit_failed=self._submit_failures.pop(name, None),
            demanded=self._take_demand(name),
        )
        if backend is None:
            gone = None if not record.job_id else "cluster no longer configured"
            return replace(own, problem=gone)
        problem = backend.problem()
        if problem:
            return replace(own, problem=str(problem), blocked=isinstance(problem, PermanentError),
                           login=isinstance(problem, LoginRequired))
        suspect = name in self._unreachable
        self._unreachable.discard(name)
        job = successor = None
        if record.job_id:
            job = await backend.job(record.job_id, record.submitted_at)
        if record.successor_id:
            successor = await backend.job(record.successor_id, record.successor_submitted_at)
        endpoint = backend.endpoint(record.job_id) if record.job_id else None
        successor_endpoint = (
            backend.endpoint(record.successor_id) if record.successor_id else None
        )
        answer = await self._answers(record, backend, endpoint, routed, suspect)
        successor_answer = await self._answers(record, backend, successor_endpoint, None)
        activity = None
        if watch_idle and endpoint is not None and answer is Answer.READY and \
                record.phase == "ready" and routed == endpoint:
            activity = await self._activity(backend.open_connection, endpoint, record.token)
        return replace(
            own,
            activity=activity,
            job=job,
            successor=successor,
            endpoint=endpoint,
            successor_endpoint=successor_endpoint,
            answering=answer is Answer.READY,
            successor_answering=successor_answer is Answer.READY,
            unprotected=answer is Answer.OPEN,
            successor_unprotected=successor_answer is Answer.OPEN,
            strays=tuple(backend.active_jobs(name)),
            unconfirmed=backend.unconfirmed(name),
        )

    async def _answers(
        self, record: Record, backend: Backend, endpoint: Endpoint | None,
        routed: Endpoint | None, suspect: bool = False,
    ) -> Answer:
        if endpoint is None:
            return Answer.NOT_YET
        if record.phase in ("ready", "handover") and routed == endpoint and not (
                record.phase == "handover" and suspect):
            # Serving already; a failing connection wakes us up. During a handover it is
            # probed then, since a job that stopped answering is switched away from, and a
            # busy server that misses one probe must not lose its kernel early.
            return Answer.READY
        return await self._probe(backend.open_connection, endpoint, record.token)

    async def _act(
        self, name: str, spec: Spec | None, outcome: Plan, backend: Backend | None
    ) -> bool:
        """Carry out the actions in order; False when one failed (its failure is observed)."""
        record = outcome.record
        for action in outcome.actions:
            match action:
                case Listen(port):
                    if not await self._listen(name, port):
                        return False
                case CarryKernels(old, new) if backend is not None and record is not None:
                    await carry_kernels(backend.open_connection, old, new, record.token)
                case Route(endpoint):
                    if tunnel := self.tunnels.get(name):
                        tunnel.point(endpoint)
                case Sever(endpoint):
                    if tunnel := self.tunnels.get(name):
                        await tunnel.sever(endpoint)
                case Unlisten():
                    if tunnel := self.tunnels.pop(name, None):
                        await tunnel.close()
                case Cancel(job_ids) if backend is not None and job_ids:
                    await backend.cancel(list(job_ids))
                case Submit(successor) if isinstance(spec, SessionSpec) and record is not None:
                    if not await self._submit(record, spec, successor=successor):
                        return False
                case Reconnect() if backend is not None:
                    backend.reconnect()
                case Forget():
                    if backend is not None:
                        with contextlib.suppress(NbtetherError):
                            await backend.release(name)
                    self.records.pop(name, None)
                    self.store.delete(name)
                    log.info("session removed", session=name)
        return True

    async def _submit(self, record: Record, spec: SessionSpec, *, successor: bool) -> bool:
        try:
            job_id = await self.backends[spec.cluster].submit(record.name, spec, record.token)
        except NbtetherError as exc:
            log.info("submission failed", session=record.name, error=str(exc))
            self._submit_failures[record.name] = SubmitFailed(exc, successor)
            return False
        # When sbatch returned, not when the pass began: a poll that started before this
        # may not list the job, and the job must read as "submitted", not as gone.
        if successor:
            record.successor_id, record.successor_submitted_at = job_id, self._clock()
        else:
            record.job_id, record.submitted_at = job_id, self._clock()
            record.message = "submitted"
        return True

    async def _listen(self, name: str, port: int) -> bool:
        old = self.tunnels.get(name)
        if old is not None and old.port == port:
            return True
        tunnel = self._tunnel(port, self._opener(name), lambda: self._suspect(name))
        try:
            await tunnel.listen()
        except OSError as exc:
            holder = self._who_holds(port) or "another program"
            self._port_errors[name] = f"local_port: 127.0.0.1:{port} is held by {holder} " \
                f"({exc.strerror})"
            return False
        tunnel.on_demand = lambda: self._demand(name)
        tunnel.carrier = self._carrier(name)
        self.tunnels[name] = tunnel
        if old is not None:
            tunnel.point(old.target)
            await old.close()
        log.info("listening", session=name, port=port)
        return True

    def _demand(self, name: str) -> None:
        """A request reached the port while no notebook answered: someone wants one."""
        if name not in self._demanded:
            self._demanded.add(name)
            self._wake(name)

    def _take_demand(self, name: str) -> bool:
        if name in self._demanded:
            self._demanded.discard(name)
            return True
        return False

    def _suspect(self, name: str) -> None:
        """The tunnel could not reach the job: look at the session and its cluster again."""
        self._unreachable.add(name)
        record = self.records.get(name)
        if record is not None and (backend := self.backends.get(record.cluster)):
            backend.look_soon()
        self._wake(name)

    def _opener(self, name: str) -> Callable[[str, int], Awaitable[Streams]]:
        async def open_to(host: str, port: int) -> Streams:
            record = self.records[name]
            return await self.backends[record.cluster].open_connection(host, port)

        return open_to

    def _carrier(self, name: str) -> Carrier:
        def carry(client: socket.socket, host: str, port: int, on_end: OnEnd) -> Forward | None:
            record = self.records[name]
            return self.backends[record.cluster].carry(client, host, port, on_end)

        return carry

    def _save(self, record: Record) -> None:
        if record != self.records.get(record.name):  # most passes change nothing
            self.store.save(record)
            self.records[record.name] = record.model_copy()

    def _remember(self, before: Record, after: Record) -> None:
        if before.job_id is not None and after.job_id != before.job_id:
            after.previous_job_id = before.job_id
        if before.phase != after.phase or (
            after.phase != "ready" and before.message != after.message
        ):
            log.info("session changed", session=after.name, phase=after.phase,
                     message=after.message, job_id=after.job_id)
        if self._on_phase is not None and before.phase != after.phase:
            self._on_phase(before.phase, after)

    async def close(self) -> None:
        """Close every port; jobs keep running."""
        for tunnel in self.tunnels.values():
            await tunnel.close()
        self.tunnels.clear()


def waiting(record: Record) -> Waiting | None:
    """What the port's page says for this record (None: a notebook answers, or is taking
    over this moment, so connections are held for it)."""
    if record.phase in ("ready", "handover"):
        return None
    return Waiting(
        name=record.name, phase=record.phase, message=record.message, job_id=record.job_id,
        submitted_at=record.submitted_at, starts_at=record.starts_at,
        previous=record.last_end, cluster=record.cluster,
    )
