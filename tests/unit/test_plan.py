"""plan() as a table: (spec, record, seen) → actions and the phase that status shows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nbtether.errors import SubmissionRejected, SubmissionUnconfirmed
from nbtether.jobs import Endpoint, JobInfo
from nbtether.plan import (
    REPLACED_NOTICE,
    SWITCH_BEFORE,
    Cancel,
    CarryKernels,
    Forget,
    Listen,
    Reconnect,
    Route,
    Seen,
    Sever,
    Submit,
    SubmitFailed,
    Unlisten,
    plan,
)
from nbtether.spec import InvalidSpec, SessionSpec
from nbtether.state import Record

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EP = Endpoint(node="c1", address="127.0.0.2", port=40000)
EP2 = Endpoint(node="c2", address="127.0.0.3", port=40001)
LOGIN = "login.example.org asks for a password or one-time code; run `nbtether login hpc`"


def make_spec(**overrides: Any) -> SessionSpec:
    data: dict[str, Any] = {"cluster": "hpc", "local_port": 8888,
                            "resources": {"time": "02:00:00"}}
    data.update(overrides)
    return SessionSpec.model_validate(data)


SPEC = make_spec()


def make_record(**fields: Any) -> Record:
    record = Record(name="nb", cluster="hpc", token="t" * 48, local_port=8888)
    if "job_id" in fields and "fingerprint" not in fields:
        fields["fingerprint"] = SPEC.job_fingerprint()
    return record.model_copy(update=fields)


def job(state: str, job_id: str = "100", **fields: Any) -> JobInfo:
    return JobInfo(job_id=job_id, name="nbtether-abcd-nb", state=state, **fields)


def seen(**fields: Any) -> Seen:
    fields.setdefault("listening", 8888)
    return Seen(**fields)


CASES = [
    # (id, spec, record, seen, expected actions, expected phase)
    ("new file listens first, alone", SPEC, make_record(), seen(listening=None),
     [Listen(8888)], "pending"),
    ("new file with its port submits", SPEC, make_record(), seen(),
     [Route(None), Submit()], "pending"),
    ("queued job shows its reason", SPEC, make_record(job_id="100"),
     seen(job=job("PENDING", reason="Resources")), [], "pending"),
    ("running without announcement is starting", SPEC, make_record(job_id="100"),
     seen(job=job("RUNNING", node="c1")), [], "starting"),
    ("announced but not answering is starting", SPEC, make_record(job_id="100"),
     seen(job=job("RUNNING"), endpoint=EP), [], "starting"),
    ("answering is ready and routed", SPEC, make_record(job_id="100"),
     seen(job=job("RUNNING"), endpoint=EP, answering=True), [Route(EP)], "ready"),
    ("ready and routed needs nothing", SPEC, make_record(job_id="100", phase="ready"),
     seen(job=job("RUNNING"), endpoint=EP, answering=True, routed=EP), [], "ready"),
    ("unknown state keeps everything", SPEC, make_record(job_id="100", phase="ready"),
     seen(job=job("SOMETHING_NEW"), routed=EP), [], "ready"),
    ("controller down keeps everything", SPEC, make_record(job_id="100", phase="ready"),
     seen(problem="Unable to contact slurm controller", routed=EP), [], "ready"),
    ("a login to give leaves the running job alone", SPEC,
     make_record(job_id="100", phase="ready", endpoint=EP),
     seen(problem=LOGIN, blocked=True, login=True, routed=EP), [], "login"),
    ("a new file on a cluster waiting for a login listens first", SPEC, make_record(),
     seen(listening=None, problem=LOGIN, blocked=True, login=True), [Listen(8888)], "pending"),
    ("a new file on a cluster waiting for a login submits nothing", SPEC, make_record(),
     seen(problem=LOGIN, blocked=True, login=True), [], "login"),
    ("timeout resubmits", SPEC, make_record(job_id="100", phase="ready"),
     seen(job=job("TIMEOUT"), routed=EP), [Route(None), Submit()], "pending"),
    ("node failure resubmits", SPEC, make_record(job_id="100", phase="ready"),
     seen(job=job("NODE_FAIL")), [Route(None), Submit()], "pending"),
    ("requeued job is waited for, not duplicated", SPEC,
     make_record(job_id="100", phase="ready", endpoint=EP),
     seen(job=job("PENDING", reason="BeginTime"), routed=EP), [Route(None)], "pending"),
    ("cancelled by someone else is not fought", SPEC, make_record(job_id="100"),
     seen(job=job("CANCELLED by 1001")), [Route(None)], "failed"),
    ("timeout under policy never gives up", make_spec(restart={"policy": "never"}),
     make_record(job_id="100", fingerprint=make_spec(restart={"policy": "never"})
                 .job_fingerprint()),
     seen(job=job("TIMEOUT")), [Route(None)], "failed"),
    ("failure under on-timeout gives up", make_spec(restart={"policy": "on-timeout"}),
     make_record(job_id="100", fingerprint=make_spec(restart={"policy": "on-timeout"})
                 .job_fingerprint()),
     seen(job=job("FAILED")), [Route(None)], "failed"),
    ("edited resources replace the job", make_spec(resources={"time": "01:00:00"}),
     make_record(job_id="100", phase="ready"), seen(job=job("RUNNING"), endpoint=EP),
     [Route(None), Cancel(("100",)), Submit()], "pending"),
    ("edited port moves the listener, keeps the job", make_spec(local_port=9999),
     make_record(job_id="100", phase="ready"),
     seen(job=job("RUNNING"), endpoint=EP, answering=True, routed=EP), [Listen(9999)], "ready"),
    ("invalid file leaves a running job alone", InvalidSpec("resources.mem: bad"),
     make_record(job_id="100", phase="ready"), seen(job=job("RUNNING"), routed=EP),
     [], "invalid"),
    ("a stray job is adopted instead of a new one", SPEC, make_record(),
     seen(strays=(job("RUNNING", "101", fingerprint=SPEC.job_fingerprint()),)), [], "starting"),
    ("only the newest stray is adopted", SPEC, make_record(),
     seen(strays=(job("RUNNING", "101", fingerprint=SPEC.job_fingerprint()),
                  job("PENDING", "102", fingerprint=SPEC.job_fingerprint()))),
     [Cancel(("101",))], "pending"),
    ("a stray made from an older file is adopted, then replaced", SPEC, make_record(),
     seen(strays=(job("RUNNING", "101", fingerprint="older"),)),
     [Route(None), Cancel(("101",)), Submit()], "pending"),
    ("a stray that does not say its shape is replaced", SPEC, make_record(),
     seen(strays=(job("RUNNING", "101"),)), [Route(None), Cancel(("101",)), Submit()],
     "pending"),
    ("a stray that does not say its shape has the one its record meant", SPEC,
     make_record(fingerprint=SPEC.job_fingerprint()),
     seen(strays=(job("RUNNING", "101"),)), [], "starting"),
    ("rejected spec stays failed until the file is saved again", SPEC,
     make_record(phase="failed", given_up_on=f"{SPEC.job_fingerprint()}@1"),
     seen(file_version="1"), [], "failed"),
    ("saving the file again retries a failed session", SPEC,
     make_record(phase="failed", given_up_on=f"{SPEC.job_fingerprint()}@1"),
     seen(file_version="2"), [Route(None), Submit()], "pending"),
    ("a refused login fails the session but keeps its job", SPEC,
     make_record(job_id="100", phase="ready"),
     seen(problem="host key of hpc is unknown", blocked=True, routed=EP), [], "failed"),
    ("a notebook that answers without the token is cancelled, never served", SPEC,
     make_record(job_id="100"), seen(job=job("RUNNING", node="c1"), endpoint=EP,
                                     unprotected=True),
     [Route(None), Cancel(("100",))], "failed"),
    ("port in use is failed, nothing submitted", SPEC, make_record(),
     seen(listening=None, port_error="local_port: 127.0.0.1:8888 is not free"),
     [], "failed"),
]


@pytest.mark.parametrize(("spec", "record", "observed", "actions", "phase"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_plan_table(spec: Any, record: Record, observed: Seen, actions: list[Any],
                    phase: str) -> None:
    """Each row: the actions and the phase follow from the spec, record and observation."""
    outcome = plan(spec, record, observed, NOW)
    assert outcome.actions == actions
    assert outcome.record is not None
    assert outcome.record.phase == phase


def test_deleted_file_cancels_then_forgets() -> None:
    """Deleting the file cancels the job, and only a confirmed end forgets the session."""
    record = make_record(job_id="100", phase="ready")
    first = plan(None, record, seen(job=job("RUNNING")), NOW)
    assert first.actions == [Unlisten(), Cancel(("100",))]
    assert first.record is not None and first.record.phase == "stopping"
    second = plan(None, first.record, seen(listening=None, job=job("CANCELLED")), NOW)
    assert second.actions == [Forget()]
    assert second.record is None


def test_deleted_file_waits_for_squeue_after_a_lost_submission_answer() -> None:
    """sbatch's answer was lost, then the file was deleted: the record stays until a poll
    could show the job, which is then cancelled; only then is the session forgotten."""
    record = make_record(phase="pending")
    waiting = plan(None, record, seen(listening=None, unconfirmed=True), NOW)
    assert waiting.actions == [] and waiting.record is not None
    assert "squeue" in waiting.record.message and waiting.requeue_after == 30.0
    shown = seen(listening=None, strays=(job("PENDING", "101"),))
    assert plan(None, waiting.record, shown, NOW).actions == [Cancel(("101",))]
    assert plan(None, waiting.record, seen(listening=None), NOW).actions == [Forget()]


def test_deleted_file_waits_for_an_unreachable_cluster() -> None:
    """A deletion during an outage is remembered and retried, never forgotten unconfirmed."""
    outcome = plan(None, make_record(job_id="100"), seen(problem="connection lost"), NOW)
    assert outcome.record is not None and outcome.record.phase == "stopping"
    assert Forget() not in outcome.actions and outcome.requeue_after


def test_resubmission_counts_restarts() -> None:
    """A resubmission after walltime counts in `restarts`."""
    outcome = plan(SPEC, make_record(job_id="100", restarts=2), seen(job=job("TIMEOUT")), NOW)
    assert outcome.record is not None and outcome.record.restarts == 3


def test_repeated_failures_back_off_then_give_up() -> None:
    """FAILED jobs are retried later and later, then the session fails with the reason."""
    record = make_record(job_id="100")
    first = plan(SPEC, record, seen(job=job("FAILED")), NOW)
    assert first.record is not None
    assert Submit() not in first.actions
    assert first.record.retry_at == NOW + timedelta(seconds=15)
    third = plan(SPEC, make_record(job_id="100", failures=2), seen(job=job("OUT_OF_MEMORY")), NOW)
    assert third.record is not None and third.record.phase == "failed"
    assert "OUT_OF_MEMORY" in third.record.message


def test_backoff_expiry_submits() -> None:
    """Once the backoff time has passed, the session is submitted again."""
    record = make_record(retry_at=NOW - timedelta(seconds=1))
    assert Submit() in plan(SPEC, record, seen(), NOW).actions


def test_handover_submits_successor_before_walltime() -> None:
    """Within `handover` of the walltime end, a successor job is submitted."""
    spec = make_spec(restart={"handover": "10m"})
    record = make_record(job_id="100", phase="ready", fingerprint=spec.job_fingerprint())
    running = job("RUNNING", ends_at=NOW + timedelta(minutes=5))
    outcome = plan(spec, record, seen(job=running, endpoint=EP, answering=True, routed=EP), NOW)
    assert Submit(successor=True) in outcome.actions
    assert outcome.record is not None and outcome.record.phase == "handover"


HANDOVER = make_spec(restart={"handover": "10m"})


def both_running(left: timedelta, **fields: Any) -> Seen:
    """The old job serving with `left` until its walltime end, and a ready successor."""
    fields = {"job": job("RUNNING", ends_at=NOW + left), "endpoint": EP, "answering": True,
              "routed": EP, "successor": job("RUNNING", "101"), "successor_endpoint": EP2,
              "successor_answering": True, **fields}
    return seen(**fields)


def in_handover(**fields: Any) -> Record:
    """A record whose job 100 serves at EP while successor 101 was submitted."""
    return make_record(job_id="100", successor_id="101", phase="handover", endpoint=EP,
                       fingerprint=HANDOVER.job_fingerprint(), **fields)


def test_ready_successor_waits_unrouted_while_the_old_job_serves() -> None:
    """A successor that answers minutes before the end gets no route; the old job keeps serving."""
    outcome = plan(HANDOVER, in_handover(), both_running(timedelta(minutes=3)), NOW)
    assert outcome.actions == []
    assert outcome.record is not None
    assert (outcome.record.phase, outcome.record.job_id) == ("handover", "100")
    assert outcome.record.message == ("walltime of job 100 ends in 3 min: the kernel stops "
                                      "then, save your notebooks; successor job 101 is ready "
                                      "to take over")


def test_waiting_successor_looks_again_exactly_at_the_switch_time() -> None:
    """Close to the end, the next look is due when the switch is, not a fixed interval later."""
    outcome = plan(HANDOVER, in_handover(), both_running(timedelta(seconds=8)), NOW)
    assert outcome.requeue_after == pytest.approx(8 - SWITCH_BEFORE.total_seconds())


def test_handover_switches_a_few_seconds_before_the_walltime_end() -> None:
    """At SWITCH_BEFORE before the end, the open notebooks' kernels are started on the
    successor, then the route moves, the pages open on the old job are cut off from it (to
    reconnect to the successor), and the old job is cancelled."""
    outcome = plan(HANDOVER, in_handover(), both_running(SWITCH_BEFORE), NOW)
    assert outcome.actions == [CarryKernels(EP, EP2), Route(EP2), Sever(EP), Cancel(("100",))]
    assert outcome.record is not None
    assert (outcome.record.job_id, outcome.record.successor_id) == ("101", None)
    assert (outcome.record.phase, outcome.record.restarts) == ("ready", 1)
    assert outcome.record.replaced_at == NOW


def test_handover_switches_when_the_old_job_announces_its_end() -> None:
    """The old job's `.end` (its endpoint withdrawn) switches at once, minutes before walltime."""
    outcome = plan(HANDOVER, in_handover(),
                   both_running(timedelta(minutes=3), endpoint=None, answering=False), NOW)
    assert outcome.actions == [Route(EP2), Sever(EP), Cancel(("100",))]


def test_handover_switches_when_the_old_server_stops_answering() -> None:
    """An old notebook that no longer answers its probe is switched away from at once."""
    outcome = plan(HANDOVER, in_handover(), both_running(timedelta(minutes=3), answering=False),
                   NOW)
    assert outcome.actions == [Route(EP2), Sever(EP), Cancel(("100",))]


def test_handover_switches_at_once_when_the_old_job_is_seen_ended() -> None:
    """An old job already ended (TIMEOUT) hands straight to a ready successor: no gap."""
    outcome = plan(HANDOVER, in_handover(),
                   both_running(timedelta(0), job=job("TIMEOUT"), endpoint=None), NOW)
    assert outcome.actions == [Route(EP2)]
    assert outcome.record is not None
    assert (outcome.record.phase, outcome.record.job_id) == ("ready", "101")


def test_old_job_past_its_end_stays_while_the_successor_is_not_ready() -> None:
    """Without a ready successor nothing switches at the deadline: the old job serves on."""
    outcome = plan(HANDOVER, in_handover(),
                   both_running(timedelta(seconds=2), successor_answering=False), NOW)
    assert outcome.actions == []
    assert outcome.record is not None and outcome.record.job_id == "100"


def test_status_says_the_kernel_was_replaced_for_ten_minutes() -> None:
    """After the switch, status says the kernel was replaced; later only the time left."""
    switched = plan(HANDOVER, in_handover(), both_running(SWITCH_BEFORE), NOW).record
    assert switched is not None
    assert switched.message.startswith("kernel replaced just now (job 101 took over")
    serving = seen(job=job("RUNNING", "101", ends_at=NOW + timedelta(hours=2)), endpoint=EP2,
                   answering=True, routed=EP2)
    later = plan(HANDOVER, switched, serving, NOW + timedelta(minutes=3)).record
    assert later is not None and later.message.startswith("kernel replaced 3 min ago")
    assert "variables are reset, saved files are kept" in later.message
    much_later = plan(HANDOVER, later, serving, NOW + REPLACED_NOTICE).record
    assert much_later is not None and "kernel" not in much_later.message


def test_successor_becomes_the_job_when_the_old_one_ends_first() -> None:
    """If the old job ends before the successor answers, the successor is simply the job."""
    record = make_record(job_id="100", successor_id="101", phase="handover")
    outcome = plan(SPEC, record, seen(job=job("TIMEOUT"), successor=job("PENDING", "101")), NOW)
    assert outcome.record is not None and outcome.record.job_id == "101"
    assert Submit() not in outcome.actions


def test_no_handover_under_policy_never() -> None:
    """Policy `never` does not start successors."""
    spec = make_spec(restart={"policy": "never"})
    record = make_record(job_id="100", phase="ready", fingerprint=spec.job_fingerprint())
    running = job("RUNNING", ends_at=NOW + timedelta(minutes=1))
    outcome = plan(spec, record, seen(job=running, endpoint=EP, answering=True, routed=EP), NOW)
    assert not any(isinstance(action, Submit) for action in outcome.actions)


def test_failed_successor_falls_back_to_resubmission_at_walltime() -> None:
    """A successor that dies is not retried; the session stays ready and says what follows."""
    spec = make_spec(restart={"handover": "10m"})
    record = make_record(job_id="100", successor_id="101", phase="handover",
                         fingerprint=spec.job_fingerprint())
    running = job("RUNNING", ends_at=NOW + timedelta(minutes=5))
    observed = seen(job=running, endpoint=EP, answering=True, routed=EP,
                    successor=job("FAILED", "101"))
    outcome = plan(spec, record, observed, NOW)
    assert outcome.record is not None and outcome.record.successor_id is None
    again = plan(spec, outcome.record, seen(job=running, endpoint=EP, answering=True,
                                            routed=EP), NOW)
    assert not any(isinstance(action, Submit) for action in again.actions)
    assert again.record is not None and again.record.phase == "ready"
    assert "walltime ends in 5 min" in again.record.message


def test_walltime_warning_without_handover() -> None:
    """Without handover, the message warns when the walltime is near."""
    spec = make_spec(restart={"handover": "0s"})
    record = make_record(job_id="100", phase="ready", fingerprint=spec.job_fingerprint())
    running = job("RUNNING", ends_at=NOW + timedelta(minutes=3))
    outcome = plan(spec, record, seen(job=running, endpoint=EP, answering=True, routed=EP), NOW)
    assert outcome.record is not None
    assert outcome.record.message == ("walltime ends in 3 min; a new job is submitted then, "
                                      "at the same URL")


def test_a_login_to_give_names_the_command_and_keeps_the_job() -> None:
    """While the cluster waits for a person, the message names the command; nothing counts."""
    record = make_record(job_id="100", phase="ready", failures=1, endpoint=EP)
    outcome = plan(SPEC, record, seen(problem=LOGIN, blocked=True, login=True), NOW)
    assert outcome.record is not None
    assert "`nbtether login hpc`" in outcome.record.message
    assert (outcome.record.job_id, outcome.record.failures, outcome.record.restarts) == \
        ("100", 1, 0)


# Regression cases of issue #10 and of the ports issues, by bug.


def test_port_move_to_a_busy_port_changes_no_job() -> None:
    """A port edit plus a resource edit: the port is tried alone, and while it is busy the
    job, its record and its shape stay as they are (an adopted job is never mislabelled)."""
    spec = make_spec(local_port=9999, resources={"time": "02:00:00", "mem": "8G"})
    record = make_record(job_id="100", phase="ready", endpoint=EP)
    observed = seen(job=job("RUNNING"), endpoint=EP, answering=True, routed=EP)
    first = plan(spec, record, observed, NOW)
    assert first.actions == [Listen(9999)]
    assert first.record == record
    busy = replace(observed, port_error="local_port: 127.0.0.1:9999 is held by vim (pid 7)")
    second = plan(spec, record, busy, NOW)
    assert second.actions == []
    assert second.record is not None and second.record.job_id == "100"
    assert second.record.fingerprint == SPEC.job_fingerprint()


def test_a_job_the_record_lacks_is_taken_in_while_the_port_is_busy() -> None:
    """sbatch ran but its answer was lost, then the port became busy: the newest such job
    becomes the record's, the others are cancelled, and none is left unknown."""
    strays = (job("PENDING", "101", fingerprint=SPEC.job_fingerprint()),
              job("PENDING", "102", fingerprint=SPEC.job_fingerprint()))
    busy = seen(listening=None, port_error="local_port: 127.0.0.1:8888 is held by vim (pid 7)",
                strays=strays)
    outcome = plan(SPEC, make_record(), busy, NOW)
    assert outcome.actions == [Cancel(("101",))]
    assert outcome.record is not None and outcome.record.job_id == "102"
    assert outcome.record.phase == "failed" and outcome.record.url is None


def test_busy_port_shows_no_url_and_says_when_it_is_retried() -> None:
    """A session whose port another program holds is failed, shows no URL, names the holder
    and says that it is tried again."""
    busy = seen(listening=None, port_error="local_port: 127.0.0.1:8888 is held by vim (pid 7)")
    outcome = plan(SPEC, make_record(job_id="100", phase="ready"), busy, NOW)
    assert outcome.record is not None and outcome.record.url is None
    assert "vim (pid 7)" in outcome.record.message
    assert "trying again every 30 s" in outcome.record.message
    assert outcome.requeue_after == 30.0


def test_both_jobs_ended_during_a_handover_starts_afresh() -> None:
    """A laptop asleep through a handover: neither job runs, so a new job is submitted and
    the old successor is forgotten (it would block every later handover)."""
    record = make_record(job_id="100", successor_id="101", phase="handover")
    outcome = plan(SPEC, record, seen(job=job("TIMEOUT"), successor=job("TIMEOUT", "101")), NOW)
    assert Submit() in outcome.actions
    assert outcome.record is not None and outcome.record.successor_id is None


def test_successor_unknown_to_slurm_is_given_up_not_waited_for() -> None:
    """A successor that squeue and sacct both forgot ends the handover try at once."""
    spec = make_spec(restart={"handover": "10m"})
    record = make_record(job_id="100", successor_id="101", phase="handover",
                         fingerprint=spec.job_fingerprint())
    running = job("RUNNING", ends_at=NOW + timedelta(minutes=5))
    outcome = plan(spec, record, seen(job=running, endpoint=EP, answering=True, routed=EP), NOW)
    assert outcome.record is not None
    assert outcome.record.successor_id is None and outcome.record.phase == "ready"
    assert outcome.record.no_handover_for == "100"


def test_completing_job_is_not_starting_and_holds_connections() -> None:
    """COMPLETING after the job's `.end`: the route is dropped and status says it is ending."""
    record = make_record(job_id="100", phase="ready", endpoint=EP)
    outcome = plan(SPEC, record, seen(job=job("COMPLETING"), endpoint=EP, routed=EP), NOW)
    assert outcome.actions == [Route(None)]
    assert outcome.record is not None and outcome.record.phase == "pending"
    assert "ending (COMPLETING)" in outcome.record.message


def test_successor_keeps_its_own_submission_time() -> None:
    """A successor's submission time becomes the job's when it takes over; the job's own
    time is not the successor's."""
    earlier, later = NOW - timedelta(hours=2), NOW - timedelta(minutes=5)
    record = make_record(job_id="100", successor_id="101", phase="handover",
                         submitted_at=earlier, successor_submitted_at=later)
    taken = plan(SPEC, record, seen(job=job("TIMEOUT"), successor=job("RUNNING", "101")), NOW)
    assert taken.record is not None
    assert (taken.record.job_id, taken.record.submitted_at) == ("101", later)
    assert taken.record.successor_submitted_at is None


def test_unconfirmed_submission_waits_for_squeue_instead_of_submitting_again() -> None:
    """sbatch ran but its answer was lost: no second sbatch until squeue had its chance."""
    failed = SubmitFailed(SubmissionUnconfirmed("unexpected sbatch output: ''", delay=30.0))
    outcome = plan(SPEC, make_record(), seen(submit_failed=failed), NOW)
    assert not any(isinstance(action, Submit) for action in outcome.actions)
    assert outcome.record is not None and outcome.record.retry_at == NOW + timedelta(seconds=30)
    stray = job("PENDING", "101", fingerprint=SPEC.job_fingerprint())
    later = plan(SPEC, outcome.record, seen(strays=(stray,)), NOW + timedelta(seconds=5))
    assert later.record is not None and later.record.job_id == "101"


def test_rejected_submission_fails_and_a_save_retries() -> None:
    """A rejection is permanent: failed with SLURM's words, until the file is saved again."""
    failed = SubmitFailed(SubmissionRejected("Invalid account"))
    outcome = plan(SPEC, make_record(), seen(file_version="1", submit_failed=failed), NOW)
    assert outcome.record is not None and outcome.record.phase == "failed"
    assert outcome.record.message == "rejected by SLURM: Invalid account"
    assert plan(SPEC, outcome.record, seen(file_version="1"), NOW).actions == []
    assert Submit() in plan(SPEC, outcome.record, seen(file_version="2"), NOW).actions


def test_touching_the_file_retries_a_refused_login() -> None:
    """Saving the file while the login is refused logs in again at once, and only then."""
    record = make_record(job_id="100", phase="failed", file_version="1")
    blocked = seen(problem="host key of hpc has changed", blocked=True, file_version="1")
    assert plan(SPEC, record, blocked, NOW).actions == []
    touched = plan(SPEC, record, replace(blocked, file_version="2"), NOW)
    assert touched.actions == [Reconnect()]


def test_touching_an_invalid_file_or_deleting_it_retries_a_refused_login_once() -> None:
    """A save of a file that is invalid, or its removal, also logs in again, once; then
    the removal waits for the cluster to cancel the job."""
    record = make_record(job_id="100", phase="failed", file_version="1")
    blocked = seen(problem="host key of hpc has changed", blocked=True, file_version="2")
    broken = plan(InvalidSpec("local_port: bad"), record, blocked, NOW)
    assert broken.actions == [Reconnect()]
    assert broken.record is not None
    assert plan(InvalidSpec("local_port: bad"), broken.record, blocked, NOW).actions == []
    gone = replace(blocked, file_version="", listening=None)
    removal = plan(None, record, gone, NOW)
    assert removal.actions == [Reconnect()]
    assert removal.record is not None and removal.record.phase == "stopping"
    assert plan(None, removal.record, gone, NOW).actions == []


def test_a_new_session_on_a_refused_cluster_does_not_log_in_again_until_saved() -> None:
    """A file never planned on meets a refused login: no retry (nothing was fixed), but
    saving it later retries."""
    blocked = seen(problem="host key of hpc has changed", blocked=True, file_version="1")
    first = plan(SPEC, make_record(), blocked, NOW)
    assert first.actions == []
    assert first.record is not None
    saved = plan(SPEC, first.record, replace(blocked, file_version="2"), NOW)
    assert saved.actions == [Reconnect()]


def test_failed_session_is_reconsidered_when_its_file_changes() -> None:
    """A session that gave up on a cancelled job starts a new one once its file is saved."""
    record = make_record(job_id="100", phase="failed", file_version="1",
                         given_up_on=f"{SPEC.job_fingerprint()}@1")
    outcome = plan(SPEC, record, seen(file_version="2", job=job("CANCELLED by 0")), NOW)
    assert Submit() in outcome.actions
    assert outcome.record is not None and outcome.record.phase == "pending"


def test_a_notebook_without_the_token_says_why_in_status() -> None:
    """The failed session's message names the user's Jupyter config as the cause."""
    outcome = plan(SPEC, make_record(job_id="100"),
                   seen(job=job("RUNNING", node="c1"), endpoint=EP, unprotected=True), NOW)
    assert outcome.record is not None
    assert "your Jupyter config disables the token" in outcome.record.message
    assert "c1" in outcome.record.message


def test_a_successor_without_the_token_is_cancelled_and_the_old_job_keeps_serving() -> None:
    """An unprotected successor is dropped; the session stays ready on its current job."""
    spec = make_spec(restart={"handover": "10m"})
    record = make_record(job_id="100", successor_id="101", phase="handover", endpoint=EP,
                         fingerprint=spec.job_fingerprint(),
                         ends_at=NOW + timedelta(minutes=5))
    outcome = plan(spec, record, seen(job=job("RUNNING", ends_at=NOW + timedelta(minutes=5)),
                                      endpoint=EP, answering=True, routed=EP,
                                      successor=job("RUNNING", "101"), successor_endpoint=EP2,
                                      successor_unprotected=True), NOW)
    assert outcome.actions == [Cancel(("101",))]
    assert outcome.record is not None and outcome.record.phase == "ready"
    assert outcome.record.successor_id is None and outcome.record.job_id == "100"


def test_a_file_saved_during_an_outage_still_counts_once_the_cluster_is_back() -> None:
    """A save while the controller is down is not used up by the passes that cannot act."""
    record = make_record(job_id="100", phase="failed", file_version="1",
                         given_up_on=f"{SPEC.job_fingerprint()}@1")
    down = plan(SPEC, record, seen(problem="Unable to contact slurm controller",
                                   file_version="2"), NOW)
    assert down.record is not None and down.record.file_version == "1"
    back = plan(SPEC, down.record, seen(file_version="2", job=job("CANCELLED by 0")), NOW)
    assert Submit() in back.actions


def test_a_handover_past_its_switch_time_does_not_spin() -> None:
    """After a sleep past the switch time, a successor still queued is looked at again
    after a pause, never at once in a loop."""
    spec = make_spec(restart={"handover": "10m"})
    record = make_record(job_id="100", successor_id="101", phase="handover", endpoint=EP,
                         fingerprint=spec.job_fingerprint(), ends_at=NOW - timedelta(hours=2))
    observed = seen(job=job("RUNNING", ends_at=NOW - timedelta(hours=2)), endpoint=EP,
                    answering=True, routed=EP, successor=job("PENDING", "101"))
    outcome = plan(spec, record, observed, NOW)
    assert outcome.requeue_after is not None and outcome.requeue_after > 0
