"""A shared compute node: other users' programs and the user's own Jupyter config.

These tests change what every job on the mini-cluster meets (a hostile user on the nodes,
hpcuser's ~/.jupyter): they are `cluster_wide`, run alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, wait_for
from tests.e2e.harness import Daemon, free_port, http_status, session_yaml, token_of

pytestmark = [pytest.mark.e2e, pytest.mark.cluster_wide]

NODE_ADDRESSES = ("127.0.0.2", "127.0.0.3")  # c1 and c2
SESSIONS = 7
ROUNDS = 3  # every session starts a job this many times: 21 starts


class Neighbour:
    """tests/e2e/neighbour.py running as another unprivileged user, its events in a file
    (JSON lines on its stdout; stderr apart)."""

    def __init__(self, log: Path, cluster: Cluster) -> None:
        self.log = log
        source = (Path(__file__).parent / "neighbour.py").read_text()
        uid = pwd.getpwnam(cluster.user).pw_uid
        self.errors = log.with_suffix(".err")
        with log.open("w") as out, self.errors.open("w") as err:
            self.process = subprocess.Popen(
                ["runuser", "-u", cluster.neighbour, "--", "python3", "-c", source, str(uid),
                 *NODE_ADDRESSES],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
            )
        wait_for(lambda: self.events("started"), timeout=10, message="the neighbour to start")

    def events(self, kind: str) -> list[dict[str, object]]:
        """The neighbour's events of one kind so far."""
        lines = self.log.read_text().splitlines()
        if self.process.poll() is not None:
            raise AssertionError(f"the neighbour died: {self.errors.read_text()[-2000:]}")
        return [event for line in lines if (event := json.loads(line))["event"] == kind]

    def stop(self) -> None:
        """Kill it and everything it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def neighbour(tmp_path: Path, cluster: Cluster) -> Iterator[Neighbour]:
    """A hostile user grabbing ports on both nodes while the test runs."""
    running = Neighbour(tmp_path / "neighbour.jsonl", cluster)
    yield running
    running.stop()


class Browser:
    """Keeps asking every session's URL, with its token, as an open browser tab does."""

    def __init__(self) -> None:
        self.urls: dict[int, str] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(0.3):
            for port, token in list(self.urls.items()):
                http_status(f"http://127.0.0.1:{port}/api/status", token, timeout=2)

    def stop(self) -> None:
        """Stop asking."""
        self.stopped.set()
        self.thread.join(timeout=30)


def test_a_neighbour_grabbing_node_ports_never_receives_the_token(
    daemon: Daemon, neighbour: Neighbour
) -> None:
    """Over 21 job starts next to a port-grabbing neighbour, every session becomes ready and
    the neighbour never sees a token, from the daemon's probes or from a browser's requests."""
    ports = {f"n{i}": free_port() for i in range(SESSIONS)}
    browser = Browser()
    served: set[tuple[str, str]] = set()
    tokens: set[str] = set()
    try:
        for round_ in range(ROUNDS):
            before = {name: row["job_id"] for name, row in daemon.status().items()}
            for name, port in ports.items():  # a new file, then edits that replace the job
                daemon.drop(name, session_yaml(port, mem=f"{400 + round_}M"))
            for name, port in ports.items():
                old = before.get(name)
                wait_for(lambda name=name, old=old:
                         daemon.status().get(name, {}).get("job_id") not in (None, old),
                         timeout=60, message=f"a new job for {name}")
                row = daemon.wait_phase(name, "ready", timeout=240)
                token = token_of(row)
                tokens.add(token)
                served.add((name, str(row["job_id"])))
                browser.urls[port] = token
                assert http_status(f"http://127.0.0.1:{port}/api/status") == 403
                assert http_status(f"http://127.0.0.1:{port}/api/status", token) == 200
    finally:
        browser.stop()

    assert len(served) == SESSIONS * ROUNDS
    notebooks = {(e["address"], e["port"]) for e in neighbour.events("learned")
                 if e["source"] == "listening" and e["address"] in NODE_ADDRESSES}
    bound = {(e["address"], e["port"]) for e in neighbour.events("bound")}
    assert len(notebooks) >= SESSIONS, "the neighbour saw the notebooks' ports"
    assert notebooks & bound, "the neighbour never took over a port a notebook had held"
    leaked = [e for e in neighbour.events("request") if any(t in str(e["raw"]) for t in tokens)]
    assert leaked == []


@contextlib.contextmanager
def user_jupyter_config(cluster: Cluster, text: str) -> Iterator[None]:
    """hpcuser's own ~/.jupyter/jupyter_{server,lab}_config.py say `text`, then as before."""
    directory = cluster.home / ".jupyter"
    created = not directory.exists()
    owner = pwd.getpwnam(cluster.user)
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chown(directory, owner.pw_uid, owner.pw_gid)
    saved: dict[Path, bytes | None] = {}
    for name in ("jupyter_server_config.py", "jupyter_lab_config.py"):
        path = directory / name
        saved[path] = path.read_bytes() if path.exists() else None
        path.write_text(text)
        os.chown(path, owner.pw_uid, owner.pw_gid)
    try:
        yield
    finally:
        for path, content in saved.items():
            if content is None:
                path.unlink()
            else:
                path.write_bytes(content)
        if created:
            directory.rmdir()


def test_a_user_config_that_disables_the_token_still_gets_a_notebook_that_demands_it(
    daemon: Daemon, cluster: Cluster
) -> None:
    """With `c.IdentityProvider.token = ''` in the user's Jupyter config, the session's
    notebook still refuses requests without the token and accepts the session's token."""
    with user_jupyter_config(cluster, "c.IdentityProvider.token = ''\n"):
        loaded = cluster.ssh(
            "source ~/jupyter_env/bin/activate && python -c 'from jupyter_server.serverapp "
            "import ServerApp; app = ServerApp(); app.load_config_file(); "
            "print(repr(app.config.IdentityProvider.token))'"
        ).stdout.strip()
        assert loaded == "''", "the user's config is what Jupyter reads without nbtether"
        port = free_port()
        daemon.drop("open", session_yaml(port))
        row = daemon.wait_phase("open", "ready", timeout=180)
        assert http_status(f"http://127.0.0.1:{port}/api/status") == 403
        assert http_status(f"http://127.0.0.1:{port}/api/status", token_of(row)) == 200
