"""Interleavings the simulation found, replayed for real: a daemon frozen through a
handover, and a daemon killed between sbatch and its record while the file changes."""

from __future__ import annotations

import json
import signal

import pytest

from tests.cluster import wait_for
from tests.e2e.harness import Daemon, free_port, http_status, session_yaml, token_of

pytestmark = pytest.mark.e2e


def _active_ids(daemon: Daemon) -> set[str]:
    return {job_id for job_id, _, _ in daemon.active_jobs()}


def _memory(daemon: Daemon, job_id: str) -> str:
    """The memory a job asked for, as squeue shows it (`%m`)."""
    return daemon.cluster.ssh(f"squeue -h -j {job_id} -o %m").stdout.strip()


def test_frozen_through_a_handover_serves_again_and_hands_over_again(daemon: Daemon) -> None:
    """SIGSTOP from the successor's submission until both jobs ran out of time, then SIGCONT:
    a new job serves the same URL within 60 s and gets its own handover before its end (a
    successor submitted for it, the session in `handover`), with no word of the ended
    successor."""
    port = free_port()
    daemon.drop("frozen", session_yaml(port, time="00:02:00", handover="60s"))
    first = daemon.wait_phase("frozen", "ready", timeout=120)
    wait_for(lambda: len(_active_ids(daemon)) == 2, timeout=150, interval=0.05,
             message="the successor's submission")
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        both = _active_ids(daemon)
        wait_for(lambda: not _active_ids(daemon) & both, timeout=240, interval=1,
                 message="both jobs to end while the daemon is frozen")
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    ended = dict(daemon.submitted_jobs("frozen"))
    assert {ended[job_id] for job_id in both} == {"TIMEOUT"}

    def served_anew() -> dict[str, object] | None:
        row = daemon.status()["frozen"]
        fresh = row["phase"] == "ready" and str(row["job_id"]) not in both
        return row if fresh else None

    row = wait_for(served_anew, timeout=60, interval=0.5, message="a new job to serve")
    assert row["url"] == first["url"]
    assert http_status(f"http://127.0.0.1:{port}/api/status", token_of(first)) == 200
    third = str(row["job_id"])
    record_path = daemon.state / "sessions" / "frozen.json"
    assert json.loads(record_path.read_text())["successor_id"] not in both

    def handing_over() -> str | None:
        row = daemon.status()["frozen"]
        successor = json.loads(record_path.read_text())["successor_id"]
        if (row["phase"], str(row["job_id"])) != ("handover", third) or successor is None:
            return None
        return str(successor)

    successor = wait_for(handing_over, timeout=120, interval=0.5,
                         message="the new job's own handover")
    assert successor not in both and successor in _active_ids(daemon)
    row = daemon.status()["frozen"]
    assert row["url"] == first["url"]
    for said in (str(row["message"]), daemon.log.read_text()):
        assert "successor job ended" not in said


def test_killed_after_sbatch_then_edited_replaces_the_adopted_job(daemon: Daemon) -> None:
    """SIGKILL between sbatch and the record, resources edited before the restart: the
    adopted job is replaced by one with the new resources, at the same URL, and one job
    of the session remains."""
    port = free_port()
    daemon.drop("edited", session_yaml(port, mem="400M"))
    wait_for(lambda: daemon.jobs(), timeout=60, interval=0.05, message="the submission")
    daemon.stop(signal.SIGKILL)
    (adopted,) = _active_ids(daemon)
    # The kill lands a few milliseconds after sbatch returned; put the record back to what
    # it was while sbatch ran (the daemon writes it before submitting), so the restart sees
    # exactly the state of a kill before the job's id was saved.
    record_path = daemon.state / "sessions" / "edited.json"
    record = json.loads(record_path.read_text())
    token = record["token"]
    record["job_id"] = None
    record_path.write_text(json.dumps(record))
    daemon.drop("edited", session_yaml(port, mem="500M"))
    daemon.start()

    def replaced() -> dict[str, object] | None:
        row = daemon.status()["edited"]
        return row if row["phase"] == "ready" and str(row["job_id"]) != adopted else None

    row = wait_for(replaced, timeout=180, interval=0.5, message="a job with the new resources")
    assert token_of(row) == token
    assert row["url"] == f"http://127.0.0.1:{port}/lab?token={token}"
    assert _active_ids(daemon) == {str(row["job_id"])}
    assert _memory(daemon, str(row["job_id"])) == "500M"
    assert dict(daemon.submitted_jobs("edited"))[adopted].startswith("CANCELLED")


def test_edit_while_stopped_replaces_the_job_at_start(daemon: Daemon) -> None:
    """SIGTERM, edit the resources, start: the job is replaced, at the same URL."""
    port = free_port()
    daemon.drop("paused", session_yaml(port, mem="400M"))
    first = daemon.wait_phase("paused", "ready", timeout=120)
    assert daemon.stop(signal.SIGTERM) == 0
    daemon.drop("paused", session_yaml(port, mem="500M"))
    daemon.start()

    def replaced() -> dict[str, object] | None:
        row = daemon.status()["paused"]
        return row if row["phase"] == "ready" and row["job_id"] != first["job_id"] else None

    row = wait_for(replaced, timeout=180, interval=0.5, message="a job with the new resources")
    assert row["url"] == first["url"]
    assert _active_ids(daemon) == {str(row["job_id"])}
    assert _memory(daemon, str(row["job_id"])) == "500M"
