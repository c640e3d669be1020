"""Figure 10: a week of a typical working pattern, core-hours with `idle_stop` and always on.

The real daemon runs in the simulated world of tests/sim (virtual time, a simulated SLURM
with queue waits of up to two minutes), so a week takes a minute and needs no cluster.
One session of 4 CPUs and 8-hour jobs (handover 10 min), the same in both variants except
for `idle_stop: 1h` (and `start: on_demand`, so the week starts without a job). The user
works in three bursts on each weekday (09:00 to 10:30, 13:30 to 15:00, 19:00 to 20:00): at the start
of a burst the page is opened (which starts a job when there is none), then code runs every
ten minutes until the burst ends; nothing happens at the weekend. Allocated core-hours are
the running time of every job the simulated SLURM ran, times 4. The price of `idle_stop` is
the wait at the start of a burst when its job was stopped: from opening the page to `ready`.
"""

from __future__ import annotations

from datetime import timedelta

from tests.bench.common import FigureResult, Row, say
from tests.sim.world import EPOCH, Event, Faults, World

CPUS = 4
DAYS = 7
BURSTS = ((9 * 60, 90), (13 * 60 + 30, 90), (19 * 60, 60))  # (start minute of day, minutes)
USE_EVERY = 600.0  # seconds between runs of code within a burst
STEP = 5.0  # seconds between looks while waiting for the notebook at a burst's start
SESSION = f"""\
cluster: hpc
local_port: 8801
resources:
  partition: cpu
  cpus: {CPUS}
  mem: 8G
  time: "08:00:00"
restart:
  handover: 10m
"""
IDLE = "start: on_demand\nidle_stop: 1h\n"


def week() -> list[tuple[float, str]]:
    """(seconds since Monday 09:00, what the user does) for one week."""
    actions = []
    start = EPOCH.replace(hour=0, minute=0)  # Monday 00:00
    offset = (EPOCH - start).total_seconds()
    for day in range(DAYS):
        if day >= 5:
            continue  # the weekend
        for minute, length in BURSTS:
            at = day * 86400 + minute * 60 - offset
            if at < 0:
                continue
            actions.append((at, "open"))
            uses = range(1, int(length * 60 // USE_EVERY))
            actions += [(at + k * USE_EVERY, "use") for k in uses]
    return actions


def simulate(idle: bool) -> dict[str, float]:
    """Core-hours over the week, and the waits at the start of bursts."""
    world = World(10, Faults(jupyter_fails=0.0, garbled_sbatch=0.0, on_demand=0.0,
                             idle_stop=0.0))
    waits: list[float] = []
    opened: list[float] = []
    measured: dict[str, float] = {}

    def create(_: int) -> None:
        world._write("alpha", SESSION + (IDLE if idle else ""))

    def look(_: int) -> None:
        record = world.records().get("alpha")
        if opened and record is not None and record.phase in ("ready", "handover"):
            waits.append(world.now() - opened.pop())

    def begin(_: int) -> None:
        opened.append(world.now())
        world._do_browse(0)

    def measure(_: int) -> None:
        end = world.wall()
        seconds = sum(((job.ended or end) - job.started).total_seconds()
                      for job in world.cluster.jobs.values() if job.started is not None)
        measured["core_hours"] = seconds * CPUS / 3600
        measured["jobs"] = len(world.cluster.jobs)

    world._do_create = create  # type: ignore[attr-defined]
    world._do_look = look  # type: ignore[attr-defined]
    world._do_begin = begin  # type: ignore[attr-defined]
    world._do_measure = measure  # type: ignore[attr-defined]
    events, now = [Event("create", 0, 0.0)], 0.0
    for at, action in week():
        events.append(Event("wait", 0, at - now))
        now = at
        if action == "open":
            events.append(Event("begin", 0, 0.0))
            looks = 0
            while looks * STEP < 600:  # look until ready; the rest of the burst follows
                events.append(Event("look", 0, STEP))
                looks += 1
            now += looks * STEP
        else:
            events.append(Event("use", 0, 0.0))
    events.append(Event("wait", 0, DAYS * 86400 - now))
    events.append(Event("measure", 0, 0.0))
    world.run(events)
    return {**measured, "waits": waits}  # type: ignore[dict-item]


def run() -> FigureResult:
    """Both variants, side by side in the table."""
    say("figure 10: a simulated week, always on")
    always = simulate(idle=False)
    say("figure 10: a simulated week, with idle_stop: 1h")
    stopped = simulate(idle=True)
    waits = sorted(stopped["waits"])  # type: ignore[arg-type]
    cold = [w for w in waits if w > STEP]
    result = FigureResult(10, "Core-hours in a week: idle_stop against always on")
    share = stopped["core_hours"] / always["core_hours"]
    result.rows += [
        Row("10 idle", "core-hours in a week, always on", f"{always['core_hours']:.0f}", "",
            None, f"{CPUS} CPUs, {int(always['jobs'])} jobs of 8 h"),
        Row("10 idle", "core-hours in a week, idle_stop: 1h", f"{stopped['core_hours']:.0f}",
            "", None, f"{int(stopped['jobs'])} jobs; 3 bursts a weekday, 4 h of use a day"),
        Row("10 idle", "idle_stop ÷ always on", f"{share:.2f}", "", None,
            f"{(1 - share) * 100:.0f} % of the allocation saved"),
        Row("10 idle", "median s from opening the page to ready, idle_stop",
            f"{waits[len(waits) // 2]:.0f}" if waits else "-", "", None,
            f"{len(cold)} of {len(waits)} bursts found no job (queue wait up to 120 s)"),
    ]
    result.notes += [
        f"Simulated: {DAYS} days of virtual time each, from {EPOCH:%A %Y-%m-%d %H:%M} UTC.",
        "What idle_stop saves is the time nobody uses the notebook (nights, the weekend, "
        "the gaps between bursts) less the idle_stop that follows each burst; what it costs "
        "is a queue wait and Jupyter's start whenever work resumes after a stop, here at "
        "every burst, since the gaps are longer than the hour. A longer idle_stop bridges "
        "short gaps; none at all keeps the kernel's variables.",
    ]
    result.data = {"always": always["core_hours"], "idle_stop": stopped["core_hours"],
                   "waits": waits, "span": timedelta(days=DAYS).total_seconds()}
    return result
