"""Circuit breaker: stop sending calls to a channel that is failing, probe it later.

States and transitions::

    closed ──(N consecutive failures, or failure rate ≥ r over window_s with ≥ min_calls)──▶ open
    open ──(cooldown_s passed; the next allow() reserves a probe)──▶ half_open
    half_open ──(probe succeeds)──▶ closed
    half_open ──(probe fails)──▶ open (a fresh cooldown)
    any ──(AuthError 401/403)──▶ open for auth_cooldown_s (1 h): the key must be fixed

What counts as a failure (ill health): ``ProviderUnavailable`` (5xx, refused/reset),
``ProviderTimeout``, ``MalformedResponse``, ``StreamInterrupted``. ``QuotaExhausted``
opens the breaker at once (the channel cannot serve until credit is added), for
``cooldown_s`` or the provider's Retry-After if longer.

What does not: ``RateLimited`` (429 is backpressure from a healthy provider: the
limiter and adaptive concurrency handle it; counting it would open the circuit on
the busiest, healthiest channel), ``BadRequest`` / ``ContextOverflow`` (the request is
wrong, not the channel). In half-open such an answer still proves the channel is
alive, so it closes the breaker like a success.
"""

from __future__ import annotations

from collections import deque
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


class CircuitBreaker:
    """One channel's health. ``allow()`` before a call; report its outcome after.

    A call admitted by ``allow()`` must end in exactly one of :meth:`record_success`,
    :meth:`record_failure` or :meth:`abandon` (cancelled: no verdict), so a half-open
    probe slot is never lost. A probe that reports nothing for ``cooldown_s`` is
    presumed lost and another probe is admitted.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        failure_rate: float = 0.5,
        window_s: float = 30.0,
        min_calls: int = 10,
        cooldown_s: float = 15.0,
        half_open_max: int = 1,
        auth_cooldown_s: float = 3600.0,
        clock: Clock | None = None,
        events: EventBus | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ConfigError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if not 0 < failure_rate <= 1:
            raise ConfigError(f"failure_rate must be in (0, 1], got {failure_rate}")
        if window_s <= 0 or cooldown_s <= 0 or auth_cooldown_s <= 0:
            raise ConfigError("window_s, cooldown_s and auth_cooldown_s must be > 0")
        if min_calls < 1 or half_open_max < 1:
            raise ConfigError("min_calls and half_open_max must be >= 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.failure_rate = failure_rate
        self.window_s = window_s
        self.min_calls = min_calls
        self.cooldown_s = cooldown_s
        self.half_open_max = half_open_max
        self.auth_cooldown_s = auth_cooldown_s
        self._clock: Clock = clock if clock is not None else RealClock()
        self._events = events
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._outcomes: deque[tuple[float, bool]] = deque()  # (when, failed)
        self._failures_in_window = 0
        self._probes = 0
        self._probe_at = 0.0
        self.opened_at: float | None = None
        self.retry_at: float | None = None
        self.last_error: BaseException | None = None

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
        return self.retry_at is not None and now >= self.retry_at

    def _transition(self, to: BreakerState) -> None:
        before = self._state
        if before is to:
            return
        self._state = to
        if to is BreakerState.CLOSED:
            self._consecutive = 0
            self._outcomes.clear()
            self._failures_in_window = 0
            self.opened_at = self.retry_at = None
            self._probes = 0
        elif to is BreakerState.HALF_OPEN:
            self._probes = 0
        events = self._events
        if events is not None and events.active:
            error = type(self.last_error).__name__ if self.last_error is not None else ""
            fields = {"from": str(before), "to": str(to), "error": error}
            events.publish(BREAKER, fields, channel=self.name)

    def _open(self, cooldown: float) -> None:
        now = self._clock.now()
        self.opened_at = now
        self.retry_at = now + cooldown
        self._probes = 0
        if self._state is BreakerState.OPEN:
            return  # already open (e.g. auth after failures): only the cooldown changes
        self._transition(BreakerState.OPEN)

    # -- admission -------------------------------------------------------------------

    def available(self, now: float | None = None) -> bool:
        """Would :meth:`allow` admit a call now? Reserves nothing."""
        now = self._clock.now() if now is None else now
        state = self._state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return self._cooled(now)
        return self._probes < self.half_open_max or now - self._probe_at >= self.cooldown_s

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
            if now - self._probe_at < self.cooldown_s:
                return False
            self._probes = 0  # the earlier probes never reported: presume them lost
        self._probes += 1
        self._probe_at = now
        return True

    # -- outcomes --------------------------------------------------------------------

    def record_success(self) -> None:
        if self._state is BreakerState.CLOSED:
            self._consecutive = 0
            self._observe(failed=False)
        elif self._state is BreakerState.HALF_OPEN:
            self._transition(BreakerState.CLOSED)
        # open: a late answer from before the trip proves little; the probe decides

    def record_failure(self, error: BaseException) -> None:
        if isinstance(error, AuthError):
            self.last_error = error
            self._open(self.auth_cooldown_s)
            return
        if isinstance(error, QuotaExhausted):
            self.last_error = error
            self._open(max(self.cooldown_s, error.retry_after or 0.0))
            return
        if not isinstance(error, HEALTH_FAILURES):
            if self._state is BreakerState.HALF_OPEN:
                if isinstance(error, ProviderError):
                    self._transition(BreakerState.CLOSED)  # it answered coherently: alive
                else:
                    self.abandon()
            return  # closed: neutral, neither a failure nor a success
        self.last_error = error
        if self._state is BreakerState.HALF_OPEN:
            self._open(self.cooldown_s)
        elif self._state is BreakerState.CLOSED:
            self._consecutive += 1
            self._observe(failed=True)
            if self._consecutive >= self.failure_threshold or self._rate_tripped():
                self._open(self.cooldown_s)

    def abandon(self) -> None:
        """An allowed call ended without a verdict (cancelled): free its probe slot."""
        if self._state is BreakerState.HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def _observe(self, *, failed: bool) -> None:
        now = self._clock.now()
        outcomes = self._outcomes
        outcomes.append((now, failed))
        if failed:
            self._failures_in_window += 1
        cutoff = now - self.window_s
        while outcomes and outcomes[0][0] <= cutoff:
            if outcomes.popleft()[1]:
                self._failures_in_window -= 1

    def _rate_tripped(self) -> bool:
        calls = len(self._outcomes)
        return calls >= self.min_calls and self._failures_in_window >= self.failure_rate * calls

    @property
    def failure_count(self) -> int:
        """Consecutive failures so far (closed state)."""
        return self._consecutive

    # -- messages --------------------------------------------------------------------

    def error(self) -> CircuitOpen:
        """A ``CircuitOpen`` saying why this channel is refused and what to do."""
        last = self.last_error
        if isinstance(last, AuthError):
            message = (
                f"channel {self.name!r} is disabled: the provider rejected its credentials "
                f"({last}); fix the API key for channel {self.name!r}"
            )
        elif isinstance(last, QuotaExhausted):
            message = (
                f"channel {self.name!r} is disabled: its quota or balance is exhausted "
                f"({last}); add credit or route to another channel"
            )
        else:
            wait = "" if self.retry_at is None else (
                f"; next probe in {max(0.0, self.retry_at - self._clock.now()):.1f}s"
            )
            message = f"channel {self.name!r} circuit is {self.state} after failures: {last}{wait}"
        return CircuitOpen(message, retry_at=self.retry_at)

    def reset(self) -> None:
        """Close the breaker by hand (e.g. after the key was fixed)."""
        self._transition(BreakerState.CLOSED)
        self._consecutive = 0
        self._outcomes.clear()
        self._failures_in_window = 0
        self.last_error = None
