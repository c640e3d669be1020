"""What the daemon remembers per session: records in `state_dir`, 0600 files in a 0700 dir."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from nbtether.errors import AlreadyRunning, ConfigError
from nbtether.jobs import Endpoint
from nbtether.trust import Untrusted, check_directory

Phase = Literal[
    "pending", "starting", "ready", "handover", "stopping", "failed", "invalid", "login", "idle"
]
APP_PATHS = {"lab": "lab", "notebook": "tree", "server": ""}
LOCK_PATIENCE = 2.0  # seconds a starting daemon waits out a `status` probing the lock


class Record(BaseModel):
    """One session as the daemon last left it; the record outlives the daemon process."""

    model_config = ConfigDict(extra="ignore")

    name: str
    cluster: str
    token: str
    local_port: int | None
    app: str = "lab"
    phase: Phase = "pending"
    message: str = ""
    job_id: str | None = None
    previous_job_id: str | None = None  # the job before `job_id`: `logs` shows how it ended
    fingerprint: str | None = None  # of the spec that made `job_id`
    endpoint: Endpoint | None = None
    successor_id: str | None = None  # a job started to take over from `job_id`
    no_handover_for: str | None = None  # the job whose successor failed: no second try
    handover_error: str = ""  # why that successor failed
    restarts: int = 0
    failures: int = 0  # failed starts in a row
    submitted_at: datetime | None = None  # of `job_id`
    successor_submitted_at: datetime | None = None
    retry_at: datetime | None = None
    last_end: str = ""  # how the previous job ended, shown while waiting to resubmit
    ends_at: datetime | None = None  # walltime end of `job_id`
    given_up_on: str | None = None  # the attempt (plan.attempt_key) that failed for good
    file_version: str | None = None  # of the session file when last planned
    login_retried_for: str | None = None  # the file version that last retried a login
    replaced_at: datetime | None = None  # a successor took over: the kernel was replaced
    starts_at: datetime | None = None  # the scheduler's estimated start of a queued `job_id`
    ready_since: datetime | None = None  # when `job_id` first answered: idle time counts from it
    asleep: bool = False  # no job on purpose (`start: on_demand`, `idle_stop`) until wanted
    stopped_job_id: str | None = None  # the job cancelled for idleness: never adopted back

    @classmethod
    def new(cls, name: str, cluster: str = "", local_port: int | None = None) -> Record:
        """A fresh record with its own token; the token stays for the life of the session."""
        return cls(name=name, cluster=cluster, local_port=local_port, token=secrets.token_hex(24))

    @property
    def url(self) -> str | None:
        """The notebook's URL while it is reachable."""
        if self.phase not in ("ready", "handover"):
            return None
        path = APP_PATHS.get(self.app, "lab")
        return f"http://127.0.0.1:{self.local_port}/{path}?token={self.token}"

    def status(self, now: datetime | None = None) -> dict[str, Any]:
        """The contract's status fields (and a few more) for `nbtether status --json`."""
        left = None
        if self.ends_at is not None and self.job_id is not None:
            left = max(0, int((self.ends_at - (now or datetime.now(UTC))).total_seconds()))
        return {
            "name": self.name,
            "phase": self.phase,
            "job_id": self.job_id,
            "node": self.endpoint.node if self.endpoint else None,
            "local_port": self.local_port,
            "url": self.url,
            "message": self.message,
            "restarts": self.restarts,
            "cluster": self.cluster,
            "time_left": left,
        }


class StateStore:
    """Records on disk: one JSON file per session, replaced atomically, never world-readable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sessions = root / "sessions"

    def prepare(self) -> None:
        """Create the directories with mode 0700 (tightening them if they exist).

        Raises ConfigError when the state directory or a parent up to the home directory
        belongs to someone else or others can write to it (see `trust`).
        """
        try:
            check_directory(self.root.parent)
            for directory in (self.root, self.sessions):
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                directory.chmod(0o700)
            check_directory(self.root)
        except Untrusted as exc:
            raise ConfigError(f"state_dir: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"state_dir: cannot make {exc.filename} private: "
                              f"{exc.strerror}") from exc

    def lock(self) -> int:
        """Hold the state directory for this process (released when it exits).

        A `status` that probes the lock holds it shared for an instant: that is waited out,
        a daemon holding it is not.
        """
        self.prepare()
        fd = os.open(self.root / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + LOCK_PATIENCE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise AlreadyRunning(
                        f"another nbtether daemon is using {self.root}") from None
                time.sleep(0.05)

    def daemon_running(self) -> bool:
        """Whether a live daemon holds the state directory right now (its lock says so: a
        stopped or killed daemon released it with its last breath)."""
        try:
            fd = os.open(self.root / "daemon.lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases the probe's shared lock
        return False

    def instance_id(self) -> str:
        """This daemon installation's id: part of every job name, so others' jobs are left alone."""
        path = self.root / "instance"
        with contextlib.suppress(FileNotFoundError):
            return path.read_text().strip()
        self.prepare()
        value = secrets.token_hex(4)
        write_private(path, value)
        return value

    def load_all(self) -> dict[str, Record]:
        """Every record that can be read; unreadable ones are skipped (and kept on disk)."""
        records: dict[str, Record] = {}
        if not self.sessions.is_dir():
            return records
        for path in sorted(self.sessions.glob("*.json")):
            with contextlib.suppress(OSError, ValidationError):
                record = Record.model_validate_json(path.read_bytes())
                records[record.name] = record
        return records

    def load(self, name: str) -> Record | None:
        """One session's record, or None when there is none (or it cannot be read)."""
        with contextlib.suppress(OSError, ValidationError):
            return Record.model_validate_json((self.sessions / f"{name}.json").read_bytes())
        return None

    def save(self, record: Record) -> None:
        """Write a record atomically with mode 0600."""
        write_private(self.sessions / f"{record.name}.json", record.model_dump_json(indent=2))

    def delete(self, name: str) -> None:
        """Forget a session."""
        (self.sessions / f"{name}.json").unlink(missing_ok=True)

    def write_status(self, payload: dict[str, Any]) -> None:
        """Daemon-wide facts for `status` (pid, heartbeat)."""
        write_private(self.root / "daemon.json", json.dumps(payload))

    def read_status(self) -> dict[str, Any]:
        """The daemon-wide facts, or {} when the daemon never ran."""
        try:
            data = json.loads((self.root / "daemon.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically; the file is 0600 from its first byte."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
