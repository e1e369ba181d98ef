"""The simulator's Go-style durations (OpenAI's ``x-ratelimit-reset-*`` values)."""

from __future__ import annotations

import pytest

from shoal.sim.limits import go_duration


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"),
    (-1.5, "0s"),
    (0.0001, "1ms"),  # never "0ms" for a positive wait
    (0.012, "12ms"),
    (0.9994, "999ms"),
    (0.9996, "1s"),  # rounds up to a whole second: Go prints 1s, not 1000ms
    (1, "1s"),
    (1.5, "1.5s"),
    (59.9994, "59.999s"),
    (59.9996, "1m0s"),  # rounds up to 60 s: carried into the minutes, not "60s"
    (60, "1m0s"),
    (90.5, "1m30.5s"),
    (119.9999, "2m0s"),
    (179.56, "2m59.56s"),
    (360, "6m0s"),
    (3599.9996, "1h0m0s"),  # carried through seconds and minutes into the hours
    (3600, "1h0m0s"),
    (3661.25, "1h1m1.25s"),
    (7199.9999, "2h0m0s"),
], ids=str)
def test_go_duration_matches_go_at_the_boundaries(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
