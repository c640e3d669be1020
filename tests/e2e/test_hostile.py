"""Safe among strangers: hostile files and floods of connections leave other sessions alone."""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import pytest

from nbtether.tunnel import MAX_CONNECTIONS
from tests.cluster import Cluster, wait_for
from tests.e2e.harness import Daemon, free_port, http_status, session_yaml, token_of

pytestmark = pytest.mark.e2e

SECRET = "hunter2-e2e-not-for-anyone"


def plant_hostile_files(sessions: Path, elsewhere: Path) -> dict[str, str]:
    """Put every kind of hostile or mistaken file into `sessions`; returns name → expected
    start of its message."""
    header = f"cluster: testbed\nlocal_port: {free_port()}\n"
    (sessions / "deep.yaml").write_text(header + "extra: " + "[" * 2000 + "]" * 2000 + "\n")
    with (sessions / "huge.yaml").open("w") as huge:
        huge.write(header + "environment:\n  setup:\n")
        line = "    - echo " + "x" * 89 + "\n"
        huge.write(line * (20 * 1024 * 1024 // len(line)))
    (sessions / "x\n.yaml").write_text(header)
    secret = elsewhere / "shadow"
    secret.write_text(f"root:$6${SECRET}:19000:0:99999:7:::\napi_token: {SECRET}\n")
    (sessions / "linked.yaml").symlink_to(secret)
    (sessions / "credentials.yaml").write_text(
        f"[default]\naws_access_key_id = AKIA{SECRET}\naws_secret_access_key = {SECRET}\n"
    )
    theirs = elsewhere / "theirs.yaml"
    theirs.write_text(header)
    os.chown(theirs, 65534, 65534)
    (sessions / "theirs.yaml").symlink_to(theirs)
    os.mkfifo(sessions / "pipe.yaml")
    (sessions / "device.yaml").symlink_to("/dev/zero")
    return {
        "deep": "not valid YAML: nested deeper than 16 levels",
        "huge": "the file is larger than 16 KiB",
        "x\n": "file name: 'x\\n' is not a session name",
        "linked": "cluster: Field required; local_port: Field required; <key>: unknown key",
        "credentials": "not valid YAML: expected '<document start>', but found '<scalar>'",
        "theirs": "the file belongs to nobody (uid 65534), not to you",
        "pipe": "not a regular file but a named pipe (FIFO)",
        "device": "not a regular file but a character device",
    }


def test_hostile_files_are_invalid_while_another_session_hands_over(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Each hostile file is invalid, quoting nothing, while a new session starts and hands over."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    expected = plant_hostile_files(daemon.sessions, elsewhere)
    port = free_port()
    daemon.drop("steady", session_yaml(port, time="00:02:00", handover="90s"))
    for name, message in expected.items():
        row = daemon.wait_phase(name, "invalid", timeout=30)
        assert str(row["message"]).startswith(message), row
        assert row["job_id"] is None and row["url"] is None
    # Serving: `ready`, or already `handover` (with 2 minutes of walltime it comes soon).
    first = wait_for(lambda: (row := daemon.status().get("steady")) and row["url"] and row,
                     timeout=120, interval=0.3, message="steady to serve")
    wait_for(lambda: daemon.status()["steady"]["job_id"] != first["job_id"], timeout=150,
             interval=0.5, message="the successor to take over while the files sit there")
    wait_for(lambda: http_status(f"http://127.0.0.1:{port}/api/status", token_of(first)) == 200,
             timeout=60, message="the successor to serve the same URL")
    assert {job[2] for job in daemon.jobs()} == {f"nbtether-{daemon.instance}-steady"}

    validated = daemon.nbtether("validate")
    assert validated.returncode == 1
    for name, message in expected.items():
        assert f"{daemon.sessions / (name + '.yaml')}: {message}" in validated.stdout
    status = json.dumps(daemon.status())
    for seen in (status, validated.stdout, validated.stderr, daemon.log.read_text()):
        assert SECRET not in seen
        assert len(seen) < 100_000


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end has closed (or reset) a non-blocking connection."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    except OSError as exc:
        return exc.errno == errno.ECONNRESET


def test_a_flood_of_idle_connections_leaves_other_sessions_answering(
    tmp_path: Path, cluster: Cluster
) -> None:
    """1,000 idle connections to one session's port: another session still answers."""
    daemon = Daemon(tmp_path, cluster)
    daemon.start(open_files=(512, 1024))  # 1,000 held connections would not fit in 1024
    flood: list[socket.socket] = []
    try:
        crowded, other = free_port(), free_port()
        daemon.drop("crowded", session_yaml(crowded))
        daemon.drop("other", session_yaml(other))
        crowded_row = daemon.wait_phase("crowded", "ready", timeout=120)
        other_row = daemon.wait_phase("other", "ready", timeout=120)
        assert daemon.process is not None
        limits = Path(f"/proc/{daemon.process.pid}/limits").read_text()
        assert [line.split()[3:5] for line in limits.splitlines()
                if line.startswith("Max open files")] == [["1024", "1024"]]

        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", crowded), timeout=10)
            sock.setblocking(False)  # closed_by_peer must look, not wait
            flood.append(sock)
        wait_for(lambda: sum(map(closed_by_peer, flood)) >= 1000 - MAX_CONNECTIONS,
                 timeout=30, message="the connections beyond the cap to be closed")
        assert sum(not closed_by_peer(sock) for sock in flood) == MAX_CONNECTIONS
        assert http_status(f"http://127.0.0.1:{other}/api/status", token_of(other_row)) == 200
        for sock in flood:
            sock.close()
        wait_for(lambda: http_status(f"http://127.0.0.1:{crowded}/api/status",
                                     token_of(crowded_row)) == 200,
                 timeout=30, message="the crowded session to answer once the flood ends")
        assert "Too many open files" not in daemon.log.read_text()
    finally:
        for sock in flood:
            sock.close()
        daemon.cleanup()
