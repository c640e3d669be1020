"""A walltime handover seen from a real browser: Chromium runs JupyterLab through the URL."""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocket

from tests.cluster import wait_for
from tests.e2e.harness import Daemon, Prober, free_port, session_yaml, token_of
from tests.e2e.local_harness import LocalDaemon, local_session_yaml

pytestmark = pytest.mark.e2e

# Short jobs keep the test short (SLURM counts time limits in minutes). The lead leaves the
# first job over a minute to serve the page's first cell, and the successor time to start
# on a busy machine; the successor's own handover comes after the checks that follow the
# switch.
WALLTIME, LEAD = "00:02:00", "50s"
SWITCH_MARGIN = 10  # the switch comes at most this long before the walltime end



def put_notebook(base: str, token: str, name: str) -> None:
    """Create an empty Python notebook through Jupyter's contents API."""
    notebook = {"cells": [], "nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
    body = json.dumps({"type": "notebook", "content": notebook}).encode()
    request = urllib.request.Request(  # noqa: S310 (the test builds a local http URL)
        f"{base}/api/contents/{name}", data=body, method="PUT",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (local http)
        assert response.status == 201


def wait_idle(page: Page, timeout: float = 90) -> None:
    """Wait until the status bar shows the kernel idle, as a person would before typing."""
    page.get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=timeout * 1000)


def run_cell(page: Page, code: str, expect: str, timeout: float = 90) -> None:
    """Type `code` into the notebook's last cell, run it, and wait for `expect` in its
    output."""
    editor = page.locator(".jp-NotebookPanel:visible .jp-Cell").last.locator(".cm-content")
    editor.click()
    page.keyboard.type(code)
    page.wait_for_function("([element, code]) => element.textContent === code",
                           arg=[editor.element_handle(), code])
    page.keyboard.press("Shift+Enter")
    output = page.locator(".jp-OutputArea-output", has_text=expect)
    output.first.wait_for(timeout=timeout * 1000)


def kernel_sockets(page: Page) -> list[WebSocket]:
    """The kernel websockets `page` opens from now on, in order, as a list that grows."""
    sockets: list[WebSocket] = []
    page.on("websocket", lambda socket: sockets.append(socket)
            if "/api/kernels/" in socket.url and "/channels" in socket.url else None)
    return sockets


def wait_reconnected(page: Page, sockets: list[WebSocket], before: int,
                     timeout: float = 90) -> None:
    """Wait until the first `before` kernel websockets of the page have all closed and a
    newer one is open: the page has reconnected, to the server the URL now leads to."""
    deadline = time.monotonic() + timeout
    while not (all(socket.is_closed() for socket in sockets[:before])
               and any(not socket.is_closed() for socket in sockets[before:])):
        assert time.monotonic() < deadline, f"the page did not reconnect its kernel: {sockets}"
        page.wait_for_timeout(200)  # lets Playwright deliver the page's websocket events


def open_notebook(page: Page, url: str) -> None:
    """Open a notebook and wait until JupyterLab shows it ready for typing."""
    page.goto(url)
    page.locator(".jp-Notebook .jp-Cell .cm-content").first.wait_for(timeout=60_000)
    # Either mode: JupyterLab may put a new notebook's first cell straight into edit mode.
    page.get_by_text(re.compile(r"^Mode: (Command|Edit)$")).wait_for(timeout=60_000)


def process_ended(pid: str) -> bool:
    """Whether a process is gone (or a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def job_times(daemon: Daemon, job_id: str) -> dict[str, Any]:
    """Start, end, state and time limit of a finished job, from SLURM's accounting."""

    def recorded() -> dict[str, Any] | None:
        out = daemon.cluster.ssh(f"sacct -X -n -P -j {job_id} -o Start,End,State,TimelimitRaw")
        fields = out.stdout.strip().split("|")
        if len(fields) != 4 or fields[1] in ("", "Unknown"):
            return None
        return {"start": datetime.fromisoformat(fields[0]), "end": datetime.fromisoformat(
            fields[1]), "state": fields[2], "limit": int(fields[3]) * 60}

    return wait_for(recorded, timeout=60, message=f"accounting of job {job_id}")


def across_a_handover(daemon: Daemon, page: Page, session: str,
                      successor_log: Callable[[str], str],
                      wait_ended: Callable[[str], object]) -> str:
    """Drive a notebook page across one handover of `session` (a session file's text) and
    check what the page and a prober see; returns the first job's id. `wait_ended(job_id)`
    returns once that job has ended."""
    daemon.drop("relay", session)
    first = daemon.wait_phase("relay", "ready", timeout=180)
    token = token_of(first)
    base = str(first["url"]).split("/lab?", 1)[0]
    notebook = f"handover-{secrets.token_hex(4)}.ipynb"
    put_notebook(base, token, notebook)
    # /api/me: /api/status lists kernels, and jupyter_server answers it with 500 while a
    # kernel is starting (its last_activity not set yet), which says nothing of the route.
    prober = Prober(f"{base}/api/me", token)
    prober.start()
    failed: list[tuple[float, str]] = []
    sockets = kernel_sockets(page)
    page.on("requestfailed", lambda request: failed.append((time.monotonic(), request.url)))
    try:
        # A workspace of its own: JupyterLab would otherwise reopen tabs of earlier runs.
        lab = f"{base}/lab/workspaces/{notebook.removesuffix('.ipynb')}/tree/{notebook}"
        open_notebook(page, f"{lab}?token={token}")
        wait_idle(page)
        run_cell(page, 'x = 6 * 7; print("x is", x)', "x is 42")

        def successor_ready() -> dict[str, Any] | None:
            row = daemon.status()["relay"]
            return row if "is ready to take over" in str(row["message"]) else None

        waiting = wait_for(successor_ready, timeout=150, interval=0.5,
                           message="the successor to be ready")
        assert waiting["phase"] == "handover" and waiting["job_id"] == first["job_id"]
        record = json.loads((daemon.state / "sessions" / "relay.json").read_text())
        successor = str(record["successor_id"])
        wait_idle(page)
        run_cell(page, 'print("still", x)', "still 42")
        both_ran_until = time.monotonic()
        # The daemon's own probes ask /api/status (with and without the token); the page's
        # requests would show as any other /api/ path.
        reached = [line for line in successor_log(successor).splitlines()
                   if "/api/" in line and "/api/status " not in line]
        assert reached == [], "a page request reached the successor before the switch"

        def switched() -> dict[str, Any] | None:
            row = daemon.status()["relay"]
            return row if (row["job_id"], row["phase"]) == (successor, "ready") else None

        row = wait_for(switched, timeout=150, interval=0.2, message="the switch to the successor")
        old_sockets = len(sockets)
        assert old_sockets > 0, "the page has no kernel websocket"
        assert row["url"] == first["url"]
        assert "kernel replaced" in row["message"]
        # The switch closes the page's connections to the old job; the page reconnects to
        # the successor, where its kernel id was carried. JupyterLab shows that kernel's
        # status as Unknown until it next runs something, so the cell is typed once the
        # kernel's websocket is open again, and the status is Idle after it.
        wait_ended(str(first["job_id"]))
        wait_reconnected(page, sockets, old_sockets)
        run_cell(page, 'print("after, x defined:", "x" in globals())', "x defined: False")
        wait_idle(page)
        page.reload()
        page.locator(".jp-NotebookPanel:visible .jp-Cell").first.wait_for(timeout=60_000)
        assert page.url.startswith(lab)
        assert page.locator("input[type=password]").count() == 0
    finally:
        prober.stop()
    assert prober.failures == []
    assert [url for at, url in failed if at <= both_ran_until] == []
    return str(first["job_id"])


def test_a_page_keeps_its_slurm_kernel_until_the_walltime_end_then_runs_on(
    daemon: Daemon, page: Page
) -> None:
    """On SLURM, the page's kernel lives until just before the walltime end while the
    successor waits; then the same page runs cells on the successor, a reload needs no
    login, and a probe every 0.2 s sees no failure."""
    text = session_yaml(free_port(), time=WALLTIME, handover=LEAD)

    def successor_log(job_id: str) -> str:
        path = f"~/.nbtether/{daemon.instance}/relay/slurm-{job_id}.out"
        return daemon.cluster.ssh(f"cat {path}").stdout

    first = across_a_handover(daemon, page, text, successor_log,
                              lambda job_id: job_times(daemon, job_id))
    old = job_times(daemon, first)
    served = (old["end"] - old["start"]).total_seconds()
    assert old["limit"] - SWITCH_MARGIN <= served <= old["limit"], old


def test_a_page_keeps_its_local_kernel_until_the_walltime_end_then_runs_on(
    tmp_path: Path, page: Page
) -> None:
    """The same on `kind: local`, where the walltime is the daemon's own."""
    daemon = LocalDaemon(tmp_path)
    daemon.start()
    root = tmp_path / "notebooks"
    root.mkdir()
    text = local_session_yaml(free_port(), root).replace('"00:15:00"', f'"{WALLTIME}"')
    text += f"restart:\n  handover: {LEAD}\n"
    try:
        across_a_handover(daemon, page, text, lambda job_id: (
            daemon.state / "local" / "relay" / f"job-{job_id}.out").read_text(),
            lambda pid: wait_for(lambda: process_ended(pid), timeout=60,
                                 message=f"process {pid} to end"))
    finally:
        daemon.cleanup()
