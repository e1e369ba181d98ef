"""CircuitBreaker transitions in virtual time."""

from __future__ import annotations

import pytest

from shoal.clock import VirtualClock
from shoal.errors import (
    AuthError,
    BadRequest,
    CircuitOpen,
    ConfigError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
)
from shoal.observe.events import Event, EventBus
from shoal.traffic.breaker import BreakerState, CircuitBreaker

DOWN = ProviderUnavailable("503 service unavailable", status=503, provider="ds")


def breaker(clock: VirtualClock, **kw: object) -> CircuitBreaker:
    options: dict[str, object] = {
        "failure_threshold": 3, "min_calls": 10, "cooldown_s": 10.0, "window_s": 30.0,
    }
    options.update(kw)
    return CircuitBreaker("ds", clock=clock, **options)  # type: ignore[arg-type]


def state(b: CircuitBreaker) -> BreakerState:
    """Read the state through a call, so the type checker does not pin it between steps."""
    return b.state


def test_opens_after_consecutive_failures() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    b.record_failure(DOWN)
    b.record_failure(DOWN)
    assert state(b) is BreakerState.CLOSED
    assert b.failure_count == 2
    b.record_failure(DOWN)
    assert state(b) is BreakerState.OPEN
    assert not b.allow()
    assert not b.available()
    assert b.opened_at == 0.0
    assert b.retry_at == 10.0
    assert b.last_error is DOWN


def test_success_resets_the_consecutive_count() -> None:
    b = breaker(VirtualClock(), min_calls=1000)
    for _ in range(5):
        b.record_failure(DOWN)
        b.record_failure(DOWN)
        b.record_success()
    assert state(b) is BreakerState.CLOSED


def test_opens_on_failure_rate_over_the_window() -> None:
    clock = VirtualClock()
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, min_calls=10)
    # alternate: never 2 consecutive failures, but 50% of calls fail
    for _ in range(4):
        b.record_failure(DOWN)
        b.record_success()
    b.record_failure(DOWN)
    assert state(b) is BreakerState.CLOSED  # 9 calls < min_calls
    b.record_success()  # 10 calls, 5 failures: 50%
    assert state(b) is BreakerState.CLOSED  # a success never trips
    b.record_failure(DOWN)  # 11 calls, 6 failures
    assert state(b) is BreakerState.OPEN


async def test_old_outcomes_leave_the_rate_window() -> None:
    clock = VirtualClock()
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, min_calls=4, window_s=30.0)
    b.record_failure(DOWN)
    b.record_success()
    b.record_failure(DOWN)
    await clock.advance(31.0)  # those three are forgotten
    b.record_success()
    b.record_success()
    b.record_failure(DOWN)
    assert state(b) is BreakerState.CLOSED  # 1 of 3 in the window, and < min_calls
    b.record_failure(DOWN)  # 2 of 4: 50%
    assert state(b) is BreakerState.OPEN


async def test_half_open_probe_success_closes() -> None:
    clock = VirtualClock()
    b = breaker(clock, half_open_max=1)
    for _ in range(3):
        b.record_failure(DOWN)
    await clock.advance(9.9)
    assert not b.allow()
    await clock.advance(0.1)
    assert b.available()
    assert b.allow()  # the probe
    assert state(b) is BreakerState.HALF_OPEN
    assert not b.allow()  # only one probe at a time
    assert not b.available()
    b.record_success()
    assert state(b) is BreakerState.CLOSED
    assert b.retry_at is None
    assert b.allow()


async def test_half_open_probe_failure_reopens_with_a_fresh_cooldown() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure(DOWN)
    await clock.advance(10.0)
    assert b.allow()
    b.record_failure(ProviderTimeout("read timeout"))
    assert state(b) is BreakerState.OPEN
    assert b.retry_at == pytest.approx(20.0)
    assert not b.allow()


async def test_half_open_admits_up_to_half_open_max_probes() -> None:
    clock = VirtualClock()
    b = breaker(clock, half_open_max=2)
    for _ in range(3):
        b.record_failure(DOWN)
    await clock.advance(10.0)
    assert b.allow()
    assert b.allow()
    assert not b.allow()
    b.abandon()  # one probe was cancelled: its slot comes back
    assert b.allow()


async def test_a_lost_probe_is_replaced_after_a_cooldown() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure(DOWN)
    await clock.advance(10.0)
    assert b.allow()
    await clock.advance(5.0)
    assert not b.allow()
    await clock.advance(5.0)
    assert b.allow()  # the first probe never reported: presumed lost


async def test_auth_error_opens_at_once_for_long() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    b.record_failure(AuthError("invalid api key", status=401, provider="ds"))
    assert state(b) is BreakerState.OPEN
    assert b.retry_at == 3600.0
    err = b.error()
    assert isinstance(err, CircuitOpen)
    assert "fix the API key for channel 'ds'" in str(err)
    assert err.retry_at == 3600.0
    await clock.advance(3599.0)
    assert not b.allow()


async def test_auth_error_while_open_extends_the_cooldown() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure(DOWN)
    await clock.advance(10.0)
    assert b.allow()
    b.record_failure(AuthError("forbidden", status=403))
    assert b.retry_at == pytest.approx(3610.0)


def test_quota_exhausted_opens_at_once() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    b.record_failure(QuotaExhausted("insufficient balance", status=402, retry_after=120.0))
    assert state(b) is BreakerState.OPEN
    assert b.retry_at == 120.0
    assert "quota" in str(b.error())


def test_rate_limits_and_bad_requests_do_not_count() -> None:
    b = breaker(VirtualClock())
    b.record_failure(DOWN)
    b.record_failure(DOWN)
    for _ in range(20):
        b.record_failure(RateLimited("429", status=429))
        b.record_failure(BadRequest("400", status=400))
    assert state(b) is BreakerState.CLOSED
    assert b.failure_count == 2  # neutral: neither reset nor counted
    b.record_failure(DOWN)
    assert state(b) is BreakerState.OPEN


async def test_a_rate_limited_probe_proves_the_channel_alive() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure(DOWN)
    await clock.advance(10.0)
    assert b.allow()
    b.record_failure(RateLimited("429"))
    assert state(b) is BreakerState.CLOSED


async def test_a_non_provider_error_probe_frees_the_slot_only() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure(DOWN)
    await clock.advance(10.0)
    assert b.allow()
    b.record_failure(RuntimeError("bug in a caller"))
    assert state(b) is BreakerState.HALF_OPEN
    assert b.allow()


async def test_results_arriving_while_open_change_nothing() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure(DOWN)
    b.record_success()
    b.record_failure(DOWN)
    assert state(b) is BreakerState.OPEN
    assert b.retry_at == 10.0


async def test_events_for_every_transition() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    seen: list[Event] = []
    bus.subscribe(seen.append)
    b = CircuitBreaker("ds", failure_threshold=1, cooldown_s=5.0, clock=clock, events=bus)
    b.record_failure(DOWN)
    await clock.advance(5.0)
    assert b.allow()
    b.record_success()
    assert [(e.kind, e.data["from"], e.data["to"]) for e in seen] == [
        ("breaker", "closed", "open"),
        ("breaker", "open", "half_open"),
        ("breaker", "half_open", "closed"),
    ]
    assert seen[0].data["error"] == "ProviderUnavailable"
    assert seen[1].at == 5.0


def test_reset_and_messages() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure(DOWN)
    message = str(b.error())
    assert "'ds'" in message and "503" in message and "next probe in 10.0s" in message
    b.reset()
    assert state(b) is BreakerState.CLOSED
    assert b.last_error is None
    assert b.failure_count == 0


def test_invalid_options() -> None:
    with pytest.raises(ConfigError):
        CircuitBreaker("x", failure_threshold=0)
    with pytest.raises(ConfigError):
        CircuitBreaker("x", failure_rate=1.5)
    with pytest.raises(ConfigError):
        CircuitBreaker("x", half_open_max=0)
