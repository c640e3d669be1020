"""The session's listener on real sockets: loopback only, movable, holding, reporting."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nbtether.jobs import Endpoint
from nbtether.openssh import Forward, OnEnd
from nbtether.plan import Activity
from nbtether.portpage import Waiting, render
from nbtether.tunnel import Tunnel, jupyter_activity, port_holder
from nbtether.waiting import wake

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
        assert tunnel._listener is not None
        assert tunnel._listener.getsockname()[0] == "127.0.0.1"
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


async def test_severing_closes_the_old_jobs_connections_only() -> None:
    """At a switch, connections still open to the old job are closed (their pages then
    reconnect, to the new job); those already on the new job stay open."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()

    old_job = await asyncio.start_server(echo, "127.0.0.1", 0)
    new_job = await asyncio.start_server(echo, "127.0.0.1", 0)
    old = Endpoint(node="c1", address="127.0.0.1", port=old_job.sockets[0].getsockname()[1])
    new = Endpoint(node="c2", address="127.0.0.1", port=new_job.sockets[0].getsockname()[1])
    port = _free_port()
    tunnel = Tunnel(port, asyncio.open_connection, lambda: None)
    await tunnel.listen()

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"hello\n"
        return reader, writer

    try:
        tunnel.point(old)
        on_old = await connect()
        tunnel.point(new)
        on_new = await connect()
        await tunnel.sever(old)
        assert await asyncio.wait_for(on_old[0].read(), 10) == b""
        on_new[1].write(b"still here\n")
        assert await asyncio.wait_for(on_new[0].readline(), 10) == b"still here\n"
        for _, writer in (on_old, on_new):
            writer.close()
    finally:
        await tunnel.close()
        old_job.close()
        new_job.close()


async def test_a_request_just_sent_to_the_old_job_finishes_before_the_switch_closes_it(
) -> None:
    """A connection opened just before the switch is most likely a request on its way: it
    gets its answer, and the switch closes it only then."""

    received, answer = asyncio.Event(), asyncio.Event()

    async def slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        received.set()
        await answer.wait()
        writer.write(line)
        await writer.drain()
        await reader.read()
        writer.close()

    old_job = await asyncio.start_server(slow_echo, "127.0.0.1", 0)
    old = Endpoint(node="c1", address="127.0.0.1", port=old_job.sockets[0].getsockname()[1])
    port = _free_port()
    tunnel = Tunnel(port, asyncio.open_connection, lambda: None)
    await tunnel.listen()
    try:
        tunnel.point(old)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"request\n")
        await writer.drain()
        await asyncio.wait_for(received.wait(), 10)
        severing = asyncio.create_task(tunnel.sever(old))
        await asyncio.sleep(0)  # one turn of the loop: the switch closes what it closes at once
        answer.set()
        assert await asyncio.wait_for(reader.readline(), 10) == b"request\n"
        writer.close()
        await asyncio.wait_for(severing, 10)
    finally:
        await tunnel.close()
        old_job.close()


async def test_severing_closes_only_the_old_jobs_carried_connections() -> None:
    """The tunnel hands connections to its carrier and closes those of a job it leaves."""
    old = Endpoint(node="c1", address="127.0.0.1", port=1)
    new = Endpoint(node="c2", address="127.0.0.1", port=2)
    closed: list[str] = []

    class Carried(Forward):
        def __init__(self, host: str, port: int, on_end: OnEnd) -> None:  # no OpenSSH here
            self.name, self.on_end = f"{host}:{port}", on_end

        def close(self) -> None:
            closed.append(self.name)
            self.on_end(self, None)

    handed: asyncio.Queue[socket.socket] = asyncio.Queue()

    def carry(client: socket.socket, host: str, port: int, on_end: OnEnd) -> Forward:
        handed.put_nowait(client)
        return Carried(host, port, on_end)

    port = _free_port()
    tunnel = Tunnel(port, asyncio.open_connection, lambda: None)
    tunnel.carrier = carry
    await tunnel.listen()
    clients: list[socket.socket] = []
    try:
        for target in (old, new):
            tunnel.point(target)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            clients.append(await asyncio.wait_for(handed.get(), 5))
            writer.close()
        assert tunnel.open_connections == 2
        await tunnel.sever(old)
        assert closed == ["127.0.0.1:1"]
        assert tunnel.open_connections == 1
    finally:
        await tunnel.close()
        for client in clients:
            client.close()
    assert closed == ["127.0.0.1:1", "127.0.0.1:2"]


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


WAITING = Waiting(name="nb", phase="pending", message="queued: Resources", job_id="123",
                  submitted_at=datetime.now(UTC) - timedelta(minutes=3),
                  starts_at=datetime.now(UTC) + timedelta(minutes=20), cluster="hpc")
BROWSER = ("GET /lab?token=SECRET HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           "Accept: text/html,application/xhtml+xml\r\nSec-Fetch-Mode: navigate\r\n\r\n")
POLL = ("GET /api/kernels HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n"
        "Sec-Fetch-Mode: cors\r\n\r\n")


async def _request(port: int, text: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(text.encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_without_a_notebook_browsers_get_the_page_and_programs_503() -> None:
    """A page request gets the page (phase, reason, job, expected start, no token);
    anything else gets 503 with Retry-After."""
    port = _free_port()
    tunnel = Tunnel(port, asyncio.open_connection, lambda: None)
    await tunnel.listen()
    try:
        tunnel.show(WAITING)
        page = await _request(port, BROWSER)
        assert page.startswith(b"HTTP/1.1 200 OK\r\n")
        body = page.decode()
        for expected in ("pending", "queued: Resources", "123", "Expected start",
                         "http-equiv=\"refresh\""):
            assert expected in body
        assert "SECRET" not in body
        api = await _request(port, "GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert api.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 5\r\n" in api
    finally:
        await tunnel.close()


async def test_a_page_request_wakes_an_idle_session_but_an_open_tabs_polls_do_not() -> None:
    """Only a person's request (a page opened or reloaded, a program) asks for a job."""
    asked: list[int] = []
    port = _free_port()
    tunnel = Tunnel(port, asyncio.open_connection, lambda: None)
    tunnel.on_demand = lambda: asked.append(1)
    await tunnel.listen()
    try:
        tunnel.show(replace(WAITING, phase="idle", message="stopped after 1h idle"))
        await _request(port, POLL)
        assert asked == []
        page = await _request(port, BROWSER)
        assert asked == [1] and b"starting a new job now" in page
        await _request(port, "GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert asked == [1, 1]
    finally:
        await tunnel.close()


async def test_a_held_connection_gets_the_page_once_the_session_says_why_it_waits() -> None:
    """Held while a notebook is expected at once; answered as soon as the session waits."""
    port = _free_port()
    tunnel = Tunnel(port, asyncio.open_connection, lambda: None)
    await tunnel.listen()
    try:
        asking = asyncio.create_task(_request(port, BROWSER))
        await asyncio.sleep(0.2)
        assert not asking.done()
        tunnel.show(WAITING)
        assert (await asking).startswith(b"HTTP/1.1 200 OK")
    finally:
        await tunnel.close()


async def _fake_jupyter(kernels: str, terminals: str | None) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        assert "no_track_activity=1" in head and "Authorization: token tok" in head
        body = kernels if "/api/kernels" in head else terminals
        status = "200 OK" if body is not None else "404 Not Found"
        data = (body or "").encode()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_jupyter_activity_reads_kernels_and_terminals() -> None:
    """The newest kernel or terminal activity and whether a kernel is busy."""
    kernels = ('[{"id": "a", "execution_state": "idle", "last_activity": '
               '"2026-11-30T10:00:00.000000Z"}, {"id": "b", "execution_state": "busy", '
               '"last_activity": "2026-11-30T09:00:00.000000Z"}]')
    terminals = '[{"name": "1", "last_activity": "2026-11-30T11:00:00.000000Z"}]'
    server, port = await _fake_jupyter(kernels, terminals)
    target = Endpoint(node="c1", address="127.0.0.1", port=port)
    try:
        activity = await jupyter_activity(asyncio.open_connection, target, "tok")
        assert activity == Activity(last=datetime(2026, 11, 30, 11, 0, tzinfo=UTC), busy=True)
    finally:
        server.close()
    server, port = await _fake_jupyter("[]", None)  # terminals disabled
    target = Endpoint(node="c1", address="127.0.0.1", port=port)
    try:
        assert await jupyter_activity(asyncio.open_connection, target, "tok") == \
            Activity(last=None, busy=False)
    finally:
        server.close()
    closed = Endpoint(node="c1", address="127.0.0.1", port=_free_port())
    assert await jupyter_activity(asyncio.open_connection, closed, "tok") is None


async def test_nbtether_open_wakes_an_idle_session_like_a_browser() -> None:
    """`waiting.wake`, which `nbtether open` uses on an idle session, asks for a job."""
    asked = asyncio.Event()
    port = _free_port()
    tunnel = Tunnel(port, asyncio.open_connection, lambda: None)
    tunnel.on_demand = asked.set
    await tunnel.listen()
    try:
        tunnel.show(replace(WAITING, phase="idle"))
        await asyncio.to_thread(wake, port)
        assert asked.is_set()
    finally:
        await tunnel.close()


@pytest.mark.parametrize(("phase", "advice"), [
    ("failed", "save the session file again"), ("login", "nbtether login hpc"),
    ("idle", "Reload this page")])
def test_the_page_says_what_to_do(phase: str, advice: str) -> None:
    """A failed session's page says how to retry, a login's which command to run."""
    page = render(replace(WAITING, phase=phase, message="why"), datetime.now(UTC))
    assert advice in page and "why" in page
