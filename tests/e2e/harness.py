"""A real `nbtether run` process against the mini-cluster, driven as a user would drive it."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nbtether.backends import sge_text
from nbtether.cli import app
from tests.cluster import Cluster, wait_for

# The schedulers of the mini-cluster. `@BOTH_SCHEDULERS` runs a test's `daemon` against each:
# the same session files, the cluster `testbed` of kind `slurm` or `sge`.
SCHEDULERS = ("slurm", "sge")
BOTH_SCHEDULERS = pytest.mark.parametrize("daemon", SCHEDULERS, indirect=True)

SESSION = """\
cluster: {cluster}
local_port: {port}
resources:
  partition: cpu
  cpus: 1
  mem: {mem}
  time: "{time}"
environment:
  modules: [python/3.11.6-gcc-13.2.0]
  venv: ~/jupyter_env
restart:
  handover: {handover}
"""


_CLI = CliRunner()


def session_yaml(
    port: int, time: str = "00:15:00", handover: str = "0s", mem: str = "400M", extra: str = "",
    cluster: str = "testbed",
) -> str:
    """A session file for the testbed cluster (or another), as the tutorial would have it."""
    return SESSION.format(port=port, time=time, handover=handover, mem=mem,
                          cluster=cluster) + extra


# free_port draws from below Linux's ephemeral range (32768-60999), so no outgoing
# connection takes a port between the draw and the daemon's listen, and each pytest-xdist
# worker draws from its own share, so two tests running at once never get the same port.
PORTS = range(20000, 32768)
_handed_out: set[int] = set()


def free_port() -> int:
    """A local port that nothing listens on right now, never handed out before by this
    process, and never one that another worker of the same run hands out."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = PORTS[worker::workers]
    for port in random.sample(share, len(share)):
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left among {len(share)}")


def http_status(url: str, token: str | None = None, timeout: float = 5.0) -> int:
    """The HTTP status of a GET (0 when nothing answers)."""
    request = urllib.request.Request(url)  # noqa: S310 (tests build http URLs only)
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def token_of(row: dict[str, Any]) -> str:
    """The token in a status row's URL."""
    return str(row["url"]).split("token=", 1)[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses on which a TCP socket listens on `port`."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


class Prober(threading.Thread):
    """Asks the notebook for /api/status every `interval` seconds and records failures."""

    def __init__(self, url: str, token: str, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.interval = url, token, interval
        self.failures: list[tuple[float, int]] = []
        self.requests = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            code = http_status(self.url, self.token, timeout=5)
            self.requests += 1
            if code != 200:
                self.failures.append((time.monotonic(), code))
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


def login_keys(cluster: Cluster, extra: str = "") -> str:
    """A cluster entry's keys for the test bed's login node (YAML, one key per line), then
    `extra`."""
    return (f"host: {cluster.host}\nport: {cluster.port}\nuser: {cluster.user}\n"
            f"identity_file: {cluster.identity_file}\nknown_hosts: {cluster.known_hosts}\n"
            + extra)


class Daemon:
    """One daemon with its own config, sessions directory and state directory."""

    def __init__(self, root: Path, cluster: Cluster, testbed: str | None = None,
                 more: str = "", scheduler: str = "slurm") -> None:
        """`testbed` replaces the keys of the `testbed` cluster (YAML, one key per line);
        `more` is appended to the config as it is (more clusters, settings); `scheduler`
        is the kind of the `testbed` cluster."""
        self.root = root
        self.cluster = cluster
        self.scheduler = scheduler
        self.sessions = root / "sessions.d"
        self.state = root / "state"
        self.config = root / "config.yaml"
        self.log = root / "daemon.log"
        self.sessions.mkdir(parents=True, exist_ok=True)
        testbed = testbed or login_keys(cluster, f"kind: {scheduler}\n")
        keys = "".join(f"    {line}\n" for line in testbed.splitlines())
        self.config.write_text(
            f"sessions_dir: {self.sessions}\nstate_dir: {self.state}\n"
            f"clusters:\n  testbed:\n{keys}{more}"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "HOME": str(root), "NBTETHER_CONFIG": str(self.config)}
        self.env.pop("SSH_AUTH_SOCK", None)

    def start(self, open_files: tuple[int, int] | None = None) -> None:
        """Start `nbtether run` in the background, logging to daemon.log.

        `open_files` sets its (soft, hard) limit on open files, as a login session would.
        """

        def limit() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nbtether", "run", "--json-logs"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
                preexec_fn=limit,
            )

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Signal the daemon and wait for it to exit; returns its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=30)
        self.process = None
        return code

    def nbtether(
        self, *args: str, check: bool = False, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run an nbtether command with this daemon's config (`stdin`: its standard input)."""
        return subprocess.run([sys.executable, "-m", "nbtether", *args], capture_output=True,
                              text=True, env=self.env, check=check, timeout=60,
                              input=stdin)

    def drop(self, name: str, text: str) -> Path:
        """Write a session file the way editors do: a temporary file renamed into place."""
        path = self.sessions / f"{name}.yaml"
        tmp = self.sessions / f".{name}.yaml.tmp"
        tmp.write_text(text)
        tmp.replace(path)
        return path

    def remove(self, name: str) -> None:
        """Delete a session file."""
        (self.sessions / f"{name}.yaml").unlink()

    def status(self) -> dict[str, dict[str, Any]]:
        """`nbtether status --json`, by session name (exit 4, no daemon yet, is an answer).

        It runs in this process: waits look several times a second, and a new Python
        process for each look would keep a core busy, starving the daemons and jobs of
        tests that run at the same time. `nbtether` runs the command as a user does."""
        result = _CLI.invoke(app, ["status", "--json"], env=self.env)
        assert result.exit_code in (0, 4), f"{result.output}{result.exception!r}"
        return {row["name"]: row for row in json.loads(result.stdout)["sessions"]}

    def wait_phase(self, name: str, phase: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until `status` shows the session in `phase`; returns its row."""

        def reached() -> dict[str, Any] | None:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log.read_text()[-3000:]}")
            row = self.status().get(name)
            return row if row and row["phase"] == phase else None

        try:
            return wait_for(reached, timeout, interval=0.3, message=f"{name} to be {phase}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\nstatus: {self.status().get(name)}\n"
                                 f"log tail:\n{self.log.read_text()[-3000:]}") from exc

    def wait_gone(self, name: str, timeout: float = 60) -> None:
        """Wait until `status` no longer lists the session."""
        wait_for(lambda: name not in self.status(), timeout, interval=0.3,
                 message=f"{name} to disappear from status")

    @property
    def instance(self) -> str:
        """The daemon instance id (part of its job names)."""
        return (self.state / "instance").read_text().strip()

    def jobs(self, states: str = "all") -> list[tuple[str, str, str]]:
        """(id, state, name) of this daemon's jobs in squeue, or in qstat with Grid Engine's
        states in SLURM's words."""
        if not (self.state / "instance").exists():
            return []  # the daemon has not started far enough to submit anything
        if self.scheduler == "sge":
            out = self.cluster.ssh(sge_text.POLL_COMMAND).stdout
            rows = [(job.job_id, job.state, job.name)
                    for job in sge_text.parse_poll(out, datetime.now(UTC))
                    if states == "all" or job.state in states.split(",")]
        else:
            out = self.cluster.ssh(f"squeue --me -h -t {states} -o '%i|%T|%j'").stdout
            rows = [(r[0], r[1], r[2]) for r in
                    (line.split("|", 2) for line in out.splitlines() if line.strip())]
        prefix = f"nbtether-{self.instance}-"
        return [row for row in rows if row[2].startswith(prefix)]

    def active_jobs(self) -> list[tuple[str, str, str]]:
        """This daemon's queued or running jobs."""
        return self.jobs("PENDING,RUNNING,CONFIGURING,COMPLETING,REQUEUED")

    def submitted_jobs(self, session: str) -> list[tuple[str, str]]:
        """(id, state) of every job the daemon ever submitted for `session`, from the
        accounting (sacct; Grid Engine's qacct, which knows ended jobs only, with qstat for
        the others). Accounting is recorded asynchronously: this waits for one record."""
        name = f"nbtether-{self.instance}-{session}"

        def recorded() -> list[tuple[str, str]]:
            if self.scheduler == "sge":
                out = self.cluster.ssh(f"qacct -j {name} 2>/dev/null; true").stdout
                ended = {job.job_id: job.state for record in out.split("\n=====")
                         for job in sge_text.parse_final(record)}
                queued = {job_id: state for job_id, state, job_name in self.jobs()
                          if job_name == name and job_id not in ended}
                return sorted({**queued, **ended}.items(), key=lambda job: int(job[0]))
            out = self.cluster.ssh(f"sacct -X -n -P --name={name} -S now-1hour "
                                   "-o JobIDRaw,State").stdout
            return [(row.split("|")[0], row.split("|")[1]) for row in out.splitlines() if row]

        return wait_for(recorded, timeout=30, message=f"accounting records of {name}")

    def cleanup(self) -> None:
        """Stop the daemon and cancel whatever jobs it left."""
        if self.process is not None:
            self.stop(signal.SIGKILL)
        if (self.state / "instance").exists():
            ids = [job_id for job_id, _, _ in self.active_jobs()]
            cancel = "qdel" if self.scheduler == "sge" else "scancel"
            if ids:
                self.cluster.ssh(f"{cancel} " + " ".join(ids), check=False)
