"""The daemon's two clocks, both injectable so that a simulated week runs in seconds.

Durations, timers and sleeps use the running event loop's clock (`monotonic()`,
`asyncio.sleep`, `call_later`): an event loop whose time is virtual makes all of them
virtual. Wall time (walltime ends, retry times, status) comes from a `Clock` passed to
each part that needs it; `system_clock` is the real one.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The real wall clock, in UTC."""
    return datetime.now(UTC)


def monotonic() -> float:
    """Seconds on the running event loop's clock (virtual under a simulated loop)."""
    return asyncio.get_running_loop().time()


async def every(seconds: float, tick: Callable[[], Awaitable[None] | None]) -> None:
    """Call `tick` every `seconds` of the loop's clock until cancelled; a failing tick is
    logged and the next one still comes."""
    while True:
        await asyncio.sleep(seconds)
        try:
            result = tick()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("timer failed", tick=getattr(tick, "__qualname__", repr(tick)))
