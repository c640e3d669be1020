"""The per-user service: the systemd unit, the launchd plist, `nbtether service`, sd_notify."""

from __future__ import annotations

import os
import plistlib
import shutil
import socket
import subprocess
import sysconfig
from pathlib import Path

import pytest

from nbtether import service
from nbtether.sdnotify import Notifier

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(sysconfig.get_path("scripts"))  # where pip put the `nbtether` console script

# Stands in for systemctl where no user manager runs (containers, ssh sessions): it records
# its argv and fails the way the real one does there.
FAKE_SYSTEMCTL = """\
#!/bin/sh
echo "$*" >> {log}
echo "Failed to connect to bus: No medium found" >&2
exit 1
"""


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The rendered user unit verifies cleanly (no errors, no warnings) as a user unit."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install -y systemd (tests/run.sh does)"
    executable = tmp_path / "nbtether"
    executable.write_text("#!/bin/sh\nexit 0\n")
    executable.chmod(0o755)
    unit = tmp_path / service.UNIT_NAME
    unit.write_text(service.render_unit(str(executable)))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    result = subprocess.run([analyze, "--user", "verify", str(unit)], capture_output=True,
                            text=True, env=env, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The verification above has teeth: a missing ExecStart binary fails it."""
    analyze = shutil.which("systemd-analyze")
    assert analyze
    unit = tmp_path / service.UNIT_NAME
    unit.write_text(service.render_unit(str(tmp_path / "missing")))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = subprocess.run([analyze, "--user", "verify", str(unit)], capture_output=True,
                            text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
                            check=False, timeout=60)
    assert result.returncode != 0
    assert "is not executable" in result.stderr


def test_repo_unit_and_plist_are_the_rendered_ones() -> None:
    """systemd/ in the repo holds exactly what render_unit and render_plist produce."""
    unit = (REPO / "systemd" / "nbtether.service").read_text()
    assert unit == service.render_unit("%h/.local/bin/nbtether")
    plist = (REPO / "systemd" / "org.nbtether.daemon.plist").read_bytes()
    assert plist == service.render_plist("/usr/local/bin/nbtether", "/tmp/nbtether.log")


def test_unit_is_a_notify_service_with_a_watchdog() -> None:
    """The unit waits for READY=1, expects watchdog pings, and keeps jobs alive on stop."""
    unit = service.render_unit("/opt/bin/nbtether")
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=60",
                 "ExecStart=/opt/bin/nbtether run", "Restart=on-failure",
                 f"RestartPreventExitStatus={service.EXIT_CONFIG}", "WantedBy=default.target"):
        assert line in unit.splitlines()


def test_plist_loads_and_runs_the_daemon_at_login() -> None:
    """The LaunchAgent parses and runs `nbtether run` at load, kept alive, logging to a file."""
    agent = plistlib.loads(service.render_plist("/usr/local/bin/nbtether", "/tmp/n.log"))
    assert agent["Label"] == service.AGENT_LABEL
    assert agent["ProgramArguments"] == ["/usr/local/bin/nbtether", "run"]
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["StandardOutPath"] == agent["StandardErrorPath"] == "/tmp/n.log"


def test_service_install_and_uninstall_without_a_user_manager(tmp_path: Path) -> None:
    """install writes ~/.config/systemd/user/nbtether.service for this nbtether, prints why
    `systemctl --user` failed and the commands to run, and exits 1 (nothing is enabled);
    uninstall removes it."""
    home, fake_bin, calls = tmp_path / "home", tmp_path / "bin", tmp_path / "systemctl.log"
    home.mkdir()
    fake_bin.mkdir()
    systemctl = fake_bin / "systemctl"
    systemctl.write_text(FAKE_SYSTEMCTL.format(log=calls))
    systemctl.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "NBTETHER_CONFIG")}
    env.update(HOME=str(home), PATH=f"{fake_bin}:{SCRIPTS}:/usr/bin:/bin", COLUMNS="500")
    nbtether = SCRIPTS / "nbtether"
    unit = home / ".config" / "systemd" / "user" / "nbtether.service"

    installed = subprocess.run([str(nbtether), "service", "install"], capture_output=True,
                               text=True, env=env, check=False, timeout=60)
    assert installed.returncode == 1
    assert "the service is not enabled: run the commands above" in installed.stderr
    assert unit.read_text() == service.render_unit(str(nbtether.resolve()))
    assert f"ExecStart={nbtether.resolve()} run" in unit.read_text().splitlines()
    assert f"wrote {unit}" in installed.stdout
    assert "systemctl --user daemon-reload failed: Failed to connect to bus: No medium found; " \
           "run yourself:\n  systemctl --user daemon-reload\n" \
           "  systemctl --user enable --now nbtether.service\n" in installed.stdout
    assert calls.read_text().splitlines() == ["--user daemon-reload"]

    removed = subprocess.run([str(nbtether), "service", "uninstall"], capture_output=True,
                             text=True, env=env, check=True, timeout=60)
    assert not unit.exists()
    assert f"removed {unit}" in removed.stdout
    assert "  systemctl --user disable --now nbtether.service\n" in removed.stdout


def test_notifier_sends_datagrams_to_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With NOTIFY_SOCKET set, each message is one datagram on that socket."""
    address = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        notifier = Notifier()
        notifier.send("READY=1")
        notifier.send("STATUS=2 ready")
        assert [sock.recv(100), sock.recv(100)] == [b"READY=1", b"STATUS=2 ready"]


def test_notifier_speaks_to_abstract_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOTIFY_SOCKET starting with @ names an abstract socket, as systemd hands out."""
    name = f"nbtether-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier().send("WATCHDOG=1")
        assert sock.recv(100) == b"WATCHDOG=1"


def test_notifier_without_a_socket_or_listener_is_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No NOTIFY_SOCKET, or nobody listening on it, never raises."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    Notifier().send("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    Notifier().send("READY=1")


@pytest.mark.parametrize(("usec", "pid", "interval"), [
    ("2000000", None, 1.0),
    ("2000000", "self", 1.0),
    ("2000000", "1", None),  # the watchdog is meant for another process
    (None, None, None),
    ("soon", None, None),
])
def test_watchdog_interval_is_half_the_timeout_for_this_process(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, interval: float | None
) -> None:
    """Pings every WATCHDOG_USEC/2, only when WATCHDOG_PID is unset or this process."""
    for variable, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, str(os.getpid()) if value == "self" else value)
    assert Notifier().watchdog_interval == interval

