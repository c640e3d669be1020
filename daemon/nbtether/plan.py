"""The pure core: from what is wanted and what is seen, decide what to do. No I/O, no clock.

`plan(spec, record, seen, now)` returns the updated record, the actions to carry out in
order, and when to look again. Every decision of the daemon is made here, so that the
table of cases in tests/unit/test_plan.py is the specification of its behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nbtether.errors import NbtetherError, PermanentError, SubmissionRejected, TemporaryError
from nbtether.jobs import INTERRUPTED, Endpoint, JobInfo, JobState
from nbtether.spec import InvalidSpec, SessionSpec, Spec
from nbtether.state import Record

RECHECK = 30.0  # seconds between looks at a session that waits on nothing in particular
PROBE_AGAIN = 0.5  # the notebook was announced but does not answer yet
BACKOFF_BASE = 15.0  # failed starts are retried after 15 s, 30 s, 60 s, …
WARN_BEFORE = timedelta(minutes=10)  # warn this long before a walltime end without handover
# Switch to the successor this long before the walltime end that squeue's time left gives.
# SLURM kills at the end or later (its time-limit check runs every 30 s, OverTimeLimit adds
# minutes), and the estimate errs by about a second (`%L` counts whole seconds, the poll
# takes a moment); the rest is margin for the pass that switches to be done in time.
SWITCH_BEFORE = timedelta(seconds=5)
HANDOVER_LOOK = 5.0  # seconds between looks while both jobs run (is the old one still there?)
REPLACED_NOTICE = timedelta(minutes=10)  # how long status says the kernel was replaced


@dataclass(frozen=True)
class Activity:
    """What Jupyter says of its use: the kernels' and terminals' newest activity, and
    whether a kernel is computing. An open page that does nothing changes neither."""

    last: datetime | None  # None: no kernel and no terminal
    busy: bool


@dataclass(frozen=True)
class Submit:
    """Submit a new job (as the successor of the current one if `successor`)."""

    successor: bool = False


@dataclass(frozen=True)
class Cancel:
    """Cancel jobs; their end is confirmed by a later look (their announcement or squeue)."""

    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class Listen:
    """Serve the session on 127.0.0.1:port (moving the listener if it was elsewhere)."""

    port: int


@dataclass(frozen=True)
class Route:
    """Point the listener's new connections at an endpoint (None: hold them)."""

    endpoint: Endpoint | None


@dataclass(frozen=True)
class CarryKernels:
    """Start the kernels of the notebooks open on `old` on `new`, under the same ids."""

    old: Endpoint
    new: Endpoint


@dataclass(frozen=True)
class Sever:
    """Close the connections open to `endpoint`. Their pages reconnect, to the new route,
    before the old server's goodbye (its kernels' shutdown replies) can reach them."""

    endpoint: Endpoint


@dataclass(frozen=True)
class Unlisten:
    """Close the session's port."""


@dataclass(frozen=True)
class Forget:
    """Drop the record: the session is gone."""


@dataclass(frozen=True)
class Reconnect:
    """Log in to the cluster again now: a person may have fixed what blocked the login."""


Action = (Submit | Cancel | Listen | CarryKernels | Route | Sever | Unlisten | Forget
          | Reconnect)


@dataclass(frozen=True)
class SubmitFailed:
    """The last `Submit` failed; `plan()` decides what follows from the error's kind."""

    error: NbtetherError
    successor: bool = False


@dataclass(frozen=True)
class Seen:
    """What the daemon observed about one session just before planning."""

    problem: str | None = None  # the cluster cannot be observed (no connection, no squeue)
    blocked: bool = False  # the problem needs a person (host key, credentials)
    login: bool = False  # the login node asks for a code or password: `nbtether login`
    file_version: str = ""  # changes whenever the session file is written
    job: JobInfo | None = None  # the record's job; None when SLURM no longer knows it
    successor: JobInfo | None = None
    endpoint: Endpoint | None = None  # announced by the record's job
    successor_endpoint: Endpoint | None = None
    answering: bool = False  # the job's notebook refused a request without the token, then
    successor_answering: bool = False  # accepted it
    unprotected: bool = False  # the job's notebook answered a request without the token
    successor_unprotected: bool = False
    strays: tuple[JobInfo, ...] = ()  # queued/running jobs of this session the record lacks
    unconfirmed: bool = False  # an sbatch may have made a job that no poll has shown yet
    listening: int | None = None
    routed: Endpoint | None = None
    port_error: str | None = None  # the last Listen failed: why, and who holds the port
    submit_failed: SubmitFailed | None = None  # the last Submit failed
    demanded: bool = False  # a request reached the port while no notebook answered
    activity: Activity | None = None  # asked of a ready job's Jupyter when idle_stop is set


@dataclass
class Plan:
    """The outcome of planning: the new record, what to do, and when to look again."""

    record: Record | None
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None


def attempt_key(spec: SessionSpec, seen: Seen) -> str:
    """What a failed session waits for to change: the job's shape, or the file being saved."""
    return f"{spec.job_fingerprint()}@{seen.file_version}"


def _active(job: JobInfo | None) -> bool:
    return job is not None and job.kind is not JobState.ENDED


def plan(spec: Spec | None, record: Record | None, seen: Seen, now: datetime) -> Plan:
    """Decide the next steps for one session."""
    if spec is None:
        return _plan_removal(record, seen) if record else Plan(None)
    assert record is not None, "the caller creates a record (with its token) for a new file"
    record = record.model_copy()  # its fields are immutable values
    if isinstance(spec, InvalidSpec):
        record.phase, record.message = "invalid", spec.reason
        return Plan(record, _retry_login(record, seen))
    return _plan_session(spec, record, seen, now)


def _retry_login(record: Record, seen: Seen) -> list[Action]:
    """Any change to the session file, whatever it now says (or its removal), retries a
    login that needs a person: they may have fixed it, and the docs say to touch the file."""
    if not seen.blocked:
        return []
    if record.file_version is None and record.login_retried_for is None:
        record.login_retried_for = seen.file_version  # a new session: nothing was saved since
        return []
    if seen.file_version in (record.file_version, record.login_retried_for):
        return []
    # Not noted as the file version planned on: a save made after a job was cancelled
    # must still count once the cluster can be seen.
    record.login_retried_for = seen.file_version
    return [Reconnect()]


def _plan_removal(record: Record, seen: Seen) -> Plan:
    record = record.model_copy()  # its fields are immutable values
    record.phase = "stopping"
    actions: list[Action] = [Unlisten()] if seen.listening is not None else []
    if seen.problem:
        actions += _retry_login(record, seen)
        record.message = f"waiting for the cluster to cancel the job: {seen.problem}"
        return Plan(record, actions, RECHECK)
    jobs = list(dict.fromkeys(job.job_id for job in (seen.job, seen.successor, *seen.strays)
                              if job is not None and _active(job)))
    if jobs:
        record.message = "cancelling job " + ", ".join(jobs)
        return Plan(record, [*actions, Cancel(tuple(jobs))], RECHECK)  # the end wakes it
    if seen.unconfirmed:
        # sbatch may have made a job that squeue does not list yet: forgetting the session
        # now would leave that job running, unknown to anyone.
        record.message = "waiting for squeue to show whether the last sbatch made a job"
        return Plan(record, actions, RECHECK)
    return Plan(None, [*actions, Forget()])


def _plan_session(spec: SessionSpec, record: Record, seen: Seen, now: datetime) -> Plan:
    fingerprint = spec.job_fingerprint()
    record.app = spec.jupyter.app
    out = Plan(record)
    if seen.port_error:
        # Until the port is ours nothing else happens: no URL, no job changes. A job the
        # record lacks is still taken in (or cancelled), so that none is left unknown.
        record.local_port = spec.local_port
        record.phase = "failed"
        record.message = f"{seen.port_error}; trying again every {int(RECHECK)} s " \
            "and whenever the file changes"
        _take_strays(record, seen, out)
        out.requeue_after = RECHECK
        return out
    if seen.listening != spec.local_port:
        # Alone, so that a port that cannot be had leaves the record and the jobs as they are.
        return Plan(record, [Listen(spec.local_port)], 0.0)
    record.local_port = spec.local_port
    changed = record.file_version is not None and seen.file_version != record.file_version
    if record.file_version is None and record.job_id is None and spec.start == "on_demand":
        record.asleep = True  # a new session: no job until someone wants one
    # Someone asked for it, or the file now says `always` (saved since the idle stop, or a
    # session never started whose file no longer says `on_demand`).
    if record.asleep and (seen.demanded or (spec.start == "always" and (
            changed or record.stopped_job_id is None))):
        record.asleep = False
    failed = seen.submit_failed  # whatever else is seen, a failed sbatch sets the next try
    if failed is not None and failed.successor:
        record.no_handover_for, record.handover_error = record.job_id, _said(failed.error)
    elif failed is not None and record.job_id is None:
        if isinstance(failed.error, PermanentError):
            return _give_up(out, record, attempt_key(spec, seen), _said(failed.error))
        delay = failed.error.delay if isinstance(failed.error, TemporaryError) else RECHECK
        record.retry_at = now + timedelta(seconds=delay)
        record.last_end = f"submission failed: {failed.error}"
    if seen.login:
        # Jobs are left as they are: the cluster is not gone, it waits for a person.
        record.phase, record.message = "login", seen.problem or "login needed"
        out.requeue_after = RECHECK
        return out
    if seen.problem:
        if seen.blocked:
            record.phase = "failed"  # the URL cannot work until a person fixes the login
            out.actions += _retry_login(record, seen)
        record.message = f"cluster unreachable: {seen.problem}"
        out.requeue_after = RECHECK
        return out
    # Only a pass that can act on a saved file takes note of it.
    record.file_version = seen.file_version

    if record.asleep:
        return _asleep(spec, record, seen, out)
    job = _take_strays(record, seen, out)

    if record.given_up_on is not None and not _active(job):
        if record.given_up_on == attempt_key(spec, seen):
            record.phase = "failed"
            return out
        # The file was saved since: start afresh, as if the failed job had never been.
        record.job_id = record.successor_id = None
        record.failures, record.retry_at = 0, None
    record.given_up_on = None

    if record.job_id and record.fingerprint != fingerprint and _active(job):
        # Resources or environment changed: this job no longer matches the file.
        out.actions += [Route(None), Cancel(_jobs_of(record))]
        record.job_id = record.successor_id = None
        record.endpoint, record.ends_at, record.failures = None, None, 0
        job = None
        return _submit(out, record, fingerprint, now)

    if record.job_id is None:
        return _submit(out, record, fingerprint, now)
    if job is None or job.kind is JobState.ENDED:
        return _after_end(spec, record, job, seen, fingerprint, now, out, saved=changed)
    return _follow_job(spec, record, job, seen, fingerprint, now, out)


def _take_strays(record: Record, seen: Seen, out: Plan) -> JobInfo | None:
    """Adopt the newest job of the session that the record lacks and cancel the others;
    returns the record's job."""
    job = seen.job
    # A job stopped for idleness may still be ending: cancelled again, never adopted back.
    known = {record.job_id, record.successor_id, record.stopped_job_id}
    strays = [stray for stray in seen.strays if stray.job_id not in known]
    strays += [stray for stray in seen.strays if stray.job_id == record.stopped_job_id]
    adoptable = [stray for stray in strays if stray.job_id != record.stopped_job_id]
    if adoptable and not _active(job) and record.successor_id is None and not record.asleep:
        # A job we submitted but never recorded (the daemon died, or the connection dropped,
        # right after sbatch): adopt the newest instead of submitting another. Its own
        # comment says what shape it has; where the scheduler keeps no comment, it has the
        # shape the record meant to submit.
        newest = max(adoptable, key=lambda stray: int(stray.job_id))
        strays.remove(newest)
        record.job_id, record.endpoint = newest.job_id, None
        record.fingerprint = newest.fingerprint or record.fingerprint
        record.submitted_at = None
        job = newest
    if strays:
        out.actions.append(Cancel(tuple(stray.job_id for stray in strays)))
    return job


def _asleep(spec: SessionSpec, record: Record, seen: Seen, out: Plan) -> Plan:
    """No job on purpose: whatever of the session still runs is cancelled; the port waits."""
    record.phase = "idle"
    record.message = _asleep_message(spec, record)
    if seen.routed is not None:
        out.actions.append(Route(None))
    running = tuple(dict.fromkeys(job.job_id for job in (seen.job, seen.successor, *seen.strays)
                                  if job is not None and _active(job)))
    if running:
        out.actions.append(Cancel(running))
        out.requeue_after = RECHECK  # until they are gone
    return out


def _asleep_message(spec: SessionSpec, record: Record) -> str:
    where = f"127.0.0.1:{spec.local_port}"
    if record.stopped_job_id and record.last_end.startswith(f"job {record.stopped_job_id} "):
        return f"{record.last_end}; the next connection to {where} starts a new job"
    return f"start: on_demand: no job until something connects to {where}"


def _stop_idle(spec: SessionSpec, record: Record, idle: timedelta, now: datetime,
               out: Plan) -> Plan:
    """Cancel the job of a notebook nobody uses; the next connection starts a new one."""
    assert spec.idle_stop is not None
    out.actions += [Route(None), Cancel(_jobs_of(record))]
    record.stopped_job_id = record.job_id
    record.last_end = (f"job {record.job_id} stopped at {now:%H:%M} UTC after "
                       f"{_duration(idle)} idle (idle_stop: {_duration(spec.idle_stop)})")
    record.job_id = record.successor_id = None
    record.submitted_at = record.successor_submitted_at = None
    record.endpoint = record.ends_at = record.ready_since = None
    record.asleep = True
    record.phase = "idle"
    record.message = _asleep_message(spec, record)
    out.requeue_after = RECHECK  # to see the job end
    return out


def _idle_for(spec: SessionSpec, record: Record, seen: Seen, now: datetime) -> timedelta | None:
    """How long Jupyter has been unused, when that is known and matters (idle_stop)."""
    activity = seen.activity
    if spec.idle_stop is None or activity is None or activity.busy or record.successor_id:
        return None
    since = max(moment for moment in (record.ready_since, activity.last) if moment is not None)
    return now - since


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m" if seconds % 60 == 0 and seconds else f"{seconds}s"


def _said(error: NbtetherError) -> str:
    return f"rejected by SLURM: {error}" if isinstance(error, SubmissionRejected) else str(error)


def _jobs_of(record: Record) -> tuple[str, ...]:
    return tuple(job for job in (record.job_id, record.successor_id) if job)


def _submit(out: Plan, record: Record, fingerprint: str, now: datetime) -> Plan:
    """Submit a job (last among the actions, so a failed sbatch undoes nothing)."""
    record.job_id, record.endpoint, record.ends_at = None, None, None
    record.successor_id = record.ready_since = record.starts_at = None
    if record.retry_at and record.retry_at > now:
        wait = (record.retry_at - now).total_seconds()
        record.phase = "pending"
        record.message = f"{record.last_end}; retrying in {int(wait)} s".lstrip("; ")
        out.requeue_after = wait
        return out
    record.retry_at, record.fingerprint = None, fingerprint
    record.phase, record.message = "pending", "submitting"
    if Route(None) not in out.actions:
        out.actions.append(Route(None))
    out.actions.append(Submit())
    out.requeue_after = 0.0
    return out


def _after_end(
    spec: SessionSpec,
    record: Record,
    job: JobInfo | None,
    seen: Seen,
    fingerprint: str,
    now: datetime,
    out: Plan,
    *,
    saved: bool,
) -> Plan:
    state = job.base_state if job else "GONE"
    said = job.state if job else "gone from squeue and sacct"
    if record.successor_id and _active(seen.successor) and _successor_ready(seen):
        return _switch(record, seen, now, out, cancel=False)  # it ended before the deadline
    if record.successor_id and _active(seen.successor):
        # The old job ended first: the successor simply becomes the job.
        record.job_id, record.successor_id = record.successor_id, None
        record.submitted_at, record.successor_submitted_at = record.successor_submitted_at, None
        record.endpoint, record.ends_at, record.ready_since = None, None, None
        record.restarts += 1
        record.replaced_at = now
        record.phase, record.message = "pending", f"previous job ended ({said})"
        out.actions.append(Route(None))
        out.requeue_after = 0.0
        return out
    # A successor that ended too (or was forgotten) is no successor: start afresh.
    record.successor_id = record.successor_submitted_at = None
    policy = spec.restart.policy
    out.actions.append(Route(None))
    if state in INTERRUPTED or state == "GONE":
        if policy == "never":
            return _give_up(out, record, attempt_key(spec, seen),
                            f"job ended ({said}); restart policy is never")
        record.last_end = f"job {record.job_id} ended ({said})"
        record.restarts += 1
        return _submit(out, record, fingerprint, now)
    if state == "CANCELLED":
        if not saved:
            return _give_up(out, record, attempt_key(spec, seen),
                            f"job {record.job_id} was {said.lower()} outside nbtether")
        record.last_end = f"job {record.job_id} ended ({said})"  # a file saved since: go on
        record.restarts += 1
        return _submit(out, record, fingerprint, now)
    if policy != "always":
        return _give_up(out, record, attempt_key(spec, seen),
                        f"job {record.job_id} ended ({said}); restart policy is {policy}")
    record.failures += 1
    if record.failures >= spec.restart.max_failures:
        return _give_up(out, record, attempt_key(spec, seen),
                        f"job ended ({said}) {record.failures} times in a row; "
                        "see `nbtether logs` and edit the file to try again")
    delay = BACKOFF_BASE * 2 ** (record.failures - 1)
    record.retry_at = now + timedelta(seconds=delay)
    record.last_end = f"job {record.job_id} ended ({said})"
    record.restarts += 1
    return _submit(out, record, fingerprint, now)


def _give_up(out: Plan, record: Record, attempt: str, message: str) -> Plan:
    record.phase, record.message, record.given_up_on = "failed", message, attempt
    record.endpoint = record.ends_at = None
    out.requeue_after = None
    return out


def _follow_job(
    spec: SessionSpec,
    record: Record,
    job: JobInfo,
    seen: Seen,
    fingerprint: str,
    now: datetime,
    out: Plan,
) -> Plan:
    out.requeue_after = RECHECK
    if job.ends_at:
        record.ends_at = job.ends_at
    kind = job.kind
    if kind is JobState.UNKNOWN:
        record.message = f"cannot see job {job.job_id}: {job.reason or job.state}"
        return out
    if kind in (JobState.WAITING, JobState.HELD, JobState.PAUSED, JobState.ENDING):
        if record.endpoint or seen.routed:
            out.actions.append(Route(None))  # requeued, suspended or ending: the address is stale
        record.endpoint = None
        record.phase = "pending"
        reason = job.reason or job.base_state.lower()
        if kind is JobState.ENDING:
            record.message = f"job {job.job_id} is ending ({job.base_state}); " \
                "a new job follows once it has ended"
        elif kind is JobState.WAITING:
            record.message = f"queued: {reason}"
            record.starts_at = job.starts_at
        else:
            record.message = f"{job.base_state.lower()}: {reason}"
        return out
    if record.successor_id and record.endpoint is not None and _successor_ready(seen) and (
            seen.endpoint != record.endpoint or not seen.answering):
        # The serving job announced its end or stopped answering: its end is here.
        return _switch(record, seen, now, out)
    if seen.endpoint is None:
        record.phase, record.message = "starting", f"job running on {job.node or '?'}; " \
            "waiting for Jupyter to start"
        return out
    if seen.unprotected:
        out.actions += [Route(None), Cancel((job.job_id,))]
        return _give_up(out, record, attempt_key(spec, seen), _unprotected(job.node))
    if not seen.answering:
        record.phase, record.message = "starting", "Jupyter announced; waiting for it to answer"
        out.requeue_after = PROBE_AGAIN
        return out
    record.endpoint, record.failures = seen.endpoint, 0
    if seen.routed != seen.endpoint:
        out.actions.append(Route(seen.endpoint))
    record.phase, record.message = "ready", _time_left(record, now)
    record.starts_at, record.last_end = None, ""
    record.ready_since = record.ready_since or now
    if record.replaced_at is not None and now - record.replaced_at < REPLACED_NOTICE:
        record.message = f"{_replaced(record, now)}; {record.message}"
    idle = _idle_for(spec, record, seen, now)
    if idle is not None and spec.idle_stop is not None:
        if idle >= spec.idle_stop:
            return _stop_idle(spec, record, idle, now, out)
        out = _handover(spec, record, seen, now, out)
        if out.requeue_after is not None:  # look again when the idle time would be up
            out.requeue_after = min(out.requeue_after,
                                    max(PROBE_AGAIN, (spec.idle_stop - idle).total_seconds()))
        return out
    return _handover(spec, record, seen, now, out)


def _handover(spec: SessionSpec, record: Record, seen: Seen, now: datetime, out: Plan) -> Plan:
    lead, policy = spec.restart.handover, spec.restart.policy
    if record.ends_at is None:
        return out
    possible = policy != "never" and lead and lead < spec.resources.time
    if not possible or record.no_handover_for == record.job_id:
        left = record.ends_at - now
        if record.no_handover_for == record.job_id and record.handover_error:
            record.message = f"{_time_left(record, now)}; no successor " \
                f"({record.handover_error}); a new job is submitted at walltime"
        if left <= max(lead, WARN_BEFORE):
            then = "the notebook stops then" if policy == "never" else \
                "a new job is submitted then, at the same URL"
            record.message = f"walltime ends in {int(left.total_seconds()) // 60} min; {then}"
        return out
    starts_at = record.ends_at - lead
    if now < starts_at and record.successor_id is None:
        out.requeue_after = min(RECHECK, (starts_at - now).total_seconds())
        return out
    successor = seen.successor
    if record.successor_id is None:
        record.phase = "handover"
        record.message = (f"walltime ends {_within(record.ends_at - now)}: the kernel stops "
                          "then, save your notebooks; starting the successor job for the same URL")
        out.actions.append(Submit(successor=True))
        out.requeue_after = 0.0
        return out
    if successor is None or successor.kind is JobState.ENDED:
        # Fall back to resubmitting when the walltime ends; one handover try per job.
        said = successor.state if successor else "gone from squeue and sacct"
        record.successor_id = record.successor_submitted_at = None
        record.no_handover_for, record.handover_error = record.job_id, f"it ended: {said}"
        record.phase = "ready"
        record.message = f"successor job ended ({said}); will resubmit at walltime"
        return out
    if seen.successor_endpoint and seen.successor_unprotected:
        out.actions.append(Cancel((record.successor_id,)))
        record.successor_id, record.no_handover_for = None, record.job_id
        record.phase = "ready"
        node = successor.node if successor else None
        record.message = f"successor job not used: {_unprotected(node)}"
        return out
    record.phase = "handover"
    # Make before break, break at the end: the successor waits, unrouted, until the old job
    # ends, so open pages keep their kernel and talk to one server only.
    switch_at = record.ends_at - SWITCH_BEFORE
    if _successor_ready(seen) and now >= switch_at:
        return _switch(record, seen, now, out)
    stops = f"walltime of job {record.job_id} ends {_within(record.ends_at - now)}: " \
        "the kernel stops then, save your notebooks"
    if _successor_ready(seen):
        record.message = f"{stops}; successor job {record.successor_id} is ready to take over"
        out.requeue_after = max(0.0, min(HANDOVER_LOOK, (switch_at - now).total_seconds()))
        return out
    state = successor.state.lower()
    record.message = f"{stops}; successor job {record.successor_id} {state}"
    # Never less than PROBE_AGAIN: past the switch time (a laptop that slept) a zero or
    # negative wait would plan this session again and again without pause.
    out.requeue_after = PROBE_AGAIN if seen.successor_endpoint else \
        max(PROBE_AGAIN, min(HANDOVER_LOOK, (switch_at - now).total_seconds()))
    return out


def _unprotected(node: str | None) -> str:
    return (f"Jupyter on {node or '?'} answers without the token, so anyone who reaches its "
            "port gets in: your Jupyter config disables the token (e.g. "
            "c.IdentityProvider.token = '' or a custom identity provider); the job was cancelled. "
            "Fix the config, then touch the session file")


def _successor_ready(seen: Seen) -> bool:
    return seen.successor_endpoint is not None and seen.successor_answering


def _switch(record: Record, seen: Seen, now: datetime, out: Plan, cancel: bool = True) -> Plan:
    """Route to the successor, then end the old job (unless it ended); its kernel goes too.

    While the old server still answers, the notebooks open on it get their kernel ids on
    the successor first, so their pages reconnect to a kernel there. Their connections to
    the old server are closed before it is told to stop: JupyterLab takes a kernel's
    shutdown reply, which the old server would send them, as the end of its kernel."""
    old, new = record.job_id, seen.successor_endpoint
    if cancel and seen.answering and record.endpoint is not None and new is not None:
        out.actions.append(CarryKernels(record.endpoint, new))
    out.actions.append(Route(new))
    if cancel and record.endpoint is not None:
        out.actions.append(Sever(record.endpoint))
    if cancel and old:
        out.actions.append(Cancel((old,)))
    record.job_id, record.successor_id = record.successor_id, None
    record.submitted_at, record.successor_submitted_at = record.successor_submitted_at, None
    record.endpoint, record.ends_at = seen.successor_endpoint, None
    record.ready_since = now
    record.restarts += 1
    record.replaced_at = now
    record.phase, record.message = "ready", _replaced(record, now)
    out.requeue_after = 0.0
    return out


def _within(left: timedelta) -> str:
    minutes = int(left.total_seconds()) // 60
    return f"in {minutes} min" if minutes > 0 else "in less than a minute"


def _replaced(record: Record, now: datetime) -> str:
    ago = int((now - record.replaced_at).total_seconds()) // 60 if record.replaced_at else 0
    when = "just now" if ago == 0 else f"{ago} min ago"
    return (f"kernel replaced {when} (job {record.job_id} took over at the walltime end): "
            "variables are reset, saved files are kept")


def _time_left(record: Record, now: datetime) -> str:
    if record.ends_at is None:
        return "running"
    left = max(0, int((record.ends_at - now).total_seconds()))
    return f"{left // 3600}h{left % 3600 // 60:02d}m left"
