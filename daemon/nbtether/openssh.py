"""The tunnels' bytes in OpenSSH: an `ssh -M` per cluster, and each connection handed to it.

The daemon accepts every connection on a session's port and decides where it goes. Moving
the bytes in Python (asyncssh) costs several times the CPU per request that OpenSSH's
`ssh -L` spends, and on a busy laptop that CPU is latency. So a connection to a running
notebook is passed whole, its file descriptor sent over the control socket of an OpenSSH
ControlMaster the daemon runs next to its asyncssh connection, with the request that
`ssh -W` makes (`MUX_C_NEW_STDIO_FWD`, OpenSSH's PROTOCOL.mux); from then on OpenSSH
copies the bytes. Closing the control connection makes OpenSSH close the forwarded one.

The master runs only where it can log in alone (a key or an agent; no prompt, no jump
host), with the same known_hosts and strict host key checking as the daemon. Wherever it
does not run, and while it is down, connections go through asyncssh.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

import structlog

from nbtether.config import ClusterConfig

log = structlog.get_logger(__name__)

MUX_MSG_HELLO = 0x00000001
MUX_C_TERMINATE = 0x10000005
MUX_C_NEW_STDIO_FWD = 0x10000008
MUX_S_SESSION_OPENED = 0x80000006
MUX_VERSION = 4
START_TIMEOUT = 20.0  # seconds for the master to log in and open its control socket
START_POLL = 0.05
RESTART_DELAY = 30.0  # after the master exits while the daemon's own connection stays up
SERVER_ALIVE_INTERVAL = 10
SERVER_ALIVE_COUNT = 3
ERROR_LINES = 5  # of OpenSSH's messages, kept for the log when the master exits


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def _string(value: bytes) -> bytes:
    return _u32(len(value)) + value


def _packet(*fields: bytes) -> bytes:
    body = b"".join(fields)
    return _u32(len(body)) + body


HELLO = _packet(_u32(MUX_MSG_HELLO), _u32(MUX_VERSION))


def forward_request(request_id: int, host: str, port: int) -> bytes:
    """Hello, then "carry the two descriptors that follow to host:port"."""
    return HELLO + _packet(_u32(MUX_C_NEW_STDIO_FWD), _u32(request_id), _string(b""),
                           _string(host.encode()), _u32(port))


def terminate_request() -> bytes:
    """Hello, then "exit"."""
    return HELLO + _packet(_u32(MUX_C_TERMINATE), _u32(1))


def replies(buffer: bytearray) -> list[int]:
    """The message types of the complete replies at the start of `buffer`, removed from it."""
    types = []
    while len(buffer) >= 8:
        (length,) = struct.unpack_from(">I", buffer)
        if len(buffer) < 4 + length:
            break
        types.append(struct.unpack_from(">I", buffer, 4)[0] if length >= 4 else 0)
        del buffer[:4 + length]
    return types


def control_path(key: str) -> Path | None:
    """The master's control socket: a short path (Unix sockets allow ~100 bytes) in a
    directory only this user can enter; None when that directory cannot be had."""
    directory = Path(tempfile.gettempdir()) / f"nbtether-{os.getuid()}"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.lstat()
    except OSError:
        return None
    if info.st_uid != os.getuid() or info.st_mode & 0o777 != 0o700 or directory.is_symlink():
        return None  # someone else's, or open to others: never put a master's socket there
    return directory / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".ssh")


# The master's own session reads its standard input, a pipe from the daemon, until it
# closes: so when the daemon dies, even by SIGKILL, the master exits once the connections
# it carries have closed, instead of staying logged in forever.
HOLD_COMMAND = "exec cat >/dev/null"


def master_argv(config: ClusterConfig, path: Path, known_hosts: Path,
                ciphers: list[str]) -> list[str]:
    """`ssh -M` to the login node, checked as strictly as the daemon's own connection."""
    options = {
        "ControlMaster": "yes", "ControlPath": str(path), "ControlPersist": "no",
        "BatchMode": "yes",  # never prompts: a login that needs a person is the daemon's
        "StrictHostKeyChecking": "yes", "UserKnownHostsFile": str(known_hosts),
        "GlobalKnownHostsFile": "/dev/null", "UpdateHostKeys": "no",
        "ForwardAgent": "no", "ForwardX11": "no", "ClearAllForwardings": "yes",
        "PermitLocalCommand": "no", "RemoteCommand": "none", "ProxyJump": "none",
        "LogLevel": "ERROR",
        "ServerAliveInterval": str(SERVER_ALIVE_INTERVAL),
        "ServerAliveCountMax": str(SERVER_ALIVE_COUNT),
        "ConnectTimeout": str(int(START_TIMEOUT)), "Ciphers": ",".join(ciphers),
    }
    if config.identity_file:
        options["IdentityFile"] = str(config.identity_file)
        options["IdentitiesOnly"] = "yes"
    if config.agent_path:
        options["IdentityAgent"] = str(config.agent_path)
    argv = ["ssh", "-T"]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    if config.user:
        argv += ["-l", config.user]
    if config.port:
        argv += ["-p", str(config.port)]
    return [*argv, "--", config.host or "", HOLD_COMMAND]


OnEnd = Callable[["Forward", socket.socket | None], None]


class Forward:
    """One connection that OpenSSH carries; it lasts as long as its control connection.

    `on_end` is called once, when that connection closes: with the client's socket if
    OpenSSH never took it (the channel did not open, or the master went away first), so
    the tunnel can still serve it, else with None.
    """

    def __init__(self, control: socket.socket, client: socket.socket, on_end: OnEnd) -> None:
        self._control = control
        self._client: socket.socket | None = client  # ours until OpenSSH says it took it
        self._on_end = on_end
        self._buffer = bytearray()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(control.fileno(), self._readable)

    def close(self) -> None:
        """Make OpenSSH close the connection."""
        self._end(keep_client=False)

    def _readable(self) -> None:
        try:
            data = self._control.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end(keep_client=True)
            return
        self._buffer += data
        if MUX_S_SESSION_OPENED in replies(self._buffer) and self._client is not None:
            self._client.close()  # OpenSSH has its own copies of the descriptor
            self._client = None

    def _end(self, keep_client: bool) -> None:
        if self._control.fileno() < 0:
            return
        self._loop.remove_reader(self._control.fileno())
        self._control.close()
        client, self._client = self._client, None
        if client is not None and not keep_client:
            client.close()
            client = None
        self._on_end(self, client)


class Master:
    """An `ssh -M` to one login node, whose control socket carries connections."""

    def __init__(self, name: str, argv: list[str], path: Path) -> None:
        self.name = name
        self.path = path
        self._argv = argv
        self._process: asyncio.subprocess.Process | None = None
        self._up = False
        self._request_id = 0

    async def run(self) -> None:
        """Start the master and keep it running (restarting it after it exits) until
        cancelled; give up when it cannot log in, which is the daemon's to report."""
        while True:
            if not await self._run_once():
                return
            await asyncio.sleep(RESTART_DELAY)

    async def _run_once(self) -> bool:
        """One master's life; False if it never came up."""
        await asyncio.to_thread(terminate, self.path)  # one left by a daemon that was killed
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            log.info("no OpenSSH client; tunnels carry their own bytes", cluster=self.name,
                     error=str(exc))
            return False
        self._process = process
        assert process.stderr is not None
        errors = asyncio.ensure_future(_last_lines(process.stderr))
        exited = asyncio.ensure_future(process.wait())
        try:
            came_up = await self._logged_in(exited)
            if came_up:
                self._up = True
                log.info("OpenSSH carries the tunnels", cluster=self.name)
                await exited
        finally:
            self._up = False
            await self._stop()
        log.info("OpenSSH master exited; tunnels carry their own bytes", cluster=self.name,
                 status=process.returncode, error=await errors or None)
        return came_up

    async def _logged_in(self, exited: asyncio.Future[int]) -> bool:
        """Wait until the master opens its control socket, which it does once logged in;
        False if it exits or takes too long first."""
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while not self.path.exists():
            if exited.done() or asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.wait({exited}, timeout=START_POLL)
        return not exited.done()

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5.0)
            if process.returncode is None:
                process.kill()
                await process.wait()

    def carry(self, client: socket.socket, host: str, port: int, on_end: OnEnd) -> Forward | None:
        """Hand `client` to OpenSSH, to host:port as seen from the login node; None (and
        the client untouched) when the master cannot take it now."""
        if not self._up:
            return None
        self._request_id += 1
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.setblocking(False)  # a master that does not accept must not stall the daemon
        try:
            control.connect(str(self.path))
            control.sendall(forward_request(self._request_id, host, port))
            for _ in range(2):  # its stdin and its stdout: the same socket
                socket.send_fds(control, [b"\0"], [client.fileno()])
        except OSError:
            control.close()
            return None
        return Forward(control, client, on_end)


async def _last_lines(stream: asyncio.StreamReader) -> str:
    """The last few lines a long-lived process wrote, read as it writes them."""
    lines: deque[str] = deque(maxlen=ERROR_LINES)
    async for line in stream:
        lines.append(line.decode(errors="replace").rstrip())
    return "\n".join(lines)


def terminate(path: Path) -> None:
    """Ask the master at `path`, if any, to exit, and remove its socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
        control.settimeout(1.0)
        with contextlib.suppress(OSError):
            control.connect(str(path))
            control.sendall(terminate_request())
            control.recv(64)
    with contextlib.suppress(OSError):
        path.unlink()
