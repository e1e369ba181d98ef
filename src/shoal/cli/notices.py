"""What a run without live progress (``--no-progress``: a CI log, a pipe) says while a call
keeps being retried. Without it the screen stayed silent for up to the call's deadline
(two minutes by default) against a provider answering 503 to everything, and then one
error told the whole story at once (a newcomer's finding).

One line on stderr when a model call is retried, at most one per channel every
``every_s`` seconds: which step, which channel, after which error, the attempt, and how
long the call waits before the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.observe.events import Event

__all__ = ["RetryNotices"]


class RetryNotices:
    """A ``retry`` event subscriber printing throttled lines to ``console``."""

    def __init__(self, console: Console, *, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        now = self._clock()
        last = self._last.get(event.channel)
        if last is not None and now - last < self.every_s:
            return
        self._last[event.channel] = now
        data = event.data
        step = data.get("step") or data.get("agent")
        who = f"step {step}" if step else f"a call to {event.model}"
        wait = data.get("delay_s")
        after = f", next try in {wait:.1f}s" if isinstance(wait, int | float) and wait else ""
        self.console.print(
            f"{who}: retrying on {event.channel} after {data.get('error', 'an error')} "
            f"(attempt {data.get('attempt', '?')}{after}); the call gives up at its deadline",
            markup=False, highlight=False, soft_wrap=True)
