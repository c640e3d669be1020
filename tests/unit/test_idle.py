"""Sessions without a job on purpose: `start: on_demand`, `idle_stop`, and how they wake."""

from __future__ import annotations

from datetime import timedelta

from nbtether.plan import Activity, Cancel, Route, Submit, plan
from tests.unit.test_plan import EP, NOW, job, make_record, make_spec, seen

ON_DEMAND = make_spec(start="on_demand")
IDLE_STOP = make_spec(idle_stop="1h")


def _ready(spec_fingerprint: str, **fields: object) -> dict[str, object]:
    return {"job_id": "100", "phase": "ready", "endpoint": EP, "fingerprint": spec_fingerprint,
            "ready_since": NOW - timedelta(hours=3), **fields}


def test_an_on_demand_session_submits_nothing_until_someone_connects() -> None:
    """A new on_demand file listens and waits in phase idle, with no job."""
    out = plan(ON_DEMAND, make_record(), seen(), NOW)
    assert out.record is not None
    assert out.record.phase == "idle" and out.record.asleep
    assert not any(isinstance(action, Submit) for action in out.actions)
    assert "127.0.0.1:8888" in out.record.message
    again = plan(ON_DEMAND, out.record, seen(file_version=""), NOW)
    assert again.actions == [] and again.record is not None and again.record.phase == "idle"


def test_a_connection_to_an_idle_session_submits_a_job() -> None:
    """A request at the port (seen as demand) wakes the session: a job is submitted."""
    asleep = plan(ON_DEMAND, make_record(), seen(), NOW).record
    assert asleep is not None
    out = plan(ON_DEMAND, asleep, seen(demanded=True), NOW)
    assert out.record is not None and not out.record.asleep
    assert out.actions == [Route(None), Submit()] and out.record.phase == "pending"
    assert out.record.restarts == 0


def test_a_notebook_idle_for_idle_stop_is_cancelled_and_the_session_is_idle() -> None:
    """No kernel busy and no activity for idle_stop: cancel, phase idle, not a failure."""
    record = make_record(**_ready(IDLE_STOP.job_fingerprint()))
    activity = Activity(last=NOW - timedelta(minutes=61), busy=False)
    out = plan(IDLE_STOP, record, seen(job=job("RUNNING"), endpoint=EP, answering=True,
                                       routed=EP, activity=activity), NOW)
    assert out.actions == [Route(None), Cancel(("100",))]
    assert out.record is not None
    assert out.record.phase == "idle" and out.record.job_id is None
    assert out.record.restarts == 0 and out.record.failures == 0
    assert "after 1h01m idle" in out.record.message and "idle_stop: 1h" in out.record.message


def test_a_busy_kernel_keeps_the_job() -> None:
    """A kernel still computing keeps the job however long ago its last message was."""
    record = make_record(**_ready(IDLE_STOP.job_fingerprint()))
    activity = Activity(last=NOW - timedelta(hours=2), busy=True)
    out = plan(IDLE_STOP, record, seen(job=job("RUNNING"), endpoint=EP, answering=True,
                                       routed=EP, activity=activity), NOW)
    assert out.actions == [] and out.record is not None and out.record.phase == "ready"


def test_recent_activity_keeps_the_job_and_looks_again_when_it_would_be_up() -> None:
    """Activity 50 min ago with idle_stop 1h: ready, looked at again within 10 min."""
    record = make_record(**_ready(IDLE_STOP.job_fingerprint()))
    activity = Activity(last=NOW - timedelta(minutes=50), busy=False)
    out = plan(IDLE_STOP, record, seen(job=job("RUNNING"), endpoint=EP, answering=True,
                                       routed=EP, activity=activity), NOW)
    assert out.actions == [] and out.record is not None and out.record.phase == "ready"
    assert out.requeue_after is not None and out.requeue_after <= 600


def test_idle_time_counts_from_when_the_job_first_answered() -> None:
    """A fresh job with no kernel yet is not stopped at once."""
    record = make_record(**_ready(IDLE_STOP.job_fingerprint(),
                                  ready_since=NOW - timedelta(minutes=5)))
    out = plan(IDLE_STOP, record, seen(job=job("RUNNING"), endpoint=EP, answering=True,
                                       routed=EP, activity=Activity(last=None, busy=False)), NOW)
    assert out.record is not None and out.record.phase == "ready"


def test_unknown_activity_never_stops_the_job() -> None:
    """When Jupyter's activity cannot be read, the job stays."""
    record = make_record(**_ready(IDLE_STOP.job_fingerprint()))
    out = plan(IDLE_STOP, record, seen(job=job("RUNNING"), endpoint=EP, answering=True,
                                       routed=EP, activity=None), NOW)
    assert out.record is not None and out.record.phase == "ready"


def test_the_stopped_job_is_never_adopted_back_and_a_new_one_is_submitted() -> None:
    """Woken while the stopped job still ends: it is cancelled again, a new job submitted."""
    record = make_record(**_ready(IDLE_STOP.job_fingerprint()))
    stopped = plan(IDLE_STOP, record, seen(
        job=job("RUNNING"), endpoint=EP, answering=True, routed=EP,
        activity=Activity(last=NOW - timedelta(hours=2), busy=False)), NOW).record
    assert stopped is not None
    ending = job("RUNNING", job_id="100")
    asleep = plan(IDLE_STOP, stopped, seen(strays=(ending,)), NOW + timedelta(seconds=1))
    assert asleep.actions == [Cancel(("100",))]
    assert asleep.record is not None and asleep.record.phase == "idle"
    woken = plan(IDLE_STOP, asleep.record, seen(strays=(ending,), demanded=True),
                 NOW + timedelta(seconds=2))
    assert woken.actions == [Cancel(("100",)), Route(None), Submit()]
    assert woken.record is not None and woken.record.job_id is None
    assert woken.record.last_end.startswith("job 100 stopped")


def test_saving_the_file_of_an_always_session_wakes_it() -> None:
    """start: always stopped when idle: saving the file starts a job again."""
    record = make_record(asleep=True, phase="idle", file_version="1")
    out = plan(IDLE_STOP, record, seen(file_version="2"), NOW)
    assert out.actions == [Route(None), Submit()]


def test_a_queued_job_shows_its_expected_start() -> None:
    """squeue's expected start reaches the record (and so the page)."""
    starts = NOW + timedelta(minutes=20)
    out = plan(make_spec(), make_record(job_id="100"),
               seen(job=job("PENDING", reason="Resources", starts_at=starts)), NOW)
    assert out.record is not None and out.record.starts_at == starts
    assert out.record.message == "queued: Resources"
