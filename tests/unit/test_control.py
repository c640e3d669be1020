"""The control socket between `nbtether login` and the daemon, with a stand-in for the link.

The daemon's side is the real `ControlServer`; instead of an SSH login node, the handler
asks its person the questions a PAM stack would (the e2e tests use a real one).
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from nbtether import control
from nbtether.control import Challenge, ControlServer
from nbtether.errors import LoginRequired
from nbtether.remote import Person


class Interrupted(Exception):
    """Stands for Ctrl-C in the client (a real KeyboardInterrupt would stop the test's loop)."""


class Recorder:
    """A login handler that asks two rounds of questions and keeps what it heard."""

    def __init__(self) -> None:
        self.heard: list[list[str] | None] = []
        self.done = asyncio.Event()

    async def __call__(self, cluster: str, person: Person) -> str:
        try:
            return await self._ask(cluster, person)
        finally:
            self.done.set()

    async def _ask(self, cluster: str, person: Person) -> str:
        first = await person.answer("Duo", "Choose:\n 1. Push\n", [("Passcode or option: ", True)])
        self.heard.append(first)
        if first is None:
            raise LoginRequired("login cancelled")
        second = await person.answer("", "", [("Password: ", False), ("Code: ", False)])
        self.heard.append(second)
        if second != ["secret", "123456"]:
            raise LoginRequired(f"{cluster} refused the login")
        return f"{cluster} is connected"


def run_login(tmp_path: Path, handler: Recorder,
              answer: Callable[[Challenge], list[str]]) -> tuple[bool, str]:
    """Serve one login on a socket in tmp_path and run the client against it."""
    path = tmp_path / "control.sock"

    async def scenario() -> tuple[bool, str]:
        server = ControlServer(path, handler)
        assert await server.start()
        try:
            return await asyncio.to_thread(control.login, path, "hpc", answer)
        finally:
            await asyncio.wait_for(handler.done.wait(), 10)
            await server.close()

    return asyncio.run(scenario())


def test_prompts_arrive_verbatim_and_answers_reach_the_login(tmp_path: Path) -> None:
    """Name, instructions, prompt texts and echo flags pass unchanged; answers come back."""
    seen: list[Challenge] = []

    def answer(challenge: Challenge) -> list[str]:
        seen.append(challenge)
        return ["1"] if len(seen) == 1 else ["secret", "123456"]

    handler = Recorder()
    assert run_login(tmp_path, handler, answer) == (True, "hpc is connected")
    assert seen == [Challenge("Duo", "Choose:\n 1. Push\n", [("Passcode or option: ", True)]),
                    Challenge("", "", [("Password: ", False), ("Code: ", False)])]
    assert handler.heard == [["1"], ["secret", "123456"]]


def test_a_refused_login_is_reported_with_the_reason(tmp_path: Path) -> None:
    """The login's failure reaches the client as not ok, with the daemon's message."""
    result = run_login(tmp_path, Recorder(), lambda c: ["x"] * len(c.prompts))
    assert result == (False, "hpc refused the login")


def test_a_client_that_goes_away_cancels_the_login(tmp_path: Path) -> None:
    """Ctrl-C in the client closes the socket: the daemon's person answers None, not a guess."""
    handler = Recorder()

    def interrupted(challenge: Challenge) -> list[str]:
        raise Interrupted

    with pytest.raises(Interrupted):
        run_login(tmp_path, handler, interrupted)
    assert handler.heard == [None]


def test_answers_that_do_not_fit_the_prompts_cancel(tmp_path: Path) -> None:
    """A reply with the wrong number of answers is never passed on to the server."""
    handler = Recorder()
    assert run_login(tmp_path, handler, lambda c: ["1", "2"]) == (False, "login cancelled")
    assert handler.heard == [None]


def test_the_socket_is_private_and_removed_on_close(tmp_path: Path) -> None:
    """Only the user can connect (0600); closing the server removes the socket file."""
    path = tmp_path / "control.sock"

    async def scenario() -> int:
        server = ControlServer(path, Recorder())
        assert await server.start()
        mode = stat.S_IMODE(path.stat().st_mode)
        await server.close()
        return mode

    assert asyncio.run(scenario()) == 0o600
    assert not path.exists()


def test_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    """Without a daemon listening, the client says so instead of hanging."""
    with pytest.raises(control.DaemonUnreachable):
        control.login(tmp_path / "control.sock", "hpc", lambda c: [])


def test_a_state_dir_too_long_for_a_socket_is_refused_not_fatal(tmp_path: Path) -> None:
    """A socket path over the Unix limit: no socket, no crash; the daemon runs without login."""
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    assert asyncio.run(ControlServer(deep / "control.sock", Recorder()).start()) is False
