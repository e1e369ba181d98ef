"""A timeout measured on the injected :class:`~shoal.clock.Clock`, as a scope.

The Router bounds everything a call does (waiting for capacity, backoff sleeps and the
in-flight HTTP request) by the call's deadline. ``asyncio.timeout`` reads the event
loop's time, which a :class:`~shoal.clock.VirtualClock` does not move, so under a
virtual clock the scope arms a clock sleep that cancels the task instead; under the
real clock it is one ``loop.call_at`` timer handle (what ``asyncio.timeout`` does,
without its object machinery: this scope wraps every call on the hot path).

The handle runs in an empty context of its own, not a copy of the caller's: a
cancelled handle stays in the loop's timer heap until the deadline it was set for
(or the loop's clean-up of cancelled handles, ~100 later), and a copied context would
keep the call's observe scope alive there with it (its request and answer: measured
~10 extra objects per call surviving into older GC generations, and GC time with them).
"""

from __future__ import annotations

import asyncio
from contextvars import Context
from types import TracebackType

from shoal.clock import Clock, RealClock

__all__ = ["clock_timeout"]


class clock_timeout:
    """``async with clock_timeout(clock, seconds):`` raises ``TimeoutError`` on expiry.

    ``seconds=None`` never expires. Cancelling the caller from outside still cancels it
    (only the scope's own cancellation becomes ``TimeoutError``).
    """

    __slots__ = ("_clock", "_handle", "_seconds", "_task", "_timer", "expired")

    def __init__(self, clock: Clock, seconds: float | None) -> None:
        self._clock = clock
        self._seconds = seconds
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._timer: asyncio.Task[None] | None = None
        self.expired = False

    async def __aenter__(self) -> clock_timeout:
        seconds = self._seconds
        if seconds is None:
            return self
        self._task = asyncio.current_task()
        if type(self._clock) is RealClock:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_at(loop.time() + max(0.0, seconds), self._expire,
                                        context=Context())
            return self
        self._timer = asyncio.ensure_future(self._fire(max(0.0, seconds)))
        return self

    def _expire(self) -> None:
        self.expired = True
        if self._task is not None:
            self._task.cancel()

    async def _fire(self, seconds: float) -> None:
        await self._clock.sleep(seconds)
        self._expire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        handle, timer = self._handle, self._timer
        if handle is not None:
            handle.cancel()
        elif timer is not None and not timer.done():
            timer.cancel()
        if not self.expired or self._task is None:
            return
        # Our cancellation: undo it, and say it was the deadline, unless someone else
        # cancelled the task too (then their cancellation goes on).
        if self._task.uncancel() == 0 and exc_type is asyncio.CancelledError:
            raise TimeoutError(f"timed out after {self._seconds:g}s") from exc
