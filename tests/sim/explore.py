"""Random walks through the simulated world, and shrinking a failing one to a short trace.

`scenario(seed, steps)` draws a list of events from the seed; `play(seed, events)` runs
them (`World`) and returns the broken invariant, if any; `shrink` removes events while the
failure stays, so that the trace printed is a minimal one.
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass

from tests.sim.world import Event, World

WEIGHTS = {
    "create": 10, "edit": 8, "move_port": 4, "touch": 3, "break": 3, "delete": 4, "wait": 20,
    "kill": 4, "start": 6, "sleep": 2, "login_down": 2, "login_up": 4, "drop": 3,
    "controller_down": 2, "controller_up": 4, "host_key": 3, "node_fail": 3, "preempt": 2,
    "crash": 2, "scancel": 1, "grab_port": 3, "browse": 5, "use": 4,
}
DURATIONS = (1.0, 5.0, 20.0, 60.0, 300.0, 1200.0)
DURATION_WEIGHTS = (4, 5, 5, 4, 2, 1)


@dataclass
class Outcome:
    """How one scenario ended."""

    seed: int
    events: list[Event]
    failure: str | None
    trace: list[str]
    virtual_seconds: float


def scenario(seed: int, steps: int) -> list[Event]:
    """The events of scenario `seed`; the same seed always gives the same events."""
    rng = random.Random(f"events-{seed}")  # noqa: S311 (a simulation, not a secret)
    kinds = list(WEIGHTS)
    return [Event(rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0],
                  rng.randrange(1000), rng.choices(DURATIONS, weights=DURATION_WEIGHTS)[0])
            for _ in range(steps)]


def play(seed: int, events: list[Event]) -> Outcome:
    """Run one scenario to its end or its first broken invariant."""
    world = World(seed)
    failure = None
    try:
        world.run(events)
    except AssertionError as exc:
        failure = f"{type(exc).__name__}: {exc}"
    except Exception:  # a crash of the daemon's code is a failure like any other
        failure = traceback.format_exc()
    return Outcome(seed, events, failure, world.trace, world.loop.time())


def shrink(outcome: Outcome, budget: int = 200) -> Outcome:
    """Drop events (halves, then quarters … then single ones) while the run still fails."""
    best = outcome
    chunk = max(1, len(best.events) // 2)
    while chunk >= 1 and budget > 0:
        start = 0
        while start < len(best.events) and budget > 0:
            candidate = best.events[:start] + best.events[start + chunk:]
            budget -= 1
            tried = play(best.seed, candidate)
            if tried.failure is not None:
                best = tried
            else:
                start += chunk
        chunk //= 2
    return best


def report(outcome: Outcome) -> str:
    """What a person needs to replay a failure: the seed, the events, what broke."""
    lines = [f"seed {outcome.seed}: {outcome.failure}",
             f"replay: NBTETHER_SIM_SEED={outcome.seed} python3 -m pytest tests/sim",
             "events (virtual time, event, then how long the world ran):"]
    lines += [f"  {line}" for line in outcome.trace]
    lines.append(f"as code: {outcome.events!r}")
    return "\n".join(lines)
