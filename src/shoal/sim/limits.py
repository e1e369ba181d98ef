"""The simulator's RPM/TPM windows and the rate-limit headers real providers send.

A window is sliding: it holds the admitted requests (or their tokens) of the last
``window`` seconds; a request that would take it over its limit is refused with the
time until enough of it expires. Requests refused do not count.
"""

from __future__ import annotations

import math
import time
from collections import deque
from email.utils import formatdate

__all__ = ["RateWindow", "go_duration", "retry_after_form_headers", "retry_headers", "rfc3339"]


class RateWindow:
    """A sliding window of ``(time, amount)`` with a cap on the total amount."""

    __slots__ = ("events", "limit", "total", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        events = self.events
        while events and events[0][0] <= horizon:
            self.total -= events.popleft()[1]

    def wait(self, now: float, amount: int) -> float:
        """Seconds until *amount* fits (0.0 = fits now; ``window`` if it never fits)."""
        self._prune(now)
        if self.total + amount <= self.limit:
            return 0.0
        if amount > self.limit:
            return self.window
        excess = self.total + amount - self.limit
        for t, n in self.events:
            excess -= n
            if excess <= 0:
                return max(t + self.window - now, 0.001)
        return self.window

    def add(self, now: float, amount: int) -> None:
        self.events.append((now, amount))
        self.total += amount

    def remaining_at(self, now: float) -> int:
        self._prune(now)
        return max(self.limit - self.total, 0)

    def reset_in(self, now: float) -> float:
        """Seconds until the oldest entry leaves the window (0 when empty)."""
        if not self.events:
            return 0.0
        return max(self.events[0][0] + self.window - now, 0.0)


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration``, as OpenAI's reset headers do: 12ms, 1s, 6m0s."""
    if seconds <= 0:
        return "0s"
    # Round once, to whole milliseconds, before splitting: 59.9996 s is 60000 ms, which
    # Go prints as 1m0s (not 60s), and 0.9996 s is 1s (not 1000ms).
    ms = max(round(seconds * 1000), 1)
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    sec_text = (f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)) + "s"
    if hours:
        return f"{hours}h{minutes}m{sec_text}"
    if minutes:
        return f"{minutes}m{sec_text}"
    return sec_text


def rfc3339(epoch: float) -> str:
    """UTC timestamp as Anthropic's reset headers carry it: 2024-05-17T12:30:05Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(epoch)))


def retry_headers(seconds: float, *, with_ms: bool) -> dict[str, str]:
    """``retry-after`` in whole seconds (rounded up); ``retry-after-ms`` when *with_ms*."""
    out = {"retry-after": str(max(math.ceil(seconds), 0))}
    if with_ms:
        out["retry-after-ms"] = str(max(round(seconds * 1000), 0))
    return out


def retry_after_form_headers(form: str, seconds: float, *, wall: float) -> dict[str, str]:
    """The Retry-After of a ``429:<form>`` fault, *seconds* after *wall* (epoch seconds).

    ``seconds``: ``retry-after: 1`` (rounded up); ``float``: ``retry-after: 1.00``;
    ``date``: an HTTP-date (rounded up to the next whole second); ``ms``: only
    ``retry-after-ms``; ``none``: no header at all.
    """
    if form == "seconds":
        return {"retry-after": str(max(math.ceil(seconds), 0))}
    if form == "float":
        return {"retry-after": f"{max(seconds, 0.0):.2f}"}
    if form == "date":
        return {"retry-after": formatdate(math.ceil(wall + seconds), usegmt=True)}
    if form == "ms":
        return {"retry-after-ms": str(max(round(seconds * 1000), 0))}
    return {}
