"""The asyncssh send-path change: pinned to the code it was written for, and doing only that.

A real asyncssh server on 127.0.0.1 stands in for the login node's sshd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import pytest
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_IGNORE

from nbtether import remote, sshpatch


def test_installed_asyncssh_is_the_pinned_version_and_send_path() -> None:
    """The installed asyncssh and its send_packet are exactly what the change was written for."""
    assert asyncssh.__version__ == sshpatch.PINNED_VERSION
    assert sshpatch.source_digest() == sshpatch.PINNED_SOURCE_SHA256
    assert sshpatch.applicable()


def test_importing_the_ssh_link_installs_the_change_on_client_connections() -> None:
    """remote.py installs it for client connections only, leaving servers' send path alone."""
    assert remote.CIPHERS
    assert asyncssh.SSHClientConnection.send_packet is sshpatch._send_packet
    assert asyncssh.SSHServerConnection.send_packet is not sshpatch._send_packet


class _Echo(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: this server only exists for the test


async def _echo(process: asyncssh.SSHServerProcess[str]) -> None:
    async for line in process.stdin:
        process.stdout.write(line)
    process.exit(0)


@pytest.fixture
async def server() -> AsyncIterator[int]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    acceptor = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[key],
                                     encryption_algs=["aes128-gcm@openssh.com", "aes128-cbc"],
                                     server_factory=_Echo, process_factory=_echo)
    try:
        yield acceptor.sockets[0].getsockname()[1]
    finally:
        acceptor.close()
        await acceptor.wait_closed()


async def _sent_types(port: int, cipher: str) -> list[int]:
    """The type of each packet the client writes while echoing three lines with `cipher`."""
    sent: list[int] = []
    sending: list[int] = []
    async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u",
                                encryption_algs=[cipher]) as conn:
        send_packet, write = conn.send_packet, conn._send

        def note_type(pkttype: int, *args: bytes, handler: Any = None) -> None:
            sending.append(pkttype)
            try:
                send_packet(pkttype, *args, handler=handler)
            finally:
                sending.pop()

        def note_write(data: bytes) -> None:
            sent.append(sending[-1])
            write(data)

        conn.send_packet = note_type  # type: ignore[method-assign]
        conn._send = note_write  # type: ignore[method-assign]
        async with conn.create_process("echo") as process:
            for line in ("a\n", "b\n", "c\n"):
                process.stdin.write(line)
                assert await process.stdout.readline() == line
    return sent


async def test_no_ignore_packet_precedes_data_with_an_aead_cipher(server: int) -> None:
    """With AES-GCM, the client sends its data packets without an SSH_MSG_IGNORE before each."""
    sent = await _sent_types(server, "aes128-gcm@openssh.com")
    assert sent.count(MSG_CHANNEL_DATA) == 3
    assert MSG_IGNORE not in sent


async def test_cbc_ciphers_keep_their_ignore_packets(server: int) -> None:
    """With a CBC cipher, every packet still follows an SSH_MSG_IGNORE, as asyncssh intends."""
    sent = await _sent_types(server, "aes128-cbc")
    assert sent.count(MSG_CHANNEL_DATA) == 3
    assert sent.count(MSG_IGNORE) >= sent.count(MSG_CHANNEL_DATA)
