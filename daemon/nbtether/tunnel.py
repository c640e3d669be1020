"""The fixed local port: a listener on 127.0.0.1 that forwards each connection to the job.

The daemon owns the listener, and each accepted connection goes to the *current* target:
handed whole to OpenSSH where a master carries the cluster's tunnels (`openssh`), else
through a channel of its own. Moving to a successor job is a pointer swap: the port is never
unbound, new connections go to the new job, and those still open to the old one are closed
when it is about to end, so that their pages reconnect to the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import resource
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog

from nbtether import portpage
from nbtether.jobs import Endpoint
from nbtether.jupyter_api import NOT_FOUND, Opener, get_json, request
from nbtether.openssh import Forward, OnEnd
from nbtether.plan import Activity

log = structlog.get_logger(__name__)

CHUNK = 256 * 1024
HOLD_SECONDS = 30.0  # a connection that cannot be forwarded yet waits this long for a job
HEAD_TIMEOUT = 10.0  # seconds a connection may take to send its request when no job answers
# Open connections per session port. A browser uses a few dozen at most; without a cap,
# a few hundred idle connections to one port used up the daemon's file descriptors and
# every other session failed with EMFILE.
MAX_CONNECTIONS = 256
DESCRIPTORS_WHEN_UNLIMITED = 10240  # macOS's OPEN_MAX: the most it allows per process
BACKLOG = 128
# At a switch, a connection to the old job opened this recently is most likely a request
# on its way: it gets this long to finish before it is closed (the job is cancelled after).
SEVER_GRACE = 1.0
ACCEPT_RETRY_DELAY = 1.0  # after accept() fails for want of descriptors

# Hands a connection to something outside the daemon that carries it to host:port (None:
# nothing can now); `on_end` hears when that connection ends.
Carrier = Callable[[socket.socket, str, int, OnEnd], Forward | None]


class Tunnel:
    """127.0.0.1:port → whatever endpoint the session currently points at."""

    def __init__(
        self, port: int, opener: Opener, on_failure: Callable[[], None],
        hold: float = HOLD_SECONDS,
    ) -> None:
        self.port = port
        self.hold = hold
        self.target: Endpoint | None = None
        self.open_connections = 0
        self._opener = opener
        self._on_failure = on_failure
        self._listener: socket.socket | None = None
        self._moved = asyncio.Event()  # set (and replaced) whenever the target changes
        self._tasks: set[asyncio.Task[None]] = set()
        # Open connections → their job and when they were opened (the loop's clock): those
        # this process copies, and those OpenSSH carries.
        self._forwarded: dict[asyncio.Task[None], tuple[Endpoint, float]] = {}
        self._carried: dict[Forward, tuple[Endpoint, float]] = {}
        self._ended = asyncio.Event()  # set (and replaced) whenever a connection ends
        self.carrier: Carrier | None = None
        self._refusing = False
        self.waiting: portpage.Waiting | None = None
        # Called when a request that is not an open page's own traffic finds no notebook:
        # someone wants one (`start: on_demand`, or a session stopped when idle).
        self.on_demand: Callable[[], None] | None = None

    async def listen(self) -> None:
        """Bind 127.0.0.1:port (never all interfaces); OSError if the port is taken."""
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=BACKLOG)
        self._listener.setblocking(False)
        asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept_all)

    def point(self, target: Endpoint | None) -> None:
        """Send new connections to `target` (None: hold them until there is one, or answer
        them with the page while the session says why it has none)."""
        if target != self.target:
            self._nudge()
        self.target = target

    def show(self, waiting: portpage.Waiting | None) -> None:
        """What the page says while there is no target (None: a notebook is expected at
        once, so connections are held for it instead)."""
        if waiting is not None and self.waiting is None:
            self._nudge()  # held connections get the page now
        self.waiting = waiting

    async def sever(self, endpoint: Endpoint) -> None:
        """Close the connections forwarded to `endpoint`: those open for a while (a page's
        websockets, idle keep-alives) at once, those just opened once they end or
        SEVER_GRACE has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEVER_GRACE
        for close, opened in self._connections_to(endpoint):
            if opened < loop.time() - SEVER_GRACE:
                close()
        while self._connections_to(endpoint) and loop.time() < deadline:
            ended = self._ended
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await ended.wait()
        for close, _ in self._connections_to(endpoint):
            close()

    def _connections_to(self, endpoint: Endpoint) -> list[tuple[Callable[[], object], float]]:
        """How to close each open connection to `endpoint`, and when it was opened."""
        return ([(task.cancel, opened) for task, (target, opened) in self._forwarded.items()
                 if target == endpoint]
                + [(forward.close, opened) for forward, (target, opened) in self._carried.items()
                   if target == endpoint])

    def _connection_ended(self) -> None:
        self._ended.set()
        self._ended = asyncio.Event()

    def _nudge(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()

    async def close(self) -> None:
        """Unbind and drop every open connection."""
        if self._listener is not None:
            self._stop_accepting()
            self._listener.close()
        for forward in list(self._carried):
            forward.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _stop_accepting(self) -> None:
        if self._listener is not None and self._listener.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())

    def _resume_accepting(self) -> None:
        if self._listener is not None and self._listener.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept_all)

    def _accept_all(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: try again in a moment, not in a loop
                log.warning("cannot accept connections", port=self.port, error=str(exc))
                self._stop_accepting()
                asyncio.get_running_loop().call_later(ACCEPT_RETRY_DELAY, self._resume_accepting)
                return
            self._take(client)

    def _take(self, client: socket.socket) -> None:
        if self.open_connections >= MAX_CONNECTIONS:
            if not self._refusing:
                log.warning("too many connections; closing new ones", port=self.port,
                            limit=MAX_CONNECTIONS)
            self._refusing = True
            client.close()  # frees the descriptor now, without a goodbye
            return
        self._refusing = False
        client.setblocking(False)
        with contextlib.suppress(OSError):  # small writes go out at once, as in `ssh -L`
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.open_connections += 1
        target = self.target
        if target is not None and self.carrier is not None:
            forward = self.carrier(client, target.address, target.port, self._carried_end)
            if forward is not None:
                self._carried[forward] = (target, asyncio.get_running_loop().time())
                return
        self._serve_here(client)

    def _carried_end(self, forward: Forward, client: socket.socket | None) -> None:
        """OpenSSH closed a connection; one it never took is served here instead."""
        del self._carried[forward]
        self._connection_ended()
        if client is None:
            self.open_connections -= 1
        else:
            self._serve_here(client)

    def _serve_here(self, client: socket.socket) -> None:
        task = asyncio.create_task(self._accept(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, client: socket.socket) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            reader, writer = await asyncio.open_connection(sock=client)
        except (OSError, asyncio.CancelledError):
            client.close()
            self.open_connections -= 1
            return
        try:
            await self._serve(reader, writer, task)
        except asyncio.CancelledError:
            pass  # closing the tunnel, or severing the connection
        finally:
            self.open_connections -= 1
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        task: asyncio.Task[None],
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold
        while True:
            target, moved, waiting = self.target, self._moved, self.waiting
            if target is None and waiting is not None:
                await self._answer_waiting(reader, writer)
                return
            if target is not None:
                try:
                    remote_reader, remote_writer = await self._opener(target.address, target.port)
                    break
                except Exception as exc:  # any failure to reach the job: look at the job again
                    log.info("tunnel cannot reach the notebook", port=self.port, error=str(exc))
                    self._on_failure()
            # Nothing was forwarded yet, so the connection can wait for the session to move
            # (a job that just ended, a handover) instead of failing the browser's request.
            try:
                async with asyncio.timeout_at(deadline):
                    await moved.wait()
            except TimeoutError:
                if self.waiting is not None:
                    await self._answer_waiting(reader, writer)
                return
        self._forwarded[task] = (target, asyncio.get_running_loop().time())
        try:
            await splice(reader, writer, remote_reader, remote_writer)
        finally:
            del self._forwarded[task]
            self._connection_ended()
            remote_writer.close()

    async def _answer_waiting(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """No notebook answers: read the request, ask for a job if a person or a program
        wants one, and answer with the page (browsers) or 503."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        request = portpage.parse_head(head)
        waiting = self.waiting
        if request is None or waiting is None:
            return
        starting = waiting.phase == "idle" and not request.background
        if starting and self.on_demand is not None:
            self.on_demand()
        writer.write(portpage.answer(request, waiting, datetime.now(UTC), starting=starting))
        with contextlib.suppress(OSError, ConnectionError):
            await writer.drain()


async def splice(
    reader_a: asyncio.StreamReader,
    writer_a: asyncio.StreamWriter,
    reader_b: asyncio.StreamReader,
    writer_b: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until either side ends, then end both."""
    tasks = [
        asyncio.create_task(_copy(reader_a, writer_b)),
        asyncio.create_task(_copy(reader_b, writer_a)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()


def port_holder(port: int) -> str | None:
    """Which process listens on 127.0.0.1:port, as far as /proc tells (Linux), else None."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                listening = fields[3] == "0A"  # TCP_LISTEN
                if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in sockets:
                    return f"{(proc / 'comm').read_text().strip()} (pid {proc.name})"
    return "a process of another user"  # its file descriptors are not ours to read


class Answer(enum.Enum):
    """What a notebook said to the readiness probe."""

    NOT_YET = "not yet"  # unreachable, starting, or not Jupyter's answer
    READY = "ready"  # refused a request without the token, then accepted the token
    OPEN = "open"  # answered without the token: anyone who reaches its port gets in


async def probe(opener: Opener, target: Endpoint, token: str, timeout: float = 10.0) -> Answer:
    """Ask the notebook at `target` for `GET /api/status`, first without the token.

    The token is sent only to a server that refuses the request without it (401/403, or a
    redirect to its login page): a server that lets anyone in is not served, and nothing
    but Jupyter demanding the token ever sees it.
    """
    status, location = await _get_status(opener, target, None, timeout)
    if status == 200:
        return Answer.OPEN
    refused = status in (401, 403) or (300 <= status < 400 and "/login" in location)
    if not refused:
        return Answer.NOT_YET
    status, _ = await _get_status(opener, target, token, timeout)
    return Answer.READY if status == 200 else Answer.NOT_YET


async def _get_status(
    opener: Opener, target: Endpoint, token: str | None, timeout: float
) -> tuple[int, str]:
    """The HTTP status and Location of `GET /api/status` (0 when nothing answers)."""
    answer = await request(opener, target, "GET", "/api/status", token, timeout=timeout)
    if answer is None:
        return 0, ""
    return answer.status, answer.headers.get("location", "")


async def jupyter_activity(
    opener: Opener, target: Endpoint, token: str, timeout: float = 10.0
) -> Activity | None:
    """Jupyter's own account of its use: its kernels' and terminals' `last_activity` and
    `execution_state` (None when it cannot be read).

    These change only when code runs or a terminal is used, not when an open page polls
    the server, which updates the server-wide `last_activity` of `/api/status` instead.
    `no_track_activity` keeps these requests from counting as use themselves.
    """
    moments: list[datetime] = []
    busy = False
    for path in ("/api/kernels", "/api/terminals"):
        items = await get_json(opener, target, f"{path}?no_track_activity=1", token, timeout)
        if not isinstance(items, list):
            if path == "/api/terminals" and items is NOT_FOUND:
                continue  # terminals disabled
            return None
        for item in items:
            if not isinstance(item, dict):
                return None
            busy = busy or item.get("execution_state") in ("busy", "starting")
            with contextlib.suppress(TypeError, ValueError):
                moments.append(datetime.fromisoformat(str(item["last_activity"])))
    return Activity(last=max(moments, default=None), busy=busy)



def raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard limit (capped where it is unlimited).

    Every session's connections share the daemon's descriptors, and the soft limit is often
    1024 (256 on macOS) while the hard one is far higher. Returns the limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = DESCRIPTORS_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:  # macOS refuses more than its OPEN_MAX
            log.info("cannot raise the open file limit", soft=soft, hard=hard, error=str(exc))
            return soft
        return wanted
    return soft
