"""The job vocabulary shared by every backend and the reconciler.

Backends report job states in SLURM's words (squeue(1) "JOB STATE CODES"), the lingua
franca of this daemon; a state this module does not know is UNKNOWN (keep watching), never
ended.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict


class Endpoint(BaseModel):
    """Where a job's Jupyter listens, as the node sees it."""

    model_config = ConfigDict(frozen=True)

    node: str
    address: str
    port: int


class JobState(enum.Enum):
    """What a SLURM state means for the daemon."""

    WAITING = "waiting"
    RUNNING = "running"
    ENDING = "ending"
    PAUSED = "paused"
    ENDED = "ended"
    HELD = "held"
    UNKNOWN = "unknown"


_STATES = {
    JobState.WAITING: {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                       "RESIZING", "SIGNALING"},
    JobState.RUNNING: {"RUNNING"},
    JobState.ENDING: {"COMPLETING", "STAGE_OUT"},
    JobState.PAUSED: {"SUSPENDED", "STOPPED"},
    JobState.ENDED: {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED", "NODE_FAIL",
                     "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED"},
    JobState.HELD: {"SPECIAL_EXIT", "RESV_DEL_HOLD"},
}
STATE_CLASSES = {state: cls for cls, states in _STATES.items() for state in states}

# Ends that are nobody's fault: resubmitted under `always` and `on-timeout`.
INTERRUPTED = {"TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL"}


@dataclass(frozen=True)
class JobInfo:
    """One job as squeue or sacct reports it."""

    job_id: str
    name: str
    state: str  # SLURM's own word, e.g. "PENDING" or "CANCELLED by 1001"
    reason: str = ""
    node: str | None = None
    ends_at: datetime | None = None  # when the walltime runs out, if running
    fingerprint: str | None = None  # of the session file the job was made from, if it says
    starts_at: datetime | None = None  # the scheduler's estimated start, if queued

    @property
    def base_state(self) -> str:
        """The state without sacct's suffixes (`CANCELLED by 1001` → `CANCELLED`)."""
        return self.state.split(" ", 1)[0].rstrip("+")

    @property
    def kind(self) -> JobState:
        """How the daemon treats this state."""
        return STATE_CLASSES.get(self.base_state, JobState.UNKNOWN)


def unknown(job_id: str, why: str) -> JobInfo:
    """A job whose state cannot be known right now: keep watching, never treat as ended."""
    return JobInfo(job_id=job_id, name="", state="UNKNOWN", reason=why)
