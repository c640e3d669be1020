"""The tunnels' bytes in OpenSSH: connections handed to the daemon's `ssh -M`."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.cluster import Cluster, wait_for
from tests.e2e.harness import Daemon, free_port, login_keys, session_yaml, token_of

pytestmark = pytest.mark.e2e

DAEMON = Path(f"/proc/{os.getpid()}/comm").read_text().strip()  # the same interpreter


def carriers(port: int) -> set[str]:
    """The processes that hold the accepted end of the connections to 127.0.0.1:port."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return set(re.findall(r'\(\("([^"]+)"', out))


def masters(daemon: Daemon) -> list[int]:
    """Pids of the OpenSSH processes that are children of the daemon."""
    assert daemon.process is not None
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, rest = stat.read_text().rsplit(")", 1)
        except OSError:
            continue  # exited meanwhile
        if comm.endswith("(ssh") and int(rest.split()[1]) == daemon.process.pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def connection(port: int, token: str) -> http.client.HTTPConnection:
    """A kept-alive connection that has carried one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/api/status", headers={"Authorization": f"token {token}"})
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    return conn


def test_connections_are_carried_by_openssh_and_survive_its_loss(daemon: Daemon) -> None:
    """A ready session's connections are held by the OpenSSH master, which checks host keys
    as the daemon does; if it dies, new connections are served by the daemon itself, and
    when the daemon dies the master does not outlive it."""
    port = free_port()
    daemon.drop("carried", session_yaml(port))
    token = token_of(daemon.wait_phase("carried", "ready", timeout=120))
    [master] = masters(daemon)
    argv = Path(f"/proc/{master}/cmdline").read_bytes().split(b"\0")
    assert b"StrictHostKeyChecking=yes" in argv and b"BatchMode=yes" in argv
    assert f"UserKnownHostsFile={daemon.cluster.known_hosts}".encode() in argv
    assert not any(token.encode() in arg for arg in argv)

    conn = connection(port, token)
    wait_for(lambda: carriers(port) == {"ssh"}, timeout=5, message="OpenSSH to hold it alone")
    conn.close()

    os.kill(master, signal.SIGKILL)
    wait_for(lambda: not alive(master), timeout=10, message="the master to die")
    conn = connection(port, token)
    assert carriers(port) == {DAEMON}
    conn.close()


def test_the_master_ends_with_the_daemon(daemon: Daemon) -> None:
    """A daemon killed outright leaves no OpenSSH master logged in behind it."""
    port = free_port()
    daemon.drop("orphan", session_yaml(port))
    token = token_of(daemon.wait_phase("orphan", "ready", timeout=120))
    connection(port, token).close()
    [master] = masters(daemon)
    daemon.stop(signal.SIGKILL)
    wait_for(lambda: not alive(master), timeout=15, message="the master to exit")


def test_use_openssh_false_keeps_the_bytes_in_the_daemon(tmp_path: Path,
                                                        cluster: Cluster) -> None:
    """`use_openssh: false`: no master, and the daemon carries every connection itself."""
    daemon = Daemon(tmp_path, cluster, testbed=login_keys(cluster, "use_openssh: false\n"))
    daemon.start()
    try:
        port = free_port()
        daemon.drop("inside", session_yaml(port))
        token = token_of(daemon.wait_phase("inside", "ready", timeout=120))
        conn = connection(port, token)
        assert carriers(port) == {DAEMON}
        assert masters(daemon) == []
        conn.close()
    finally:
        daemon.cleanup()
