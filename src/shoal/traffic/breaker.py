"""Circuit breaker: stop sending calls to a dead channel, probe it later — and never
turn a survivable storm into mass failure.

States and transitions (defaults in brackets; docs/traffic.md gives the reasoning)::

    closed ──(failure_threshold [12] consecutive incidents, or ≥ failure_rate [90%]
              of the last min_calls [20] outcomes younger than window_s [60 s])──▶ open
    open ──(cooldown_s [15 s] passed; the next allow() reserves a probe)──▶ half_open
    half_open ──(probe succeeds, or answers coherently)──▶ closed
    half_open ──(probe fails)──▶ open (a fresh cooldown)
    any ──(AuthError 401/403)──▶ open for auth_cooldown_s [1 h]; reset() after fixing the key
    any ──(QuotaExhausted)──▶ open for max(cooldown_s, Retry-After) (at most auth_cooldown_s)

What counts as a failure (ill health): ``ProviderUnavailable`` (5xx, refused/reset),
``ProviderTimeout``, ``MalformedResponse``, ``StreamInterrupted``.

What never does: ``RateLimited`` and its subclasses (429, ``Overloaded`` 529) — that is
backpressure from a living provider, the limiter's and adaptive concurrency's business;
``BadRequest`` / ``ContextOverflow`` (the request is wrong, not the channel). In half-open
such an answer proves the channel alive, so it closes the breaker like a success.

One incident, one signal: ``record_failure(err, started_at=t)`` with ``t`` earlier than
the moment the last counted failure was recorded is the same incident seen by a call
that was already in flight; it joins the rate sample but not the consecutive count.
Without ``started_at`` every failure counts (the behaviour before dedupe).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from enum import StrEnum

from shoal.clock import Clock, RealClock
from shoal.errors import (
    AuthError,
    CircuitOpen,
    ConfigError,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    StreamInterrupted,
)
from shoal.observe.events import BREAKER, EventBus

__all__ = ["HEALTH_FAILURES", "BreakerState", "CircuitBreaker"]

HEALTH_FAILURES: tuple[type[ProviderError], ...] = (
    ProviderUnavailable,
    ProviderTimeout,
    MalformedResponse,
    StreamInterrupted,
)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value!r}")


# A time told by next_allowed_at is admitted by allow() at that time, though a caller's
# clock reads it through float arithmetic (``now + (at - now)`` can land one ulp short):
# found by hypothesis, a waiter woken at the lost-probe deadline refused again.
_SLACK_S = 1e-9


class CircuitBreaker:
    """One channel's health. ``allow()`` before a call; report its outcome after.

    A call admitted by ``allow()`` must end in exactly one of :meth:`record_success`,
    :meth:`record_failure` or :meth:`abandon` (cancelled: no verdict), so a half-open
    probe slot is never lost. Pass ``started_at`` (this breaker's clock time when
    ``allow()`` admitted the call) to each of them: it lets a burst of failures from one
    incident count once, and keeps answers from before a trip, a half-open or a
    :meth:`reset` from deciding anything. A probe that reports nothing for
    ``probe_timeout_s`` (default ``cooldown_s``) is presumed lost and replaced.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 12,
        failure_rate: float = 0.9,
        window_s: float = 60.0,
        min_calls: int = 20,
        cooldown_s: float = 15.0,
        half_open_max: int = 1,
        probe_timeout_s: float | None = None,
        auth_cooldown_s: float = 3600.0,
        key_hint: str | None = None,
        clock: Clock | None = None,
        events: EventBus | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ConfigError(
                f"failure_threshold must be >= 1 (consecutive incidents that open the "
                f"breaker), got {failure_threshold}")
        if not (math.isfinite(failure_rate) and 0 < failure_rate <= 1):
            raise ConfigError(
                f"failure_rate must be in (0, 1] (e.g. 0.9 for 90%), got {failure_rate!r}")
        _positive("window_s", window_s)
        _positive("cooldown_s", cooldown_s)
        _positive("auth_cooldown_s", auth_cooldown_s)
        if probe_timeout_s is not None:
            _positive("probe_timeout_s", probe_timeout_s)
        if min_calls < 1 or half_open_max < 1:
            raise ConfigError(
                f"min_calls and half_open_max must be >= 1, got {min_calls}, {half_open_max}")
        self.name = name
        self.failure_threshold = failure_threshold
        self.failure_rate = failure_rate
        self.window_s = window_s
        self.min_calls = min_calls
        self.cooldown_s = cooldown_s
        self.half_open_max = half_open_max
        self.probe_timeout_s = cooldown_s if probe_timeout_s is None else probe_timeout_s
        self.auth_cooldown_s = auth_cooldown_s
        self.key_hint = key_hint
        self._clock: Clock = clock if clock is not None else RealClock()
        self._events = events
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._counted_at: float | None = None  # when the last counted failure was recorded
        # The rate sample: the last min_calls outcomes (when, failed); older than
        # window_s ones are ignored when the rate is read.
        self._outcomes: deque[tuple[float, bool]] = deque(maxlen=min_calls)
        self._probes = 0
        self._probe_at = 0.0
        self._half_open_at = 0.0
        self._slots_since = 0.0  # probes started before this hold no slot (presumed lost)
        self._epoch = -math.inf  # results of calls started before the last reset() are ignored
        self.opened_at: float | None = None
        self.retry_at: float | None = None
        self.last_error: BaseException | None = None
        # Told of every transition this breaker decided itself (not of remote ones):
        # the hook a shared breaker (traffic/redis_breaker.py) publishes through.
        self.on_change: Callable[[BreakerState, BreakerState], None] | None = None
        self._remote = False

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, {self._state}, retry_at={self.retry_at})"

    # -- state -----------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cooldown passed reads half-open."""
        if self._state is BreakerState.OPEN and self._cooled(self._clock.now()):
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    def _cooled(self, now: float) -> bool:
        return self.retry_at is None or now >= self.retry_at - _SLACK_S

    def _transition(self, to: BreakerState) -> None:
        before = self._state
        if before is to:
            return
        self._state = to
        self._probes = 0
        if to is BreakerState.CLOSED:
            self._consecutive = 0
            self._counted_at = None
            self._outcomes.clear()
            self.opened_at = self.retry_at = None
        elif to is BreakerState.HALF_OPEN:
            self._half_open_at = self._slots_since = self._clock.now()
        events = self._events
        if events is not None and events.active:
            error = type(self.last_error).__name__ if self.last_error is not None else ""
            fields = {"from": str(before), "to": str(to), "error": error,
                      "remote": self._remote}
            events.publish(BREAKER, fields, channel=self.name)
        if self.on_change is not None and not self._remote:
            self.on_change(before, to)

    def _open(self, cooldown: float, error: BaseException) -> None:
        now = self._clock.now()
        retry_at = now + cooldown
        if (self._state is BreakerState.OPEN and self.retry_at is not None
                and self.retry_at >= retry_at):
            return  # already open for at least as long: the longer reason stands
        self.last_error = error
        self.opened_at = now
        self.retry_at = retry_at
        self._probes = 0
        self._transition(BreakerState.OPEN)

    # -- admission -------------------------------------------------------------------

    def next_allowed_at(self, now: float | None = None) -> float:
        """The earliest clock time at which :meth:`allow` would admit a call: ``now`` when
        it would now, ``retry_at`` when open, the lost-probe deadline when half-open with
        every probe slot taken. Always a finite time; reserves nothing."""
        now = self._clock.now() if now is None else now
        state = self._state
        if state is BreakerState.CLOSED:
            return now
        if state is BreakerState.OPEN:
            return now if self.retry_at is None else max(now, self.retry_at)
        if self._probes < self.half_open_max:
            return now
        return max(now, self._probe_at + self.probe_timeout_s)

    def available(self, now: float | None = None) -> bool:
        """Would :meth:`allow` admit a call now? Reserves nothing."""
        now = self._clock.now() if now is None else now
        return self.next_allowed_at(now) <= now

    def allow(self) -> bool:
        """Admit a call: always when closed; when half-open, reserve one of the
        ``half_open_max`` probe slots; never when open (before its cooldown ends)."""
        if self._state is BreakerState.CLOSED:
            return True
        now = self._clock.now()
        if self._state is BreakerState.OPEN:
            if not self._cooled(now):
                return False
            self._transition(BreakerState.HALF_OPEN)
        if self._probes >= self.half_open_max:
            if now < self._probe_at + self.probe_timeout_s - _SLACK_S:
                return False
            self._probes = 0  # the earlier probes never reported: presume them lost
            self._slots_since = now
        self._probes += 1
        self._probe_at = now
        return True

    # -- outcomes --------------------------------------------------------------------

    def _stale(self, started_at: float | None) -> bool:
        """Started before the last reset: its verdict is about a channel that is gone."""
        return started_at is not None and started_at < self._epoch

    def _probe_result(self, started_at: float | None) -> bool:
        """In half-open, is this result a probe's? (A call from before half-open is not.)"""
        return started_at is None or started_at >= self._half_open_at

    def record_success(self, *, started_at: float | None = None) -> None:
        """An admitted call succeeded. ``started_at``: see the class docstring."""
        if self._stale(started_at):
            return
        if self._state is BreakerState.CLOSED:
            self._observe(failed=False)
            # Any success resets the run, whenever its call started: the channel served a
            # call after the failure was seen. (Counting only successes of calls started
            # after the last failure let quick 5xx outrun slow answers: in a storm the
            # count climbed past the threshold on a channel serving 63% of its calls.)
            self._consecutive = 0
            self._counted_at = None
        elif self._state is BreakerState.HALF_OPEN and self._probe_result(started_at):
            self._transition(BreakerState.CLOSED)
        # open: a late answer from before the trip proves little; the probe decides

    def record_failure(self, error: BaseException, *, started_at: float | None = None) -> None:
        """An admitted call failed with ``error``. ``started_at``: see the class docstring."""
        if self._stale(started_at):
            return
        if isinstance(error, AuthError):
            self._open(self.auth_cooldown_s, error)
            return
        if isinstance(error, QuotaExhausted):
            wait = error.retry_after
            if wait is None or not math.isfinite(wait):
                wait = 0.0
            self._open(max(self.cooldown_s, min(wait, self.auth_cooldown_s)), error)
            return
        state = self._state
        if not isinstance(error, HEALTH_FAILURES):
            if state is BreakerState.HALF_OPEN and self._probe_result(started_at):
                if isinstance(error, ProviderError):  # 429, 529, 400: coherent answers
                    self._transition(BreakerState.CLOSED)  # it answered coherently: alive
                else:
                    self.abandon(started_at=started_at)  # our own bug: no verdict
            return  # closed or open: neutral, neither a failure nor a success
        if state is BreakerState.HALF_OPEN:
            if self._probe_result(started_at):
                self._open(self.cooldown_s, error)
            return
        if state is not BreakerState.CLOSED:
            return
        self.last_error = error
        self._observe(failed=True)
        now = self._clock.now()
        if started_at is None or self._counted_at is None or started_at >= self._counted_at:
            self._consecutive += 1
            self._counted_at = now
        if self._consecutive >= self.failure_threshold or self._rate_tripped(now):
            self._open(self.cooldown_s, error)

    def abandon(self, *, started_at: float | None = None) -> None:
        """An allowed call ended without a verdict (cancelled): free its probe slot."""
        if (self._state is BreakerState.HALF_OPEN and self._probes > 0
                and (started_at is None or started_at >= self._slots_since)):
            self._probes -= 1

    def _observe(self, *, failed: bool) -> None:
        self._outcomes.append((self._clock.now(), failed))

    def _rate_tripped(self, now: float) -> bool:
        cutoff = now - self.window_s
        recent = [failed for when, failed in self._outcomes if when > cutoff]
        return len(recent) >= self.min_calls and sum(recent) >= self.failure_rate * len(recent)

    @property
    def failure_count(self) -> int:
        """Consecutive failure incidents so far (closed state)."""
        return self._consecutive

    # -- messages and manual control ------------------------------------------------------

    def error(self) -> CircuitOpen:
        """A ``CircuitOpen`` saying why this channel is refused and what to do."""
        last = self.last_error
        left = None if self.retry_at is None else self.retry_at - self._clock.now()
        wait = "" if left is None or left < 0.05 else f"; next probe in {left:.1f}s"
        if isinstance(last, AuthError):
            key = (f"set a valid ${self.key_hint.lstrip('$')}" if self.key_hint
                   else "fix the API key")
            message = (
                f"channel {self.name!r} is disabled: the provider rejected its API key "
                f"({last}); {key} for channel {self.name!r}, then re-enable it with "
                f"router.reset_channel({self.name!r}) (or restart){wait}"
            )
        elif isinstance(last, QuotaExhausted):
            message = (
                f"channel {self.name!r} is disabled: its quota or balance is exhausted "
                f"({last}); add credit or route to another channel{wait}"
            )
        else:
            state = ("half open: one probe call at a time tests it"
                     if self.state is BreakerState.HALF_OPEN
                     else self.state)
            message = f"channel {self.name!r} circuit is {state} after failures: {last}{wait}"
        return CircuitOpen(message, retry_at=self.retry_at)

    # -- state decided elsewhere (another process sharing the channel) -----------------

    def apply_remote_open(self, remaining_s: float, error: BaseException) -> None:
        """Open for ``remaining_s`` because another process sharing this channel tripped
        its breaker (``error`` says why). Never shortens a longer local open."""
        self._remote = True
        try:
            self._open(max(0.0, remaining_s), error)
        finally:
            self._remote = False

    def apply_remote_close(self) -> None:
        """Another process's probe succeeded: close, as if this breaker's own had."""
        if self._state is BreakerState.CLOSED:
            return
        self._remote = True
        try:
            self._transition(BreakerState.CLOSED)
        finally:
            self._remote = False

    def reset(self) -> None:
        """Close the breaker by hand: the way to re-enable a channel at once after fixing
        its API key or adding credit. Answers of calls started before the reset are
        ignored (they describe the channel as it was)."""
        self._epoch = self._clock.now()
        self.last_error = None
        self._transition(BreakerState.CLOSED)
        self._consecutive = 0
        self._counted_at = None
        self._outcomes.clear()
        self._probes = 0
        self.opened_at = self.retry_at = None
