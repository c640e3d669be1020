"""The work queue, reconciler and state store on the virtual clock and the simulated cluster."""

from __future__ import annotations

import asyncio
import stat

from nbtether.workqueue import ERROR_BACKOFF, WorkQueue
from tests.sim.vloop import VirtualTimeLoop
from tests.sim.world import Event, Faults, World


def _run(main: object) -> None:
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(main)  # type: ignore[arg-type]
    finally:
        loop.close()


def test_a_key_added_while_handled_runs_once_more_and_never_twice_at_once() -> None:
    """Events during a pass make one more pass afterwards, by one worker at a time."""
    calls: list[tuple[str, float]] = []
    running: set[str] = set()

    async def handler(key: str) -> float | None:
        assert key not in running, "two workers on one key"
        running.add(key)
        calls.append((key, asyncio.get_running_loop().time()))
        await asyncio.sleep(5)
        running.discard(key)
        return None

    async def main() -> None:
        queue = WorkQueue(handler, workers=4)
        queue.start()
        queue.add("a")
        await asyncio.sleep(1)
        queue.add("a")
        queue.add("a")
        await asyncio.sleep(20)
        await queue.stop()

    _run(main())
    assert calls == [("a", 0.0), ("a", 5.0)]


def test_requeue_after_and_error_backoff_follow_the_loop_clock() -> None:
    """A pass's requeue-after and a failing pass's backoff are timers on the loop's clock."""
    calls: list[float] = []

    async def handler(key: str) -> float | None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 2:
            raise RuntimeError("a bug in a pass")
        return 3600.0

    async def main() -> None:
        queue = WorkQueue(handler)
        queue.start()
        queue.add("a")
        await asyncio.sleep(3600 + ERROR_BACKOFF + 1)
        await queue.stop()

    _run(main())
    assert calls == [0.0, 3600.0, 3600.0 + ERROR_BACKOFF]


def test_a_dropped_file_is_served_within_two_minutes() -> None:
    """With a short queue, a new session file is `ready` within two virtual minutes."""
    world = World(1, Faults(jupyter_fails=0.0, queue_wait=30.0))
    records = {}

    def remember(*_: object) -> None:
        records.update(world.records())

    world._do_remember = remember  # type: ignore[attr-defined]
    world.run([Event("create", 0, 120), Event("remember", 0, 0)])
    record = records["alpha"]
    assert record.phase == "ready" and record.job_id is not None
    assert record.url == f"http://127.0.0.1:8801/lab?token={record.token}"


def test_a_simulated_day_hands_over_every_job() -> None:
    """A day of virtual time with one session: every job hands over, its record stays 0600."""
    world = World(2, Faults(jupyter_fails=0.0, garbled_sbatch=0.0, on_demand=0.0,
                            idle_stop=0.0))
    mode: dict[str, int] = {}

    def inspect(*_: object) -> None:
        record = world.records()["alpha"]
        path = world.settings.state_dir / "sessions" / "alpha.json"
        mode["bits"] = stat.S_IMODE(path.stat().st_mode)
        mode["restarts"] = record.restarts
        mode["timeouts"] = sum(job.state == "TIMEOUT" for job in world.cluster.jobs.values())

    world._do_inspect = inspect  # type: ignore[attr-defined]
    world.run([Event("create", 0, 3600)] + [Event("wait", 0, 3600)] * 23
              + [Event("inspect", 0, 0)])
    assert mode["bits"] == 0o600
    assert mode["restarts"] >= 12  # walltimes of at most two hours
    assert mode["timeouts"] == 0  # every job was handed over before its walltime


def test_an_idle_session_sleeps_wakes_on_a_visit_and_sleeps_again_with_its_token() -> None:
    """start: on_demand with idle_stop: no job until the page is opened, then ready, then
    stopped once unused for idle_stop, then served again at the same token on a visit."""
    world = World(3, Faults(jupyter_fails=0.0, garbled_sbatch=0.0, queue_wait=30.0,
                            on_demand=0.0, idle_stop=0.0))
    seen: list[tuple[str, str | None, str]] = []

    def create(_: int) -> None:
        world._write("alpha", "cluster: hpc\nlocal_port: 8801\nstart: on_demand\n"
                              "idle_stop: 5m\n")

    def look(_: int) -> None:
        record = world.records()["alpha"]
        seen.append((record.phase, record.job_id, record.token))

    world._do_create = create  # type: ignore[attr-defined]
    world._do_look = look  # type: ignore[attr-defined]
    world.run([Event("create", 0, 600), Event("look", 0, 0), Event("browse", 0, 120),
               Event("look", 0, 0), Event("use", 0, 240), Event("look", 0, 0),
               Event("wait", 0, 600), Event("look", 0, 0), Event("browse", 0, 120),
               Event("look", 0, 0)])
    (asleep, _, token), (ready, first, _), (used, kept, _), (stopped, none, _), \
        (again, second, same) = seen
    assert (asleep, ready, used, stopped, again) == ("idle", "ready", "ready", "idle", "ready")
    assert first == kept and none is None and second not in (None, first) and same == token
    assert sum(job.started is not None for job in world.cluster.jobs.values()) == 2
