"""A work queue of session names: each name is handled by one worker at a time.

An event only says "this session may have changed"; adding a name that is already queued
does nothing, and adding one that is being handled makes it run once more afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from nbtether.clock import monotonic

log = structlog.get_logger(__name__)

ERROR_BACKOFF = 10.0

Handler = Callable[[str], Awaitable[float | None]]


class WorkQueue:
    """Keys in, one handler call per key at a time out, with requeue-after timers."""

    def __init__(self, handler: Handler, workers: int = 4) -> None:
        self._handler = handler
        self._workers = workers
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()
        self._timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        """Start the workers."""
        self._tasks = [asyncio.create_task(self._work(), name=f"worker-{i}")
                       for i in range(self._workers)]

    async def stop(self) -> None:
        """Stop the workers (a handler in progress is cancelled) and drop all timers."""
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def add(self, key: str) -> None:
        """Handle `key` soon."""
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._idle.clear()
            self._queue.put_nowait(key)

    def add_after(self, key: str, delay: float) -> None:
        """Handle `key` after `delay` seconds (the earliest of pending timers wins)."""
        if delay <= 0:
            self.add(key)
            return
        due = monotonic() + delay
        current = self._timers.get(key)
        if current and current[0] <= due:
            return
        if current:
            current[1].cancel()
        handle = asyncio.get_running_loop().call_later(delay, self._fire, key)
        self._timers[key] = (due, handle)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def wait_idle(self) -> None:
        """Wait until nothing is queued or being handled."""
        await self._idle.wait()

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                delay = await self._handler(key)
            except Exception:
                log.exception("reconcile failed", session=key)
                delay = ERROR_BACKOFF
            finally:
                self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif delay is not None:
                self.add_after(key, delay)
            if not self._queued and not self._active:
                self._idle.set()
