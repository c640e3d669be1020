"""The daemon: wires the watcher, the timers, the work queue, the backends and the reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from nbtether.backends import Backend
from nbtether.backends.batch import BatchBackend
from nbtether.backends.kinds import make_backend
from nbtether.clock import Clock, every, system_clock
from nbtether.config import ClusterConfig, Settings, load_settings
from nbtether.control import ControlServer, socket_path
from nbtether.desktop import DesktopNotifier
from nbtether.errors import ConfigError
from nbtether.reconciler import Reconciler
from nbtether.remote import Person, SshLink
from nbtether.sdnotify import Notifier
from nbtether.state import Record, StateStore
from nbtether.tunnel import raise_descriptor_limit
from nbtether.watcher import watch_config, watch_sessions
from nbtether.workqueue import WorkQueue

log = structlog.get_logger(__name__)

RESYNC_SECONDS = 60.0  # look at every session even without events, in case one was missed
HEARTBEAT_SECONDS = 5.0
# SIGHUP too: closing the terminal of `nbtether run &` stops the daemon cleanly, with a log line.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Daemon:
    """`nbtether run`: reconcile until SIGTERM, SIGINT or SIGHUP; jobs outlive the daemon.

    `config_path` is the `--config` the daemon was started with: the config is read again
    from the same place whenever the file changes.
    """

    def __init__(
        self, settings: Settings, clock: Clock = system_clock, config_path: Path | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.config_path = config_path
        self.store = StateStore(settings.state_dir)
        self.stopping = asyncio.Event()
        self.notifier = Notifier()
        self.desktop = DesktopNotifier() if settings.notifications else None
        self.queue = WorkQueue(self._reconcile)
        self.backends: dict[str, Backend] = {}
        self.reconciler: Reconciler | None = None
        self._timers: list[asyncio.Task[None]] = []
        self._polls: dict[str, asyncio.Task[None]] = {}  # cluster name → its poll timer
        self._instance = ""
        self.phase_listeners: list[Callable[[str, Record], None]] = []
        self.before_stop: Callable[[], Awaitable[None]] | None = None  # after a signal

    def _wake_cluster(self, cluster: str, sessions: set[str] | None) -> None:
        assert self.reconciler is not None
        for name, record in self.reconciler.records.items():
            if record.cluster == cluster and (sessions is None or name in sessions):
                self.queue.add(name)

    def _start_backend(self, name: str) -> None:
        config = self.settings.clusters[name]

        def wake(sessions: set[str] | None) -> None:
            self._wake_cluster(name, sessions)

        backend = self._make_backend(name, config, wake)
        self.backends[name] = backend
        backend.start()
        if isinstance(backend, BatchBackend):
            self._polls[name] = asyncio.create_task(every(config.poll_interval, backend.poll))

    def _make_backend(
        self, name: str, config: ClusterConfig, wake: Callable[[set[str] | None], None]
    ) -> Backend:
        return make_backend(name, config, self._instance, self.store.root, wake, self.clock,
                            tunnels=True)

    async def _stop_backend(self, name: str) -> None:
        if (poll := self._polls.pop(name, None)) is not None:
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)
        if (backend := self.backends.pop(name, None)) is not None:
            await backend.stop()

    async def _reload_config(self) -> None:
        """Apply a changed config file: clusters that changed get a new backend (their
        sessions reconnect), the others are left alone; a bad config changes nothing."""
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("config error; the last good config stays in force", error=str(exc))
            return
        old = self.settings
        fixed = {"sessions_dir": old.sessions_dir, "state_dir": old.state_dir}
        if any(getattr(new, key) != value for key, value in fixed.items()):
            log.warning("sessions_dir and state_dir change at the next start of the daemon")
        self.settings = new.model_copy(update=fixed)
        assert self.reconciler is not None
        self.reconciler.settings = self.settings
        if self.settings.notifications != old.notifications:
            if self.desktop is not None:
                self.desktop.close()
            self.desktop = DesktopNotifier() if self.settings.notifications else None
        changed = sorted(name for name in old.clusters.keys() | new.clusters.keys()
                         if old.clusters.get(name) != new.clusters.get(name))
        for name in changed:
            await self._stop_backend(name)
            if name in new.clusters:
                self._start_backend(name)
        log.info("config reloaded", file=str(new.file), changed_clusters=changed)
        self._resync()

    def _phase_changed(self, before: str, record: Record) -> None:
        if record.phase == "ready" and before != "handover":
            log.info("notebook ready", session=record.name,
                     at=f"http://127.0.0.1:{record.local_port}/",
                     open=f"nbtether open {record.name}")
        if self.desktop is not None:
            self.desktop.phase_changed(before, record)
        for listener in self.phase_listeners:
            listener(before, record)

    def _signalled(self, signum: signal.Signals) -> None:
        log.info("signal received", signal=signum.name)
        self.stopping.set()

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
            on_phase=self._phase_changed,
        )

    def start(self) -> None:
        """Connect the backends, start the timers and the workers, and look at every session."""
        self._instance = self.store.instance_id()
        self.reconciler = self._make_reconciler()
        log.info("nbtether starting", instance=self._instance,
                 sessions=str(self.settings.sessions_dir), config=str(self.settings.file))
        for name in self.settings.clusters:
            self._start_backend(name)
        self._every(RESYNC_SECONDS, self._resync)
        self.queue.start()
        self._resync()

    def _every(self, seconds: float, tick: Callable[[], Awaitable[None] | None]) -> None:
        self._timers.append(asyncio.create_task(every(seconds, tick)))

    async def stop(self) -> None:
        """Stop the timers, the workers, the ports and the backends; jobs keep running."""
        timers = [*self._timers, *self._polls.values()]
        for timer in timers:
            timer.cancel()
        await asyncio.gather(*timers, return_exceptions=True)
        await self.queue.stop()
        if self.reconciler is not None:
            await self.reconciler.close()
        for backend in self.backends.values():
            await backend.stop()

    async def run(self) -> None:
        """Run until asked to stop."""
        self.store.lock()
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._signalled, signum)
        log.info("open file limit", soft=raise_descriptor_limit())
        self.start()
        control = ControlServer(socket_path(self.store.root), self._login)
        await control.start()
        self._every(HEARTBEAT_SECONDS, self._heartbeat)
        if interval := self.notifier.watchdog_interval:
            self._every(interval, lambda: self.notifier.send("WATCHDOG=1"))
        watchers = [
            asyncio.create_task(
                watch_sessions(self.settings.sessions_dir, self.queue.add, self.stopping)),
            asyncio.create_task(
                watch_config(self.settings.file, self._reload_config, self.stopping)),
        ]
        await self.queue.wait_idle()
        self._heartbeat()
        self.notifier.send("READY=1")
        assert self.reconciler is not None
        log.info("nbtether ready", sessions=len(self.reconciler.records),
                 see="nbtether status")
        await self.stopping.wait()

        if self.before_stop is not None:
            await self.before_stop()
        self.notifier.send("STOPPING=1")
        log.info("nbtether stopping; jobs keep running")
        await control.close()
        for watcher in watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await self.stop()
        if self.desktop is not None:
            self.desktop.close()
