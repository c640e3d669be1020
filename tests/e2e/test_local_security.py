"""`kind: local` among other programs and users on this machine: pids, files, Jupyter config.

No mini-cluster is needed: the config has only a local cluster.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import wait_for
from tests.e2e.harness import free_port, http_status, token_of
from tests.e2e.local_harness import LocalDaemon, local_session_yaml


@pytest.fixture
def local_daemon(tmp_path: Path) -> Iterator[LocalDaemon]:
    """A not yet started daemon with one local cluster and an empty sessions directory."""
    daemon = LocalDaemon(tmp_path / "laptop")
    yield daemon
    daemon.cleanup()


def test_a_stale_pid_record_is_neither_adopted_nor_killed(
    local_daemon: LocalDaemon, tmp_path: Path
) -> None:
    """After a crash, a record whose pid now belongs to another program is not adopted:
    the session gets a new notebook, and deleting it leaves that program running."""
    local_daemon.start()
    port = free_port()
    local_daemon.drop("nb", local_session_yaml(port, tmp_path))
    first = local_daemon.wait_phase("nb", "ready", timeout=90)
    old = int(first["job_id"])
    local_daemon.stop(signal.SIGKILL)
    os.killpg(old, signal.SIGKILL)

    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        jobs = local_daemon.state / "local" / "jobs"
        meta = json.loads((jobs / f"{old}.json").read_text())
        (jobs / f"{old}.json").unlink()
        (jobs / f"{stranger.pid}.json").write_text(json.dumps({**meta, "pid": stranger.pid}))
        record_file = local_daemon.state / "sessions" / "nb.json"
        record = json.loads(record_file.read_text())
        record_file.write_text(json.dumps({**record, "job_id": str(stranger.pid)}))

        local_daemon.start()
        wait_for(lambda: local_daemon.status()["nb"]["job_id"] != str(stranger.pid),
                 timeout=30, message="the stale job to be dropped")
        again = local_daemon.wait_phase("nb", "ready", timeout=90)
        assert int(again["job_id"]) not in (old, stranger.pid)
        assert http_status(f"http://127.0.0.1:{port}/api/status", token_of(again)) == 200
        local_daemon.remove("nb")
        local_daemon.wait_gone("nb", timeout=30)
        assert stranger.poll() is None, "the unrelated process was signalled"
    finally:
        stranger.kill()
        stranger.wait()


def test_local_notebook_files_are_private(local_daemon: LocalDaemon, tmp_path: Path) -> None:
    """Every file the local backend writes (token, records, config, Jupyter's runtime files and
    log) is 0600, in 0700 directories, even under a permissive umask."""
    old_umask = os.umask(0o022)
    try:
        local_daemon.start()
    finally:
        os.umask(old_umask)
    local_daemon.drop("nb", local_session_yaml(free_port(), tmp_path))
    local_daemon.wait_phase("nb", "ready", timeout=90)
    modes = {}
    for path in [local_daemon.state / "local", *(local_daemon.state / "local").rglob("*")]:
        modes[str(path)] = stat.S_IMODE(path.stat().st_mode)
    assert any(name.endswith("token") for name in modes)
    assert any("jpserver-" in name for name in modes), "Jupyter's runtime file is in there"
    loose = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert loose == {}


def test_a_local_user_config_that_disables_the_token_still_gets_a_notebook_that_demands_it(
    local_daemon: LocalDaemon, tmp_path: Path
) -> None:
    """`c.IdentityProvider.token = ''` in ~/.jupyter does not open the local notebook."""
    config = local_daemon.root / ".jupyter"  # the daemon's HOME is its root
    config.mkdir()
    (config / "jupyter_server_config.py").write_text("c.IdentityProvider.token = ''\n")
    (config / "jupyter_lab_config.py").write_text("c.IdentityProvider.token = ''\n")
    local_daemon.start()
    port = free_port()
    local_daemon.drop("nb", local_session_yaml(port, tmp_path))
    row = local_daemon.wait_phase("nb", "ready", timeout=90)
    assert http_status(f"http://127.0.0.1:{port}/api/status") == 403
    assert http_status(f"http://127.0.0.1:{port}/api/status", token_of(row)) == 200
