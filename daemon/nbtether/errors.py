"""The errors of nbtether, split by what the daemon does next.

    NbtetherError
    ├── TemporaryError          retry later, with backoff; the session keeps its job
    │   └── ClusterUnreachable  SSH connection or slurmctld not answering
    └── PermanentError          stop and tell the user in `status`; no retry loop
        ├── ConfigError         the daemon config is unusable
        ├── AlreadyRunning      another daemon uses the same state directory
        ├── HostKeyError        the login node's host key is unknown or changed
        ├── AuthError           the cluster refused our credentials
        ├── LoginRequired       the login needs a person (code, password): `nbtether login`
        └── SubmissionRejected  SLURM refused the job (its message is kept verbatim)
"""

from __future__ import annotations


class NbtetherError(Exception):
    """Base of every error nbtether raises on purpose."""


class TemporaryError(NbtetherError):
    """A failure that may go away by itself; retried with backoff."""


class ClusterUnreachable(TemporaryError):
    """The SSH connection is down or slurmctld does not answer."""


class PermanentError(NbtetherError):
    """A failure that needs a person; never retried in a loop."""


class ConfigError(PermanentError):
    """The daemon config file or environment is invalid."""


class AlreadyRunning(PermanentError):
    """Another `nbtether run` holds the state directory."""


class HostKeyError(PermanentError):
    """The login node's host key is not in known_hosts or does not match it."""


class AuthError(PermanentError):
    """The cluster refused every credential we offered."""


class LoginRequired(PermanentError):
    """The login node asks for a password or one-time code: only a person may answer."""


class SubmissionRejected(PermanentError):
    """sbatch refused the job; the message is SLURM's own."""
