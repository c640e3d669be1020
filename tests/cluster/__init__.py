"""The real mini-cluster that the end-to-end tests run against.

``start.sh`` next to this module brings it up (idempotently: a running cluster is
reused), ``stop.sh`` takes it down; ``README.md`` says what runs where.
:class:`Cluster` describes it and runs commands on it; :func:`wait_for` polls.
"""

from __future__ import annotations

import fcntl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = [
    "START_SCRIPT",
    "STATE_DIR",
    "STOP_SCRIPT",
    "Cluster",
    "ClusterStartError",
    "CommandFailed",
    "start_cluster",
    "wait_for",
]

START_SCRIPT = Path(__file__).resolve().parent / "start.sh"
STOP_SCRIPT = START_SCRIPT.with_name("stop.sh")
STATE_DIR = Path("/var/lib/nbtether-testcluster")
# Held while start.sh runs: pytest workers start the cluster at once, and two runs of the
# script could both find a daemon down and both start it.
START_LOCK = Path("/tmp/nbtether-testcluster-start.lock")

_T = TypeVar("_T")


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


class CommandFailed(subprocess.CalledProcessError):
    """A command run by :class:`Cluster` exited non-zero; the message shows its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{_tail(self.stdout)}\nstderr:\n{_tail(self.stderr)}"


class ClusterStartError(RuntimeError):
    """``start.sh`` failed or timed out; the message ends with the tail of its output."""


def _run(argv: list[str], *, check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise CommandFailed(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


@dataclass(frozen=True)
class Cluster:
    """The mini-cluster as the daemon sees it: a login node reached over SSH as an
    unprivileged user who submits to SLURM, with admin commands available locally."""

    host: str = "127.0.0.1"
    port: int = 2222
    user: str = "hpcuser"
    identity_file: Path = STATE_DIR / "id_ed25519"
    known_hosts: Path = STATE_DIR / "known_hosts"
    config_file: Path = STATE_DIR / "config.yaml"
    home: Path = Path("/home/hpcuser")
    # The login nodes that need a person (lib.sh): key and TOTP code, or a password alone.
    mfa_port: int = 2223
    password_port: int = 2224
    person_known_hosts: Path = STATE_DIR / "known_hosts_person"
    totp_secret: str = "NBTETHERMFATESTSECRET234"
    password: str = "nbtether-test-password"
    mfa_sshd_pid: Path = STATE_DIR / "sshd-mfa" / "sshd_mfa.pid"
    mfa_sshd_log: Path = STATE_DIR / "sshd-mfa" / "sshd.log"
    neighbour: str = "nbneighbour"  # another unprivileged user, for processes on the nodes

    def totp(self, count: int = 1, at: float | None = None) -> list[str]:
        """``count`` consecutive TOTP codes of the two-factor node, from the 30 s step of
        ``at`` (a Unix time; default now), computed by oathtool from the known secret."""
        when = int(time.time() if at is None else at)
        out = _run(["oathtool", "--totp", "-b", f"--window={count - 1}", f"--now=@{when}",
                    self.totp_secret], check=True, timeout=10).stdout
        return out.split()

    def wrong_totp(self) -> str:
        """A six-digit code that no step from a minute ago to a minute ahead accepts."""
        valid = set(self.totp(5, at=time.time() - 60))
        return next(code for n in range(1, 10**6)
                    if (code := f"{(int(min(valid)) + 99991 * n) % 10**6:06d}") not in valid)

    def ssh_argv(self, command: str) -> list[str]:
        """The OpenSSH command line that runs ``command`` on the login node as the user.

        ``-F /dev/null`` keeps the caller's ``~/.ssh/config`` out of the tests.
        """
        return [
            "ssh", "-F", "/dev/null",
            "-p", str(self.port),
            "-i", str(self.identity_file),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            f"{self.user}@{self.host}",
            command,
        ]  # fmt: skip

    def ssh(
        self, command: str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``command`` (a shell command line) on the login node as the user.

        Raises :class:`CommandFailed` on a non-zero exit when ``check`` is true.
        """
        return _run(self.ssh_argv(command), check=check, timeout=timeout)

    def admin(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs a SLURM admin command (``scontrol``, ``sdiag``, ``sacctmgr`` …) locally as root.

        Raises :class:`CommandFailed` on a non-zero exit when ``check`` is true.
        """
        return _run(list(argv), check=check, timeout=60)


def start_cluster(timeout: float = 1800) -> Cluster:
    """Runs ``start.sh`` (quick when the cluster already runs) and describes the cluster.

    The timeout covers a first run on a fresh machine, which installs Debian packages
    and jupyterlab. Raises :class:`ClusterStartError` when the script fails. Runs of this
    function in other processes wait for each other.
    """
    try:
        with START_LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            proc = subprocess.run(
                ["bash", str(START_SCRIPT)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
    except subprocess.TimeoutExpired as exc:
        raise ClusterStartError(
            f"{START_SCRIPT} did not finish within {timeout:g}s; its output ended with:\n"
            f"{_tail(exc.stdout)}"
        ) from exc
    if proc.returncode != 0:
        raise ClusterStartError(
            f"{START_SCRIPT} failed (exit {proc.returncode}); its output ended with:\n"
            f"{_tail(proc.stdout)}"
        )
    return Cluster()


def wait_for(
    predicate: Callable[[], _T | None],
    timeout: float,
    interval: float = 0.5,
    message: str = "the condition",
) -> _T:
    """Calls ``predicate`` every ``interval`` seconds until it returns something truthy,
    and returns that value.

    Raises :class:`TimeoutError` naming ``message`` and the last value once ``timeout``
    seconds have passed. Exceptions from ``predicate`` propagate: a broken probe fails
    at once instead of being retried until the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:g}s waiting for {message} (last value: {value!r})"
            )
        time.sleep(interval)
