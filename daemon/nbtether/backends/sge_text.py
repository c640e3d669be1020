"""Everything Grid Engine-specific: directives, commands, and parsing their output. No I/O.

States are translated into SLURM's words (the daemon's vocabulary, `jobs.py`) by the table
`STATES`; resources into `#$` directives by `_directives`. Tested against Son of Grid
Engine 8.1.9 (Debian 12's `gridengine-*` packages).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

from nbtether.backends import rendezvous
from nbtether.config import ClusterConfig
from nbtether.jobs import JobInfo
from nbtether.spec import SessionSpec

# Messages of Grid Engine clients that mean "qmaster is not answering", not "no such job".
CONTROLLER_DOWN = re.compile(
    r"unable to contact qmaster|unable to send message to qmaster|can't connect to service"
    r"|commlib error|cell directory .* doesn't exist",
    re.IGNORECASE,
)

# The variables a running Grid Engine job announces itself with. RESTARTED is 1 once a job
# was rescheduled (node failure, `qmod -rj`), so its new node is announced afresh.
JOB_VARS = rendezvous.JobVars(job_id="$JOB_ID", run="${RESTARTED:-0}", node="$HOSTNAME")

# qstat's state letters, most telling first: the first letter found decides. `E` (error,
# e.g. `Eqw`) needs a person; `d` is being deleted; `h` held; `R` rescheduled; `s`/`S`/`T`
# suspended; `t` transferring to its node; `r` running; `qw` waiting.
STATES: list[tuple[str, str, str]] = [
    ("E", "FAILED", "error"),
    ("d", "COMPLETING", "being deleted"),
    ("h", "PENDING", "held"),
    ("s", "SUSPENDED", "suspended"),
    ("S", "SUSPENDED", "queue suspended"),
    ("T", "SUSPENDED", "suspended by threshold"),
    ("t", "CONFIGURING", "starting on its node"),
    ("r", "RUNNING", ""),
    ("R", "REQUEUED", "rescheduled"),
    ("q", "PENDING", "waiting"),
]

# qacct's `failed` codes that say how a job ended (sge_accounting(5), execd's exit codes).
TIMED_OUT = {37}  # "qmaster enforced h_rt, h_cpu, or h_vmem limit"
DELETED = {100}  # "assumedly after job": killed from outside, e.g. by qdel

SUBMIT_COMMAND = "umask 077 && qsub -terse"  # the script comes on stdin
POLL_NAME = "qstat"
# One qstat for all the user's jobs, with their requests (for h_rt); times in UTC.
POLL_COMMAND = 'TZ=UTC qstat -xml -r -u "$USER"'
# Accounting records reach qacct a little after the job left qstat (`flush_time`).
ACCOUNTING_DELAY = 60.0


def output_path(instance: str, session: str, job_id: str = "$JOB_ID") -> str:
    """The job's output file (Jupyter's log), relative to the home directory."""
    return f"{rendezvous.session_dir(instance, session)}/sge-{job_id}.out"


def unsupported(spec: SessionSpec, cluster: ClusterConfig) -> str | None:
    """Why a session file asks what Grid Engine cannot give, or None."""
    res = spec.resources
    if res.qos is not None:
        return "resources.qos: Grid Engine has no quality of service; remove it"
    if res.constraint is not None:
        return ("resources.constraint: Grid Engine has no node features like SLURM's; "
                "remove it or use a queue (resources.partition)")
    if res.reservation is not None and not res.reservation.isdigit():
        return ("resources.reservation: Grid Engine reservations are numbers "
                "(qrsub's advance reservation id)")
    if res.gpus and cluster.gpu_resource is None:
        return ("resources.gpus: this Grid Engine cluster defines no GPU resource; "
                "set gpu_resource for it in the config")
    return None


def _h_rt(value: timedelta) -> str:
    seconds = math.ceil(value.total_seconds())
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _per_slot(mem: str, slots: int) -> str:
    """SLURM's --mem is per job, Grid Engine's memory requests are per slot."""
    if slots == 1:
        return mem
    unit = mem[-1].upper() if mem[-1].isalpha() else "M"
    number = int(mem[:-1] if mem[-1].isalpha() else mem)
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
    return f"{math.ceil(number * scale / slots)}M"


def _directives(spec: SessionSpec, cluster: ClusterConfig, name: str, output: str) -> list[str]:
    res = spec.resources
    options: list[str | None] = [
        f"-N {name}",
        f"-o {output}",
        "-j y",
        "-S /bin/bash",
        "-r y",  # rerun after a node failure, like SLURM's requeue
        f"-l h_rt={_h_rt(res.time)}",
        f"-pe {cluster.parallel_environment} {res.cpus}" if res.cpus > 1 else None,
        f"-l {cluster.memory_resource}={_per_slot(res.mem, res.cpus)}" if res.mem else None,
        f"-q {res.partition}" if res.partition else None,
        f"-P {res.account}" if res.account else None,
        f"-ar {res.reservation}" if res.reservation else None,
        f"-l {cluster.gpu_resource}={res.gpus}" if res.gpus and cluster.gpu_resource else None,
    ]
    return [f"#$ {option}" for option in options if option]


def render_script(spec: SessionSpec, *, instance: str, session: str,
                  cluster: ClusterConfig) -> str:
    """The batch script for one job of a session, run in a login shell.

    Directive values are validated to a safe alphabet by the session file's and the
    config's models; `unsupported` has refused what Grid Engine has no word for.
    """
    name = rendezvous.job_name(instance, session)
    output = "$HOME/" + output_path(instance, session)
    return "\n".join([
        "#!/bin/bash -l",
        *_directives(spec, cluster, name, output),
        *rendezvous.script_body(spec, instance=instance, session=session, job=JOB_VARS),
    ])


def final_command(job_ids: list[str]) -> str:
    """The accounting record of a job that qstat no longer lists."""
    (job_id,) = rendezvous.checked_ids(job_ids)
    return f"qacct -j {job_id} 2>/dev/null; true"  # no record yet is not an error


def cancel_command(job_ids: list[str]) -> str:
    """Delete jobs; deleting a finished job only says that it does not exist."""
    return "qdel " + " ".join(rendezvous.checked_ids(job_ids))


def error_command(job_id: str) -> str:
    """Why a job is in an error state (qstat -j's `error reason`)."""
    (checked,) = rendezvous.checked_ids([job_id])
    return f"qstat -j {checked}"


def parse_submit(stdout: str) -> str:
    """The job id from `qsub -terse` (`123`, or `123.1-4:1` for an array)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    job_id = lines[-1].split(".", 1)[0].strip() if lines else ""
    if not job_id.isdigit():
        raise ValueError(f"unexpected qsub output: {stdout!r}")
    return job_id


def submit_error(stderr: str) -> str:
    """Grid Engine's own words for a rejected submission."""
    messages = [re.sub(r"^(?:qsub: )?(?:error: )?", "", line).strip()
                for line in stderr.splitlines() if line.strip() not in ("", "Exiting.")]
    return "; ".join(m for m in messages if m) or "qsub failed without a message"


def parse_error_reason(stdout: str) -> str:
    """The `error reason` lines of `qstat -j`, without their timestamp and pid."""
    reasons = []
    for line in stdout.splitlines():
        if line.startswith("error reason"):
            reason = line.split(":", 1)[1].strip()
            reasons.append(re.sub(r"^\S+ \S+ \[\d+:\d+\]: (?:error: )?", "", reason))
    return "; ".join(reasons) or "job in error state"


def classify(letters: str) -> tuple[str, str]:
    """A qstat state (`qw`, `Eqw`, `dr` …) in SLURM's words, with a reason."""
    for letter, state, reason in STATES:
        if letter in letters:
            return state, reason
    return letters.upper() or "UNKNOWN", ""


def parse_duration(text: str) -> timedelta | None:
    """A Grid Engine time: seconds (`3600`) or `[[HH:]MM:]SS`."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(part.isdigit() for part in parts):
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return timedelta(seconds=seconds)


def parse_poll(stdout: str, now: datetime) -> list[JobInfo]:
    """The jobs in POLL_COMMAND's XML, with the end of the walltime of running ones."""
    del now  # ends come from the start time, which qstat gives
    try:
        root = ElementTree.fromstring(stdout)  # noqa: S314 (qstat's own output, no DTD)
    except ElementTree.ParseError:
        return []
    jobs = []
    for element in root.iter("job_list"):
        job_id = element.findtext("JB_job_number", "")
        if not job_id.isdigit():
            continue
        letters = element.findtext("state", "")
        state, reason = classify(letters)
        if state == "FAILED":
            reason = letters  # `Eqw`: the backend adds qstat -j's error reason
        queue = element.findtext("queue_name") or ""
        node = queue.partition("@")[2] or None
        ends_at = None
        started = element.findtext("JAT_start_time")
        limit = next((parse_duration(request.text or "") for request in element.iter("hard_request")
                      if request.get("name") == "h_rt"), None)
        if state == "RUNNING" and started and limit:
            ends_at = datetime.fromisoformat(started).replace(tzinfo=UTC) + limit
        jobs.append(JobInfo(job_id=job_id, name=element.findtext("JB_name", ""), state=state,
                            reason=reason, node=node, ends_at=ends_at))
    return jobs


def _ran_out_of_time(fields: dict[str, str]) -> bool:
    """Killed at its h_rt: sites where execd, not qmaster, enforces it report `failed 100`."""
    limit = re.search(r"h_rt=([0-9:]+)", fields.get("category", ""))
    ran = re.fullmatch(r"(\d+)s", fields.get("ru_wallclock", "").strip())
    longest = parse_duration(limit[1]) if limit else None
    if ran is None or longest is None:
        return False
    return timedelta(seconds=int(ran[1])) >= longest


def parse_final(stdout: str) -> list[JobInfo]:
    """qacct's record: how the job ended, in SLURM's words."""
    fields: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        if key and value:
            fields.setdefault(key, value.strip())
    job_id = fields.get("jobnumber", "")
    if not job_id.isdigit():
        return []
    failed_text = fields.get("failed", "0")
    failed = int(failed_text.split(maxsplit=1)[0]) if failed_text[:1].isdigit() else -1
    exit_status = fields.get("exit_status", "0").split(maxsplit=1)[0]
    if failed in TIMED_OUT or (exit_status == "137" and _ran_out_of_time(fields)):
        state = "TIMEOUT"
    elif failed in DELETED:
        state = "CANCELLED"
    elif failed == 0 and exit_status == "0":
        state = "COMPLETED"
    else:
        state = "FAILED"
    node = fields.get("hostname")
    return [JobInfo(job_id=job_id, name=fields.get("jobname", ""), state=state,
                    reason=" ".join(failed_text.split()) if failed else "", node=node)]
