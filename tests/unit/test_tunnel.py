"""The session's listener on real sockets: loopback only, movable, holding, reporting."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from nbtether.jobs import Endpoint
from nbtether.tunnel import Tunnel, port_holder

COMM = Path("/proc/self/comm").read_text().strip()  # this test process's name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _echo_server(reply: bytes) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _ask(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hello\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_new_connections_follow_the_target_and_the_port_is_loopback_only() -> None:
    """Pointing the tunnel elsewhere moves new connections; it binds 127.0.0.1 only."""
    first, first_port = await _echo_server(b"first")
    second, second_port = await _echo_server(b"second")
    port = _free_port()
    tunnel = Tunnel(port, asyncio.open_connection, lambda: None)
    await tunnel.listen()
    try:
        assert tunnel._server is not None
        assert {sock.getsockname()[0] for sock in tunnel._server.sockets} == {"127.0.0.1"}
        tunnel.point(Endpoint(node="c1", address="127.0.0.1", port=first_port))
        assert await _ask(port) == b"first"
        tunnel.point(Endpoint(node="c2", address="127.0.0.1", port=second_port))
        assert await _ask(port) == b"second"
    finally:
        await tunnel.close()
        first.close()
        second.close()


async def test_a_connection_between_jobs_waits_for_the_next_one() -> None:
    """A connection that arrives with no target is held, then served by the next target."""
    server, server_port = await _echo_server(b"next job")
    port = _free_port()
    tunnel = Tunnel(port, asyncio.open_connection, lambda: None)
    await tunnel.listen()
    try:
        asking = asyncio.create_task(_ask(port))
        await asyncio.sleep(0.2)
        assert not asking.done()
        tunnel.point(Endpoint(node="c1", address="127.0.0.1", port=server_port))
        assert await asking == b"next job"
    finally:
        await tunnel.close()
        server.close()


async def test_an_unreachable_target_is_reported() -> None:
    """A connection that cannot reach its target tells the daemon to look again, and is
    closed when the session does not move within the hold time."""
    failures: list[int] = []
    port = _free_port()
    tunnel = Tunnel(port, asyncio.open_connection, lambda: failures.append(1), hold=0.3)
    await tunnel.listen()
    try:
        tunnel.point(Endpoint(node="c1", address="127.0.0.1", port=_free_port()))
        assert await _ask(port) == b""
        assert failures == [1]
    finally:
        await tunnel.close()


async def test_a_connection_to_an_ended_job_waits_for_the_next_target() -> None:
    """A connection whose job refuses it is forwarded to the job the session moves to next."""
    failed = asyncio.Event()
    server, server_port = await _echo_server(b"from the successor")
    port = _free_port()
    tunnel = Tunnel(port, asyncio.open_connection, failed.set)
    await tunnel.listen()
    try:
        tunnel.point(Endpoint(node="c1", address="127.0.0.1", port=_free_port()))
        asking = asyncio.create_task(_ask(port))
        await asyncio.wait_for(failed.wait(), 5)  # the daemon hears of it and moves the route
        tunnel.point(Endpoint(node="c2", address="127.0.0.1", port=server_port))
        assert await asking == b"from the successor"
    finally:
        await tunnel.close()
        server.close()


async def test_a_taken_port_fails_to_listen_and_its_holder_is_named() -> None:
    """Listening on a port another socket holds raises OSError; /proc names the holder."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(OSError):
            await Tunnel(port, asyncio.open_connection, lambda: None).listen()
        assert port_holder(port) == f"{COMM} (pid {os.getpid()})"
    assert port_holder(port) is None
