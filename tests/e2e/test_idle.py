"""A notebook that costs nothing while you are away: the port's page, `start: on_demand`,
`idle_stop`, on the mini-cluster and in a real browser.

One daemon, three sessions side by side, so the whole story fits in about three minutes:
`later` waits for its first visitor while the nodes are full, `nap` is stopped when idle
and woken again, and `busy` keeps its job while a kernel computes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from playwright.sync_api import Page
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.cluster import wait_for
from tests.e2e.harness import Daemon, free_port, http_status, session_yaml, token_of

# It fills every CPU of both nodes with another user's jobs for a while.
pytestmark = [pytest.mark.e2e, pytest.mark.cluster_wide]

IDLE_STOP = "1m"



def get(url: str, accept: str) -> tuple[int, dict[str, str], str]:
    """Status, headers and body of a GET with this Accept header (no token)."""
    request = urllib.request.Request(url, headers={"Accept": accept})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def jobs_of(daemon: Daemon, session: str) -> list[tuple[str, str, str]]:
    """This session's jobs that squeue lists (any state)."""
    return [job for job in daemon.jobs() if job[2].endswith(f"-{session}")]


def start_sleeping_kernel(base: str, token: str, seconds: int) -> None:
    """Start a kernel and have it run `time.sleep(seconds)`, then hang up: no page is open."""
    request = urllib.request.Request(  # noqa: S310 (local http)
        f"{base}/api/kernels", data=b"{}", method="POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        kernel = json.loads(response.read())["id"]

    async def execute() -> None:
        ws = await websocket_connect(HTTPRequest(
            f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel}/channels",
            headers={"Authorization": f"token {token}"}))
        msg_id = secrets.token_hex(8)
        ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": secrets.token_hex(8),
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": f"import time; time.sleep({seconds})", "silent": False,
                        "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        while True:  # until the kernel says it is busy with our request
            message = json.loads(await ws.read_message() or "{}")
            if message.get("msg_type") == "status" and \
                    message["parent_header"].get("msg_id") == msg_id and \
                    message["content"]["execution_state"] == "busy":
                break
        ws.close()

    # In a thread of its own: Playwright's sync API runs an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, asyncio.wait_for(execute(), 60)).result()


def fill_the_nodes(daemon: Daemon) -> list[str]:
    """Another user's jobs (root's: the only other user with a SLURM account here) take
    every idle CPU of both nodes; returns their ids."""
    ids = []
    out = subprocess.run(["sinfo", "-N", "-h", "-p", "cpu", "-o", "%N %C"], check=True,
                         capture_output=True, text=True).stdout
    for node, cpus in sorted({tuple(line.split()) for line in out.splitlines()}):
        idle = int(cpus.split("/")[1])
        if idle:
            ids.append(subprocess.run(
                ["sbatch", "--parsable", "-p", "cpu",
                 "-w", node, "-c", str(idle), "--mem=64M", "-t", "10", "-J", "neighbour",
                 "--wrap", "sleep 600"], check=True, capture_output=True, text=True,
                cwd="/tmp").stdout.strip())
    wait_for(lambda: all(subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"],
                                        capture_output=True, text=True).stdout.strip()
                         == "RUNNING" for job in ids),
             timeout=30, interval=0.5, message="the neighbour's jobs to run")
    return ids


def test_idle_sessions_cost_nothing_and_come_back_at_the_same_url(
        daemon: Daemon, page: Page) -> None:
    """on_demand: no job for 60 s, the page (no token) and 503, a job at once on the first
    visit, pending with SLURM's reason while the nodes are full, JupyterLab in the browser
    without a login page once it answers. idle_stop: an unused notebook is cancelled within
    2 min, idle, port listening, and the next request starts a new job at the same URL;
    a kernel computing keeps its job."""
    later, nap, busy = free_port(), free_port(), free_port()
    daemon.drop("nap", session_yaml(nap, extra=f"idle_stop: {IDLE_STOP}\n"))
    daemon.drop("busy", session_yaml(busy, extra=f"idle_stop: {IDLE_STOP}\n"))
    # Two CPUs: the one that `nap` frees when it is stopped does not start it early.
    daemon.drop("later", session_yaml(later, extra="start: on_demand\n")
                .replace("cpus: 1", "cpus: 2"))
    dropped = time.monotonic()

    first_nap = daemon.wait_phase("nap", "ready", timeout=120)
    first_busy = daemon.wait_phase("busy", "ready", timeout=120)
    start_sleeping_kernel(f"http://127.0.0.1:{busy}", token_of(first_busy), 180)

    # No job for `later` during its first minute, however long the others took.
    assert daemon.status()["later"]["phase"] == "idle"
    while time.monotonic() - dropped < 60:
        assert jobs_of(daemon, "later") == []
        time.sleep(2)
    assert daemon.status()["later"]["job_id"] is None

    neighbours = fill_the_nodes(daemon)
    try:
        status, _, body = get(f"http://127.0.0.1:{later}/lab", "text/html")
        assert status == 200 and "<html>" in body
        status, headers, _ = get(f"http://127.0.0.1:{later}/api/status", "application/json")
        assert status == 503 and headers["Retry-After"].isdigit()
        wait_for(lambda: jobs_of(daemon, "later"), timeout=15, interval=0.5,
                 message="the first visit to submit a job")
        queued = wait_for(lambda: (row := daemon.status()["later"])["phase"] == "pending"
                          and row["message"] in ("queued: Resources", "queued: Priority")
                          and row, timeout=90, interval=0.5,
                          message="later to wait in the queue for the nodes")
        reason = str(queued["message"]).removeprefix("queued: ")
        status, _, body = get(f"http://127.0.0.1:{later}/lab", "text/html")
        assert status == 200 and "pending" in body and reason in body
        record = json.loads((daemon.state / "sessions" / "later.json").read_text())
        assert record["token"] not in body

        # The browser opens the URL with the token while the job waits: the page, then
        # JupyterLab by itself once the notebook answers.
        page.goto(f"http://127.0.0.1:{later}/lab?token={record['token']}")
        assert "pending" in page.title()
        assert record["token"] not in page.content()
    finally:
        subprocess.run(["scancel", *neighbours], check=True)
    page.locator("#jp-main-dock-panel").wait_for(timeout=120_000)
    assert "/login" not in page.url and daemon.status()["later"]["phase"] == "ready"

    # nap: nobody used it, so it is stopped; its port still answers and wakes it.
    stopped = daemon.wait_phase("nap", "idle", timeout=120)
    assert stopped["job_id"] is None and "idle" in str(stopped["message"])
    assert stopped["restarts"] == first_nap["restarts"]
    wait_for(lambda: first_nap["job_id"] not in
             {job_id for job_id, _, _ in daemon.active_jobs()},
             timeout=60, interval=1, message="the idle job to end")
    # Meanwhile the computing kernel kept `busy` on its first job.
    row: dict[str, Any] = daemon.status()["busy"]
    assert (row["phase"], row["job_id"]) == ("ready", first_busy["job_id"])

    status, _, body = get(f"http://127.0.0.1:{nap}/lab", "text/html")
    assert status == 200 and "stopped" in body and "after" in body
    again = daemon.wait_phase("nap", "ready", timeout=120)
    assert again["url"] == first_nap["url"] and again["job_id"] != first_nap["job_id"]
    assert http_status(f"http://127.0.0.1:{nap}/api/status", token_of(again)) == 200
    row = daemon.status()["busy"]
    assert (row["phase"], row["job_id"]) == ("ready", first_busy["job_id"])
