"""Everything SLURM-specific: the batch script, the commands, and parsing their output. No I/O."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from nbtether.backends import rendezvous
from nbtether.config import ClusterConfig
from nbtether.jobs import JobInfo
from nbtether.spec import SessionSpec, format_walltime

COMMENT_PREFIX = "nbtether:"  # the job's comment names the shape it was made from

# Messages of SLURM clients that mean "the controller is not answering", not "no such job".
CONTROLLER_DOWN = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused"
    r"|Zero Bytes were transmitted|Rate limit exceeded|temporarily unable",
    re.IGNORECASE,
)


def output_path(instance: str, session: str, job_id: str = "%j") -> str:
    """The job's output file (Jupyter's log)."""
    return f"{rendezvous.session_dir(instance, session)}/slurm-{job_id}.out"


def _directives(spec: SessionSpec, name: str, output: str) -> list[str]:
    res = spec.resources
    options: list[tuple[str, object]] = [
        ("job-name", name),
        ("comment", f"{COMMENT_PREFIX}{spec.job_fingerprint()}"),
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


# The variables a running SLURM job announces itself with.
JOB_VARS = rendezvous.JobVars(job_id="$SLURM_JOB_ID", run="${SLURM_RESTART_COUNT:-0}",
                              node="$SLURMD_NODENAME")


def render_script(spec: SessionSpec, *, instance: str, session: str,
                  cluster: ClusterConfig | None = None) -> str:
    """The batch script for one job of a session, run in a login shell like the tutorial's.

    SLURM needs no site settings from the `cluster`'s config: its directives say it all.

    Every directive value is validated to a safe alphabet by the session file's model.
    """
    name = rendezvous.job_name(instance, session)
    return "\n".join([
        "#!/bin/bash -l",
        *_directives(spec, name, output_path(instance, session)),
        *rendezvous.script_body(spec, instance=instance, session=session, job=JOB_VARS),
    ])


ACCOUNTING_DELAY = 0.0  # sacct knows a job as soon as squeue forgets it (MinJobAge)
SUBMIT_COMMAND = "umask 077 && sbatch --parsable"  # the script comes on stdin; output is 0600
POLL_NAME = "squeue"
# `--local`: the jobs of the login node's own cluster, without asking for the federation
# first; that makes one call 2 RPCs (the user's jobs, the partitions) instead of 3.
# TZ=UTC: `%S` (the expected start) is printed in the login node's time zone otherwise.
POLL_COMMAND = ("TZ=UTC squeue --me --local --states=all --noheader "
                "--format='%i|%T|%r|%N|%L|%j|%S|%k'")


def final_command(job_ids: list[str]) -> str:
    """Final states of jobs that squeue no longer lists."""
    ids = ",".join(rendezvous.checked_ids(job_ids))
    return f"sacct -X -n -P -j {ids} -o JobIDRaw,JobName,State,NodeList"


def cancel_command(job_ids: list[str]) -> str:
    """Cancel jobs; a finished job is not an error."""
    return "scancel " + " ".join(rendezvous.checked_ids(job_ids))


def parse_submit(stdout: str) -> str:
    """The job id from `sbatch --parsable` (`123` or `123;cluster`)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    job_id = lines[-1].split(";", 1)[0].strip() if lines else ""
    if not job_id.isdigit():
        raise ValueError(f"unexpected sbatch output: {stdout!r}")
    return job_id


def submit_error(stderr: str) -> str:
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


def parse_poll(stdout: str, now: datetime) -> list[JobInfo]:
    """Rows of POLL_COMMAND's output, with time left turned into an end time."""
    jobs = []
    for line in stdout.splitlines():
        fields = line.strip().split("|", 7)
        if len(fields) < 6 or not fields[0].isdigit():
            continue
        job_id, state, reason, node, left, name = fields[:6]
        # Older formats (still running after an upgrade): no start, nor comment before it.
        start, comment = (fields[6], fields[7]) if len(fields) == 8 else \
            ("", fields[6] if len(fields) == 7 else "")
        time_left = parse_time_left(left)
        jobs.append(
            JobInfo(
                job_id=job_id,
                name=name,
                state=state,
                reason="" if reason == "None" else reason,
                node=node or None,
                ends_at=now + time_left if state == "RUNNING" and time_left else None,
                fingerprint=comment.removeprefix(COMMENT_PREFIX)
                if comment.startswith(COMMENT_PREFIX) else None,
                starts_at=parse_start(start) if state == "PENDING" else None,
            )
        )
    return jobs


def parse_start(text: str) -> datetime | None:
    """squeue's `%S` (`2026-01-05T09:30:00`, in the controller's time zone, which the poll
    sets to UTC), or None for `N/A` and anything else that is no time."""
    try:
        return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC)
    except ValueError:
        return None


def parse_final(stdout: str) -> list[JobInfo]:
    """Rows of final_command's output."""
    jobs = []
    for line in stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        job_id, name, state, node = fields[:4]
        jobs.append(JobInfo(job_id=job_id, name=name, state=state,
                            node=None if node in ("", "None assigned") else node))
    return jobs
