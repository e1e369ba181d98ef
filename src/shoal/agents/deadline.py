"""Timeouts measured on the injected :class:`~shoal.clock.Clock` (never the wall clock)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from shoal.clock import Clock

__all__ = ["with_timeout"]

T = TypeVar("T")


async def with_timeout(clock: Clock, aw: Awaitable[T], seconds: float | None) -> T:
    """Await ``aw``; after ``seconds`` of clock time cancel it and raise ``TimeoutError``.

    Works under :class:`~shoal.clock.VirtualClock`, unlike ``asyncio.timeout``, which
    reads the event loop's real time. Cancelling the caller cancels ``aw`` too.
    """
    if seconds is None:
        return await aw
    work = asyncio.ensure_future(aw)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        raise
    finally:
        if not timer.done():
            timer.cancel()
    if work.done():
        return work.result()
    work.cancel()
    # What the cancelled work raises while unwinding is moot: the timeout is the answer.
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    raise TimeoutError(f"timed out after {seconds:g}s")
