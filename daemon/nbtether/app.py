"""The daemon: wires the watcher, the timers, the work queue, the backends and the reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable

import structlog

from nbtether.backends import Backend
from nbtether.backends.batch import BatchBackend
from nbtether.backends.kinds import make_backend
from nbtether.clock import Clock, every, system_clock
from nbtether.config import Settings
from nbtether.control import ControlServer, socket_path
from nbtether.desktop import DesktopNotifier
from nbtether.errors import ConfigError
from nbtether.reconciler import Reconciler
from nbtether.remote import Person, SshLink
from nbtether.sdnotify import Notifier
from nbtether.state import StateStore
from nbtether.tunnel import raise_descriptor_limit
from nbtether.watcher import watch_sessions
from nbtether.workqueue import WorkQueue

log = structlog.get_logger(__name__)

RESYNC_SECONDS = 60.0  # look at every session even without events, in case one was missed
HEARTBEAT_SECONDS = 5.0


class Daemon:
    """`nbtether run`: reconcile until SIGTERM or SIGINT; jobs outlive the daemon."""

    def __init__(self, settings: Settings, clock: Clock = system_clock) -> None:
        self.settings = settings
        self.clock = clock
        self.store = StateStore(settings.state_dir)
        self.stopping = asyncio.Event()
        self.notifier = Notifier()
        self.desktop = DesktopNotifier() if settings.notifications else None
        self.queue = WorkQueue(self._reconcile)
        self.backends: dict[str, Backend] = {}
        self.reconciler: Reconciler | None = None
        self._timers: list[asyncio.Task[None]] = []

    def _wake_cluster(self, cluster: str, sessions: set[str] | None) -> None:
        assert self.reconciler is not None
        for name, record in self.reconciler.records.items():
            if record.cluster == cluster and (sessions is None or name in sessions):
                self.queue.add(name)

    def _make_backends(self, instance: str) -> dict[str, Backend]:
        backends: dict[str, Backend] = {}
        for name, config in self.settings.clusters.items():

            def wake(sessions: set[str] | None, cluster: str = name) -> None:
                self._wake_cluster(cluster, sessions)

            backends[name] = make_backend(name, config, instance, self.store.root, wake,
                                          self.clock)
        return backends

    async def _login(self, cluster: str, person: Person) -> str:
        """`nbtether login CLUSTER`: connect with a person answering the login node."""
        backend = self.backends.get(cluster)
        if backend is None:
            raise ConfigError(f"no cluster named {cluster!r} in the daemon's config")
        link = getattr(backend, "link", None)
        if not isinstance(link, SshLink):
            raise ConfigError(f"cluster {cluster} runs notebooks on this machine: "
                              "there is nothing to log in to")
        await link.login(person)
        return f"{cluster} is connected"

    async def _reconcile(self, name: str) -> float | None:
        assert self.reconciler is not None
        with structlog.contextvars.bound_contextvars(session=name):
            return await self.reconciler.reconcile(name)

    def _resync(self) -> None:
        assert self.reconciler is not None
        for name in self.reconciler.names():
            self.queue.add(name)

    def _heartbeat(self) -> None:
        assert self.reconciler is not None
        phases = Counter(record.phase for record in self.reconciler.records.values())
        summary = ", ".join(f"{count} {phase}" for phase, count in sorted(phases.items()))
        self.notifier.send(f"STATUS={summary or 'no sessions'}")
        self.store.write_status({"pid": os.getpid(), "heartbeat": self.clock().isoformat()})

    def _make_reconciler(self) -> Reconciler:
        return Reconciler(
            self.settings, self.store, self.backends, self.queue.add, self.clock,
            on_phase=self.desktop.phase_changed if self.desktop else None,
        )

    def start(self) -> None:
        """Connect the backends, start the timers and the workers, and look at every session."""
        instance = self.store.instance_id()
        self.backends = self._make_backends(instance)
        self.reconciler = self._make_reconciler()
        log.info("nbtether starting", instance=instance, sessions=str(self.settings.sessions_dir))
        for backend in self.backends.values():
            backend.start()
            if isinstance(backend, BatchBackend):
                self._every(backend.config.poll_interval, backend.poll)
        self._every(RESYNC_SECONDS, self._resync)
        self.queue.start()
        self._resync()

    def _every(self, seconds: float, tick: Callable[[], Awaitable[None] | None]) -> None:
        self._timers.append(asyncio.create_task(every(seconds, tick)))

    async def stop(self) -> None:
        """Stop the timers, the workers, the ports and the backends; jobs keep running."""
        for timer in self._timers:
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        await self.queue.stop()
        if self.reconciler is not None:
            await self.reconciler.close()
        for backend in self.backends.values():
            await backend.stop()

    async def run(self) -> None:
        """Run until asked to stop."""
        self.store.lock()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        log.info("open file limit", soft=raise_descriptor_limit())
        self.start()
        control = ControlServer(socket_path(self.store.root), self._login)
        await control.start()
        self._every(HEARTBEAT_SECONDS, self._heartbeat)
        if interval := self.notifier.watchdog_interval:
            self._every(interval, lambda: self.notifier.send("WATCHDOG=1"))
        watcher = asyncio.create_task(
            watch_sessions(self.settings.sessions_dir, self.queue.add, self.stopping)
        )
        await self.queue.wait_idle()
        self._heartbeat()
        self.notifier.send("READY=1")
        log.info("nbtether ready")
        await self.stopping.wait()

        self.notifier.send("STOPPING=1")
        log.info("nbtether stopping; jobs keep running")
        await control.close()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await self.stop()
        if self.desktop is not None:
            self.desktop.close()
