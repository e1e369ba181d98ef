"""What the simulator saw: counters, in-flight peaks and a bounded per-request log."""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RequestRecord", "SimStats", "StatsRecorder"]

_MAX_KEYS = 1_000_000  # idempotency keys remembered until a reset (memory bound)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the simulator handled it.

    ``status`` is the HTTP status sent (0 when none was: a hang the client gave up on).
    ``fault`` names the fault applied (``None`` for a normal answer; ``"429"`` for a
    limit rejection, ``"cap"``/``"rpm"``/``"tpm"`` saying which limit).
    ``start``/``end`` are the simulator clock's monotonic seconds.
    ``metadata`` is the OpenAI body's ``metadata`` or Anthropic's ``metadata.user_id``
    (as ``{"user_id": ...}``); ``tag`` the ``x-shoal-tag`` header; ``retry_count`` the
    official SDKs' ``x-stainless-retry-count`` header. ``key`` is the request's
    ``Idempotency-Key`` header, else its ``x-shoal-tag``; ``complete`` is true when the
    whole answer was sent without a fault (a usable completion).
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
    key: str | None = None
    complete: bool = False

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class SimStats:
    """A snapshot of the simulator's counters (``SimServer.stats()``, ``GET /_sim/stats``).

    ``max_in_flight`` is the most requests the server was handling at once, counting
    those it was about to reject: a client that respects a cap of N never makes it
    exceed N. ``rate_limited`` counts 429 responses of any cause. ``successes`` counts
    answers sent whole without a fault. ``billed_prompt_tokens`` /
    ``billed_completion_tokens`` are what a provider would bill: the usage of every
    HTTP 200 answer it started, cut, malformed or abandoned ones included (completion =
    tokens actually generated and sent). ``completions_by_key`` counts the complete
    answers per idempotency key; ``duplicate_completions`` is the sum over keys of
    (count - 1).
    """

    total_requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    rate_limited: int = 0
    max_in_flight: int = 0
    in_flight: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    successes: int = 0
    billed_prompt_tokens: int = 0
    billed_completion_tokens: int = 0
    duplicate_completions: int = 0
    completions_by_key: dict[str, int] = field(default_factory=dict)
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
            "successes": self.successes,
            "billed_prompt_tokens": self.billed_prompt_tokens,
            "billed_completion_tokens": self.billed_completion_tokens,
            "duplicate_completions": self.duplicate_completions,
        }
        if log:
            out["completions_by_key"] = dict(self.completions_by_key)
            out["requests"] = [dataclasses.asdict(r) for r in self.requests]
        return out


class StatsRecorder:
    """Mutable counters behind :class:`SimStats`; cheap enough for thousands of requests/s."""

    __slots__ = (
        "billed_completion",
        "billed_prompt",
        "by_key",
        "by_status",
        "completion_tokens",
        "duplicates",
        "faults",
        "in_flight",
        "log",
        "max_in_flight",
        "prompt_tokens",
        "rate_limited",
        "successes",
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
        self.successes = 0
        self.billed_prompt = 0
        self.billed_completion = 0
        self.by_key: dict[str, int] = {}
        self.duplicates = 0

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
        if status == 200:
            self.billed_prompt += record.prompt_tokens
            self.billed_completion += record.completion_tokens
        if record.complete:
            self.successes += 1
            key = record.key
            if key is not None and (key in self.by_key or len(self.by_key) < _MAX_KEYS):
                seen = self.by_key.get(key, 0)
                self.by_key[key] = seen + 1
                if seen:
                    self.duplicates += 1
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
            successes=self.successes,
            billed_prompt_tokens=self.billed_prompt,
            billed_completion_tokens=self.billed_completion,
            duplicate_completions=self.duplicates,
            completions_by_key=dict(self.by_key) if log else {},
            requests=tuple(self.log) if log else (),
        )
