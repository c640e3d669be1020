"""The daemon as a process on this machine: systemd's notify protocol and `kind: local`.

No mini-cluster is needed: the config has only a local cluster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import wait_for
from tests.e2e.harness import free_port, http_status, listening_addresses
from tests.e2e.local_harness import LocalDaemon, local_session_yaml


@pytest.fixture
def local_daemon(tmp_path: Path) -> Iterator[LocalDaemon]:
    """A not yet started daemon with one local cluster and an empty sessions directory."""
    daemon = LocalDaemon(tmp_path)
    yield daemon
    daemon.cleanup()


def receive_until(sock: socket.socket, wanted: str, timeout: float) -> list[str]:
    """Datagrams received until one equals `wanted`, that one included."""
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            raise AssertionError(f"no {wanted!r} within {timeout:g}s; got {got}") from None
        got.append(message)
        if message == wanted:
            return got


def test_run_speaks_the_systemd_notify_protocol(local_daemon: LocalDaemon, tmp_path: Path) -> None:
    """READY=1, then WATCHDOG=1 pings and a STATUS= line; SIGTERM gives STOPPING=1 and exit 0."""
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        local_daemon.env.update(NOTIFY_SOCKET=str(address), WATCHDOG_USEC="2000000")
        local_daemon.env.pop("WATCHDOG_PID", None)
        local_daemon.start()
        assert local_daemon.process is not None
        before_ready = receive_until(sock, "READY=1", timeout=30)
        after_ready = receive_until(sock, "WATCHDOG=1", timeout=3)  # pings every second
        assert "STATUS=no sessions" in before_ready + after_ready
        local_daemon.process.send_signal(signal.SIGTERM)
        receive_until(sock, "STOPPING=1", timeout=10)
        assert local_daemon.stop() == 0, local_daemon.log.read_text()[-2000:]


def test_a_local_session_serves_and_deleting_it_frees_everything(
    local_daemon: LocalDaemon, tmp_path: Path
) -> None:
    """A local session in a fresh directory is ready at its port; deleting it ends Jupyter."""
    local_daemon.start()
    port = free_port()
    local_daemon.drop("here-nb", local_session_yaml(port, tmp_path))
    row = local_daemon.wait_phase("here-nb", "ready", timeout=90)
    token = str(row["url"]).split("token=", 1)[1]
    assert row["url"] == f"http://127.0.0.1:{port}/lab?token={token}"
    assert http_status(f"http://127.0.0.1:{port}/api/status", token) == 200
    assert http_status(f"http://127.0.0.1:{port}/api/status") == 403
    assert listening_addresses(port) == {"127.0.0.1"}
    pid = int(row["job_id"])
    assert Path(f"/proc/{pid}").exists(), "the job id is the Jupyter process's pid"

    local_daemon.remove("here-nb")
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=15,
             message="the Jupyter process to be gone")
    wait_for(lambda: not listening_addresses(port), timeout=5, message="the port to close")
    local_daemon.wait_gone("here-nb", timeout=10)
    assert local_daemon.process is not None and local_daemon.process.poll() is None
    assert os.listdir(local_daemon.state / "local" / "jobs") == []


# A stand-in for the desktop: a real `notify-send` that records its argv, one JSON line each.
FAKE_NOTIFY_SEND = """\
#!{python}
import json, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_notifications_tell_the_desktop_when_a_session_is_ready(
    local_daemon: LocalDaemon, tmp_path: Path
) -> None:
    """With `notifications: true`, a ready session runs notify-send (a stand-in that records
    its argv) with the session's name and phase, and never the token."""
    bin_dir, shown = tmp_path / "bin", tmp_path / "shown.jsonl"
    bin_dir.mkdir()
    fake = bin_dir / "notify-send"
    fake.write_text(FAKE_NOTIFY_SEND.format(python=sys.executable, log=str(shown)))
    fake.chmod(0o755)
    local_daemon.env["PATH"] = f"{bin_dir}:{local_daemon.env['PATH']}"
    local_daemon.config.write_text(local_daemon.config.read_text() + "notifications: true\n")
    local_daemon.start()
    port = free_port()
    local_daemon.drop("told", local_session_yaml(port, tmp_path))
    row = local_daemon.wait_phase("told", "ready", timeout=90)
    token = str(row["url"]).split("token=", 1)[1]
    lines = wait_for(lambda: shown.exists() and shown.read_text().splitlines(), timeout=10,
                     message="a notification")
    assert [json.loads(line)[-2:] for line in lines] == [
        ["nbtether: told is ready", f"http://127.0.0.1:{port}/ (nbtether open told)"]]
    assert token not in shown.read_text()
