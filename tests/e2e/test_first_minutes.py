"""What a new user meets first, against a real daemon process with a `kind: local` cluster:
status when the daemon is gone, open with and without a browser, waiting for a session,
files the daemon ignores, and config changes while it runs. No mini-cluster is needed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import wait_for
from tests.e2e.harness import free_port, http_status
from tests.e2e.local_harness import LocalDaemon, local_session_yaml


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDaemon]:
    """One running daemon with a ready local session `nb`, shared by the tests that only look."""
    daemon = LocalDaemon(tmp_path_factory.mktemp("served"))
    daemon.start()
    daemon.drop("nb", local_session_yaml(free_port(), daemon.root))
    daemon.wait_phase("nb", "ready", timeout=90)
    yield daemon
    daemon.cleanup()


@pytest.fixture
def local_daemon(tmp_path: Path) -> Iterator[LocalDaemon]:
    """A not yet started daemon of its own, for tests that stop or reconfigure it."""
    daemon = LocalDaemon(tmp_path)
    yield daemon
    daemon.cleanup()


def log_events(daemon: LocalDaemon) -> list[dict[str, Any]]:
    """The daemon's JSON log lines."""
    events = []
    for line in daemon.log.read_text().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


# A stand-in browser (a real program named by $BROWSER, as webbrowser runs it) that records
# its argv and the file it was handed.
RECORDING_BROWSER = """\
#!{python}
import json, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
"""


def test_open_hands_the_browser_a_private_page_and_no_token(
    served: LocalDaemon, tmp_path: Path
) -> None:
    """With a BROWSER that records its arguments, `open` leaves no token in any argv: the
    browser gets a 0600 page in the 0700 state directory that sends it to the URL."""
    calls, browser = tmp_path / "argv.jsonl", tmp_path / "browser"
    browser.write_text(RECORDING_BROWSER.format(python=sys.executable, log=str(calls)))
    browser.chmod(0o755)
    served.env["BROWSER"] = str(browser)
    try:
        result = served.nbtether("open", "nb")
    finally:
        del served.env["BROWSER"]
    assert result.returncode == 0, result.stderr
    url = served.status()["nb"]["url"]
    token = url.split("token=", 1)[1]
    argv = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(argv) == 1 and token not in json.dumps(argv)
    assert token not in result.stdout + result.stderr
    page = Path(argv[0][1].removeprefix("file://"))
    assert page.parent == served.state / "open"
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    assert stat.S_IMODE(page.parent.stat().st_mode) == 0o700
    assert f'url={url}"' in page.read_text()


def test_open_without_a_browser_prints_the_url_and_says_why(served: LocalDaemon) -> None:
    """Where no browser can be started, `open` says so and prints the URL, exit 0."""
    served.env["PATH"], path = "/nonexistent", served.env["PATH"]
    try:
        result = served.nbtether("open", "nb")
    finally:
        served.env["PATH"] = path
    assert result.returncode == 0
    assert "no browser can be started here" in result.stderr
    assert result.stdout.strip() == served.status()["nb"]["url"]


def test_open_wait_follows_a_new_session_until_it_is_ready(
    served: LocalDaemon, tmp_path: Path
) -> None:
    """`open --wait` on a session just dropped prints its phases as they change, then the
    URL (no browser here) once the notebook answers."""
    served.drop("later", local_session_yaml(free_port(), tmp_path))
    served.env["PATH"], path = "/nonexistent", served.env["PATH"]
    try:
        result = served.nbtether("open", "--wait", "later", "--timeout", "50")
    finally:
        served.env["PATH"] = path
    assert result.returncode == 0, result.stderr
    phases = [line.split(": ", 1)[1].split()[0] for line in result.stderr.splitlines()
              if ": " in line and line.split()[1] == "later:"]
    assert "starting" in phases, result.stderr
    url = result.stdout.strip()
    assert url == served.status()["later"]["url"]
    assert http_status(url.replace("/lab?", "/api/status?")) == 200
    served.remove("later")
    served.wait_gone("later", timeout=30)


def test_status_wait_gives_up_after_its_timeout_with_exit_1(served: LocalDaemon) -> None:
    """`status --wait` on a session that will not be ready in time exits 1 and says where it
    stands; on an unknown session it exits 1 at once."""
    served.drop("broken", "cluster: here\nlocal_port: 80\n")
    result = served.nbtether("status", "--wait", "broken", "--timeout", "20")
    assert result.returncode == 1
    assert "broken is invalid: local_port: Input should be greater than or equal to 1024" \
        in result.stderr
    served.remove("broken")
    unknown = served.nbtether("status", "--wait", "nothing", "--timeout", "20")
    assert unknown.returncode == 1
    assert "no session named 'nothing'" in unknown.stderr


def test_a_busy_port_names_its_holder_and_a_save_with_a_free_one_serves(
    served: LocalDaemon, tmp_path: Path
) -> None:
    """A session whose port another program holds shows no URL, names the holder and says
    it tries again; saving the file with a free port makes it ready there."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        served.drop("crowded", local_session_yaml(busy, tmp_path))

        def refused() -> dict[str, Any] | None:
            row = served.status().get("crowded")
            return row if row and "is held by" in str(row["message"]) else None

        row = wait_for(refused, timeout=60, message="the busy port to be reported")
        assert not row["url"]
        assert f"127.0.0.1:{busy} is held by" in row["message"]
        assert f"(pid {os.getpid()})" in row["message"]
        assert "trying again every 30 s" in row["message"]
        port = free_port()
        served.drop("crowded", local_session_yaml(port, tmp_path))
        ready = served.wait_phase("crowded", "ready", timeout=90)
    assert ready["url"].startswith(f"http://127.0.0.1:{port}/")
    assert http_status(ready["url"].replace("/lab?", "/api/status?")) == 200
    served.remove("crowded")
    served.wait_gone("crowded", timeout=30)


def test_the_daemon_logs_where_a_ready_notebook_is_without_its_token(
    served: LocalDaemon,
) -> None:
    """When a session becomes ready the log names its address and the command to open it."""
    ready = [e for e in log_events(served) if e["event"] == "notebook ready"]
    port = served.status()["nb"]["local_port"]
    assert {"at": f"http://127.0.0.1:{port}/", "open": "nbtether open nb"}.items() \
        <= ready[0].items()
    token = served.status()["nb"]["url"].split("token=", 1)[1]
    assert token not in served.log.read_text()


def test_a_file_the_daemon_ignores_is_logged_once(served: LocalDaemon) -> None:
    """`notes.txt` and `X.YAML` in the sessions directory are each logged once, however often
    the directory changes afterwards; validate reports the same files."""
    for name in ("notes.txt", "SHOUT.YAML"):
        (served.sessions / name).write_text("cluster: here\nlocal_port: 9999\n")
    for index in range(3):  # more changes in the directory: no more lines for these files
        served.drop("churn", f"cluster: nowhere\nlocal_port: 9998\n# {index}\n")

    def told() -> dict[str, int]:
        counts: dict[str, int] = {}
        for event in log_events(served):
            if event["event"] == "ignoring a file in the sessions directory":
                counts[Path(event["file"]).name] = counts.get(Path(event["file"]).name, 0) + 1
        return counts

    wait_for(lambda: told().keys() >= {"notes.txt", "SHOUT.YAML"}, timeout=10,
             message="both files to be logged")
    wait_for(lambda: (served.state / "sessions" / "churn.json").exists(), timeout=30,
             message="the daemon to have read the last change")
    assert told() == {"notes.txt": 1, "SHOUT.YAML": 1}
    validated = served.nbtether("validate")
    assert "notes.txt: not a session file" in validated.stdout
    assert "SHOUT.YAML: not a session file" in validated.stdout
    for name in ("notes.txt", "SHOUT.YAML"):
        (served.sessions / name).unlink()
    served.remove("churn")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP])
def test_status_knows_at_once_that_the_daemon_is_gone(
    local_daemon: LocalDaemon, tmp_path: Path, signum: signal.Signals
) -> None:
    """Right after the daemon is killed (or hung up on: it stops cleanly and says so), status
    says no daemon runs, exits 4 and shows no URL; a session deleted meanwhile says so."""
    local_daemon.start()
    local_daemon.drop("nb", local_session_yaml(free_port(), tmp_path))
    local_daemon.wait_phase("nb", "ready", timeout=90)
    code = local_daemon.stop(signum)

    result = local_daemon.nbtether("status", "--json")
    assert result.returncode == 4
    payload = json.loads(result.stdout)
    assert payload["daemon"]["running"] is False
    assert payload["sessions"][0]["url"] is None
    assert payload["sessions"][0]["message"] == "the daemon is not running (last: ready)"
    local_daemon.remove("nb")
    row = json.loads(local_daemon.nbtether("status", "--json").stdout)["sessions"][0]
    assert (row["url"], row["message"]) == (
        None, "the daemon is not running (last: ready; its file is deleted)")
    table = local_daemon.nbtether("status")
    assert table.returncode == 4 and table.stderr.startswith("the daemon is not running")
    if signum == signal.SIGHUP:
        assert code == 0
        events = [e["event"] for e in log_events(local_daemon)]
        assert "signal received" in events and "nbtether stopping; jobs keep running" in events


CLUSTERS = "clusters:\n  here:\n    kind: local\n"


def test_config_changes_apply_without_a_restart_and_a_bad_one_changes_nothing(
    local_daemon: LocalDaemon, tmp_path: Path
) -> None:
    """A session on a cluster the config lacks is invalid and names the config file; adding
    the cluster brings it up without a restart; changing it gives it a new backend that
    adopts its job; the other cluster's session is left alone throughout; an invalid config
    is logged and the last good one stays in force."""
    local_daemon.start()
    local_daemon.drop("stay", local_session_yaml(free_port(), tmp_path))
    local_daemon.drop("new", local_session_yaml(free_port(), tmp_path).replace(
        "cluster: here", "cluster: there"))
    stay = local_daemon.wait_phase("stay", "ready", timeout=90)
    invalid = local_daemon.wait_phase("new", "invalid", timeout=30)
    assert invalid["message"] == (
        f"cluster: unknown cluster 'there' ({local_daemon.config} defines: here); "
        "add it under `clusters:` in the config")

    prefix = local_daemon.config.read_text().split("clusters:")[0]
    local_daemon.config.write_text(prefix + CLUSTERS + "  there:\n    kind: local\n")
    new = local_daemon.wait_phase("new", "ready", timeout=90)
    assert local_daemon.status()["stay"]["job_id"] == stay["job_id"]

    local_daemon.config.write_text(
        prefix + CLUSTERS + "  there:\n    kind: local\n    poll_interval: 45\n")
    wait_for(lambda: [e for e in log_events(local_daemon) if e["event"] == "config reloaded"
                      and e["changed_clusters"] == ["there"]], timeout=15,
             message="the change to `there` to be applied")
    rows = local_daemon.status()
    assert (rows["new"]["phase"], rows["new"]["job_id"]) == ("ready", new["job_id"])
    assert (rows["stay"]["phase"], rows["stay"]["job_id"]) == ("ready", stay["job_id"])
    assert http_status(rows["new"]["url"].replace("/lab?", "/api/status?")) == 200

    good = tmp_path / "good.yaml"  # the commands read the config too: give them a good one
    good.write_text(local_daemon.config.read_text())
    local_daemon.env["NBTETHER_CONFIG"] = str(good)
    local_daemon.config.write_text(prefix + CLUSTERS + "  there:\n    kind: [local\n")
    errors = wait_for(lambda: [e for e in log_events(local_daemon)
                               if e["event"].startswith("config error")], timeout=15,
                      message="the config error in the log")
    assert errors[0]["error"].startswith(f"{local_daemon.config}:8:1: not valid YAML")
    local_daemon.drop("third", local_session_yaml(free_port(), tmp_path).replace(
        "cluster: here", "cluster: there"))
    local_daemon.wait_phase("third", "ready", timeout=90)
    assert local_daemon.process is not None and local_daemon.process.poll() is None
