"""What the simulator saw: counters, in-flight peaks and a bounded per-request log."""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RequestRecord", "SimStats", "StatsRecorder"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the simulator handled it.

    ``status`` is the HTTP status sent (0 when none was: a hang the client gave up on).
    ``fault`` names the fault applied (``None`` for a normal answer; ``"429"`` for a
    limit rejection, ``"cap"``/``"rpm"``/``"tpm"`` saying which limit).
    ``start``/``end`` are the simulator clock's monotonic seconds.
    ``metadata`` is the OpenAI body's ``metadata`` or Anthropic's ``metadata.user_id``
    (as ``{"user_id": ...}``); ``tag`` the ``x-shoal-tag`` header; ``retry_count`` the
    official SDKs' ``x-stainless-retry-count`` header.
    """

    id: str
    path: str
    model: str
    stream: bool
    status: int
    fault: str | None
    start: float
    end: float
    prompt_tokens: int
    completion_tokens: int
    metadata: dict[str, Any] | None = None
    tag: str | None = None
    retry_count: int | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class SimStats:
    """A snapshot of the simulator's counters (``SimServer.stats()``, ``GET /_sim/stats``).

    ``max_in_flight`` is the most requests the server was handling at once, counting
    those it was about to reject: a client that respects a cap of N never makes it
    exceed N. ``rate_limited`` counts 429 responses of any cause.
    """

    total_requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    rate_limited: int = 0
    max_in_flight: int = 0
    in_flight: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: tuple[RequestRecord, ...] = ()

    def to_json(self, *, log: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "total_requests": self.total_requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "rate_limited": self.rate_limited,
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "faults": dict(self.faults),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if log:
            out["requests"] = [dataclasses.asdict(r) for r in self.requests]
        return out


class StatsRecorder:
    """Mutable counters behind :class:`SimStats`; cheap enough for thousands of requests/s."""

    __slots__ = (
        "by_status",
        "completion_tokens",
        "faults",
        "in_flight",
        "log",
        "max_in_flight",
        "prompt_tokens",
        "rate_limited",
        "total",
    )

    def __init__(self, log_size: int) -> None:
        self._zero(log_size)

    def _zero(self, log_size: int) -> None:
        self.log: deque[RequestRecord] = deque(maxlen=log_size)
        self.total = 0
        self.by_status: dict[int, int] = {}
        self.faults: dict[str, int] = {}
        self.rate_limited = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def enter(self) -> None:
        self.total += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self, record: RequestRecord) -> None:
        self.in_flight -= 1
        status = record.status
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status == 429:
            self.rate_limited += 1
        if record.fault is not None:
            self.faults[record.fault] = self.faults.get(record.fault, 0) + 1
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        self.log.append(record)

    def reset(self, log_size: int) -> None:
        """Zero every counter; requests still in flight stay counted as in flight."""
        in_flight = self.in_flight
        self._zero(log_size)
        self.in_flight = in_flight
        self.max_in_flight = in_flight

    def snapshot(self, *, log: bool = True) -> SimStats:
        return SimStats(
            total_requests=self.total,
            by_status=dict(self.by_status),
            rate_limited=self.rate_limited,
            max_in_flight=self.max_in_flight,
            in_flight=self.in_flight,
            faults=dict(self.faults),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            requests=tuple(self.log) if log else (),
        )
