"""Adaptive concurrency: learn a provider's unknown concurrency cap from its answers.

AIMD with slow start and a learned ceiling, driving a limiter's capacity. The rules,
exactly (``L`` the limit, ``C`` the learned ceiling, ``n`` the in-flight count the
limiter reported when the call was admitted — ``Permit.in_flight`` — or ``⌊L⌋`` when
the caller does not pass it; ``rtt`` the smoothed latency, 1 s until measured):

Success (``on_success(latency_s, n)``):
  * ``srtt ← latency`` for the first, then ``srtt ← 7/8·srtt + 1/8·latency``;
  * a success slower than ``latency_tolerance × srtt`` (before the update) is a sign
    of queueing at the provider: it changes nothing else;
  * a success with ``2n < ⌊L⌋`` shows the channel is not busy: no growth (so a quiet
    channel does not inflate a limit it never tested);
  * probing (``L = C + 1``): the probe is proven by the first success with ``n > C``
    (or, without ``n``, after ``C + 1`` successes): ``C ← C + 1``, probe gap halves
    (at least 1 rtt), next probe one gap later;
  * slow start (no 429 seen yet): ``L ← min(max_limit, L + 1)`` — doubles per rtt;
  * below the ceiling (``L < C``, or no ceiling): ``L ← min(C or max_limit, L + 1/L)``
    — about +1 per rtt;
  * at the ceiling, when the next probe is due and ``n ≥ C``: probe, ``L ← C + 1``.

Rate limited (``on_rate_limited(n)``), unless another decrease happened less than one
rtt ago (the same overshoot reported by several calls):
  * when slow starting, probing, without a ceiling, or ``n > C``: the provider took
    ``n − 1`` but not ``n``: ``L ← C ← max(min_limit, min(n − 1, ⌊L⌋))``; a failed probe
    doubles the probe gap (up to ``max_probe_interval_s``);
  * otherwise (a 429 at a level believed safe: the cap shrank, or others share it):
    ``L ← max(min_limit, ⌊n·beta⌋)``, ``C ← max(L, n − 1)``;
  * slow start ends; the next probe is due one probe gap (``probe_after_rtts`` rtts at
    first) later.

Overloaded (``on_overload()``: 503/529/timeouts), with the same one-rtt suppression:
``L ← max(min_limit, ⌊L·beta⌋)``; the ceiling is kept; slow start ends.

The limiter's capacity is ``⌊L⌋``; each change emits ``limit_change``. When the
limiter is shared (Redis), the cap is one value for every process: before each
update the controller adopts a cap another process wrote (lower: it saw a 429, so
``C`` drops to it; higher: a probe succeeded there).
"""

from __future__ import annotations

import math

from shoal.clock import Clock, RealClock
from shoal.errors import ConfigError
from shoal.observe.events import LIMIT_CHANGE, EventBus
from shoal.traffic.limits import Limiter

__all__ = ["AdaptiveConcurrency"]

_SRTT_GAIN = 0.125
_DEFAULT_RTT = 1.0


class AdaptiveConcurrency:
    """AIMD controller for one channel's concurrency cap (see the module docstring)."""

    def __init__(
        self,
        limiter: Limiter,
        *,
        initial: int = 1,
        min_limit: int = 1,
        max_limit: int = 64,
        beta: float = 0.5,
        latency_tolerance: float | None = 2.0,
        probe_after_rtts: float = 20.0,
        max_probe_interval_s: float = 600.0,
        clock: Clock | None = None,
        events: EventBus | None = None,
    ) -> None:
        if not 1 <= min_limit <= initial <= max_limit:
            raise ConfigError(
                f"need 1 <= min_limit <= initial <= max_limit, got {min_limit}, {initial}, "
                f"{max_limit}"
            )
        if not 0 < beta < 1:
            raise ConfigError(f"beta must be in (0, 1), got {beta}")
        if latency_tolerance is not None and latency_tolerance <= 1:
            raise ConfigError(f"latency_tolerance must be > 1 or None, got {latency_tolerance}")
        if probe_after_rtts < 1 or max_probe_interval_s <= 0:
            raise ConfigError("probe_after_rtts must be >= 1 and max_probe_interval_s > 0")
        self.limiter = limiter
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.beta = beta
        self.latency_tolerance = latency_tolerance
        self.probe_after_rtts = probe_after_rtts
        self.max_probe_interval_s = max_probe_interval_s
        self._clock: Clock = clock if clock is not None else RealClock()
        self._events = events
        self._limit = float(initial)
        self._ceiling: int | None = None
        self._slow_start = True
        self._srtt: float | None = None
        self._gap = probe_after_rtts  # in rtts
        self._next_probe_at: float | None = None
        self._probing = False
        self._probe_successes = 0
        self._decreased_at: float | None = None
        self._applied = initial
        limiter.seed_capacity(initial)

    # -- read-only view ----------------------------------------------------------------

    @property
    def limit(self) -> int:
        """The concurrency cap in force (``⌊L⌋``)."""
        return int(self._limit)

    @property
    def ceiling(self) -> int | None:
        """The highest level known to be accepted, once a 429 taught one."""
        return self._ceiling

    @property
    def slow_start(self) -> bool:
        return self._slow_start

    @property
    def probing(self) -> bool:
        return self._probing

    @property
    def srtt(self) -> float | None:
        return self._srtt

    @property
    def next_probe_at(self) -> float | None:
        return self._next_probe_at

    def __repr__(self) -> str:
        return (
            f"AdaptiveConcurrency({self.limiter.name!r}, limit={self._limit:.2f}, "
            f"ceiling={self._ceiling}, slow_start={self._slow_start}, probing={self._probing})"
        )

    # -- signals -----------------------------------------------------------------------

    def on_success(self, latency_s: float, in_flight: int | None = None) -> None:
        """A call admitted at ``in_flight`` (its ``Permit.in_flight``) succeeded."""
        self._adopt()
        srtt = self._srtt
        self._srtt = latency_s if srtt is None else srtt + _SRTT_GAIN * (latency_s - srtt)
        tolerance = self.latency_tolerance
        if srtt is not None and tolerance is not None and latency_s > tolerance * srtt:
            return
        limit = int(self._limit)
        if in_flight is not None and 2 * in_flight < limit:
            return
        now = self._clock.now()
        ceiling = self._ceiling
        if self._probing and ceiling is not None:
            self._probe_successes += 1
            proven = in_flight > ceiling if in_flight is not None else (
                self._probe_successes > ceiling
            )
            if proven:
                self._probing = False
                self._ceiling = ceiling + 1
                self._gap = max(1.0, self._gap / 2)
                self._schedule_probe(now)
            return
        if self._slow_start:
            self._set(min(float(self.max_limit), self._limit + 1), "slow_start")
            return
        top = ceiling if ceiling is not None else self.max_limit
        if self._limit < top:
            self._set(min(float(top), self._limit + 1 / self._limit), "increase")
            return
        due = self._next_probe_at is not None and now >= self._next_probe_at
        if (
            ceiling is not None
            and ceiling < self.max_limit
            and due
            and (in_flight is None or in_flight >= ceiling)
        ):
            self._probing = True
            self._probe_successes = 0
            self._set(float(ceiling + 1), "probe")

    def on_rate_limited(self, in_flight: int | None = None) -> None:
        """A call admitted at ``in_flight`` got a 429 (rate limited / overloaded)."""
        self._adopt()
        now = self._clock.now()
        if self._suppressed(now):
            return
        observed = in_flight if in_flight is not None and in_flight > 0 else int(self._limit)
        ceiling = self._ceiling
        if self._slow_start or self._probing or ceiling is None or observed > ceiling:
            new = max(self.min_limit, min(observed - 1, int(self._limit)))
            if self._probing:
                self._gap = min(self._gap * 2, self._max_gap_rtts())
            self._ceiling = new
        else:
            new = max(self.min_limit, math.floor(observed * self.beta))
            self._ceiling = max(new, observed - 1)
        self._slow_start = False
        self._probing = False
        self._decreased_at = now
        self._schedule_probe(now)
        self._set(float(new), "rate_limited")

    def on_overload(self) -> None:
        """The provider is overloaded (503/529) or timing out: back off multiplicatively."""
        self._adopt()
        now = self._clock.now()
        if self._suppressed(now):
            return
        self._slow_start = False
        self._probing = False
        self._decreased_at = now
        if self._ceiling is not None:
            self._schedule_probe(now)
        self._set(float(max(self.min_limit, math.floor(self._limit * self.beta))), "overload")

    # -- internals ---------------------------------------------------------------------

    def _rtt(self) -> float:
        return self._srtt if self._srtt is not None else _DEFAULT_RTT

    def _max_gap_rtts(self) -> float:
        return max(1.0, self.max_probe_interval_s / self._rtt())

    def _schedule_probe(self, now: float) -> None:
        self._next_probe_at = now + min(self._gap * self._rtt(), self.max_probe_interval_s)

    def _suppressed(self, now: float) -> bool:
        if self._decreased_at is None:
            return False
        window = self._srtt if self._srtt is not None else 0.0
        return now - self._decreased_at < window

    def _set(self, value: float, reason: str) -> None:
        before = int(self._limit)
        self._limit = value
        after = int(value)
        if after != before or after != self._applied:
            self._applied = after
            self.limiter.set_capacity(after)
            events = self._events
            if events is not None and events.active:
                fields = {"from": before, "to": after, "reason": reason}
                events.publish(LIMIT_CHANGE, fields, channel=self.limiter.name)

    def _adopt(self) -> None:
        """Take over a cap another process wrote to a shared limiter."""
        shared = self.limiter.capacity
        if shared is None or shared == self._applied:
            return
        before = self._applied
        self._applied = shared
        self._limit = float(shared)
        self._probing = False
        if shared < before:
            self._slow_start = False
            self._ceiling = shared
            self._decreased_at = self._clock.now()
            self._schedule_probe(self._clock.now())
        elif self._ceiling is not None:
            self._ceiling = max(self._ceiling, shared)
