"""RetryNotices: one line per channel every ``every_s`` seconds, whatever the retry rate."""

from __future__ import annotations

import io

from rich.console import Console

from shoal.cli.notices import RetryNotices
from shoal.observe.events import Event


def _retry(channel: str, attempt: int) -> Event:
    return Event("retry", 0.0, channel, "m", {"step": "ask", "error": "RateLimited",
                                              "attempt": attempt, "delay_s": 0.8})


def test_one_line_per_channel_per_interval() -> None:
    out = io.StringIO()
    now = [0.0]
    notices = RetryNotices(Console(file=out, width=200), every_s=10.0, clock=lambda: now[0])
    for attempt in range(1, 6):  # five retries within the interval: one line
        notices(_retry("a", attempt))
        now[0] += 1.0
    notices(_retry("b", 1))  # another channel: its own line
    now[0] = 10.5
    notices(_retry("a", 6))  # the interval passed: a line again
    lines = out.getvalue().splitlines()
    assert lines == [
        "step ask: retrying on a after RateLimited (attempt 1, next try in 0.8s); the call "
        "gives up at its deadline",
        "step ask: retrying on b after RateLimited (attempt 1, next try in 0.8s); the call "
        "gives up at its deadline",
        "step ask: retrying on a after RateLimited (attempt 6, next try in 0.8s); the call "
        "gives up at its deadline",
    ]
