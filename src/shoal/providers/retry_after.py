"""The Retry-After parser: how long a provider asked to wait, from its answer's headers
(``retry-after-ms``, seconds, HTTP-date), as the official SDKs read them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["header", "parse_retry_after"]


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` (lower case), matched case-insensitively."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, val in headers.items():
        if key.lower() == name:
            return val
    return None


def parse_retry_after(headers: Mapping[str, str], now_wall: float) -> float | None:
    """Seconds to wait as the server asked, or ``None`` when it did not say (validly).

    Order, as the official OpenAI and Anthropic SDKs read them: ``retry-after-ms``
    (float milliseconds), then ``retry-after`` as float seconds, then as an HTTP-date
    (relative to ``now_wall``, epoch seconds; a date in the past means 0). Header
    names are matched case-insensitively.
    """
    ms = header(headers, "retry-after-ms")
    if ms is not None:
        try:
            value = float(ms.strip())
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value / 1000.0
    raw = header(headers, "retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; an HTTP-date is always GMT anyway
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_wall)
