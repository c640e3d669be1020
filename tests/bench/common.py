"""Shared pieces of the benchmarks: the shared-machine lock, daemons, HTTP probes, statistics."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import Cluster, wait_for
from tests.e2e.harness import Daemon, free_port, session_yaml

LOCK = Path("/tmp/nbtether-bench.lock")
LOCK_WAIT = 3600.0  # give up waiting for other test runs after an hour
LOCK_POLL = 5.0
LOGS = Path("/tmp/nbtether-bench-logs")  # each daemon's log is kept here for post-mortems

def say(message: str) -> None:
    """Progress on stderr (the results table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def session_text(port: int, time: str = "00:30:00", handover: str = "0s", mem: str = "300M",
                 cpus: str = "1", cluster: str = "testbed") -> str:
    """A session file for the testbed cluster (or another of the daemon's)."""
    return session_yaml(port, time=time, handover=handover, mem=mem, cluster=cluster).replace(
        "  cpus: 1\n", f"  cpus: {int(cpus)}\n")


# --- the lock that keeps the lead's e2e runs and the benchmarks apart -------------------


def _pytest_commands() -> set[str]:
    """The command lines of pytest runs on this machine that use the cluster: Python
    processes only (a `flock … pytest` still waiting for /tmp/cluster.lock runs nothing),
    and not runs of tests/unit alone."""
    result = subprocess.run(["pgrep", "-af", "pytest"], capture_output=True, text=True,
                            check=False)
    commands = (line.split(" ", 1)[-1] for line in result.stdout.splitlines())
    return {c for c in commands
            if Path(c.split(" ", 1)[0]).name.startswith("python") and not _unit_tests_only(c)}


def _pytest_running() -> bool:
    """True while a pytest run that uses the cluster runs on this machine."""
    return bool(_pytest_commands())


def _lock_is_stale() -> bool:
    """True when the lock file names a process that no longer exists."""
    try:
        pid = int(LOCK.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return not Path(f"/proc/{pid}").exists()


def _try_lock() -> bool:
    """Create the lock file with our pid; False if it exists."""
    try:
        fd = os.open(LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    return True


def acquire_lock(phase: str) -> None:
    """Wait (bounded) until no pytest runs, then take the lock; then wait out a run that
    started in between (the lead starts none while the lock exists)."""
    deadline = time.monotonic() + LOCK_WAIT
    announced = False
    while True:
        if _lock_is_stale():
            LOCK.unlink(missing_ok=True)
        if not _pytest_running() and _try_lock():
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{phase}: other test runs kept the machine busy for an hour")
        if not announced:
            say(f"{phase}: waiting for other test runs (pytest or {LOCK}) to finish")
            announced = True
        time.sleep(LOCK_POLL)
    wait_for(lambda: not _pytest_running(), LOCK_WAIT, interval=LOCK_POLL,
             message="a pytest run that started while we took the lock")


def release_lock() -> None:
    """Remove the lock if it is ours."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        if int(LOCK.read_text().split()[0]) == os.getpid():
            LOCK.unlink()


def _unit_tests_only(command: str) -> bool:
    """True for a pytest command line that names only tests outside tests/e2e (no cluster
    access)."""
    paths = [word for word in command.split() if word.startswith("tests")]
    return bool(paths) and not any(path.rstrip("/") == "tests" or path.startswith("tests/e2e")
                                   for path in paths)


@dataclass
class Hold:
    """One hold of the lock, and the pytest runs (other than unit tests only) seen during it
    despite the lock."""

    phase: str
    intruders: set[str] = field(default_factory=set)
    _done: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> None:
        """Note every pytest command line seen until the hold ends."""
        while not self._done.wait(2.0):
            self.intruders.update(_pytest_commands())

    def finish(self) -> None:
        """Stop watching."""
        self._done.set()

    def note(self) -> str | None:
        """A warning for the results, if other test runs shared the machine."""
        if not self.intruders:
            return None
        return (f"{len(self.intruders)} pytest run(s) started during this measurement despite "
                f"{LOCK}; their jobs and `scancel --user` may have disturbed it")


@contextlib.contextmanager
def exclusive(phase: str) -> Iterator[Hold]:
    """Hold the benchmark lock for one heavy phase (the brief: at most ~15 minutes)."""
    acquire_lock(phase)
    hold = Hold(phase)
    watcher = threading.Thread(target=hold.watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    say(f"{phase}: lock taken")
    try:
        yield hold
    finally:
        hold.finish()
        release_lock()
        say(f"{phase}: lock released after {time.monotonic() - started:.0f} s")
        if hold.note():
            say(f"WARNING {phase}: {hold.note()}: {sorted(hold.intruders)}")


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so that every cleanup runs."""

    def stop(signum: int, _frame: object) -> None:
        """Exit through the normal unwinding, so `finally` blocks clean up."""
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)


# --- daemons ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a job's Jupyter listens (from the daemon's state record) and its token."""

    node: str
    address: str
    port: int
    token: str = field(repr=False)  # never printed


class BenchDaemon(Daemon):
    """A real `nbtether run` in a temporary directory, read through its state records."""

    def __init__(self, cluster: Cluster, label: str, more: str = "") -> None:
        """A daemon (not started yet) with its directories under a new temporary one;
        `more` is added to its config (see `Daemon`)."""
        self.tmp = Path(tempfile.mkdtemp(prefix=f"nbtether-bench-{label}-"))
        self.ports: set[int] = set()
        super().__init__(self.tmp, cluster, more=more)

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.process is not None
        return self.process.pid

    def record(self, name: str) -> dict[str, Any] | None:
        """The session's state record, or None before the daemon wrote one."""
        path = self.state / "sessions" / f"{name}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def target(self, name: str) -> Target | None:
        """The session's current endpoint and token, once the record has an endpoint."""
        record = self.record(name)
        if not record or not record.get("endpoint"):
            return None
        endpoint = record["endpoint"]
        return Target(endpoint["node"], endpoint["address"], int(endpoint["port"]),
                      record["token"])

    def token(self, name: str) -> str:
        """The session's token (waits for the first record)."""
        record = wait_for(lambda: self.record(name), 60, interval=0.05,
                          message=f"the record of {name}")
        return str(record["token"])

    def phase(self, name: str) -> str | None:
        """The session's phase from its record."""
        record = self.record(name)
        return str(record["phase"]) if record else None

    def wait_ready(self, names: Sequence[str], timeout: float) -> None:
        """Wait until every session's record says ready; fails early if the daemon died."""

        def all_ready() -> bool:
            """True when every record says ready; raises if the daemon died."""
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"daemon exited; log tail:\n{self.log.read_text()[-2000:]}")
            return all(self.phase(name) == "ready" for name in names)

        try:
            wait_for(all_ready, timeout, interval=0.5, message=f"{len(names)} sessions ready")
        except TimeoutError as exc:
            phases = {name: self.phase(name) for name in names}
            raise TimeoutError(f"{exc}; phases: {phases}") from exc

    def drop_session(self, name: str, **options: str) -> int:
        """Write a session file on a free local port that no other session of this daemon
        was given (the kernel may offer the same free port twice); returns the port."""
        port = next(p for p in (free_port() for _ in range(100)) if p not in self.ports)
        self.ports.add(port)
        self.drop(name, session_text(port, **options))
        return port

    def dispose(self) -> None:
        """Kill the daemon, cancel its jobs, remove its remote and local directories."""
        instance = self.instance if (self.state / "instance").exists() else None
        self.cleanup()
        if instance:
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: not self.active_jobs(), 60, interval=1.0,
                         message="the benchmark's jobs to end")
            self.cluster.ssh(f"rm -rf ~/.nbtether/{instance}", check=False)
        LOGS.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copy(self.log, LOGS / f"{self.tmp.name}.log")
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def running_daemon(cluster: Cluster, label: str, more: str = "") -> Iterator[BenchDaemon]:
    """A started daemon that is disposed of (jobs cancelled) however the block ends."""
    daemon = BenchDaemon(cluster, label, more)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.dispose()


# --- HTTP through a port --------------------------------------------------------------------


def status_request(token: str, keep_alive: bool = False) -> bytes:
    """GET /api/status with the token in a header."""
    connection = "keep-alive" if keep_alive else "close"
    return (f"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token {token}\r\n"
            f"Connection: {connection}\r\n\r\n").encode()


def _status_line(sock: socket.socket, deadline: float) -> bytes:
    """Read until the end of the first line (or EOF), bounded by `deadline`."""
    data = b""
    while b"\r\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no status line in time")
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def answers(host: str, port: int, token: str, timeout: float) -> bool:
    """True when GET /api/status with the token returns 200 within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(status_request(token))
            line = _status_line(sock, deadline)
    except OSError:  # refused, reset, timed out (TimeoutError is an OSError)
        return False
    return line.split()[1:2] == [b"200"]


def poll_until(predicate: Callable[[], bool], interval: float, timeout: float) -> float | None:
    """Call `predicate` every `interval` s until it is true; the monotonic time it was, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = time.monotonic()
        if predicate():
            return time.monotonic()
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return None


# --- statistics and results -------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 200 values is the 198th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    """The median."""
    return float(statistics.median(values))


@dataclass
class Row:
    """One line of the results table."""

    figure: str
    metric: str
    value: str
    target: str
    met: bool | None  # None: informational, no target
    detail: str = ""


@dataclass
class FigureResult:
    """What one benchmark measured: table rows, raw data for plots, and notes."""

    number: int
    title: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plot: str | None = None  # file name in docs/


# --- OpenSSH's own forwarding, the baseline ---------------------------------------------------


def openssh_argv(cluster: Cluster, local_port: int, address: str, port: int) -> list[str]:
    """`ssh -N -L` from a local port to address:port through the login node, as tutorials do."""
    return [
        "ssh", "-F", "/dev/null", "-N",
        "-L", f"127.0.0.1:{local_port}:{address}:{port}",
        "-p", str(cluster.port), "-i", str(cluster.identity_file),
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={cluster.known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "ExitOnForwardFailure=yes",
        f"{cluster.user}@{cluster.host}",
    ]  # fmt: skip


@contextlib.contextmanager
def openssh_forward(
    cluster: Cluster, target: Target, local_port: int | None = None
) -> Iterator[int]:
    """An `ssh -N -L` to the target for the duration of the block; yields its local port
    once the notebook answers through it."""
    port = local_port or free_port()
    argv = openssh_argv(cluster, port, target.address, target.port)
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: process.poll() is not None or answers("127.0.0.1", port, target.token, 2),
                 30, interval=0.05, message="ssh -L to answer")
        if process.poll() is not None:
            raise RuntimeError(f"ssh -L exited with {process.returncode}")
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
