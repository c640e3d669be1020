"""The OpenSSH carrier: its control-socket messages, its master's command line, and the
life of a handed-over connection (a Unix socket pair stands in for the master)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from pathlib import Path

import pytest

from nbtether import openssh
from nbtether.backends.batch import BatchBackend
from nbtether.backends.kinds import make_backend
from nbtether.config import ClusterConfig
from nbtether.remote import CIPHERS, known_hosts_file


def fields(message: bytes) -> list[bytes]:
    """Split one framed message (length, then body) into its leading u32s."""
    (length,) = struct.unpack_from(">I", message)
    assert len(message) == 4 + length
    return [message[4 + i:8 + i] for i in range(0, length, 4)]


def test_the_forward_request_is_hello_then_a_stdio_forward() -> None:
    request = openssh.forward_request(7, "c1", 8888)
    hello, forward = request[:12], request[12:]
    assert fields(hello) == [struct.pack(">I", 1), struct.pack(">I", 4)]
    body = forward[4:]
    assert struct.unpack(">II", body[:8]) == (0x10000008, 7)
    assert body[8:] == struct.pack(">I", 0) + struct.pack(">I", 2) + b"c1" + struct.pack(
        ">I", 8888)


def test_replies_are_split_only_when_complete() -> None:
    hello = openssh._packet(struct.pack(">II", 1, 4))
    opened = openssh._packet(struct.pack(">III", 0x80000006, 7, 3))
    buffer = bytearray(hello + opened[:5])
    assert openssh.replies(buffer) == [1]
    buffer += opened[5:]
    assert openssh.replies(buffer) == [0x80000006]
    assert buffer == b""


def test_the_master_is_as_strict_as_the_daemon(tmp_path: Path) -> None:
    config = ClusterConfig(host="login.example.org", user="ada", port=2222,
                           identity_file=tmp_path / "key", known_hosts=tmp_path / "known")
    argv = openssh.master_argv(config, tmp_path / "ctl", known_hosts_file(config), CIPHERS)
    options = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    assert options["StrictHostKeyChecking"] == "yes"
    assert options["UserKnownHostsFile"] == str(tmp_path / "known")
    assert options["BatchMode"] == "yes"
    assert options["ForwardAgent"] == "no"
    assert options["IdentitiesOnly"] == "yes"
    assert options["ControlPath"] == str(tmp_path / "ctl")
    assert argv[-3:] == ["--", "login.example.org", openssh.HOLD_COMMAND]
    assert argv[argv.index("-l"):argv.index("-l") + 2] == ["-l", "ada"]


def test_the_control_directory_must_be_private(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    path = openssh.control_path("instance-cluster")
    assert path is not None and path.parent.stat().st_mode & 0o777 == 0o700
    assert openssh.control_path("instance-cluster") == path
    assert openssh.control_path("other") != path
    path.parent.chmod(0o755)
    assert openssh.control_path("instance-cluster") is None


class FakeMaster:
    """The master's end of one control connection: takes the request and both descriptors."""

    def __init__(self, end: socket.socket) -> None:
        self.end = end
        self.fds: list[int] = []

    def take(self) -> None:
        self.end.setblocking(True)
        self.end.recv(len(openssh.forward_request(1, "c1", 8888)))
        for _ in range(2):
            _, fds, _, _ = socket.recv_fds(self.end, 1, 1)
            self.fds += fds

    def opened(self) -> None:
        self.end.sendall(openssh._packet(struct.pack(">III", 0x80000006, 1, 3)))

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.end.close()


async def _handed() -> tuple[socket.socket, socket.socket, openssh.Forward, FakeMaster,
                             asyncio.Queue[socket.socket | None]]:
    """A client connection handed to a fake master, as `Master.carry` does."""
    client, peer = socket.socketpair()
    peer.setblocking(False)
    control, end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    control.setblocking(False)
    control.sendall(openssh.forward_request(1, "c1", 8888))
    for _ in range(2):
        socket.send_fds(control, [b"\0"], [client.fileno()])
    ended: asyncio.Queue[socket.socket | None] = asyncio.Queue()
    forward = openssh.Forward(control, client, lambda _forward, back: ended.put_nowait(back))
    fake = FakeMaster(end)
    await asyncio.to_thread(fake.take)
    return client, peer, forward, fake, ended


async def test_a_taken_connection_is_left_to_openssh_and_closed_with_its_control() -> None:
    loop = asyncio.get_running_loop()
    _, peer, forward, master, ended = await _handed()
    master.opened()
    os.write(master.fds[1], b"from the notebook")
    assert await asyncio.wait_for(loop.sock_recv(peer, 64), 5) == b"from the notebook"
    forward.close()
    assert ended.get_nowait() is None
    master.close()
    # Only OpenSSH held the connection after it said so: closing its copies ends it.
    assert await asyncio.wait_for(loop.sock_recv(peer, 64), 5) == b""
    peer.close()


async def test_a_connection_openssh_did_not_take_comes_back() -> None:
    loop = asyncio.get_running_loop()
    client, peer, _, master, ended = await _handed()
    master.close()  # the channel did not open, or the master went away
    assert await asyncio.wait_for(ended.get(), 5) is client
    client.sendall(b"still usable")
    assert await asyncio.wait_for(loop.sock_recv(peer, 64), 5) == b"still usable"
    client.close()
    peer.close()


@pytest.mark.parametrize(("tunnels", "use_openssh", "master"),
                         [(True, True, True), (True, False, False), (False, True, False)])
def test_only_the_daemons_own_backends_run_a_master(tunnels: bool, use_openssh: bool,
                                                    master: bool, tmp_path: Path) -> None:
    """`nbtether logs` connects with the daemon's instance id: a master of its own would end
    the daemon's (same control socket)."""
    config = ClusterConfig(host="login", use_openssh=use_openssh)
    backend = make_backend("hpc", config, "0123abcd", tmp_path, lambda _: None,
                           tunnels=tunnels)
    assert isinstance(backend, BatchBackend)
    assert (backend.link._carrier_key == "0123abcd-hpc") is master
