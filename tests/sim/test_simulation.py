"""The daemon in a simulated world: random walks that must keep every invariant.

By default 200 scenarios of 50 steps each (≥ 10,000 steps) run on two processes, in well
under a minute. Knobs for long soak runs and replays:

    NBTETHER_SIM_SCENARIOS=5000 NBTETHER_SIM_STEPS=200 python3 -m pytest tests/sim
    NBTETHER_SIM_FIRST_SEED=100000   # explore other seeds than the default ones
    NBTETHER_SIM_SEED=137            # replay one seed (and shrink it if it fails)
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor

from tests.sim.explore import Outcome, play, report, scenario, shrink

SCENARIOS = int(os.environ.get("NBTETHER_SIM_SCENARIOS", "200"))
STEPS = int(os.environ.get("NBTETHER_SIM_STEPS", "50"))
FIRST_SEED = int(os.environ.get("NBTETHER_SIM_FIRST_SEED", "0"))
ONE_SEED = os.environ.get("NBTETHER_SIM_SEED")


def _walk(seed: int) -> Outcome:
    return play(seed, scenario(seed, STEPS))


def test_random_walks_keep_every_invariant() -> None:
    """Hundreds of seeded random walks through files, faults, kills and sleeps break nothing."""
    seeds = [int(ONE_SEED)] if ONE_SEED else list(range(FIRST_SEED, FIRST_SEED + SCENARIOS))
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        outcomes = list(pool.map(_walk, seeds, chunksize=4))
    elapsed = time.monotonic() - started
    steps = sum(len(outcome.events) for outcome in outcomes)
    virtual = sum(outcome.virtual_seconds for outcome in outcomes)
    print(f"\n{len(outcomes)} scenarios, {steps} steps, {virtual / 3600:.0f} h of virtual time "
          f"in {elapsed:.1f} s: {steps / elapsed:.0f} steps/s")
    failed = [outcome for outcome in outcomes if outcome.failure]
    assert not failed, "\n\n".join(report(shrink(outcome)) for outcome in failed[:1]) + \
        f"\n({len(failed)} of {len(outcomes)} scenarios failed: seeds " \
        f"{[outcome.seed for outcome in failed]})"
