"""The world around one daemon, simulated: a laptop with session files, ports and a lid,
a cluster (tests/sim/cluster.py), and virtual time (tests/sim/vloop.py).

The daemon is the real one (`Daemon.start()`: backends, timers, work queue, reconciler,
state files), with three parts swapped for simulated ones: the SSH link (`SimLink`), the
local listeners (`SimTunnel`, ports in a table instead of sockets) and the notebook probe.
A scenario is a list of `Event`s; each is applied, then the world runs for the event's
`dt` seconds of virtual time, then every invariant is checked. A run is a pure function
of (seed, events).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from nbtether.app import Daemon
from nbtether.backends import Backend
from nbtether.backends.slurm import SlurmBackend
from nbtether.config import ClusterConfig, Settings
from nbtether.jobs import Endpoint
from nbtether.plan import Activity
from nbtether.portpage import Waiting
from nbtether.reconciler import Reconciler
from nbtether.remote import PERMANENT_RETRY_DELAY
from nbtether.spec import InvalidSpec, SessionSpec, check_files, load_sessions
from nbtether.state import Record, StateStore
from nbtether.tunnel import Answer
from tests.sim.cluster import SimCluster, SimJob, SimLink
from tests.sim.vloop import VirtualTimeLoop

EPOCH = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
CLUSTER = "hpc"
NAMES = ("alpha", "beta", "gamma")
PORTS = (8801, 8802, 8803, 8804)
CALM = 900.0  # healthy seconds after which a valid, unchanged session must be ready
SETTLE = 150.0  # healthy seconds within which duplicates, orphans and stale routes go away
NOTICE = 60.0  # a job's end is seen by the next look at squeue, at most a poll interval later
SUBMIT_WINDOW = 30.0  # a submission follows the file version the daemon read this recently
SQUEUE_BUDGET = 6  # squeue calls in any 60 s, whatever happens (restarts included)
SQUEUE_BUDGET_PER_LIFE = 2  # within one daemon process, MIN_POLL_GAP keeps them 40 s apart

TEMPLATE = """\
cluster: hpc
local_port: {port}
resources:
  partition: cpu
  cpus: {cpus}
  mem: {mem}
  time: "{time}"
restart:
  handover: 5m
{extra}"""
IDLE_STOPS = ("2m", "20m", "1h")


class InvariantBroken(AssertionError):
    """An invariant does not hold; the message says which and for what."""


@dataclass
class Faults:
    """How unkind the cluster is in this scenario."""

    jupyter_fails: float = 0.03  # chance that a job's Jupyter never starts
    queue_wait: float = 120.0  # longest wait in the queue
    garbled_sbatch: float = 0.02  # chance that sbatch's answer has no job id (a site plugin)
    on_demand: float = 0.3  # chance that a file written says `start: on_demand`
    idle_stop: float = 0.3  # chance that a file written sets `idle_stop`


@dataclass(frozen=True)
class Event:
    """One thing that happens in the world, then `dt` seconds of virtual time."""

    kind: str
    arg: int
    dt: float

    def __str__(self) -> str:
        return f"{self.kind}({self.arg}) +{self.dt:.0f}s"


class SimTunnel:
    """The session's listener, as an entry in the laptop's table of ports."""

    def __init__(self, world: World, port: int, opener: Any, on_failure: Any) -> None:
        self.world = world
        self.port = port
        self.target: Endpoint | None = None
        self.on_failure = on_failure
        self.on_demand: Callable[[], None] | None = None
        self.waiting: Waiting | None = None

    def show(self, waiting: Waiting | None) -> None:
        self.waiting = waiting

    async def listen(self) -> None:
        if self.port in self.world.ports:
            raise OSError(98, "Address already in use")
        self.world.ports[self.port] = self

    def point(self, target: Endpoint | None) -> None:
        self.target = target

    async def sever(self, endpoint: Endpoint) -> None:
        """Connections are not simulated: none is open to close."""

    async def close(self) -> None:
        if self.world.ports.get(self.port) is self:
            del self.world.ports[self.port]


class SimStore(StateStore):
    """The daemon's state files, telling the world when a session is forgotten: from then
    on a file of that name is a new session, with a new token."""

    def __init__(self, world: World) -> None:
        super().__init__(world.settings.state_dir)
        self.world = world

    def delete(self, name: str) -> None:
        super().delete(name)
        self.world.truth[name].token = None


class SimDaemon(Daemon):
    """The real daemon with the SSH link, the listeners and the probe simulated."""

    def __init__(self, world: World, settings: Settings) -> None:
        super().__init__(settings, clock=world.wall)
        self.world = world
        self.store = SimStore(world)

    def _make_backend(self, name: str, config: ClusterConfig,
                      wake: Callable[[set[str] | None], None]) -> Backend:
        return SlurmBackend(name, config, self._instance, wake, clock=self.clock,
                            link=partial(SimLink, self.world))

    def _make_reconciler(self) -> Reconciler:
        return Reconciler(self.settings, self.store, self.backends, self.queue.add, self.clock,
                          tunnel=partial(SimTunnel, self.world), prober=self.world.probe,
                          who_holds=self.world.holder, activity=self.world.activity)


@dataclass
class SessionTruth:
    """What the user did to one session file, and since when."""

    content: str | None = None  # None: no file
    spec: SessionSpec | InvalidSpec | None = None
    alone: SessionSpec | None = None  # the file as it validates on its own
    kept_port: int | None = None  # the port of its last version valid among the others
    written_at: float = 0.0
    history: list[tuple[float, str | None]] = field(default_factory=list)  # (time, fingerprint)
    token: str | None = None
    troubled_at: float = -1.0  # last fault that may legitimately end in `failed`
    wants: bool = False  # the user has the page open: it reloads until the notebook answers
    woken_at: float = 0.0  # healthy time of the last request that asked for a job
    judged_stops: set[str] = field(default_factory=set)  # idle stops checked, by job id


class World:
    """One scenario's universe."""

    def __init__(self, seed: int, faults: Faults | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 (a simulation, not a secret)
        # Its own stream, so that the scenarios from before idle sessions play as they did.
        self.usage_rng = random.Random(f"usage-{seed}")  # noqa: S311
        self.faults = faults or Faults()
        self.loop = VirtualTimeLoop()
        self.loop.set_exception_handler(self._unhandled)
        self.unhandled: list[str] = []
        self.sleep_offset = 0.0
        self.cluster = SimCluster(self)
        self.links: list[SimLink] = []
        self.ports: dict[int, object] = {}  # laptop ports in use: SimTunnel or "other"
        shm = Path("/dev/shm")  # memory-backed: the state store's fsync costs nothing there
        self.root = Path(tempfile.mkdtemp(prefix="nbtether-sim-",
                                          dir=shm if shm.is_dir() else None))
        self.settings = Settings(
            sessions_dir=self.root / "sessions.d", state_dir=self.root / "state",
            clusters={CLUSTER: ClusterConfig(host="login.sim.example.org",
                                             known_hosts=self.root / "known_hosts")},
        )
        (self.root / "known_hosts").write_text("")  # checked before any (simulated) login
        self.settings.sessions_dir.mkdir(parents=True)
        self.daemon: SimDaemon | None = None
        self.lives = 0  # daemon processes started so far
        self.truth = {name: SessionTruth() for name in NAMES}
        self.trace: list[str] = []
        self.notes: list[str] = []
        self.disturbed_at = 0.0  # healthy time at the last disturbance of the whole world
        self.healthy_time = 0.0  # virtual seconds with the daemon up and the cluster healthy
        # A login put right with no session file saved after it: the daemon learns of it at
        # its next retry of a refused login, which comes this late at the latest.
        self.login_unseen_until = 0.0
        self._bad_since: dict[tuple[str, str], float] = {}
        self._looked_at: set[tuple[str, str]] = set()  # conditions checked in this step
        self._checked_submissions = 0
        self._mtime = 0

    # -- clocks and the daemon's injected parts -------------------------------------------

    def wall(self) -> datetime:
        """The laptop's wall clock: loop time plus every sleep of the lid."""
        return EPOCH + timedelta(seconds=self.loop.time() + self.sleep_offset)

    def now(self) -> float:
        return self.loop.time()

    async def probe(self, opener: Any, endpoint: Endpoint, token: str) -> Answer:
        await asyncio.sleep(self.rng.uniform(0.01, 0.2))
        job = self._job_at(endpoint)
        answers = job is not None and job.answering and job.token == token
        return Answer.READY if answers else Answer.NOT_YET

    def holder(self, port: int) -> str | None:
        return "simulated-editor (pid 4242)" if self.ports.get(port) == "other" else None

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An exception nobody awaited (a background task of the daemon died)."""
        error = context.get("exception")
        self.unhandled.append(f"{context.get('message')}: {error!r}")

    def note(self, text: str) -> None:
        self.notes.append(f"{self.now():.1f}s {text}")

    def _job_at(self, endpoint: Endpoint) -> SimJob | None:
        for job in self.cluster.jobs.values():
            if job.state == "RUNNING" and job.node == endpoint.node and job.port == endpoint.port:
                return job
        return None

    # -- the scenario ---------------------------------------------------------------------

    def run(self, events: list[Event]) -> None:
        """Play the events; raises InvariantBroken with the trace so far."""
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))
        try:
            self.loop.run_until_complete(self._play(events))
        finally:
            self.loop.run_until_complete(self._shutdown())
            self.loop.close()
            shutil.rmtree(self.root, ignore_errors=True)

    async def _play(self, events: list[Event]) -> None:
        self._start_daemon()
        for event in events:
            self.trace.append(f"{self.now():9.1f}s {event}")
            done = getattr(self, f"_do_{event.kind}")(event.arg)
            if done is not None:
                await done
            healthy = self._healthy()
            await asyncio.sleep(event.dt)
            if healthy and self._healthy():
                self.healthy_time += event.dt
            self.cluster.catch_up()
            self._reload_pages()
            self.check()

    async def _shutdown(self) -> None:
        await self._kill()

    # -- events ---------------------------------------------------------------------------

    def _write(self, name: str, content: str | None) -> None:
        truth = self.truth[name]
        path = self.settings.sessions_dir / f"{name}.yaml"
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(content)
            self.login_unseen_until = 0.0  # saving a session file retries a refused login
            self._mtime += 1
            stamp = int(self.wall().timestamp()) * 10**9 + self._mtime  # unique, reproducible
            os.utime(path, ns=(stamp, stamp))
        truth.content, truth.written_at = content, self.healthy_time
        alone = check_files([path], [CLUSTER]).get(path) if content is not None else None
        truth.alone = alone if isinstance(alone, SessionSpec) else None
        fingerprint = alone.job_fingerprint() if isinstance(alone, SessionSpec) else None
        truth.history.append((self.now(), fingerprint))  # valid alone: ports are shared later
        # As the daemon does: a session keeps its port while its file exists (an invalid
        # file changes nothing), so a file asking for a port another session has is invalid.
        holders = {its.kept_port: other for other, its in self.truth.items()
                   if its.kept_port is not None and its.content is not None}
        specs = load_sessions(self.settings.sessions_dir, [CLUSTER], holders)
        for other, its in self.truth.items():
            its.spec = specs.get(other)
            if isinstance(its.spec, SessionSpec) or its.content is None:
                its.kept_port = its.spec.local_port if its.spec else None
        if self.daemon is not None:
            queue = self.daemon.queue
            self.loop.call_later(self.rng.uniform(0.05, 0.4), queue.add, name)  # watchfiles

    def _valid(self, name: str, port: int | None = None) -> str:
        current = self.truth[name].spec
        if port is None:
            port = current.local_port if isinstance(current, SessionSpec) \
                else self.rng.choice(PORTS)
        extra = ""
        if self.usage_rng.random() < self.faults.on_demand:
            extra += "start: on_demand\n"
        if self.usage_rng.random() < self.faults.idle_stop:
            extra += f"idle_stop: {self.usage_rng.choice(IDLE_STOPS)}\n"
        return TEMPLATE.format(port=port, cpus=self.rng.choice((1, 2)),
                               mem=self.rng.choice(("400M", "1G", "2G")),
                               time=self.rng.choice(("00:30:00", "01:00:00", "02:00:00")),
                               extra=extra)

    def _do_create(self, arg: int) -> None:
        name = NAMES[arg % len(NAMES)]
        self._write(name, self._valid(name, PORTS[arg % len(PORTS)]))

    def _do_edit(self, arg: int) -> None:
        name = NAMES[arg % len(NAMES)]
        if self.truth[name].content is not None:
            self._write(name, self._valid(name))

    def _do_move_port(self, arg: int) -> None:
        name = NAMES[arg % len(NAMES)]
        if self.truth[name].content is not None:
            self._write(name, self._valid(name, PORTS[arg // len(NAMES) % len(PORTS)]))

    def _do_touch(self, arg: int) -> None:
        name = NAMES[arg % len(NAMES)]
        if (content := self.truth[name].content) is not None:
            self._write(name, content)

    def _do_break(self, arg: int) -> None:
        name = NAMES[arg % len(NAMES)]
        if self.truth[name].content is not None:
            self._write(name, ("local_port: [8801\n", "cluster: hpc\nlocal_port: 1\n")[arg % 2])

    def _do_delete(self, arg: int) -> None:
        self._write(NAMES[arg % len(NAMES)], None)

    def _do_wait(self, arg: int) -> None:
        """Nothing happens."""

    def _disturb(self) -> None:
        self.disturbed_at = self.healthy_time

    async def _do_kill(self, arg: int) -> None:
        self._disturb()
        await asyncio.sleep(arg % 1000 / 300)  # land anywhere among the daemon's awaits
        await self._kill()

    def _do_start(self, arg: int) -> None:
        self._disturb()
        if self.daemon is None:
            self._start_daemon()

    def _do_sleep(self, arg: int) -> None:
        """The lid closes for minutes to hours: wall time jumps, connections die."""
        self._disturb()
        self.sleep_offset += 600 + 3600 * (arg % 6)
        for link in self.links:
            link.drop()
        self.cluster.catch_up()

    def _do_login_down(self, arg: int) -> None:
        self._disturb()
        self.cluster.login_up = False
        for link in self.links:
            link.drop()

    def _do_login_up(self, arg: int) -> None:
        self._disturb()
        self.cluster.login_up = True

    def _do_drop(self, arg: int) -> None:
        self._disturb()
        for link in self.links:
            link.drop()

    def _do_controller_down(self, arg: int) -> None:
        self._disturb()
        self.cluster.controller_up = False

    def _do_controller_up(self, arg: int) -> None:
        self._disturb()
        self.cluster.controller_up = True

    def _do_host_key(self, arg: int) -> None:
        """The login node's host key changes (arg odd) or is put right and the file touched."""
        self._disturb()
        if arg % 2:
            self.cluster.host_key_changed = True
            for link in self.links:
                link.drop()
        elif self.cluster.host_key_changed:
            self.cluster.host_key_changed = False
            self.login_unseen_until = self.now() + PERMANENT_RETRY_DELAY  # unless a file is saved
            for name, truth in self.truth.items():
                if truth.content is not None:
                    self._write(name, truth.content)  # what the docs tell the user to do
                    break

    def _running(self, arg: int) -> SimJob | None:
        running = sorted((job for job in self.cluster.jobs.values() if job.state == "RUNNING"),
                         key=lambda job: int(job.job_id))
        return running[arg % len(running)] if running else None

    def _trouble(self, job: SimJob) -> None:
        self._disturb()
        session = self.cluster.session_of(job)
        if session in self.truth:
            self.truth[session].troubled_at = self.now()

    def _do_node_fail(self, arg: int) -> None:
        if job := self._running(arg):
            self._disturb()
            self.cluster.fail_node(job, requeue=arg % 2 == 0)

    def _do_preempt(self, arg: int) -> None:
        if job := self._running(arg):
            self._disturb()
            self.cluster.preempt(job)

    def _do_crash(self, arg: int) -> None:
        if job := self._running(arg):
            self._trouble(job)
            self.cluster.crash(job)

    def _do_scancel(self, arg: int) -> None:
        if job := self._running(arg):
            self._trouble(job)
            self.cluster.cancel(job)

    def _do_grab_port(self, arg: int) -> None:
        """Another program takes a free port (arg even) or lets go of one."""
        self._disturb()
        port = PORTS[arg % len(PORTS)]
        if arg % 2 == 0 and port not in self.ports:
            self.ports[port] = "other"
        elif self.ports.get(port) == "other":
            del self.ports[port]

    def _do_browse(self, arg: int) -> None:
        """The user opens each URL: a route to a notebook that is gone reports a failure;
        a session without a notebook shows its page, which reloads until one answers."""
        for tunnel in list(self.ports.values()):
            if isinstance(tunnel, SimTunnel) and tunnel.target is not None:
                job = self._job_at(tunnel.target)
                if job is None or not job.answering:
                    tunnel.on_failure()
        for truth in self.truth.values():
            if truth.content is not None:
                truth.wants = True
        self._reload_pages()

    def _reload_pages(self) -> None:
        """Each open page asks again; on an idle session that is a request for a job."""
        for tunnel in list(self.ports.values()):
            if isinstance(tunnel, SimTunnel) and tunnel.target is None and \
                    tunnel.waiting is not None and tunnel.waiting.phase == "idle" and \
                    self.truth[tunnel.waiting.name].wants and tunnel.on_demand is not None:
                self.truth[tunnel.waiting.name].woken_at = self.healthy_time
                tunnel.on_demand()

    def _do_use(self, arg: int) -> None:
        """The user runs code in one notebook: a computation of up to half an hour."""
        running = [job for job in self.cluster.jobs.values() if job.state == "RUNNING"
                   and job.answering]
        if running:
            job = sorted(running, key=lambda job: int(job.job_id))[arg % len(running)]
            job.used_at = self.wall()
            job.busy_until = self.wall() + timedelta(seconds=arg % 4 * 600)

    async def activity(self, opener: Any, endpoint: Endpoint, token: str) -> Activity | None:
        """What the job's Jupyter says of its kernels (simulated: the `use` events)."""
        await asyncio.sleep(self.rng.uniform(0.01, 0.2))
        job = self._job_at(endpoint)
        if job is None or not job.answering or job.token != token:
            return None
        now = self.wall()
        busy = job.busy_until is not None and now < job.busy_until
        moments = [m for m in (job.used_at, job.busy_until) if m is not None and m <= now]
        return Activity(last=max(moments, default=None), busy=busy)

    # -- the daemon's life ----------------------------------------------------------------

    def _start_daemon(self) -> None:
        self.lives += 1
        self.daemon = SimDaemon(self, self.settings)
        self.daemon.start()

    async def _kill(self) -> None:
        """SIGKILL: every task of the daemon stops where it is; only its files remain."""
        if self.daemon is None:
            return
        self.daemon = None
        for link in self.links:
            link.drop()
        self.links.clear()
        for port, owner in list(self.ports.items()):
            if isinstance(owner, SimTunnel):
                del self.ports[port]  # the kernel closes a dead process's sockets
        me = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- invariants -----------------------------------------------------------------------

    def _healthy(self) -> bool:
        cluster = self.cluster
        return (self.daemon is not None and cluster.controller_up and cluster.login_up
                and not cluster.host_key_changed and self.now() >= self.login_unseen_until)

    def records(self) -> dict[str, Record]:
        """The daemon's records: in memory while it runs, on disk while it is down."""
        if self.daemon is not None and self.daemon.reconciler is not None:
            return self.daemon.reconciler.records
        return StateStore(self.settings.state_dir).load_all()

    def _fail(self, what: str) -> None:
        raise InvariantBroken(f"{what} (at {self.now():.1f}s virtual)")

    def _must_not_last(self, key: tuple[str, str], bad: bool, limit: float, what: str) -> None:
        """A condition may be bad for a while (events take time), not for `limit` healthy s
        in a row: a step that does not check it (it no longer applies) ends the count."""
        self._looked_at.add(key)
        if not bad:
            self._bad_since.pop(key, None)
            return
        since = self._bad_since.setdefault(key, self.healthy_time)
        if self.healthy_time - since > limit:
            self._fail(f"{what} for more than {limit:.0f} s with a healthy cluster")

    def check(self) -> None:
        """Every invariant, after every step."""
        if self.unhandled:
            self._fail(f"a background task failed unseen: {self.unhandled[0]}")
        records = self.records()
        self._check_submissions()
        self._check_squeue_budget()
        self._looked_at.clear()
        for name, truth in self.truth.items():
            self._check_session(name, truth, records.get(name))
        for key in set(self._bad_since) - self._looked_at:
            del self._bad_since[key]

    def _check_submissions(self) -> None:
        for at, job in self.cluster.submissions[self._checked_submissions:]:
            session = self.cluster.session_of(job)
            truth = self.truth[session or ""]
            fingerprint = job.comment.removeprefix("nbtether:")
            before = [fp for t, fp in truth.history if t < at - SUBMIT_WINDOW]
            during = [fp for t, fp in truth.history if at - SUBMIT_WINDOW <= t <= at]
            if fingerprint not in before[-1:] + during:  # the versions current in the window
                self._fail(f"job {job.job_id} of {session} was submitted for a file that is "
                           f"deleted, invalid or changed (file history {truth.history})")
        self._checked_submissions = len(self.cluster.submissions)

    def _check_squeue_budget(self) -> None:
        calls = [(round(t * 1000), life) for t, life in self.cluster.squeue_times]  # ms
        for i in range(max(0, len(calls) - 50), len(calls)):
            start, life = calls[i]
            window = [(t, lf) for t, lf in calls[i:] if t - start < 60_000]
            same = [t for t, lf in window if lf == life]
            if len(window) > SQUEUE_BUDGET or len(same) > SQUEUE_BUDGET_PER_LIFE:
                self._fail(f"{len(window)} squeue calls ({len(same)} by one daemon) within "
                           f"60 s from {start / 1000:.1f}s")

    def _check_session(self, name: str, truth: SessionTruth, record: Record | None) -> None:
        live = self.cluster.live_jobs(name)
        ids = {job.job_id for job in live}
        if len(live) > 2:
            self._fail(f"{name} has {len(live)} jobs: {sorted(ids)}")
        known = {record.job_id, record.successor_id} if record else set()
        self._must_not_last((name, "orphan"), bool(ids - known), SETTLE,
                            f"{name} has jobs its record does not know: {sorted(ids - known)}")
        if record is not None and self.daemon is not None and self.daemon.reconciler:
            tunnel = self.daemon.reconciler.tunnels.get(name)
            if record.url and (tunnel is None or tunnel.port != record.local_port
                               or self.ports.get(tunnel.port) is not tunnel):
                self._fail(f"{name} shows {record.url} on a port the daemon does not hold")
            if record.phase != "ready" and not record.message:
                self._fail(f"{name} is {record.phase} without saying why")
        if truth.token is None and record is not None:
            truth.token = record.token
        if record is not None and record.token != truth.token:
            self._fail(f"{name} changed its token")
        listening = self.daemon is not None and self.daemon.reconciler is not None \
            and name in self.daemon.reconciler.tunnels
        self._must_not_last((name, "port kept"), truth.content is None and listening, SETTLE,
                            f"{name} was deleted but its port still listens")
        if truth.content is None:
            self._must_not_last((name, "deleted"), bool(live), SETTLE,
                                f"{name} was deleted but jobs {sorted(ids)} remain")
            return
        if record is not None and record.phase in ("ready", "handover"):
            truth.wants = False  # the page became the notebook
        self._check_idle(name, truth, record, live)
        spec = truth.spec
        if isinstance(spec, SessionSpec) and record is not None and record.phase == "ready":
            routed = self.ports.get(spec.local_port)
            target = routed.target if isinstance(routed, SimTunnel) else None
            job = self._job_at(target) if target else None
            self._must_not_last((name, "stale route"), job is None or not job.answering, SETTLE,
                                f"{name} is ready but its port leads to no notebook")
        self._check_ready(name, truth, record)

    def _check_idle(self, name: str, truth: SessionTruth, record: Record | None,
                    live: list[SimJob]) -> None:
        """An idle session has no job; a job is stopped only after idle_stop unused."""
        idle = record is not None and record.phase == "idle"
        self._must_not_last((name, "idle with jobs"), idle and bool(live), SETTLE,
                            f"{name} is idle but jobs {[job.job_id for job in live]} remain")
        stopped = self.cluster.jobs.get(record.stopped_job_id or "") if record else None
        spec = truth.spec
        if stopped is not None and stopped.cancelled_at is not None and \
                stopped.job_id not in truth.judged_stops and \
                isinstance(spec, SessionSpec) and spec.idle_stop is not None:
            # Judged once, by the file of its time: a later edit may set another idle_stop.
            truth.judged_stops.add(stopped.job_id)
            used = [m for m in (stopped.used_at, stopped.busy_until) if m is not None]
            if used and stopped.cancelled_at - max(used) < spec.idle_stop:
                self._fail(f"{name}'s job {stopped.job_id} was stopped as idle at "
                           f"{stopped.cancelled_at:%H:%M:%S}, used until {max(used):%H:%M:%S}")

    def _check_ready(self, name: str, truth: SessionTruth, record: Record | None) -> None:
        spec = truth.spec
        if not isinstance(spec, SessionSpec):
            return
        calm_since = max(self.disturbed_at, truth.written_at, truth.woken_at,
                         *(other.written_at for other in self.truth.values()))
        if self.healthy_time - calm_since < CALM or not self._healthy():
            return
        if truth.troubled_at >= 0 and truth.troubled_at + NOTICE >= self._written_time(truth):
            # Jupyter crashed or someone cancelled: backing off or failed is right, unless
            # the file was saved once the daemon could know (saving it retries, then).
            return
        if self.ports.get(spec.local_port) == "other" or self._port_shared(name, spec):
            return
        tunnels = self.daemon.reconciler.tunnels if self.daemon and self.daemon.reconciler \
            else {}
        if any(other != name and tunnel.port == spec.local_port
               for other, tunnel in tunnels.items()):
            return  # another session kept the port (its file is invalid): it is right to
        if record is not None and record.phase == "idle" and not truth.wants and (
                spec.start == "on_demand" or spec.idle_stop is not None):
            return  # nobody asked for it since: no job is right
        if record is None or record.phase not in ("ready", "handover"):
            self._fail(f"{name} is {record.phase if record else 'unknown'} "
                       f"({record.message if record else ''}) after {CALM:.0f} s of calm")
        job = self.cluster.jobs.get(record.job_id or "")
        fingerprint = spec.job_fingerprint()
        if job is None or job.state != "RUNNING" or job.comment != f"nbtether:{fingerprint}":
            self._fail(f"{name} is ready but job {record.job_id} is "
                       f"{job.state if job else 'unknown'} with shape {job and job.comment}, "
                       f"not {fingerprint}")
        tunnel = self.ports.get(spec.local_port)
        if not isinstance(tunnel, SimTunnel) or tunnel.target is None \
                or self._job_at(tunnel.target) is not job:
            self._fail(f"{name} is ready but 127.0.0.1:{spec.local_port} does not lead to "
                       f"job {job.job_id}")
        if job.token != truth.token or self.cluster.tokens.get(name) != truth.token:
            self._fail(f"{name}'s notebook does not have the session's token")

    def _written_time(self, truth: SessionTruth) -> float:
        return truth.history[-1][0] if truth.history else 0.0

    def _port_shared(self, name: str, spec: SessionSpec) -> bool:
        records = self.records()

        def holds(other_name: str, other: SessionTruth) -> bool:
            # Its file asks for the port, or it kept the port: the one it was last valid on
            # here, or the one its record serves while its file is invalid (what the daemon
            # saw of the file may be older than what the world wrote while it was down).
            asked = other.alone.local_port if other.alone else None
            record = records.get(other_name)
            served = record.local_port if record and not isinstance(other.spec, SessionSpec) \
                else None
            return other.content is not None and \
                spec.local_port in (asked, other.kept_port, served)

        return any(holds(other_name, other) for other_name, other in self.truth.items()
                   if other_name != name)
