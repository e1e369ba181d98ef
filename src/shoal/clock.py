"""The Clock seam: the only way shoal reads time or sleeps.

``RealClock`` uses the event loop's monotonic time. ``VirtualClock`` lets tests
run limiter, breaker and retry logic in virtual time: sleeps complete only when
the test advances the clock (``advance``), or automatically when every task is
blocked on the clock (``run``).
"""

from __future__ import annotations

import asyncio
import datetime
import heapq
import itertools
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

__all__ = ["Clock", "RealClock", "VirtualClock", "utc_date"]

T = TypeVar("T")


class Clock(Protocol):
    """Monotonic seconds and sleeping. ``wall()`` is epoch seconds (for HTTP-dates)."""

    def now(self) -> float: ...

    def wall(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


def utc_date(clock: Clock) -> datetime.date:
    """The UTC calendar day of ``clock.wall()`` (a virtual clock's too)."""
    return datetime.datetime.fromtimestamp(clock.wall(), datetime.UTC).date()


class RealClock:
    """Monotonic time from ``time.monotonic`` (what the event loop uses)."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class VirtualClock:
    """Deterministic time for tests.

    ``await clock.sleep(d)`` blocks until the clock has been advanced by at least ``d``.
    ``await clock.advance(d)`` moves time forward, waking sleepers in deadline order
    and letting the woken tasks run between wake-ups.
    ``await clock.run(coro)`` runs ``coro`` and, whenever all tasks are blocked on the
    clock, jumps to the next deadline; it returns ``coro``'s result.
    """

    def __init__(self, start: float = 0.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def pending(self) -> int:
        """Number of sleepers not yet woken (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._heap if not f.done())

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0][2].done():
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    async def settle(self, rounds: int = 20) -> None:
        """Let runnable tasks run until they block again."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        target = self._now + seconds
        await self.settle()
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > target:
                break
            self._now = max(self._now, deadline)
            while self._heap and self._heap[0][0] <= self._now:
                _, _, fut = heapq.heappop(self._heap)
                if not fut.done():
                    fut.set_result(None)
            await self.settle()
        self._now = target
        await self.settle()

    async def run(self, aw: Awaitable[T], *, max_virtual: float = 1e9) -> T:
        task = asyncio.ensure_future(aw)
        start = self._now
        while not task.done():
            await self.settle()
            if task.done():
                break
            deadline = self.next_deadline()
            if deadline is None:
                # Blocked on something other than the clock (real I/O): let it progress.
                await asyncio.sleep(0.001)
                continue
            if deadline - start > max_virtual:
                task.cancel()
                raise TimeoutError(f"virtual time exceeded {max_virtual}s")
            await self.advance(deadline - self._now)
        return task.result()
