"""A timeout measured on the injected :class:`~shoal.clock.Clock`, as a scope.

The Router bounds everything a call does (waiting for capacity, backoff sleeps and the
in-flight HTTP request) by the call's deadline. ``asyncio.timeout`` reads the event
loop's time, which a :class:`~shoal.clock.VirtualClock` does not move, so under a
virtual clock the scope arms a clock sleep that cancels the task instead; under the
real clock it is ``asyncio.timeout`` (one timer handle, no extra task: the hot path).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from shoal.clock import Clock, RealClock

__all__ = ["clock_timeout"]


class clock_timeout:
    """``async with clock_timeout(clock, seconds):`` raises ``TimeoutError`` on expiry.

    ``seconds=None`` never expires. Cancelling the caller from outside still cancels it
    (only the scope's own cancellation becomes ``TimeoutError``).
    """

    __slots__ = ("_clock", "_cm", "_seconds", "_task", "_timer", "expired")

    def __init__(self, clock: Clock, seconds: float | None) -> None:
        self._clock = clock
        self._seconds = seconds
        self._cm: asyncio.Timeout | None = None
        self._task: asyncio.Task[object] | None = None
        self._timer: asyncio.Task[None] | None = None
        self.expired = False

    async def __aenter__(self) -> clock_timeout:
        seconds = self._seconds
        if seconds is None:
            return self
        if type(self._clock) is RealClock:
            self._cm = asyncio.timeout(max(0.0, seconds))
            await self._cm.__aenter__()
            return self
        self._task = asyncio.current_task()
        self._timer = asyncio.ensure_future(self._fire(max(0.0, seconds)))
        return self

    async def _fire(self, seconds: float) -> None:
        await self._clock.sleep(seconds)
        self.expired = True
        if self._task is not None:
            self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._cm is not None:
            try:
                await self._cm.__aexit__(exc_type, exc, tb)
                return None
            finally:
                self.expired = self._cm.expired()
        timer = self._timer
        if timer is None:
            return None
        if not timer.done():
            timer.cancel()
        if self.expired and self._task is not None and self._task.uncancel() == 0 and (
            exc_type is asyncio.CancelledError
        ):
            raise TimeoutError(f"timed out after {self._seconds:g}s") from exc
        return None
