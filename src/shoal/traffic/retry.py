"""Retry as composable values: a backoff, a policy, and one budget per logical call.

:class:`Backoff` and :class:`RetryPolicy` are frozen values (compose them with
``replace``); :meth:`RetryPolicy.budget` starts a :class:`RetryBudget`, the mutable
state of ONE logical call across every layer and failover: the router hands the same
budget to every channel and fallback it tries, so attempts never multiply.

Delay rule for a retryable error, in order:

1. the provider's Retry-After (``ProviderError.retry_after``, already in seconds),
   capped at ``max_retry_after_s``; one that ends past the deadline means give up; a
   Retry-After of 0 (or a date already past) counts as none, as in the official SDKs;
2. otherwise exponential backoff with full jitter:
   ``uniform(0, min(cap, base × multiplier^k))`` where k is the number of retries
   already taken, while that ceiling fits in half the time left; past it, one last
   retry draws under half the time left and the next gives up (jitter=False waits the
   ceiling, so a ceiling cut to the time left gives up).

The budget gives up (``None``) when the error is not retryable, the attempts are
spent, or the delay would end at or past the call's deadline. ``attempts`` (16 by
default) is a cap: the deadline and the per-channel retry tokens
(:class:`shoal.traffic.retry_budget.ChannelRetryBudget`) are the working bounds.

``parse_retry_after`` lives at the provider edge (``shoal.providers.failures``), where
headers are read; it is re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shoal.clock import Clock, RealClock
from shoal.errors import (
    ConfigError,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    StreamInterrupted,
)
from shoal.providers.failures import parse_retry_after  # re-exported: one parser, at the edge

__all__ = [
    "DEFAULT_RETRY_ON",
    "NO_RETRY",
    "Backoff",
    "RetryBudget",
    "RetryPolicy",
    "parse_retry_after",
]

DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (
    RateLimited,
    ProviderUnavailable,
    ProviderTimeout,
    MalformedResponse,
    StreamInterrupted,
)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff
    And Jitter"): retry k waits ``rand() × min(cap, base × multiplier^k)``.

    ``rand`` returns a float in [0, 1); inject ``random.Random(seed).random`` for tests.
    ``jitter=False`` waits the full ceiling (deterministic, for tests and demos).
    """

    base: float = 0.5
    cap: float = 30.0
    multiplier: float = 2.0
    jitter: bool = True
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ConfigError(f"backoff base and cap must be >= 0, got {self.base}, {self.cap}")
        if self.multiplier < 1:
            raise ConfigError(f"backoff multiplier must be >= 1, got {self.multiplier}")

    def ceiling(self, retry: int) -> float:
        """The largest delay for retry number ``retry`` (0 for the first retry)."""
        if retry < 0:
            raise ConfigError(f"retry index must be >= 0, got {retry}")
        # Compare in log space: multiplier ** retry overflows long before it matters.
        if self.base == 0:
            return 0.0
        if self.multiplier > 1 and retry * math.log(self.multiplier) > math.log(
            max(self.cap, 1e-300) / self.base
        ):
            return self.cap
        return min(self.cap, self.base * self.multiplier**retry)

    def delay(self, retry: int, limit: float | None = None) -> float:
        """The wait before retry number ``retry``; ``limit`` (e.g. the time left before a
        deadline) caps the ceiling the jitter draws under."""
        ceiling = self.ceiling(retry)
        if limit is not None:
            ceiling = min(ceiling, max(0.0, limit))
        return self.rand() * ceiling if self.jitter else ceiling

    def replace(self, **changes: Any) -> Backoff:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one logical call may be retried.

    ``attempts`` counts every try, the first included (16 = 1 call + 15 retries), across
    all channels and fallbacks. It is a cap, sized so that ≥ 99.9% of calls succeed at a
    39% per-attempt failure rate in every run, not only on average (0.39^8 < 0.001 on
    average; 16 leaves room for attempts spent on a channel before failing over:
    docs/traffic.md, "Why 16 attempts"); the deadline and each channel's retry tokens
    are the bounds that usually apply.
    ``deadline_s`` bounds the whole call, waiting for capacity included (``None``: no
    deadline). ``retry_on`` lists the retryable error
    classes; anything else ends the call at once.
    """

    attempts: int = 16
    deadline_s: float | None = 120.0
    backoff: Backoff = field(default_factory=Backoff)
    retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"attempts must be >= 1 (the first call counts), got {self.attempts}")
        if self.deadline_s is not None and not (
            math.isfinite(self.deadline_s) and self.deadline_s > 0
        ):
            raise ConfigError(
                f"deadline_s must be a finite number of seconds > 0, or None for no "
                f"deadline, got {self.deadline_s!r}")
        if self.max_retry_after_s < 0:
            raise ConfigError(f"max_retry_after_s must be >= 0, got {self.max_retry_after_s}")

    def replace(self, **changes: Any) -> RetryPolicy:
        """A copy with some fields changed: ``policy.replace(attempts=2)``."""
        return dataclasses.replace(self, **changes)

    def is_retryable(self, error: BaseException) -> bool:
        return isinstance(error, self.retry_on)

    def budget(self, clock: Clock | None = None) -> RetryBudget:
        """Start the budget of one logical call, now."""
        return RetryBudget(self, clock if clock is not None else RealClock())


NO_RETRY = RetryPolicy(attempts=1)


class RetryBudget:
    """The retry state of one logical call, shared by every layer and failover.

    Call :meth:`next_delay` after each failed attempt: it records the attempt and says
    how long to wait before the next one, or ``None`` to give up.
    """

    __slots__ = ("_clock", "attempts", "deadline", "last_error", "policy", "retries",
                 "squeezed", "started")

    def __init__(self, policy: RetryPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self.started = clock.now()
        self.deadline: float | None = (
            None if policy.deadline_s is None else self.started + policy.deadline_s
        )
        self.attempts = 0  # failed attempts recorded so far
        self.retries = 0  # backoff steps taken (failover without waiting takes none)
        self.last_error: BaseException | None = None
        self.squeezed = False  # the one retry whose backoff the deadline cut is spent

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), ``None`` without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self._clock.now())

    @property
    def expired(self) -> bool:
        return self.deadline is not None and self._clock.now() >= self.deadline

    @property
    def attempts_left(self) -> int:
        return max(0, self.policy.attempts - self.attempts)

    def exhausted(self) -> bool:
        """True when no further attempt may start: attempts spent or deadline passed."""
        return self.attempts >= self.policy.attempts or self.expired

    def record_attempt(self, error: BaseException | None = None) -> bool:
        """Count a failed attempt that needs no delay decision (e.g. an auth failure on
        one channel before failing over); True when another attempt may follow."""
        self.attempts += 1
        if error is not None:
            self.last_error = error
        return not self.exhausted()

    def next_delay(self, error: BaseException, *, failover: bool = False,
                   elsewhere: bool = False) -> float | None:
        """Record a failed attempt; seconds to wait before the next, or ``None`` to stop.

        ``failover=True``: the next attempt goes to another channel, which need not
        wait for this channel's Retry-After or backoff, so the delay is 0.0 (the attempt
        still counts). ``elsewhere=True``: it goes to another channel after a backoff
        (every channel failed the call as often): the backoff, not this channel's
        Retry-After, which binds only the channel that sent it.
        """
        self.attempts += 1
        self.last_error = error
        if not self.policy.is_retryable(error) or self.attempts >= self.policy.attempts:
            return None
        if failover:
            delay: float | None = 0.0
        else:
            delay = self._backoff() if elsewhere else self._delay_for(error)
            self.retries += 1
        if delay is None or (self.deadline is not None
                             and self._clock.now() + delay >= self.deadline):
            return None
        return delay

    def _delay_for(self, error: BaseException) -> float | None:
        retry_after = error.retry_after if isinstance(error, ProviderError) else None
        # "Retry-After: 0" (or a date already past) is no wait to honour: backing off, as
        # the official SDKs do, keeps a server that says 0 under load from taking every
        # attempt within milliseconds.
        if retry_after is not None and retry_after > 0:
            return min(retry_after, self.policy.max_retry_after_s)
        return self._backoff()

    def _backoff(self) -> float | None:
        """The full-jitter wait before the next retry, or None to give up. While the
        backoff's ceiling fits in half the time left, the draw is the plain one. Past
        that, ONE last retry draws under half the time left (so it has the other half
        to finish) and the next such retry gives up: drawn under the time left each
        time, the waits would halve with every retry and spend the remaining attempts
        in the deadline's last moments (an independent provider answering 429 saw 7 of
        16 requests in the last second of a 10 s deadline, 0–10 ms apart).
        ``jitter=False`` waits the whole ceiling, so a ceiling cut gives up."""
        backoff, remaining = self.policy.backoff, self.remaining()
        if remaining is None or not backoff.jitter:
            return backoff.delay(self.retries, remaining)
        half = remaining / 2
        if backoff.ceiling(self.retries) <= half:
            return backoff.delay(self.retries)
        if self.squeezed:
            return None
        self.squeezed = True
        return backoff.delay(self.retries, half)

    def __repr__(self) -> str:
        return (
            f"RetryBudget(attempts={self.attempts}/{self.policy.attempts}, "
            f"remaining={self.remaining()})"
        )
