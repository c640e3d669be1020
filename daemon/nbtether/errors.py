"""The errors of nbtether, each carrying what the daemon does next (like kopf's).

    NbtetherError
    ├── TemporaryError          retried after `delay` seconds; the session keeps its job
    │   ├── ClusterUnreachable  SSH connection or slurmctld not answering
    │   └── SubmissionUnconfirmed  sbatch ran but its answer could not be read
    └── PermanentError          stop and tell the user in `status`; retried when the
        │                       session file changes, never in a loop
        ├── ConfigError         the daemon config is unusable
        ├── AlreadyRunning      another daemon uses the same state directory
        ├── DemoUnavailable     `nbtether demo` lacks a local cluster or Jupyter here
        ├── HostKeyError        a host key (login node or jump host) is unknown or changed
        ├── AuthError           the cluster refused our credentials
        ├── LoginRequired       the login needs a person (code, password): `nbtether login`
        └── SubmissionRejected  SLURM refused the job (its message is kept verbatim)

`plan()` reads the class and the delay; nothing else decides about retries.
"""

from __future__ import annotations

RETRY_DELAY = 30.0  # seconds before a temporary failure is tried again, unless it says


class NbtetherError(Exception):
    """Base of every error nbtether raises on purpose."""


class TemporaryError(NbtetherError):
    """A failure that may go away by itself; tried again after `delay` seconds."""

    def __init__(self, message: str = "", delay: float = RETRY_DELAY) -> None:
        super().__init__(message)
        self.delay = delay


class ClusterUnreachable(TemporaryError):
    """The SSH connection is down or slurmctld does not answer."""


class SubmissionUnconfirmed(TemporaryError):
    """sbatch may have made a job whose id we could not read: wait for squeue to show it."""


class PermanentError(NbtetherError):
    """A failure that needs a person; retried when the session file changes, never in a loop."""


class ConfigError(PermanentError):
    """The daemon config file or environment is invalid.

    `str()` is one line per problem, each `FILE:LINE: …`; `detail` may add lines (a YAML
    error's offending line and pointer) for commands that show the whole report.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


class AlreadyRunning(PermanentError):
    """Another `nbtether run` holds the state directory."""


class DemoUnavailable(PermanentError):
    """`nbtether demo` cannot run here: no `kind: local` cluster, or no Jupyter to run."""


class HostKeyError(PermanentError):
    """A host's key is not in known_hosts or does not match it; `host` names that host."""

    def __init__(self, message: str, host: str = "") -> None:
        super().__init__(message)
        self.host = host


class AuthError(PermanentError):
    """The cluster refused every credential we offered."""


class LoginRequired(PermanentError):
    """The login node asks for a password or one-time code: only a person may answer."""


class SubmissionRejected(PermanentError):
    """sbatch refused the job; the message is SLURM's own."""
