"""The few calls the daemon makes to a job's Jupyter server, over the cluster connection.

HTTP/1.1 with `Connection: close`: one request per connection, the answer read until the
server closes it. Jupyter's REST API answers small JSON bodies, so nothing more of HTTP is
needed.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from nbtether.jobs import Endpoint

log = structlog.get_logger(__name__)

Opener = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
MAX_ANSWER = 1 << 20  # a list of sessions is a few kB; anything bigger is not Jupyter's
CARRY_TIMEOUT = 4.0  # the switch waits this long at most for the successor's kernels


class Response:
    """A response: its status code, headers (lower-case names) and body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


async def request(
    opener: Opener, target: Endpoint, method: str, path: str, token: str | None = None,
    body: Any = None, timeout: float = 10.0,
) -> Response | None:
    """Send one request to the server at `target`; None when it cannot be reached or
    answers with something that is not HTTP. `body` is sent as JSON."""
    try:
        reader, writer = await asyncio.wait_for(opener(target.address, target.port), timeout)
    except Exception:  # unreachable, for whatever reason: no answer
        return None
    data = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
            f"Content-Length: {len(data)}"]
    if token:
        head.append(f"Authorization: token {token}")
    if body is not None:
        head.append("Content-Type: application/json")
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()
        raw = b""
        while len(raw) < MAX_ANSWER and (more := await asyncio.wait_for(reader.read(1 << 16),
                                                                         timeout)):
            raw += more
    except (OSError, TimeoutError, ConnectionError):
        return None
    finally:
        writer.close()
    return _parse(raw)


NOT_FOUND = object()  # what `get_json` returns for a 404


async def get_json(
    opener: Opener, target: Endpoint, path: str, token: str, timeout: float = 10.0
) -> object:
    """The parsed JSON body of a GET with the token; `NOT_FOUND` for 404; None otherwise."""
    answer = await request(opener, target, "GET", path, token, timeout=timeout)
    if answer is None or answer.status not in (200, 404):
        return None
    if answer.status == 404:
        return NOT_FOUND
    try:
        return json.loads(answer.body)
    except ValueError:
        return None


def _parse(raw: bytes) -> Response | None:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(parts[1]), headers, body)


async def carry_kernels(opener: Opener, old: Endpoint, new: Endpoint, token: str) -> int:
    """Start a fresh kernel on the new server for every notebook open on the old one, under
    the same kernel id; returns how many were started.

    An open page holds on to its session and its kernel's id. Every job of a session keeps
    Jupyter's sessions in one database (see jupyter.py), so the new server lists the page's
    session as soon as the kernel it names exists there; the page's websocket then
    reconnects to that id and the next cell runs on the new server. jupyter_server (2.x)
    starts a kernel under the id a client asks for. Variables are not carried: the kernel
    is new. Best effort: whatever fails is logged and the switch goes on.
    """
    try:
        async with asyncio.timeout(CARRY_TIMEOUT):
            return await _carry(opener, old, new, token)
    except TimeoutError:
        log.info("kernels not carried in time", old=old.node, new=new.node)
        return 0


async def _carry(opener: Opener, old: Endpoint, new: Endpoint, token: str) -> int:
    sessions = await get_json(opener, old, "/api/sessions", token)
    wanted = [
        # A session's kernel runs in the directory of its notebook, as Jupyter would start it.
        {"kernel_id": session["kernel"]["id"], "name": session["kernel"]["name"],
         "path": posixpath.dirname(session["path"])}
        for session in (sessions if isinstance(sessions, list) else [])
        if isinstance(session, dict) and _carriable(session)
    ]
    answers = await asyncio.gather(*(
        request(opener, new, "POST", "/api/kernels", token, body) for body in wanted))
    carried = sum(1 for answer in answers if answer and answer.status == 201)
    if wanted:
        log.info("kernels carried to the new job", carried=carried, open=len(wanted))
    return carried


def _carriable(session: dict[str, Any]) -> bool:
    kernel = session.get("kernel")
    return (isinstance(session.get("path"), str) and isinstance(kernel, dict)
            and isinstance(kernel.get("id"), str) and isinstance(kernel.get("name"), str))
