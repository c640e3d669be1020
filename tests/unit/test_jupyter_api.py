"""Carrying open notebooks' kernel ids to the successor, against small local HTTP servers that
answer as Jupyter's REST API does (the real Jupyter is driven by tests/e2e/test_handover.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from nbtether.jobs import Endpoint
from nbtether.jupyter_api import carry_kernels, request

Handler = Callable[[str, str, bytes], tuple[int, bytes]]
SESSION = {"id": "s1", "path": "work/a.ipynb", "name": "a.ipynb", "type": "notebook",
           "kernel": {"id": "k-1", "name": "python3", "execution_state": "idle"}}


@asynccontextmanager
async def server(handler: Handler, seen: list[tuple[str, str, dict[str, str], bytes]]
                 ) -> AsyncIterator[Endpoint]:
    """An HTTP server on 127.0.0.1 that records each request and answers with `handler`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        method, path, _ = lines[0].split(" ")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":")
                                                       for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        seen.append((method, path, headers, body))
        status, payload = handler(method, path, body)
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                     + payload)
        await writer.drain()
        writer.close()

    listening = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        yield Endpoint(node="n", address="127.0.0.1", port=port)
    finally:
        listening.close()
        await listening.wait_closed()


async def test_each_open_notebook_gets_its_kernel_id_on_the_new_server() -> None:
    old_seen: list[tuple[str, str, dict[str, str], bytes]] = []
    new_seen: list[tuple[str, str, dict[str, str], bytes]] = []
    listing = json.dumps([SESSION, {**SESSION, "path": "b.ipynb", "kernel": None}]).encode()
    async with server(lambda *_: (200, listing), old_seen) as old, \
            server(lambda *_: (201, b"{}"), new_seen) as new:
        carried = await carry_kernels(asyncio.open_connection, old, new, "secret")
    assert carried == 1  # the session without a kernel has nothing to carry
    assert [(m, p, h["authorization"]) for m, p, h, _ in old_seen] == [
        ("GET", "/api/sessions", "token secret")]
    [(method, path, headers, body)] = new_seen
    assert (method, path, headers["authorization"]) == ("POST", "/api/kernels", "token secret")
    assert json.loads(body) == {"kernel_id": "k-1", "name": "python3", "path": "work"}


async def test_anything_but_a_list_of_sessions_carries_nothing() -> None:
    for status, payload in [(200, b"not json"), (403, b"[]"), (200, b'{"a": 1}'),
                            (200, b'[1, "x", {"path": 3, "kernel": {"id": "k", "name": "p"}}]')]:
        new_seen: list[tuple[str, str, dict[str, str], bytes]] = []
        async with server(lambda *_, s=status, p=payload: (s, p), []) as old, \
                server(lambda *_: (201, b"{}"), new_seen) as new:
            assert await carry_kernels(asyncio.open_connection, old, new, "t") == 0
        assert new_seen == []


async def test_an_unreachable_server_is_no_answer() -> None:
    async def refuse(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise ConnectionRefusedError(host)

    nowhere = Endpoint(node="n", address="127.0.0.1", port=9)
    assert await request(refuse, nowhere, "GET", "/api/status") is None
    assert await carry_kernels(refuse, nowhere, nowhere, "t") == 0
