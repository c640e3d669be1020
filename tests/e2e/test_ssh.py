"""How the daemon logs in: ~/.ssh/config aliases, ssh-agent, ProxyJump, host-key checks."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, wait_for
from tests.e2e.harness import Daemon, free_port, session_yaml

pytestmark = pytest.mark.e2e

POLL_INTERVAL = 30  # the shortest allowed: a test that waits for a scheduled poll waits less


def ssh_config(home: Path, cluster: Cluster, *, with_key: bool, extra: str = "") -> None:
    """A ~/.ssh with the login node as Host alias `login` and its key in known_hosts."""
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "known_hosts").write_text(cluster.known_hosts.read_text())
    identity = f"    IdentityFile {cluster.identity_file}\n" if with_key else ""
    (ssh / "config").write_text(
        f"Host login\n    HostName {cluster.host}\n    Port {cluster.port}\n"
        f"    User {cluster.user}\n{identity}{extra}"
    )


def wrong_known_hosts(directory: Path, cluster: Cluster) -> Path:
    """A known_hosts that holds another key for the login node's address."""
    other = directory / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    wrong = directory / "wrong_known_hosts"
    wrong.write_text(f"[{cluster.host}]:{cluster.port} " +
                     " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    return wrong


@pytest.fixture
def agent(tmp_path: Path, cluster: Cluster) -> Iterator[Path]:
    """A real ssh-agent holding the test user's key; yields its socket."""
    socket = tmp_path / "agent.sock"
    started = subprocess.run(["ssh-agent", "-a", str(socket)], capture_output=True,
                             text=True, check=True).stdout
    pid = started.split("SSH_AGENT_PID=", 1)[1].split(";", 1)[0]
    subprocess.run(["ssh-add", str(cluster.identity_file)], env={"SSH_AUTH_SOCK": str(socket)},
                   capture_output=True, check=True)
    yield socket
    subprocess.run(["kill", pid], check=False)


def run_one_session(daemon: Daemon) -> dict[str, object]:
    daemon.start()
    daemon.drop("viaconfig", session_yaml(free_port()))
    return daemon.wait_phase("viaconfig", "ready", timeout=120)


def test_ssh_config_alias_and_agent(tmp_path: Path, cluster: Cluster, agent: Path) -> None:
    """`host:` may be an ssh_config alias, and the key may come from an ssh-agent socket."""
    ssh_config(tmp_path, cluster, with_key=False)
    daemon = Daemon(tmp_path, cluster, testbed=f"host: login\nagent_path: {agent}")
    try:
        row = run_one_session(daemon)
        assert row["node"] in {"c1", "c2"}
    finally:
        daemon.cleanup()


def test_proxy_jump(tmp_path: Path, cluster: Cluster) -> None:
    """A cluster reached through a jump host (here the login node jumping to itself)."""
    ssh_config(tmp_path, cluster, with_key=True)
    daemon = Daemon(tmp_path, cluster, testbed=(
        f"host: {cluster.host}\nport: {cluster.port}\nuser: {cluster.user}\n"
        f"identity_file: {cluster.identity_file}\nproxy_jump: login"
    ))
    try:
        run_one_session(daemon)
    finally:
        daemon.cleanup()


def test_jump_host_is_verified_with_the_clusters_known_hosts(tmp_path: Path,
                                                            cluster: Cluster) -> None:
    """A jump host's key is checked against the cluster's known_hosts, not ssh_config's."""
    ssh_config(tmp_path, cluster, with_key=True, extra="    UserKnownHostsFile /dev/null\n")
    (tmp_path / ".ssh" / "known_hosts").unlink()
    daemon = Daemon(tmp_path, cluster, testbed=(
        f"host: {cluster.host}\nport: {cluster.port}\nuser: {cluster.user}\n"
        f"identity_file: {cluster.identity_file}\nknown_hosts: {cluster.known_hosts}\n"
        "proxy_jump: login"
    ))
    try:
        run_one_session(daemon)
    finally:
        daemon.cleanup()


def test_jump_host_with_an_unknown_key_is_named_and_polls_stay_quiet(
    tmp_path: Path, cluster: Cluster
) -> None:
    """A jump host whose key the cluster's known_hosts lacks is refused by name, quietly."""
    ssh_config(tmp_path, cluster, with_key=True)  # ssh_config's known_hosts would accept it
    wrong = wrong_known_hosts(tmp_path, cluster)
    daemon = Daemon(tmp_path, cluster, testbed=(
        f"host: {cluster.host}\nport: {cluster.port}\nuser: {cluster.user}\n"
        f"identity_file: {cluster.identity_file}\nknown_hosts: {wrong}\nproxy_jump: login\n"
        f"poll_interval: {POLL_INTERVAL}"
    ))
    daemon.start()
    try:
        daemon.drop("jumped", session_yaml(free_port()))

        def names_the_jump_host() -> str | None:
            row = daemon.status().get("jumped")
            message = str(row["message"]) if row else ""
            return message if "host key of login " in message else None

        wait_for(names_the_jump_host, timeout=30, message="status to name the jump host")
        # The first scheduled poll finds no connection: one quiet line, no traceback.
        wait_for(lambda: '"poll skipped"' in daemon.log.read_text(), timeout=POLL_INTERVAL + 15,
                 message="a scheduled poll without a connection")
        log = daemon.log.read_text()
        assert "Traceback" not in log and '"exception"' not in log, log[-3000:]
        assert daemon.jobs() == []
    finally:
        daemon.cleanup()


def test_unknown_host_key_is_a_clear_error_and_not_retried(tmp_path: Path,
                                                           cluster: Cluster) -> None:
    """A login node whose key does not match known_hosts is refused, said, and not retried."""
    wrong = wrong_known_hosts(tmp_path, cluster)
    daemon = Daemon(tmp_path, cluster, testbed=(
        f"host: {cluster.host}\nport: {cluster.port}\nuser: {cluster.user}\n"
        f"identity_file: {cluster.identity_file}\nknown_hosts: {wrong}"
    ))
    daemon.start()
    try:
        daemon.drop("guarded", session_yaml(free_port()))

        def says_host_key() -> bool:
            row = daemon.status().get("guarded")
            return row is not None and "host key" in str(row["message"])

        wait_for(says_host_key, timeout=30, message="status to name the host key problem")
        failures = [json.loads(line) for line in daemon.log.read_text().splitlines()
                    if '"ssh connect failed"' in line]
        assert len(failures) == 1 and failures[0]["retry_in"] == 600.0
        assert daemon.jobs() == []
    finally:
        daemon.cleanup()
