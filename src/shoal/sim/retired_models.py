"""Models the imitated providers have retired: from the day on, a 404 (PROVIDERS.md §2).

Anthropic publishes each model's retirement date (docs.anthropic.com/en/docs/resources/
model-deprecations; the official SDK warns with the same dates on every call). From that
day the Messages API answers ``404 not_found_error`` ``"model: <name>"``, so the
``anthropic`` style does too. The table is the simulator's own, written from the
provider's page and not read from shoal's catalog: a simulator that took the client's
dates would agree with any mistake in them. "Today" is the simulator clock's UTC date, or
``SimConfig.today`` to rehearse a day (``shoal sim --config`` with ``today = "2026-12-01"``).
"""

from __future__ import annotations

import datetime

from shoal.sim.styles import Refusal

__all__ = ["ANTHROPIC_RETIRED", "check_retired"]

ANTHROPIC_RETIRED: dict[str, datetime.date] = {
    "claude-mythos-preview": datetime.date(2026, 6, 30),
    "claude-sonnet-4-5": datetime.date(2026, 11, 30),
    "claude-sonnet-4-5-20250929": datetime.date(2026, 11, 30),
    "claude-opus-4-5": datetime.date(2027, 1, 22),
    "claude-opus-4-5-20251101": datetime.date(2027, 1, 22),
}


def check_retired(model: str, style: str, today: datetime.date) -> None:
    """Refuse ``model`` as ``style``'s provider does once it has retired it."""
    if style != "anthropic":
        return
    retired_on = ANTHROPIC_RETIRED.get(model)
    if retired_on is not None and today >= retired_on:
        raise Refusal(f"model: {model}", "model", status=404)
