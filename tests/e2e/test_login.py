"""Clusters whose login needs a person: a TOTP code after the key, or a password alone.

The login nodes are real sshd processes with PAM (google-authenticator for the code) on the
mini-cluster; codes come from oathtool and the known secret. Desktop notifications go to a
stand-in `notify-send` that records its arguments (there is no desktop here).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster, wait_for
from tests.e2e.harness import Daemon, free_port, http_status, session_yaml, token_of

# One worker runs them all, one after another: a code once used may be refused within its
# 30 s step, and a test's sshd log lines and ended connections must be its own.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("login")]

# Longer than the daemon's longest reconnect delay (5 s) with margin: a retry would show.
QUIET_WINDOW = 12.0
NOTIFY_SEND = """\
#!{python}
import json, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def person_clusters(cluster: Cluster) -> str:
    """Config entries `mfa` (key + TOTP code) and `pw` (password only)."""
    common = f"host: {cluster.host}", f"user: {cluster.user}", \
        f"known_hosts: {cluster.person_known_hosts}"
    mfa = [*common, f"port: {cluster.mfa_port}", f"identity_file: {cluster.identity_file}"]
    pw = [*common, f"port: {cluster.password_port}"]
    return "".join(f"  {name}:\n" + "".join(f"    {key}\n" for key in keys)
                   for name, keys in (("mfa", mfa), ("pw", pw)))


@pytest.fixture
def daemon(tmp_path_factory: pytest.TempPathFactory, cluster: Cluster) -> Iterator[Daemon]:
    """A daemon that knows the two clusters needing a person, with notifications on.

    Its root is short: the control socket's path must fit in a Unix socket address.
    """
    root = tmp_path_factory.mktemp("login")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "notify-send"
    fake.write_text(NOTIFY_SEND.format(python=sys.executable, log=str(root / "notified.jsonl")))
    fake.chmod(0o755)
    running = Daemon(root, cluster, more=person_clusters(cluster) + "notifications: true\n")
    running.env["PATH"] = f"{bin_dir}:{running.env['PATH']}"
    running.start()
    yield running
    running.cleanup()


def wait_control_socket(daemon: Daemon) -> None:
    """Wait until the daemon listens for `nbtether login`."""
    wait_for(lambda: (daemon.state / "control.sock").is_socket(), 60,
             message="the daemon's control socket")


def login(daemon: Daemon, cluster: str, *answers: str) -> subprocess.CompletedProcess[str]:
    """`nbtether login CLUSTER` with the answers on standard input, one per line."""
    return daemon.nbtether("login", cluster, stdin="".join(f"{a}\n" for a in answers))


def end_logins(cluster: Cluster) -> None:
    """End every connection to the two-factor login node (its listener stays)."""
    listener = cluster.mfa_sshd_pid.read_text().strip()
    children = subprocess.run(["ps", "--ppid", listener, "-o", "pid="], capture_output=True,
                              text=True, check=False).stdout.split()
    assert children, "the daemon should have a connection to end"
    for pid in children:
        os.kill(int(pid), signal.SIGTERM)


def connection_attempts(cluster: Cluster, since: int) -> list[str]:
    """The two-factor node's log lines after byte `since` that start a connection."""
    with cluster.mfa_sshd_log.open("rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    return [line for line in text.splitlines() if line.startswith("Connection from")]


def read_until(fd: int, wanted: bytes, timeout: float = 60) -> bytes:
    """What a terminal shows until `wanted` appears on it."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the terminal never showed {wanted!r}; it shows {seen!r}"
        try:
            seen += os.read(fd, 4096)
        except OSError as exc:  # EIO: the program ended and closed the terminal
            raise AssertionError(f"the terminal never showed {wanted!r}; it shows {seen!r}") \
                from exc
    return seen


def running_jobs(daemon: Daemon) -> set[str]:
    """Ids of the daemon's jobs that are running."""
    return {job_id for job_id, state, _ in daemon.jobs() if state == "RUNNING"}


def assert_found_nowhere(secrets: list[str], daemon: Daemon) -> None:
    """No secret is in any file under the daemon's root (config, state, logs, notifications)
    or in the command line of any process now running."""
    patterns = [re.compile(rb"(?<![0-9])" + re.escape(s.encode()) + rb"(?![0-9])")
                for s in secrets]
    for path in daemon.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret, pattern in zip(secrets, patterns, strict=True):
                assert not pattern.search(data), f"{secret!r} found in {path}"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes()
        except OSError:
            continue  # the process ended meanwhile
        for secret, pattern in zip(secrets, patterns, strict=True):
            assert not pattern.search(argv), f"{secret!r} in the argv of {cmdline.parent.name}"


def notifications(daemon: Daemon) -> list[list[str]]:
    """The (title, body) of each desktop notification shown so far."""
    log = daemon.root / "notified.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(line)[-2:] for line in lines]


def phase_other_than(daemon: Daemon, name: str, phase: str) -> dict[str, Any] | None:
    """The session's status row once its phase is no longer `phase`."""
    row = daemon.status().get(name)
    return row if row and row["phase"] != phase else None


def test_a_two_factor_login_survives_as_long_as_its_connection(
    daemon: Daemon, cluster: Cluster
) -> None:
    """`login` until a code is given, then ready; a lost connection is `login` again with the
    job running, and the next login serves the same job at the same URL."""
    port = free_port()
    daemon.drop("nb", session_yaml(port, cluster="mfa"))
    row = daemon.wait_phase("nb", "login", timeout=60)
    assert "`nbtether login mfa`" in row["message"]
    assert daemon.jobs() == []
    wait_for(lambda: notifications(daemon), 10, message="a notification of the login phase")
    title, body = notifications(daemon)[0]
    assert title == "nbtether: nb is login" and "nbtether login mfa" in body

    first = cluster.totp()[0]
    result = login(daemon, "mfa", first)
    assert result.returncode == 0, result.stderr
    assert "Verification code:" in result.stderr
    assert result.stdout.strip() == "mfa is connected"
    ready = daemon.wait_phase("nb", "ready", timeout=180)
    job, url = ready["job_id"], ready["url"]
    api = f"http://127.0.0.1:{port}/api/status"
    assert http_status(api, token_of(ready)) == 200

    end_logins(cluster)
    lost = daemon.wait_phase("nb", "login", timeout=60)
    assert lost["job_id"] == job
    assert job in running_jobs(daemon)

    second = cluster.totp()[0]
    assert login(daemon, "mfa", second).returncode == 0
    again = daemon.wait_phase("nb", "ready", timeout=120)
    assert (again["job_id"], again["url"], again["restarts"]) == (job, url, 0)
    assert http_status(api, token_of(again)) == 200
    assert_found_nowhere([first, second], daemon)


def test_a_wrong_code_fails_once_and_nothing_retries_it(daemon: Daemon, cluster: Cluster) -> None:
    """A wrong code: exit 1 with the reason, one failed try in sshd's log and no further
    attempt; the session stays `login`. Ctrl-C leaves it so too; the right code then works."""
    daemon.drop("nb", session_yaml(free_port(), cluster="mfa"))
    daemon.wait_phase("nb", "login", timeout=60)
    mark = cluster.mfa_sshd_log.stat().st_size
    wrong = cluster.wrong_totp()
    result = login(daemon, "mfa", wrong)
    assert result.returncode == 1
    assert "login to mfa failed: 127.0.0.1 refused the login" in result.stderr
    tried = mark
    assert len(connection_attempts(cluster, mark)) == 1
    mark = cluster.mfa_sshd_log.stat().st_size
    deadline = time.monotonic() + QUIET_WINDOW
    while time.monotonic() < deadline:  # watching for something that must not happen
        assert connection_attempts(cluster, mark) == [], "the daemon tried again by itself"
        time.sleep(1)
    with cluster.mfa_sshd_log.open("rb") as log:
        log.seek(tried)
        assert log.read().decode().count("Failed keyboard-interactive/pam") == 1
    assert daemon.status()["nb"]["phase"] == "login"
    assert daemon.jobs() == []

    interrupted = subprocess.Popen(
        [sys.executable, "-m", "nbtether", "login", "mfa"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.env)
    assert interrupted.stderr is not None
    assert interrupted.stderr.readline() == "Verification code: \n"
    interrupted.send_signal(signal.SIGINT)
    _, stderr = interrupted.communicate(timeout=30)
    assert interrupted.returncode == 1
    assert "login to mfa cancelled" in stderr
    row = wait_for(lambda: daemon.status()["nb"]["message"].startswith("login to 127.0.0.1 "
                                                                      "cancelled") and
                   daemon.status()["nb"], 30, message="the cancelled login to show")
    assert row["phase"] == "login"

    code = cluster.totp()[0]
    assert login(daemon, "mfa", code).returncode == 0
    wait_for(lambda: phase_other_than(daemon, "nb", "login"), 30, message="nb to leave login")
    assert_found_nowhere([wrong, code], daemon)


def test_a_password_only_cluster_takes_the_password_through_login(
    daemon: Daemon, cluster: Cluster
) -> None:
    """A login node that asks only for a password: the prompt is shown, the answer logs in,
    and the session becomes ready; the password is found nowhere."""
    daemon.drop("pw", session_yaml(free_port(), cluster="pw"))
    row = daemon.wait_phase("pw", "login", timeout=60)
    assert "`nbtether login pw`" in row["message"]
    result = login(daemon, "pw", cluster.password)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"{cluster.user}@{cluster.host}'s password: \n"
    daemon.wait_phase("pw", "ready", timeout=180)
    assert_found_nowhere([cluster.password], daemon)


def test_a_code_typed_at_a_terminal_is_not_echoed(daemon: Daemon, cluster: Cluster) -> None:
    """At a terminal the prompt is shown and the code typed is not echoed back."""
    wait_control_socket(daemon)
    code = cluster.totp()[0]
    main, child = pty.openpty()
    with subprocess.Popen([sys.executable, "-m", "nbtether", "login", "mfa"], stdin=child,
                          stdout=child, stderr=child, env=daemon.env,
                          start_new_session=True) as process:
        os.close(child)
        screen = read_until(main, b"Verification code: ")
        os.write(main, code.encode() + b"\n")
        screen += read_until(main, b"mfa is connected")
        assert process.wait(timeout=30) == 0
    os.close(main)
    assert code.encode() not in screen


def test_login_to_a_key_only_or_unknown_cluster(daemon: Daemon) -> None:
    """A key-only cluster needs no answer (exit 0 at once); an unknown name is exit 1."""
    wait_control_socket(daemon)
    result = login(daemon, "testbed")
    assert (result.returncode, result.stdout.strip(), result.stderr) == \
        (0, "testbed is connected", "")
    result = login(daemon, "nowhere")
    assert result.returncode == 1
    assert "no cluster named 'nowhere'" in result.stderr
