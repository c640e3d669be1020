"""The polling budget on Grid Engine, counted where qmaster cannot: at the login node.

qmaster has no `sdiag`, so this counts the commands the daemon's SSH connection starts
(sshd logs each one, `LogLevel VERBOSE`). SLURM's budget is measured with `sdiag` by the
benchmarks (docs/benchmarks.md).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.cluster import STATE_DIR, wait_for
from tests.e2e.harness import Daemon, free_port, session_yaml

pytestmark = pytest.mark.e2e

SSHD_LOG = STATE_DIR / "sshd" / "sshd.log"
SESSIONS = 3


def connection_port(pid: int) -> int:
    """The local port of the daemon's SSH connection to the login node."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", "( dport = :2222 )"],
                         capture_output=True, text=True, check=True).stdout
    ports = [int(line.split()[2].rsplit(":", 1)[1]) for line in out.splitlines()
             if f"pid={pid}," in line]
    assert len(ports) == 1, f"one connection expected: {out}"
    return ports[0]


def commands_since(offset: int, port: int) -> int:
    """Commands that sshd started for the connection from `port` after `offset` in its log."""
    with SSHD_LOG.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return len(re.findall(rf"Starting session: command for \S+ from 127\.0\.0\.1 port {port} ",
                          text))


@pytest.mark.parametrize("daemon", ["sge"], indirect=True)
def test_one_qstat_per_interval_whatever_the_number_of_sessions(daemon: Daemon) -> None:
    """With three ready sessions the daemon runs one command (qstat) per 60 s poll interval."""
    for index in range(SESSIONS):
        daemon.drop(f"s{index}", session_yaml(free_port()))
    for index in range(SESSIONS):
        daemon.wait_phase(f"s{index}", "ready", timeout=180)
    assert daemon.process is not None
    port = connection_port(daemon.process.pid)
    offset = SSHD_LOG.stat().st_size
    started = time.monotonic()
    wait_for(lambda: commands_since(offset, port) >= 2, timeout=150, interval=1,
             message="two commands from the daemon")
    elapsed = time.monotonic() - started
    # Two polls 60 s apart span at least 60 s; more commands per session would come sooner.
    assert elapsed >= 55, f"2 commands in {elapsed:.0f} s: more than one qstat per interval"
