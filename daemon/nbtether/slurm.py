"""Everything SLURM-specific: the batch script, the commands, and parsing their output. No I/O.

Job states follow squeue(1) "JOB STATE CODES"; a state this module does not know is
UNKNOWN (keep watching), never ended.
"""

from __future__ import annotations

import enum
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta

from nbtether.spec import SessionSpec, format_walltime

JOB_PREFIX = "nbtether-"
REMOTE_ROOT = ".nbtether"  # under the user's home on the cluster


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

# Messages of SLURM clients that mean "the controller is not answering", not "no such job".
CONTROLLER_DOWN = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused"
    r"|Zero Bytes were transmitted|Rate limit exceeded|temporarily unable",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class JobInfo:
    """One job as squeue or sacct reports it."""

    job_id: str
    name: str
    state: str  # SLURM's own word, e.g. "PENDING" or "CANCELLED by 1001"
    reason: str = ""
    node: str | None = None
    ends_at: datetime | None = None  # when the walltime runs out, if running

    @property
    def base_state(self) -> str:
        """The state without sacct's suffixes (`CANCELLED by 1001` → `CANCELLED`)."""
        return self.state.split(" ", 1)[0].rstrip("+")

    @property
    def kind(self) -> JobState:
        """How the daemon treats this state."""
        return STATE_CLASSES.get(self.base_state, JobState.UNKNOWN)


def job_name(instance: str, session: str) -> str:
    """The job name: findable after a crash, unique to this daemon, and free of secrets."""
    return f"{JOB_PREFIX}{instance}-{session}"


def session_of(name: str, instance: str) -> str | None:
    """The session a job name belongs to, if this daemon instance made it."""
    prefix = f"{JOB_PREFIX}{instance}-"
    return name[len(prefix):] if name.startswith(prefix) else None


def remote_dir(instance: str) -> str:
    """This daemon's directory on the cluster, relative to the user's home."""
    return f"{REMOTE_ROOT}/{instance}"


def session_dir(instance: str, session: str) -> str:
    """Where one session keeps its token and job output on the cluster."""
    return f"{remote_dir(instance)}/{session}"


def token_path(instance: str, session: str) -> str:
    """The 0600 token file that Jupyter reads through JUPYTER_TOKEN_FILE."""
    return f"{session_dir(instance, session)}/token"


def output_path(instance: str, session: str, job_id: str = "%j") -> str:
    """The job's output file (Jupyter's log)."""
    return f"{session_dir(instance, session)}/slurm-{job_id}.out"


def run_dir(instance: str) -> str:
    """Where jobs announce `<jobid>-<run>.ready` and `<jobid>-<run>.end`.

    `run` is SLURM_RESTART_COUNT, so a requeued job announces its new node afresh.
    """
    return f"{remote_dir(instance)}/run"


def shell_path(path: str) -> str:
    """A shell word for a path on the cluster, `~` meaning the user's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _directives(spec: SessionSpec, name: str, output: str) -> list[str]:
    res = spec.resources
    options: list[tuple[str, object]] = [
        ("job-name", name),
        ("output", output),
        ("ntasks", 1),
        ("cpus-per-task", res.cpus),
        ("time", format_walltime(res.time)),
        ("partition", res.partition),
        ("reservation", res.reservation),
        ("account", res.account),
        ("qos", res.qos),
        ("mem", res.mem),
        ("gpus", res.gpus or None),
        ("constraint", res.constraint),
    ]
    return [f"#SBATCH --{key}={value}" for key, value in options if value is not None]


_FREE_PORT = "import socket; s=socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"
_JUPYTER = """\
unset JUPYTER_TOKEN
export JUPYTER_TOKEN_FILE="$HOME"/{token}
run="$HOME"/{run}
port=$(python -c {free_port})
jupyter {app} --no-browser --ip="$address" --port="$port" --ServerApp.port_retries=0 \\
    --ServerApp.root_dir={root_dir} &
jupyter=$!
trap 'kill -TERM "$jupyter" 2>/dev/null' TERM INT
# Tell the daemon (through a file it watches on the login node) once Jupyter accepts.
until (exec 3<>"/dev/tcp/$address/$port") 2>/dev/null; do
    kill -0 "$jupyter" 2>/dev/null || break
    sleep 0.1
done
announce="$run/$SLURM_JOB_ID-${{SLURM_RESTART_COUNT:-0}}"
if kill -0 "$jupyter" 2>/dev/null; then
    printf '%s %s %s\\n' "$SLURMD_NODENAME" "$address" "$port" > "$run/.announce.$$"
    mv -f "$run/.announce.$$" "$announce.ready"
fi
status=0
wait "$jupyter" || status=$?
while kill -0 "$jupyter" 2>/dev/null; do wait "$jupyter" || status=$?; done
printf '%s\\n' "$status" > "$announce.end"
echo "nbtether: notebook exited with status $status" >&2
exit "$status"
"""


def render_script(spec: SessionSpec, *, instance: str, session: str) -> str:
    """The batch script for one job of a session, run in a login shell like the tutorial's.

    Every value from the session file is either validated to a safe alphabet (directives)
    or quoted (shell words). The token is never in the script: only the path of its file.
    """
    env = spec.environment
    lines = ["#!/bin/bash -l", *_directives(spec, job_name(instance, session),
                                            output_path(instance, session))]
    lines.append("# Generated by nbtether. The token reaches Jupyter through a 0600 file.")
    lines.append("umask 077  # Jupyter's runtime files name the token: keep every file private")
    lines += [f"module load {shlex.quote(module)}" for module in env.modules]
    if env.conda:
        lines.append(f"conda activate {shell_path(env.conda)}")
    if env.venv:
        lines.append(f"source {shell_path(env.venv)}/bin/activate")
    lines += list(env.setup)
    prefix = spec.jupyter.address_prefix
    if prefix:
        lines += [
            "address=$(hostname -I | tr ' ' '\\n' | awk -v p="
            f"{shlex.quote(prefix)} 'index($0, p) == 1' | head -n 1)",
            '[ -n "$address" ] || { echo "nbtether: no address starts with '
            f'{prefix}" >&2; exit 1; }}',
        ]
    else:
        lines.append('address="$SLURMD_NODENAME"')
    lines.append(
        _JUPYTER.format(
            token=shlex.quote(token_path(instance, session)),
            run=shlex.quote(run_dir(instance)),
            free_port=shlex.quote(_FREE_PORT),
            app=spec.jupyter.app,
            root_dir=shell_path(spec.jupyter.root_dir),
        )
    )
    return "\n".join(lines)


def prepare_command(instance: str, session: str) -> str:
    """Create the remote directories (0700) and store the token read from stdin (0600)."""
    token = token_path(instance, session)
    return (
        f"umask 077 && mkdir -p {shlex.quote(run_dir(instance))} "
        f"{shlex.quote(session_dir(instance, session))} && cat > {shlex.quote(token)}.new "
        f"&& mv -f {shlex.quote(token)}.new {shlex.quote(token)}"
    )


SBATCH_COMMAND = "umask 077 && sbatch --parsable"  # the script comes on stdin; output is 0600
SQUEUE_COMMAND = "squeue --me --states=all --noheader --format='%i|%T|%r|%N|%L|%j'"


def sacct_command(job_ids: list[str]) -> str:
    """Final states of jobs that squeue no longer lists."""
    ids = ",".join(_checked_ids(job_ids))
    return f"sacct -X -n -P -j {ids} -o JobIDRaw,JobName,State,NodeList"


def scancel_command(instance: str, job_ids: list[str]) -> str:
    """Cancel jobs (idempotent: a finished job is not an error) and drop their announcements."""
    ids = _checked_ids(job_ids)
    run = shlex.quote(run_dir(instance))
    stale = " ".join(f"{run}/{job_id}-*" for job_id in ids)
    return f"scancel {' '.join(ids)}; rm -f {stale}"


def parse_announcement(line: str) -> tuple[str, int, str, list[str]] | None:
    """A watcher line `<jobid>-<run>.<kind> <content>` as (job id, run, kind, fields)."""
    file, _, content = line.partition(" ")
    match = re.fullmatch(r"(\d+)-(\d+)\.(ready|end)", file)
    if not match:
        return None
    return match[1], int(match[2]), match[3], content.split()


def _checked_ids(job_ids: list[str]) -> list[str]:
    for job_id in job_ids:
        if not job_id.isdigit():
            raise ValueError(f"not a SLURM job id: {job_id!r}")
    return job_ids


def parse_sbatch(stdout: str) -> str:
    """The job id from `sbatch --parsable` (`123` or `123;cluster`)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    job_id = lines[-1].split(";", 1)[0].strip() if lines else ""
    if not job_id.isdigit():
        raise ValueError(f"unexpected sbatch output: {stdout!r}")
    return job_id


def sbatch_error(stderr: str) -> str:
    """SLURM's own words for a rejected submission, without the `sbatch: error:` noise."""
    messages = [
        re.sub(r"^sbatch: error:\s*", "", line).strip()
        for line in stderr.splitlines()
        if line.strip()
    ]
    return "; ".join(m for m in messages if m) or "sbatch failed without a message"


def parse_time_left(text: str) -> timedelta | None:
    """squeue's `%L`: `[D-]HH:MM:SS`, `MM:SS`, or words such as UNLIMITED and NOT_SET."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_squeue(stdout: str, now: datetime) -> list[JobInfo]:
    """Rows of SQUEUE_COMMAND's output, with time left turned into an end time."""
    jobs = []
    for line in stdout.splitlines():
        fields = line.strip().split("|", 5)
        if len(fields) != 6 or not fields[0].isdigit():
            continue
        job_id, state, reason, node, left, name = fields
        time_left = parse_time_left(left)
        jobs.append(
            JobInfo(
                job_id=job_id,
                name=name,
                state=state,
                reason="" if reason == "None" else reason,
                node=node or None,
                ends_at=now + time_left if state == "RUNNING" and time_left else None,
            )
        )
    return jobs


def parse_sacct(stdout: str) -> list[JobInfo]:
    """Rows of sacct_command's output."""
    jobs = []
    for line in stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        job_id, name, state, node = fields[:4]
        jobs.append(JobInfo(job_id=job_id, name=name, state=state,
                            node=None if node in ("", "None assigned") else node))
    return jobs
