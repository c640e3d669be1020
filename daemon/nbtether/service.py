"""The per-user service: a systemd user unit on Linux, a launchd LaunchAgent on macOS."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "nbtether.service"
AGENT_LABEL = "org.nbtether.daemon"
EXIT_CONFIG = 3  # `nbtether run` exits with this on a broken config; restarting won't help

UNIT = """\
# systemd user unit for the nbtether daemon, written by `nbtether service install`.
[Unit]
Description=nbtether: Jupyter notebooks on HPC clusters at fixed local URLs
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
# Stopping the daemon never cancels jobs; they are adopted again on the next start.
KillMode=mixed
TimeoutStopSec=30
WatchdogSec=60
Restart=on-failure
RestartSec=5
RestartPreventExitStatus={exit_config}
# User services do not inherit a login session's ssh-agent: set `agent_path` for the
# cluster in config.yaml, or set SSH_AUTH_SOCK here, e.g.
# Environment=SSH_AUTH_SOCK=%t/ssh-agent.socket

[Install]
WantedBy=default.target
"""


def render_unit(executable: str) -> str:
    """The systemd user unit running `executable run`."""
    return UNIT.format(exec_start=f"{executable} run", exit_config=EXIT_CONFIG)


def render_plist(executable: str, log_file: str) -> bytes:
    """The launchd LaunchAgent running `executable run`, restarted unless it exits cleanly."""
    return plistlib.dumps({
        "Label": AGENT_LABEL,
        "ProgramArguments": [executable, "run"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        "StandardOutPath": log_file,
        "StandardErrorPath": log_file,
        "ProcessType": "Background",
    })


@dataclass(frozen=True)
class Outcome:
    """What `service install/uninstall` did, and what the user still has to run."""

    path: Path
    done: list[str]
    todo: list[str]
    why: str = ""  # why the first of `todo` could not be run here


def executable() -> str:
    """The absolute path of the running nbtether command."""
    found = shutil.which("nbtether")
    return str(Path(found).resolve()) if found else str(Path(sys.argv[0]).resolve())


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def unit_path() -> Path:
    """Where systemd looks for this user's units."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(_home() / ".config")
    return Path(config) / "systemd" / "user" / UNIT_NAME


def plist_path() -> Path:
    """Where launchd looks for this user's agents."""
    return _home() / "Library" / "LaunchAgents" / f"{AGENT_LABEL}.plist"


def _try(commands: list[list[str]]) -> tuple[list[str], list[str], str]:
    """Run commands until one fails; returns (done, still to do) as shell lines, and why."""
    done: list[str] = []
    for index, command in enumerate(commands):
        todo = [" ".join(c) for c in commands[index:]]
        if shutil.which(command[0]) is None:
            return done, todo, f"{command[0]} is not installed here"
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip().splitlines()
            return done, todo, f"{' '.join(command)} failed: {said[0] if said else 'no output'}"
        done.append(" ".join(command))
    return done, [], ""


def install(platform: str = sys.platform) -> Outcome:
    """Write the unit (or plist) for the current user, then enable and start it if possible."""
    exe = executable()
    if platform == "darwin":
        path = plist_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        log_file = _home() / "Library" / "Logs" / "nbtether.log"
        path.write_bytes(render_plist(exe, str(log_file)))
        return Outcome(path, *_try([["launchctl", "bootstrap", f"gui/{os.getuid()}", str(path)]]))
    path = unit_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_unit(exe))
    return Outcome(path, *_try([["systemctl", "--user", "daemon-reload"],
                                ["systemctl", "--user", "enable", "--now", UNIT_NAME]]))


def uninstall(platform: str = sys.platform) -> Outcome:
    """Stop and remove the unit (or plist); jobs keep running."""
    if platform == "darwin":
        path = plist_path()
        done, todo, why = _try([["launchctl", "bootout", f"gui/{os.getuid()}", str(path)]])
    else:
        path = unit_path()
        done, todo, why = _try([["systemctl", "--user", "disable", "--now", UNIT_NAME]])
        path.unlink(missing_ok=True)
        more_done, more_todo, more_why = _try([["systemctl", "--user", "daemon-reload"]])
        done, todo, why = done + more_done, todo + more_todo, why or more_why
    path.unlink(missing_ok=True)
    return Outcome(path, done, todo, why)
