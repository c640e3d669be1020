"""The readiness probe against real HTTP servers on this machine: no token before a refusal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from nbtether.jobs import Endpoint
from nbtether.tunnel import Answer, probe

TOKEN = "f" * 48


class FakeServer:
    """An HTTP server answering `without` to requests lacking the token, `with_` otherwise;
    it records every request head it receives."""

    def __init__(self, without: bytes, with_: bytes = b"200 OK") -> None:
        self.without, self.with_ = without, with_
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        status = self.with_ if TOKEN.encode() in head else self.without
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[list[asyncio.Server]]:
    servers: list[asyncio.Server] = []
    yield servers
    for server in servers:
        server.close()
        await server.wait_closed()


async def ask(fake: FakeServer, servers: list[asyncio.Server]) -> Answer:
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    servers.append(server)
    port = server.sockets[0].getsockname()[1]
    return await probe(asyncio.open_connection, Endpoint(node="n", address="127.0.0.1",
                                                         port=port), TOKEN, timeout=5)


async def test_jupyter_demanding_the_token_is_ready(serve: list[asyncio.Server]) -> None:
    """403 without the token, then 200 with it: ready, and the token went out once, last."""
    fake = FakeServer(b"403 Forbidden")
    assert await ask(fake, serve) is Answer.READY
    assert [TOKEN.encode() in head for head in fake.requests] == [False, True]


async def test_a_redirect_to_the_login_page_counts_as_a_refusal(
    serve: list[asyncio.Server]
) -> None:
    """A 302 to /login (a password-protected Jupyter) is a refusal too."""
    fake = FakeServer(b"302 Found\r\nLocation: /login?next=%2Fapi%2Fstatus")
    assert await ask(fake, serve) is Answer.READY


async def test_a_server_that_answers_without_the_token_is_open_and_never_gets_it(
    serve: list[asyncio.Server]
) -> None:
    """200 without the token: refused as open, and the token is never sent."""
    fake = FakeServer(b"200 OK")
    assert await ask(fake, serve) is Answer.OPEN
    assert len(fake.requests) == 1 and TOKEN.encode() not in fake.requests[0]


@pytest.mark.parametrize("status", [b"404 Not Found", b"500 Internal Server Error",
                                    b"302 Found\r\nLocation: /elsewhere"])
async def test_anything_else_is_not_yet_and_never_gets_the_token(
    serve: list[asyncio.Server], status: bytes
) -> None:
    """A server that does not refuse like Jupyter is not ready and never sees the token."""
    fake = FakeServer(status)
    assert await ask(fake, serve) is Answer.NOT_YET
    assert all(TOKEN.encode() not in head for head in fake.requests)


async def test_a_wrong_answer_to_the_token_is_not_yet(serve: list[asyncio.Server]) -> None:
    """Refusing the token as well (another Jupyter) is not ready."""
    assert await ask(FakeServer(b"403 Forbidden", b"403 Forbidden"), serve) is Answer.NOT_YET


async def test_nothing_listening_is_not_yet() -> None:
    """A closed port is simply not yet."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    endpoint = Endpoint(node="n", address="127.0.0.1", port=port)
    assert await probe(asyncio.open_connection, endpoint, TOKEN, timeout=5) is Answer.NOT_YET
