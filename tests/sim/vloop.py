"""An asyncio event loop whose clock is virtual: when nothing is ready, time jumps to the
next timer (the idea of the `looptime` package, in a few lines).

Every `asyncio.sleep`, `call_later` and `wait_for` of the code under test then costs no
real time, and with no real I/O and no threads a run depends on nothing but its inputs.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class _JumpingSelector:
    """Polls the real selector without waiting; a wait becomes a jump of the clock."""

    def __init__(self, real: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._real = real
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        events = self._real.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise RuntimeError("simulation deadlock: nothing is ready and no timer is set")
        self._loop.advance(timeout)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """`time()` starts at 0 and moves only when the loop would otherwise wait."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0
        self._selector = _JumpingSelector(self._selector, self)  # type: ignore[has-type]

    def time(self) -> float:
        """Virtual seconds since the loop was made."""
        return self._virtual_now

    def run_in_executor(self, executor: Any, func: Any, *args: Any) -> asyncio.Future[Any]:
        """Run `func` at once, on this thread: a thread would let time jump while it works
        and make the run depend on the machine's speed (asyncio.to_thread comes here)."""
        future: asyncio.Future[Any] = self.create_future()
        try:
            future.set_result(func(*args))
        except Exception as exc:  # delivered to the awaiting code, as an executor would
            future.set_exception(exc)
        return future

    def advance(self, seconds: float) -> None:
        """Move the clock forward (the selector does this; nothing else should)."""
        self._virtual_now += seconds
