"""Drop a file, get a notebook: the daemon against the real mini-cluster."""

from __future__ import annotations

import contextlib
import queue
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.cluster import wait_for
from tests.e2e.harness import (
    BOTH_SCHEDULERS,
    Daemon,
    free_port,
    http_status,
    listening_addresses,
    session_yaml,
    token_of,
)

pytestmark = pytest.mark.e2e


@BOTH_SCHEDULERS
def test_drop_serves_the_notebook_and_delete_cancels_it(daemon: Daemon) -> None:
    """A dropped file becomes a ready notebook at its port; deleting it frees everything."""
    port = free_port()
    daemon.drop("analysis", session_yaml(port))
    row = daemon.wait_phase("analysis", "ready", timeout=120)
    token = token_of(row)
    assert row["url"] == f"http://127.0.0.1:{port}/lab?token={token}"
    assert row["node"] in {"c1", "c2"} and str(row["job_id"]).isdigit()
    assert http_status(f"http://127.0.0.1:{port}/api/status", token) == 200
    assert http_status(f"http://127.0.0.1:{port}/api/status") == 403
    assert listening_addresses(port) == {"127.0.0.1"}

    daemon.remove("analysis")
    wait_for(lambda: not daemon.active_jobs(), timeout=15, message="the job to leave squeue")
    wait_for(lambda: not listening_addresses(port), timeout=5, message="the port to close")
    # The cancel is confirmed by the job's `.end` (SLURM signals the job first) or, for a
    # job killed without one (Grid Engine's qdel), by the next poll: at most 40 s after the
    # previous one.
    daemon.wait_gone("analysis", timeout=45)


@pytest.mark.cluster_wide  # the two jobs land on both nodes only if no other job runs
@BOTH_SCHEDULERS
def test_two_sessions_edits_and_port_moves(daemon: Daemon) -> None:
    """Two sessions run side by side; a resource edit replaces the job, a port edit keeps it."""
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    daemon.drop("a", session_yaml(port_a))
    daemon.drop("b", session_yaml(port_b))
    a = daemon.wait_phase("a", "ready", timeout=180)
    b = daemon.wait_phase("b", "ready", timeout=180)
    assert {a["node"], b["node"]} == {"c1", "c2"}
    assert http_status(f"http://127.0.0.1:{port_b}/api/status", token_of(b)) == 200

    daemon.drop("a", session_yaml(port_a, time="00:14:00"))
    wait_for(lambda: daemon.status()["a"]["job_id"] != a["job_id"], timeout=30,
             message="a new job for the edited resources")
    edited = daemon.wait_phase("a", "ready", timeout=120)
    assert token_of(edited) == token_of(a), "the URL stays the same across jobs"
    assert a["job_id"] not in {job_id for job_id, _, _ in daemon.active_jobs()}

    daemon.drop("b", session_yaml(port_c))
    wait_for(lambda: http_status(f"http://127.0.0.1:{port_c}/api/status", token_of(b)) == 200,
             timeout=15, message="the moved port to serve")
    moved = daemon.status()["b"]
    assert moved["job_id"] == b["job_id"] and moved["phase"] == "ready"
    assert not listening_addresses(port_b)


HOSTILE = {
    "semicolon": 'resources:\n  partition: "cpu; touch ~/pwned-semicolon"\n',
    "subshell": 'environment:\n  venv: "$(touch ~/pwned-subshell)"\n',
    "backticks": 'environment:\n  modules: ["`touch ~/pwned-backticks`"]\n',
    "newline": 'resources:\n  account: "x\\ntouch ~/pwned-newline"\n',
}


def test_hostile_and_broken_files_change_nothing(daemon: Daemon) -> None:
    """Hostile or half-written files are invalid, run nothing, and leave a running job be."""
    port = free_port()
    daemon.drop("good", session_yaml(port))
    good = daemon.wait_phase("good", "ready", timeout=120)
    base = "cluster: testbed\nlocal_port: {port}\n"
    for name, body in HOSTILE.items():
        daemon.drop(name, base.format(port=free_port()) + body)
    daemon.drop("good", "cluster: testbed\nlocal_port: [unfinished")
    expected_fields = {"semicolon": "resources.partition", "subshell": "environment.venv",
                       "backticks": "environment.modules.0", "newline": "resources.account"}
    for name, field in expected_fields.items():
        row = daemon.wait_phase(name, "invalid", timeout=15)
        assert str(row["message"]).startswith(field), row
        assert row["job_id"] is None
    broken = daemon.wait_phase("good", "invalid", timeout=15)
    assert broken["job_id"] == good["job_id"]
    assert http_status(f"http://127.0.0.1:{port}/api/status", token_of(good)) == 200
    assert [job[0] for job in daemon.active_jobs()] == [good["job_id"]]
    assert daemon.cluster.ssh("ls ~ | grep -c pwned", check=False).stdout.strip() == "0"

    result = daemon.nbtether("validate")
    assert result.returncode == 1
    for name, field in expected_fields.items():
        assert f"{name}.yaml: {field}" in result.stdout.replace("\n", "")
    assert "good.yaml: not valid YAML" in result.stdout

    daemon.drop("good", session_yaml(port))
    restored = daemon.wait_phase("good", "ready", timeout=30)
    assert restored["job_id"] == good["job_id"]


def test_rejected_submission_is_failed_verbatim(daemon: Daemon) -> None:
    """SLURM's rejection shows in status as `failed`, word for word, and is not retried."""
    body = session_yaml(free_port()).replace("partition: cpu", "partition: nope")
    daemon.drop("rejected", body)
    row = daemon.wait_phase("rejected", "failed", timeout=60)
    assert "Invalid partition name specified" in str(row["message"])
    assert daemon.jobs() == []


def test_token_never_leaks(daemon: Daemon) -> None:
    """The token is in no command line, job name, output file, shared file or log line."""
    port = free_port()
    daemon.drop("secret", session_yaml(port))
    row = daemon.wait_phase("secret", "ready", timeout=120)
    token = token_of(row)

    commands = Path("/proc").glob("[0-9]*/cmdline")
    for cmdline in commands:
        try:
            assert token.encode() not in cmdline.read_bytes(), cmdline
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    names = daemon.cluster.ssh("squeue --me -h -t all -o '%j %k'").stdout
    assert token not in names
    output = daemon.cluster.ssh(f"cat ~/.nbtether/{daemon.instance}/secret/slurm-*.out").stdout
    assert "ServerApp" in output and token not in output
    shared = daemon.cluster.ssh(
        "find ~ -type f -perm -o=r -size -2M -exec grep -l -F -f ~/.nbtether/"
        f"{daemon.instance}/secret/token {{}} + 2>/dev/null", check=False).stdout
    assert shared.strip() == ""
    token_mode = daemon.cluster.ssh(
        f"stat -c %a ~/.nbtether/{daemon.instance}/secret/token").stdout.strip()
    assert token_mode == "600"
    assert token not in daemon.log.read_text()
    assert stat.S_IMODE(daemon.state.stat().st_mode) == 0o700
    for path in daemon.state.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_status_logs_and_open(daemon: Daemon, tmp_path: Path) -> None:
    """The table shows the URL, `logs` prints Jupyter's log without the token, `open` opens it."""
    port = free_port()
    daemon.drop("viewer", session_yaml(port))
    row = daemon.wait_phase("viewer", "ready", timeout=120)
    table = daemon.nbtether("status", check=True).stdout
    assert "viewer" in table and "ready" in table
    assert f"viewer: {row['url']}\n" in table

    logs = daemon.nbtether("logs", "viewer", check=True).stdout
    assert "Jupyter Server" in logs and token_of(row) not in logs
    with subprocess.Popen([sys.executable, "-m", "nbtether", "logs", "viewer", "-f"],
                          stdout=subprocess.PIPE, text=True, env=daemon.env) as follower:
        assert follower.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout],
                         daemon=True).start()
        lines.get(timeout=30)  # the existing log: it is being followed now
        assert http_status(f"http://127.0.0.1:{port}/api/nosuchthing", token_of(row)) == 404

        def logged_404() -> bool:
            with contextlib.suppress(queue.Empty):
                return "nosuchthing" in lines.get(timeout=1)
            return False

        wait_for(logged_404, timeout=30, interval=0, message="the 404 in the followed log")
        follower.terminate()

    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    browser.write_text(f"#!/bin/sh\necho \"$1\" > {opened}\n")
    browser.chmod(0o755)
    daemon.env["BROWSER"] = str(browser)  # webbrowser runs $BROWSER: a stand-in browser
    daemon.nbtether("open", "viewer", check=True)
    page = Path(opened.read_text().strip().removeprefix("file://"))
    assert f'url={row["url"]}"' in page.read_text()  # the page leads the browser there
    assert daemon.nbtether("open", "nosuchsession").returncode == 1
