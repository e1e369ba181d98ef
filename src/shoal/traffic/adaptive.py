"""Adaptive concurrency: learn a provider's unknown concurrency cap from its answers.

AIMD with slow start and a learned ceiling, driving a limiter's capacity. Notation:
``L`` the limit (a float; the limiter's cap is ``⌊L⌋``), ``C`` the learned ceiling
(none until the first 429), ``n`` the in-flight count when the call was admitted
(``Permit.in_flight``, itself included; optional), ``rtt`` the smoothed latency
(1 s until measured). The rules, exactly:

Success — ``on_success(latency_s, n)``, in this order:
  1. ``srtt ← latency`` the first time, then ``srtt ← srtt + (latency − srtt)/8``.
  2. Slow start: ``max_ok ← max(max_ok, n)`` (the best level proven so far).
     After slow start, within ``1.1 rtt`` of its end, a success with
     ``C < n ≤ upper`` is a late proof (a call admitted during slow start):
     ``C ← L ← C + 1``; stop.
  3. Slower than ``latency_tolerance × srtt`` (srtt before step 1): queueing at the
     provider; stop.
  4. ``2n < ⌊L⌋``: the channel is not busy, its level proves nothing; stop.
  5. Probing (``L = C + 1``): proven by a success with ``n > C`` (without ``n``: by
     ``C + 1`` successes while probing): ``C ← C + 1``, ``gap ← max(1, gap/2)``, next
     probe one gap later. Stop either way.
  6. Slow start: ``L ← min(max_limit, L + 1)`` (doubles per rtt).
  7. ``L < C`` (or ``L < max_limit`` without a ceiling): ``L ← min(C, L + 1/L)``
     (about +1 per rtt).
  8. At the ceiling, when the next probe is due, ``n ≥ C`` and ``C < max_limit``:
     probe, ``L ← C + 1``.

Rate limited — ``on_rate_limited(n)``:
  1. ``n > ⌊L⌋``: the call was admitted above today's limit, an overshoot already
     cut; ignore. Without ``n``: ignore within one rtt of the last decrease, and take
     ``n = ⌊L⌋``.
  1b. Among the latest 128 answers, at least 3 successes were admitted at ``≥ n``,
     and twice as many as the 429s at ``≥ n``: the provider has just
     served this level repeatedly, so the 429 is not its concurrency cap (a rate
     limit, other clients, a storm's random 429s; above a real cap nearly every call
     is refused): no change, returns False (the caller honours Retry-After).
  2. Ending slow start: the provider took ``n − 1`` but not ``n``:
     ``new ← upper ← min(n − 1, ⌊L⌋)``, and when a level was proven,
     ``new ← min(new, max_ok + 1)`` (levels are noisy — admission and arrival at the
     provider differ — so start one above the proven level, and let late proofs climb
     to ``upper``). After slow start: ``new ← ⌊L⌋ − 1`` (one level per 429; a failed
     probe returns to ``C``). Any 429 closes the late-proof window.
  3. Returns True when the limit went down (``new < ⌊L⌋``): the 429 is explained by
     our own overshoot, so the call may queue again at once.
  4. A failed probe doubles the gap (up to ``max_probe_interval_s``).
  5. ``C ← L ← max(min_limit, new)``; slow start and probing end; the next probe is
     due ``gap × rtt`` later (``gap`` starts at ``probe_after_rtts``).

Overloaded — ``on_overload(admitted_at)`` (529/overloaded, 503, timeouts): not a cap
signal. Ignored within one rtt (1 s until measured) of the last decrease, and for a
call admitted before it (one incident, one cut); else ``L ← max(min_limit, ⌊beta·L⌋)``;
``C`` is kept, so step 7 climbs back by additive increase; slow start and probing end.

So after discovery a channel runs at its cap and probes above it at exponentially
spaced times: a constant cap costs one 429 per probe, about log2 of the run length
in rtts. Each change of ``⌊L⌋`` emits ``limit_change``. When the limiter is shared
(Redis) the cap is one value for all processes: before each update the controller
adopts a cap another process wrote as its own ``L`` and ``C`` (that process
learned it: a 429, a probe or its slow start), ends slow start, and schedules its
next probe one gap later.
"""

from __future__ import annotations

import math
from collections import deque

from shoal.clock import Clock, RealClock
from shoal.errors import ConfigError
from shoal.observe.events import LIMIT_CHANGE, EventBus
from shoal.traffic.limits import Limiter

__all__ = ["AdaptiveConcurrency"]

_SRTT_GAIN = 0.125
_DEFAULT_RTT = 1.0
_LATE_PROOF_RTTS = 1.1
_PROOF_WINDOW = 128  # the latest answers (successes and 429s) whose levels count
_PROOFS_AGAINST_CAP = 3  # successes at >= n among them that make a 429 at n not a cap
_SERVED_PER_REFUSED = 2  # ... provided they outnumber the 429s at >= n this many times


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
        probe_after_rtts: float = 30.0,
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
        self._max_ok = 0  # highest in-flight level a slow-start success proved
        self._exit_at: float | None = None  # when slow start ended (late proofs window)
        self._exit_upper = 0  # the exit 429's n - 1: late proofs stay at or under it
        self._applied = initial
        # In-flight levels of the latest answers (served or 429): a 429 at a level the
        # provider has just served several times over is not its concurrency cap (rate
        # limits, other clients, a storm's random 429s); without this a 10% rate of random
        # 429s ratchets the ceiling down one level at a time to 1.
        self._answers: deque[tuple[int, bool]] = deque(maxlen=_PROOF_WINDOW)  # (n, served)
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
        if in_flight is not None:
            self._answers.append((in_flight, True))
        if in_flight is not None and self._proof(in_flight):
            return
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
                self.limiter.set_capacity(self._applied, ceiling=self._ceiling)  # share it
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

    def on_rate_limited(self, in_flight: int | None = None) -> bool:
        """A call admitted at ``in_flight`` got a 429 (rate limited / overloaded).

        Returns True when the 429 is explained by the limit having been above the
        provider's cap: the limit is now below the level that failed, so the call may
        queue again at once instead of waiting out a Retry-After. False when even the
        lowest limit was refused (the cause is elsewhere: RPM, other clients)."""
        self._adopt()
        now = self._clock.now()
        if in_flight is not None and in_flight > 0:
            if in_flight > int(self._limit):
                return True  # admitted above today's limit: an overshoot we already cut
            self._answers.append((in_flight, False))
            if self._served_despite(in_flight):
                return False  # this level was just served, repeatedly: not a cap 429
            observed = in_flight
        elif self._suppressed(now):
            return True  # the overshoot the last decrease already answered
        else:
            observed = int(self._limit)
        limit = int(self._limit)
        self._exit_at = None  # a 429 after slow start ends the late proofs
        if self._slow_start:
            # The provider took n - 1 but not n. Levels are noisy (admission and arrival
            # order differ; calls answered with 429 still count in flight), so the cap
            # lies between the best level proven so far and n - 1: start one above the
            # proven level; proofs arriving within an rtt climb from there (_proof).
            new = min(observed - 1, limit)
            self._exit_at = now
            self._exit_upper = new
            if self._max_ok:
                new = min(new, self._max_ok + 1)
        else:
            new = limit - 1  # one level per 429: n is too noisy to jump by
        new = max(self.min_limit, new)
        if self._probing:
            self._gap = min(self._gap * 2, self._max_gap_rtts())
        self._ceiling = new
        self._slow_start = False
        self._probing = False
        self._decreased_at = now
        self._schedule_probe(now)
        self._set(float(new), "rate_limited")
        return new < limit

    def on_overload(self, admitted_at: float | None = None) -> None:
        """The provider is overloaded (529, 503) or timing out: not a cap signal. Halve
        the limit, keep the learned ceiling (additive increase climbs back to it).

        Concurrent overloads from one incident count once: ignored within one rtt of
        the last decrease and, when ``admitted_at`` (the failed call's admission time on
        this controller's clock) is given, for a call admitted before that decrease."""
        self._adopt()
        now = self._clock.now()
        if self._suppressed(now):
            return
        decreased = self._decreased_at
        if admitted_at is not None and decreased is not None and admitted_at < decreased:
            return  # it went out at the old level: the last cut already answered it
        self._slow_start = False
        self._probing = False
        self._exit_at = None
        self._decreased_at = now
        if self._ceiling is not None:
            self._schedule_probe(now)
        self._set(float(max(self.min_limit, math.floor(self._limit * self.beta))), "overload")

    # -- internals ---------------------------------------------------------------------

    def _proof(self, in_flight: int) -> bool:
        """Record what a success at ``in_flight`` proves; True when it raised the ceiling."""
        if self._slow_start:
            self._max_ok = max(self._max_ok, in_flight)
            return False
        ceiling = self._ceiling
        if (
            self._exit_at is not None
            and ceiling is not None
            and ceiling < in_flight <= self._exit_upper
            and self._clock.now() - self._exit_at <= _LATE_PROOF_RTTS * self._rtt()
        ):
            # A call admitted during slow start and answered after its end: its level
            # was accepted after all. One level per proof, as levels are noisy.
            self._ceiling = ceiling + 1
            self._set(float(ceiling + 1), "late_proof")
            return True
        return False

    def _served_despite(self, level: int) -> bool:
        """Has the provider just served ``level`` (or more) at once, repeatedly and far
        more often than it refused it? Then a 429 there is not a concurrency cap: above
        a real cap nearly every call is refused, while random or rate 429s hit every
        level at the same small rate."""
        served = refused = 0
        for n, ok in self._answers:
            if n >= level:
                if ok:
                    served += 1
                else:
                    refused += 1
        return served >= _PROOFS_AGAINST_CAP and served >= _SERVED_PER_REFUSED * refused

    def _rtt(self) -> float:
        return self._srtt if self._srtt is not None else _DEFAULT_RTT

    def _max_gap_rtts(self) -> float:
        return max(1.0, self.max_probe_interval_s / self._rtt())

    def _schedule_probe(self, now: float) -> None:
        self._next_probe_at = now + min(self._gap * self._rtt(), self.max_probe_interval_s)

    def _suppressed(self, now: float) -> bool:
        """Within one rtt (1 s until measured) of the last decrease: the same incident."""
        if self._decreased_at is None:
            return False
        return now - self._decreased_at < self._rtt()

    def _set(self, value: float, reason: str) -> None:
        before = int(self._limit)
        self._limit = value
        after = int(value)
        if after != before or after != self._applied:
            self._applied = after
            self.limiter.set_capacity(after, ceiling=self._ceiling)
            events = self._events
            if events is not None and events.active:
                fields = {"from": before, "to": after, "reason": reason}
                events.publish(LIMIT_CHANGE, fields, channel=self.limiter.name)

    def _adopt(self) -> None:
        """Take over a cap another process wrote to a shared limiter, with the ceiling it
        wrote beside it (below the cap after an overload halving, so additive increase
        climbs back here too); a cap written without one is that process's learned (or
        probed) level, so it becomes the ceiling."""
        shared = self.limiter.capacity
        if shared is None or shared == self._applied:
            return
        now = self._clock.now()
        if shared < self._applied:
            self._decreased_at = now
        ceiling = self.limiter.ceiling
        self._applied = shared
        self._limit = float(shared)
        self._ceiling = (shared if ceiling is None
                         else max(self.min_limit, min(self.max_limit, ceiling)))
        self._slow_start = False
        self._probing = False
        self._exit_at = None
        self._schedule_probe(now)
