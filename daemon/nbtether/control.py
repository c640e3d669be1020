"""The control socket: how `nbtether login` reaches the running daemon.

`control.sock` in the state directory (0700), itself 0600, so only the user reaches it.
One JSON object per line in each direction:

    client → daemon   {"login": "<cluster>"}
    daemon → client   {"challenge": {"name": …, "instructions": …, "prompts": [[text, echo], …]}}
    client → daemon   {"answers": ["…", …]}      one per prompt; the next challenge may follow
    daemon → client   {"ok": true|false, "message": "…"}

The server's prompts are passed on verbatim; the answers exist only in memory on their way
to asyncssh: never logged, stored, or put on a command line. A client that goes away
(Ctrl-C) cancels the login.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from nbtether.errors import NbtetherError
from nbtether.remote import Person, Prompt

log = structlog.get_logger(__name__)

SOCKET_NAME = "control.sock"
MAX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL

LoginHandler = Callable[[str, Person], Awaitable[str]]


@dataclass(frozen=True)
class Challenge:
    """One round of the server's questions, as the server worded them."""

    name: str
    instructions: str
    prompts: list[Prompt]


class DaemonUnreachable(Exception):
    """No daemon listens on the control socket."""


def socket_path(state_dir: Path) -> Path:
    """Where the daemon listens for `nbtether login`."""
    return state_dir / SOCKET_NAME


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


class _Relay:
    """The person at the other end of one control connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def answer(
        self, name: str, instructions: str, prompts: Sequence[Prompt]
    ) -> list[str] | None:
        challenge = {"name": name, "instructions": instructions,
                     "prompts": [[text, echo] for text, echo in prompts]}
        try:
            self._writer.write(_encode({"challenge": challenge}))
            await self._writer.drain()
            line = await self._reader.readline()
            answers = json.loads(line).get("answers") if line else None
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(answers, list) or len(answers) != len(prompts) \
                or not all(isinstance(item, str) for item in answers):
            return None  # gone, or not an answer to these prompts: cancel, never guess
        return answers


class ControlServer:
    """Listens on the control socket and hands each login to the daemon."""

    def __init__(self, path: Path, login: LoginHandler) -> None:
        self.path = path
        self._login = login
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> bool:
        """Listen; False (and a warning) when the path is too long for a Unix socket."""
        if len(str(self.path)) > MAX_PATH:
            log.warning("no control socket: state_dir path too long for a Unix socket; "
                        "nbtether login cannot reach this daemon", path=str(self.path))
            return False
        self.path.unlink(missing_ok=True)  # left by a daemon that was killed
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self.path.chmod(0o600)
        return True

    async def close(self) -> None:
        """Stop listening and remove the socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(await reader.readline() or b"{}")
            cluster = request.get("login") if isinstance(request, dict) else None
            if not isinstance(cluster, str):
                reply = {"ok": False, "message": "not a login request"}
            else:
                try:
                    reply = {"ok": True,
                             "message": await self._login(cluster, _Relay(reader, writer))}
                except NbtetherError as exc:
                    reply = {"ok": False, "message": str(exc)}
                log.info("login", cluster=cluster, ok=reply["ok"])
            writer.write(_encode(reply))
            await writer.drain()
        except (OSError, ValueError):
            pass  # the client went away; the login, if any, was cancelled
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def login(
    path: Path, cluster: str, answer: Callable[[Challenge], list[str]]
) -> tuple[bool, str]:
    """Ask the daemon at `path` to log in to `cluster`, answering each challenge with `answer`.

    Returns whether the daemon is connected, and its message. Raises DaemonUnreachable.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnreachable(f"no daemon listens on {path}") from exc
        with sock.makefile("rwb") as stream:
            stream.write(_encode({"login": cluster}))
            stream.flush()
            for line in stream:
                message = json.loads(line)
                if "challenge" not in message:
                    return bool(message.get("ok")), str(message.get("message", ""))
                raw = message["challenge"]
                challenge = Challenge(str(raw["name"]), str(raw["instructions"]),
                                      [(str(text), bool(echo)) for text, echo in raw["prompts"]])
                stream.write(_encode({"answers": answer(challenge)}))
                stream.flush()
    return False, "the daemon ended the login without an answer"
