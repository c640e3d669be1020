"""Observe, plan, act, persist: one pass over one session.

`plan()` decides; this module gathers what it needs to see (the file, the record, the
job, the tunnel) and carries out its actions against the backends and the tunnels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

import structlog

from nbtether.backends import Backend, Streams
from nbtether.backends.kinds import refusal
from nbtether.config import Settings
from nbtether.errors import LoginRequired, NbtetherError, PermanentError, SubmissionRejected
from nbtether.jobs import Endpoint
from nbtether.plan import (
    Cancel,
    Forget,
    Listen,
    Plan,
    Route,
    Seen,
    Submit,
    Unlisten,
    attempt_key,
    plan,
)
from nbtether.spec import SUFFIXES, SessionSpec, Spec, load_sessions
from nbtether.state import Record, StateStore
from nbtether.tunnel import Tunnel, probe

log = structlog.get_logger(__name__)

SERVING = ("pending", "starting", "ready", "handover", "login")
SUBMIT_RETRY = timedelta(seconds=30)


class Reconciler:
    """Makes each session's reality follow its file."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        backends: Mapping[str, Backend],
        wake: Callable[[str], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_phase: Callable[[str, Record], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.backends = backends
        self.records = store.load_all()
        self.tunnels: dict[str, Tunnel] = {}
        self._port_errors: dict[str, str] = {}
        self._wake = wake
        self._clock = clock
        self._on_phase = on_phase  # told (old phase, new record) after each phase change

    def names(self) -> set[str]:
        """Every session that has a file or a record."""
        return set(self.load_specs()) | set(self.records)

    def load_specs(self) -> dict[str, Spec]:
        """All session files, with ports already served kept by their sessions."""
        holders = {
            record.local_port: record.name
            for record in self.records.values()
            if record.local_port is not None and record.phase in SERVING
        }
        return load_sessions(self.settings.sessions_dir, self.settings.clusters, holders,
                             refusal(self.settings.clusters))

    async def reconcile(self, name: str) -> float | None:
        """One pass over one session; returns when to look again (None: on events only)."""
        spec = self.load_specs().get(name)
        record = self.records.get(name)
        if record is None:
            if spec is None:
                return None
            record = Record.new(name)
        if isinstance(spec, SessionSpec) and not record.cluster:
            record.cluster = spec.cluster
        backend = self.backends.get(record.cluster)
        seen = await self._observe(record, backend)
        outcome = plan(spec, record, seen, self._clock())
        if outcome.record is not None and isinstance(spec, SessionSpec):
            outcome.record.cluster = spec.cluster
        await self._act(name, spec, outcome, backend, seen)
        if outcome.record is not None:
            self._remember(record, outcome.record)
        return outcome.requeue_after

    def _file_version(self, name: str) -> str:
        """The session file's modification time: touching the file retries a failed session."""
        for suffix in SUFFIXES:
            with contextlib.suppress(OSError):
                return str((self.settings.sessions_dir / f"{name}{suffix}").stat().st_mtime_ns)
        return ""

    async def _observe(self, record: Record, backend: Backend | None) -> Seen:
        tunnel = self.tunnels.get(record.name)
        listening = tunnel.port if tunnel else None
        routed = tunnel.target if tunnel else None
        port_error = self._port_errors.get(record.name)
        if backend is None:
            return Seen(problem=None if not record.job_id else "cluster no longer configured",
                        listening=listening, routed=routed, port_error=port_error)
        problem = backend.problem()
        if problem:
            return Seen(problem=str(problem), blocked=isinstance(problem, PermanentError),
                        login=isinstance(problem, LoginRequired),
                        listening=listening, routed=routed, port_error=port_error)
        file_version = self._file_version(record.name)
        job = successor = None
        if record.job_id:
            job = await backend.job(record.job_id, record.submitted_at)
        if record.successor_id:
            successor = await backend.job(record.successor_id, record.submitted_at)
        endpoint = backend.endpoint(record.job_id) if record.job_id else None
        successor_endpoint = (
            backend.endpoint(record.successor_id) if record.successor_id else None
        )
        return Seen(
            file_version=file_version,
            job=job,
            successor=successor,
            endpoint=endpoint,
            successor_endpoint=successor_endpoint,
            answering=await self._answers(record, backend, endpoint, routed),
            successor_answering=await self._answers(record, backend, successor_endpoint, None),
            strays=tuple(backend.active_jobs(record.name)),
            listening=listening,
            routed=routed,
            port_error=port_error,
        )

    async def _answers(
        self, record: Record, backend: Backend, endpoint: Endpoint | None, routed: Endpoint | None
    ) -> bool:
        if endpoint is None:
            return False
        if record.phase == "ready" and routed == endpoint:
            return True  # serving already; a failing connection wakes us up
        return await probe(backend.open_connection, endpoint, record.token)

    async def _act(
        self, name: str, spec: Spec | None, outcome: Plan, backend: Backend | None, seen: Seen
    ) -> None:
        record = outcome.record
        for action in outcome.actions:
            match action:
                case Listen(port):
                    if not await self._listen(name, port):
                        return  # nothing else happens for a session without its port
                case Route(endpoint):
                    if tunnel := self.tunnels.get(name):
                        tunnel.point(endpoint)
                case Unlisten():
                    if tunnel := self.tunnels.pop(name, None):
                        await tunnel.close()
                    self._port_errors.pop(name, None)
                case Cancel(job_ids) if backend is not None and job_ids:
                    await backend.cancel(list(job_ids))
                case Submit(successor) if isinstance(spec, SessionSpec) and record is not None:
                    await self._submit(record, spec, seen, successor=successor)
                case Forget():
                    if backend is not None:
                        with contextlib.suppress(NbtetherError):
                            await backend.release(name)
                    self.records.pop(name, None)
                    self.store.delete(name)
                    self._port_errors.pop(name, None)
                    log.info("session removed", session=name)

    async def _submit(
        self, record: Record, spec: SessionSpec, seen: Seen, *, successor: bool
    ) -> None:
        backend = self.backends[spec.cluster]
        now = self._clock()
        try:
            job_id = await backend.submit(record.name, spec, record.token)
        except NbtetherError as exc:
            reason = f"rejected by SLURM: {exc}" if isinstance(exc, SubmissionRejected) \
                else str(exc)
            if successor:
                # The running job keeps serving; resubmit when its walltime ends instead.
                record.phase, record.no_handover_for = "ready", record.job_id
                record.message = f"cannot start a successor ({reason}); will resubmit at walltime"
            elif isinstance(exc, PermanentError):
                record.phase, record.message = "failed", reason
                record.given_up_on = attempt_key(spec, seen)
            else:
                record.message = f"submission failed, will retry: {reason}"
                record.retry_at = now + SUBMIT_RETRY
            return
        record.submitted_at = now
        if successor:
            record.successor_id = job_id
        else:
            record.job_id, record.message = job_id, "submitted"

    async def _listen(self, name: str, port: int) -> bool:
        old = self.tunnels.get(name)
        if old is not None and old.port == port:
            return True
        tunnel = Tunnel(port, self._opener(name), lambda: self._suspect(name))
        try:
            await tunnel.listen()
        except OSError as exc:
            self._port_errors[name] = f"local_port: 127.0.0.1:{port} is not free ({exc.strerror})"
            return False
        self._port_errors.pop(name, None)
        self.tunnels[name] = tunnel
        if old is not None:
            tunnel.point(old.target)
            await old.close()
        log.info("listening", session=name, port=port)
        return True

    def _suspect(self, name: str) -> None:
        """The tunnel could not reach the job: look at the session and its cluster again."""
        record = self.records.get(name)
        if record is not None and (backend := self.backends.get(record.cluster)):
            backend.look_soon()
        self._wake(name)

    def _opener(self, name: str) -> Callable[[str, int], Awaitable[Streams]]:
        async def open_to(host: str, port: int) -> Streams:
            record = self.records[name]
            return await self.backends[record.cluster].open_connection(host, port)

        return open_to

    def _remember(self, before: Record, after: Record) -> None:
        if before.phase != after.phase or (
            after.phase != "ready" and before.message != after.message
        ):
            log.info("session changed", session=after.name, phase=after.phase,
                     message=after.message, job_id=after.job_id)
        if after != before or after.name not in self.records:  # most passes change nothing
            self.store.save(after)
        self.records[after.name] = after
        if self._on_phase is not None and before.phase != after.phase:
            self._on_phase(before.phase, after)

    async def close(self) -> None:
        """Close every port; jobs keep running."""
        for tunnel in self.tunnels.values():
            await tunnel.close()
        self.tunnels.clear()

