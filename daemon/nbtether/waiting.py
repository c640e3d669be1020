"""`--wait`: follow one session until its notebook answers, showing each phase change."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from rich.console import Console

from nbtether.state import Record, StateStore

REACHABLE = ("ready", "handover")
GIVEN_UP = ("failed", "invalid")
POLL_SECONDS = 0.25  # a record file is tiny; reading it four times a second costs nothing
DAEMON_GRACE = 15.0  # how long a daemon may take to start before waiting is pointless


class WaitFailed(Exception):
    """The session will not be ready: given up, timed out, no daemon, or no such session."""

    def __init__(self, message: str, *, no_daemon: bool = False) -> None:
        super().__init__(message)
        self.no_daemon = no_daemon


def describe(record: Record | None, daemon_running: bool) -> str:
    """One line for where the session is, as a person reads it."""
    if not daemon_running:
        return "waiting for the daemon to start (nbtether run)"
    if record is None:
        return "waiting for the daemon to read the file"
    job = f" (job {record.job_id})" if record.job_id else ""
    return f"{record.phase}{job}" + (f": {record.message}" if record.message else "")


def wait_ready(
    store: StateStore, name: str, has_file: Callable[[], bool], timeout: float, console: Console
) -> Record:
    """The session's record once its notebook is reachable; `WaitFailed` otherwise."""
    deadline = time.monotonic() + timeout
    no_daemon_since: float | None = None
    shown = None
    with _spinner(console) as show:
        while True:
            now = time.monotonic()
            running = store.daemon_running()
            record = store.load(name)
            if running:
                no_daemon_since = None
                if record is not None and record.phase in REACHABLE:
                    return record
                if record is not None and record.phase in GIVEN_UP:
                    raise WaitFailed(f"{name} is {record.phase}: {record.message}")
                if record is None and not has_file():
                    raise WaitFailed(f"no session named {name!r} (see nbtether status)")
            elif now - (no_daemon_since := no_daemon_since or now) > DAEMON_GRACE:
                raise WaitFailed("the daemon is not running (start it: nbtether run)",
                                 no_daemon=True)
            line = describe(record, running)
            if line != shown:
                show(f"{name}: {line}")
                shown = line
            if now > deadline:
                raise WaitFailed(f"{name} is not ready after {timeout:g}s ({line})")
            time.sleep(POLL_SECONDS)


@contextmanager
def _spinner(console: Console) -> Iterator[Callable[[str], None]]:
    """Each change as a line of its own; on a terminal also a spinner with the latest."""
    def line(text: str) -> None:
        console.print(f"{datetime.now():%H:%M:%S} {text}", markup=False, highlight=False)

    if not console.is_terminal:
        yield line
        return
    with console.status("waiting") as status:
        def both(text: str) -> None:
            line(text)
            status.update(text)

        yield both


def wake(port: int, timeout: float = 5.0) -> None:
    """Ask an idle session's port for its page, which makes the daemon start a job."""
    with contextlib.suppress(OSError), \
            socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass
