"""Keep it alive: walltime, handover, node failure, outages and daemon crashes, for real."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster import STATE_DIR, start_cluster, wait_for
from tests.e2e.harness import (
    BOTH_SCHEDULERS,
    Daemon,
    Prober,
    free_port,
    http_status,
    session_yaml,
    token_of,
)

pytestmark = pytest.mark.e2e

SLURMCTLD_PID = STATE_DIR / "slurm" / "slurmctld.pid"
SSHD_PID = STATE_DIR / "sshd" / "sshd.pid"


@BOTH_SCHEDULERS
def test_walltime_end_resubmits_at_the_same_url(daemon: Daemon) -> None:
    """A 1-minute job ends by walltime; a new job serves the same URL and restarts counts it."""
    port = free_port()
    daemon.drop("short", session_yaml(port, time="00:01:00"))
    first = daemon.wait_phase("short", "ready", timeout=120)
    wait_for(lambda: daemon.status()["short"]["job_id"] != first["job_id"], timeout=180,
             interval=1, message="a job to replace the one that ran out of time")
    second = daemon.wait_phase("short", "ready", timeout=120)
    assert second["url"] == first["url"]
    assert second["restarts"] >= 1
    assert http_status(f"http://127.0.0.1:{port}/api/status", token_of(second)) == 200
    states = dict(daemon.submitted_jobs("short"))
    assert states[str(first["job_id"])] == "TIMEOUT"


@BOTH_SCHEDULERS
def test_handover_keeps_the_url_answering(daemon: Daemon) -> None:
    """With handover, a probe every 0.2 s sees no failure while the next job takes over."""
    port = free_port()
    daemon.drop("relay", session_yaml(port, time="00:02:00", handover="90s"))
    first = daemon.wait_phase("relay", "ready", timeout=120)
    prober = Prober(f"http://127.0.0.1:{port}/api/status", token_of(first))
    prober.start()
    try:
        wait_for(lambda: daemon.status()["relay"]["job_id"] != first["job_id"], timeout=150,
                 interval=0.5, message="the successor to take over")
        wait_for(lambda: str(first["job_id"]) not in
                 {job_id for job_id, _, _ in daemon.active_jobs()},
                 timeout=30, message="the predecessor to be cancelled")
        requests_before = prober.requests
        wait_for(lambda: prober.requests >= requests_before + 10, timeout=30,
                 message="more probes against the successor")
    finally:
        prober.stop()
    assert prober.failures == []
    assert daemon.status()["relay"]["url"] == first["url"]
    assert len(daemon.active_jobs()) <= 2


@pytest.mark.cluster_wide
def test_node_failure_requeue_comes_back(daemon: Daemon) -> None:
    """A node set down requeues the job (same id); the session serves again at its URL."""
    port = free_port()
    daemon.drop("sturdy", session_yaml(port))
    first = daemon.wait_phase("sturdy", "ready", timeout=120)
    node = str(first["node"])
    try:
        daemon.cluster.admin("scontrol", "update", f"nodename={node}", "state=down",
                             "reason=nbtether-test")
        wait_for(lambda: daemon.status()["sturdy"]["phase"] != "ready", timeout=60,
                 message="the session to notice the failure")
    finally:
        daemon.cluster.admin("scontrol", "update", f"nodename={node}", "state=resume",
                             check=False)
    again = daemon.wait_phase("sturdy", "ready", timeout=180)
    assert again["url"] == first["url"]
    assert http_status(f"http://127.0.0.1:{port}/api/status", token_of(again)) == 200
    assert len(daemon.active_jobs()) == 1


@pytest.mark.cluster_wide
def test_controller_outage_changes_nothing(daemon: Daemon) -> None:
    """With slurmctld down for a minute, nothing is resubmitted or cancelled; it stays ready."""
    port = free_port()
    daemon.drop("calm", session_yaml(port))
    first = daemon.wait_phase("calm", "ready", timeout=120)
    url = f"http://127.0.0.1:{port}/api/status"
    os.kill(int(SLURMCTLD_PID.read_text()), signal.SIGTERM)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = daemon.status()["calm"]
            assert (row["phase"], row["job_id"]) == ("ready", first["job_id"]), row
            assert http_status(url, token_of(first)) == 200
            time.sleep(2)  # the outage lasts a minute; we look every 2 s during it
    finally:
        start_cluster()
    wait_for(lambda: "unreachable" not in str(daemon.status()["calm"]["message"]),
             timeout=60, message="the daemon to see slurmctld again")
    row = daemon.status()["calm"]
    assert (row["phase"], row["job_id"], row["restarts"]) == ("ready", first["job_id"], 0)
    assert [job_id for job_id, _ in daemon.submitted_jobs("calm")] == [
        str(first["job_id"])]


def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                              text=True).stdout.split()
    return [pid] + [grandchild for child in children for grandchild in _descendants(int(child))]


def _kill_login_node() -> None:
    """SIGKILL the login node's sshd and every process of every connection under it."""
    for pid in _descendants(int(SSHD_PID.read_text())):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


@pytest.mark.cluster_wide
@BOTH_SCHEDULERS
def test_login_node_outage_recovers_the_same_job(daemon: Daemon) -> None:
    """sshd killed with its connections for 15 s: the URL answers within 10 s of its return."""
    port = free_port()
    daemon.drop("steady", session_yaml(port))
    first = daemon.wait_phase("steady", "ready", timeout=120)
    url = f"http://127.0.0.1:{port}/api/status"
    _kill_login_node()
    try:
        down_until = time.monotonic() + 15
        wait_for(lambda: http_status(url, token_of(first), timeout=2) != 200, timeout=10,
                 message="the URL to fail while the login node is down")
        time.sleep(max(0.0, down_until - time.monotonic()))  # the outage itself: 15 s
    finally:
        start_cluster()
    returned = SSHD_PID.stat().st_mtime  # sshd writes its pid file once it listens
    wait_for(lambda: http_status(url, token_of(first), timeout=2) == 200,
             timeout=max(0.1, returned + 10 - time.time()), interval=0.2,
             message="the URL to answer within 10 s of the login node's return")
    print(f"\nURL answered {time.time() - returned:.1f} s after sshd returned")
    row = daemon.status()["steady"]
    assert row["job_id"] == first["job_id"] and row["url"] == first["url"]


@BOTH_SCHEDULERS
def test_sigkill_never_duplicates_or_orphans(daemon: Daemon) -> None:
    """Killed right after sbatch and again while ready: one job ever, the same URL after."""
    port = free_port()
    daemon.drop("tough", session_yaml(port))
    wait_for(lambda: daemon.jobs(), timeout=60, interval=0.05, message="the submission")
    daemon.stop(signal.SIGKILL)
    daemon.start()
    first = daemon.wait_phase("tough", "ready", timeout=120)
    daemon.stop(signal.SIGKILL)
    daemon.start()
    wait_for(lambda: http_status(f"http://127.0.0.1:{port}/api/status",
                                 token_of(first)) == 200,
             timeout=60, message="the URL to answer after the restart")
    again = daemon.wait_phase("tough", "ready", timeout=30)
    assert again["url"] == first["url"] and again["job_id"] == first["job_id"]
    assert [job_id for job_id, _ in daemon.submitted_jobs("tough")] == [
        str(first["job_id"])]


def test_file_deleted_while_down_is_cancelled_on_start(daemon: Daemon) -> None:
    """SIGTERM keeps the job; a file deleted meanwhile has its job cancelled at start."""
    port = free_port()
    path: Path = daemon.drop("gone", session_yaml(port))
    first = daemon.wait_phase("gone", "ready", timeout=120)
    assert daemon.stop(signal.SIGTERM) == 0
    assert [job[:2] for job in daemon.active_jobs()] == [(first["job_id"], "RUNNING")]
    path.unlink()
    daemon.start()
    wait_for(lambda: not daemon.active_jobs(), timeout=60, message="the orphan's cancellation")
    daemon.wait_gone("gone", timeout=30)
