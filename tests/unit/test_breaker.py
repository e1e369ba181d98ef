"""CircuitBreaker transitions in virtual time."""

from __future__ import annotations

import random

import pytest

from shoal.clock import VirtualClock
from shoal.errors import (
    AuthError,
    BadRequest,
    CircuitOpen,
    ConfigError,
    Overloaded,
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
    with pytest.raises(ConfigError, match="cooldown_s"):
        CircuitBreaker("x", cooldown_s=float("inf"))
    with pytest.raises(ConfigError, match="probe_timeout_s"):
        CircuitBreaker("x", probe_timeout_s=0)


# -- defaults sized for a storm (docs/traffic.md, "Circuit breakers") ------------------


def test_documented_defaults() -> None:
    b = CircuitBreaker("ds")
    assert (b.failure_threshold, b.failure_rate, b.min_calls, b.window_s) == (12, 0.9, 20, 60.0)
    assert (b.cooldown_s, b.half_open_max, b.probe_timeout_s, b.auth_cooldown_s) == (
        15.0, 1, 15.0, 3600.0)


def test_start_up_noise_does_not_trip() -> None:
    """The storm report: 7 failures in the first 11 calls opened the old breaker."""
    clock = VirtualClock()
    b = CircuitBreaker("ds", clock=clock)
    for failed in (1, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1):
        if failed:
            b.record_failure(DOWN)
        else:
            b.record_success()
    assert state(b) is BreakerState.CLOSED


class SteppedClock:
    """A Clock whose time moves only by ``step`` (no sleepers): 10,000-call runs without
    an event loop."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t

    def step(self, dt: float) -> None:
        self.t += dt

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("nothing sleeps in these tests")


def count_trips(b: CircuitBreaker, clock: SteppedClock, *, p: float, calls: int,
                seed: int, dt: float, in_flight: int = 1) -> int:
    """Drive ``calls`` independent outcomes failing with probability ``p``, each call
    having started ``in_flight`` calls earlier; count the trips (reset after each)."""
    rng = random.Random(seed)
    starts: list[float] = []
    trips = 0
    for _ in range(calls):
        clock.step(dt)
        starts.append(clock.now())
        started = starts[max(0, len(starts) - in_flight)]
        if rng.random() < p:
            b.record_failure(DOWN, started_at=started)
        else:
            b.record_success(started_at=started)
        if state(b) is not BreakerState.CLOSED:
            trips += 1
            b.reset()
    return trips


@pytest.mark.parametrize(("dt", "in_flight"), [(0.01, 1), (0.01, 40), (5.0, 1)])
def test_forty_percent_independent_failures_do_not_trip(dt: float, in_flight: int) -> None:
    """10,000 calls at 40% failures (the storm's worst channel, 429s aside): no trip, at
    high traffic (the rate sample full), with 40 in flight, and at low traffic (< 20 calls
    per window: only the consecutive rule applies). Expected trips by the binomial
    reasoning in docs/traffic.md: about 0.1 per 10,000 calls."""
    clock = SteppedClock()
    b = CircuitBreaker("ds", clock=clock)
    trips = sum(count_trips(b, clock, p=0.4, calls=10_000, seed=seed, dt=dt,
                            in_flight=in_flight) for seed in range(3))
    assert trips == 0


def test_a_mostly_failing_channel_trips() -> None:
    """The rules can fire: 90% failures trip often."""
    clock = SteppedClock()
    b = CircuitBreaker("ds", clock=clock)
    assert count_trips(b, clock, p=0.9, calls=1000, seed=1, dt=0.01) > 20


@pytest.mark.parametrize("in_flight", [1, 40])
def test_a_dead_channel_trips_within_twenty_calls(in_flight: int) -> None:
    clock = SteppedClock()
    b = CircuitBreaker("ds", clock=clock)
    for _ in range(30):  # healthy history first
        b.record_success()
    calls = 0
    while state(b) is BreakerState.CLOSED:
        clock.step(0.05)
        calls += 1
        # every failure belongs to a call that started before the first failure
        b.record_failure(DOWN, started_at=0.0 if in_flight > 1 else None)
    # 18 of the last 20 failing trips the rate rule even when the consecutive count
    # stays at one incident
    assert calls == (12 if in_flight == 1 else 18)


async def test_a_dead_channel_at_low_traffic_trips_on_consecutive_incidents() -> None:
    clock = VirtualClock()
    b = CircuitBreaker("ds", clock=clock)
    for _ in range(11):
        b.record_failure(DOWN, started_at=clock.now())
        await clock.advance(10.0)  # 6 calls per minute: the rate sample never fills
    assert state(b) is BreakerState.CLOSED
    b.record_failure(DOWN, started_at=clock.now())
    assert state(b) is BreakerState.OPEN


# -- one incident, one signal --------------------------------------------------------------


async def test_a_burst_of_concurrent_failures_counts_once() -> None:
    clock = VirtualClock()
    b = CircuitBreaker("ds", failure_threshold=3, clock=clock)
    started = clock.now()  # 40 calls in flight
    await clock.advance(1.0)
    for _ in range(40):
        b.record_failure(DOWN, started_at=started)
    assert b.failure_count == 1
    assert state(b) is BreakerState.OPEN  # 40 of 40 in the rate sample: a real outage
    b.reset()

    b = CircuitBreaker("ds", failure_threshold=3, min_calls=1000, clock=clock)
    t0 = clock.now()
    await clock.advance(1.0)
    for _ in range(10):
        b.record_failure(DOWN, started_at=t0)  # one incident
    assert b.failure_count == 1
    t1 = clock.now()
    await clock.advance(1.0)
    b.record_failure(DOWN, started_at=t1)  # a call sent after it: a second signal
    assert b.failure_count == 2
    b.record_failure(DOWN, started_at=t1)  # started before that one was counted
    assert b.failure_count == 2
    b.record_failure(DOWN)  # no started_at: counted, as before dedupe
    assert b.failure_count == 3
    assert state(b) is BreakerState.OPEN


async def test_any_success_ends_the_run_of_failures() -> None:
    """A success resets the consecutive count whenever its call started: the channel
    served a call after the failure was seen. (Counting only calls started after the
    failure let quick 5xx outrun slow answers: under a storm the count passed the
    threshold on a channel serving 63% of its calls.)"""
    clock = VirtualClock()
    b = CircuitBreaker("ds", min_calls=1000, clock=clock)
    before = clock.now()
    await clock.advance(1.0)
    b.record_failure(DOWN, started_at=clock.now())
    assert b.failure_count == 1
    await clock.advance(1.0)
    b.record_success(started_at=before)  # sent before the incident, answered after it
    assert b.failure_count == 0
    b.record_failure(DOWN)
    b.record_success()  # no started_at: resets too
    assert b.failure_count == 0


def test_quick_failures_beside_slow_successes_never_trip() -> None:
    """Storm shape: 5xx come back at once, answers take 0.5 s, 40 in flight."""
    clock = VirtualClock()
    b = CircuitBreaker("ds", clock=clock)
    rng = random.Random(5)
    for i in range(10_000):
        clock._now = i * 0.01
        if rng.random() < 0.4:
            b.record_failure(DOWN, started_at=clock._now)
        else:
            b.record_success(started_at=clock._now - 0.5)
        assert b.state is BreakerState.CLOSED, f"tripped at call {i}"


# -- backpressure is not ill health --------------------------------------------------------


def test_rate_limits_and_overload_never_trip() -> None:
    b = CircuitBreaker("ds", clock=VirtualClock())
    for i in range(10_000):
        err = Overloaded("529 overloaded", status=529) if i % 2 else RateLimited("429")
        b.record_failure(err, started_at=float(i))
    assert state(b) is BreakerState.CLOSED
    assert b.failure_count == 0
    assert b.last_error is None


async def test_an_overloaded_probe_proves_the_channel_alive() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure(DOWN)
    await clock.advance(10.0)
    assert b.allow()
    b.record_failure(Overloaded("overloaded_error", status=529), started_at=clock.now())
    assert state(b) is BreakerState.CLOSED


# -- when may the next call go? --------------------------------------------------------------


async def test_next_allowed_at_in_every_state() -> None:
    clock = VirtualClock()
    b = breaker(clock, half_open_max=1)
    assert b.next_allowed_at() == 0.0
    assert b.next_allowed_at(5.0) == 5.0
    for _ in range(3):
        b.record_failure(DOWN)
    assert b.next_allowed_at() == 10.0  # open: its retry_at
    await clock.advance(4.0)
    assert b.next_allowed_at() == 10.0
    await clock.advance(6.0)
    assert b.next_allowed_at() == 10.0  # cooled: a probe may go now
    assert b.allow()
    await clock.advance(2.0)
    assert b.next_allowed_at() == 20.0  # the probe slot is taken until it is presumed lost
    assert not b.available()
    b.abandon(started_at=10.0)
    assert b.next_allowed_at() == 12.0  # the slot is free again
    assert b.allow()
    b.record_success(started_at=12.0)
    assert b.next_allowed_at() == clock.now()


async def test_probe_timeout_is_its_own_setting() -> None:
    clock = VirtualClock()
    b = breaker(clock, probe_timeout_s=3.0)
    for _ in range(3):
        b.record_failure(DOWN)
    await clock.advance(10.0)
    assert b.allow()
    assert b.next_allowed_at() == 13.0
    await clock.advance(3.0)
    assert b.allow()  # the silent probe is presumed lost


async def test_results_of_calls_from_before_half_open_decide_nothing() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    old = clock.now()
    for _ in range(3):
        b.record_failure(DOWN)
    await clock.advance(10.0)
    assert b.allow()  # the probe, started at 10
    b.record_success(started_at=old)  # a straggler from before the trip
    assert state(b) is BreakerState.HALF_OPEN
    b.record_failure(DOWN, started_at=old)
    assert state(b) is BreakerState.HALF_OPEN
    b.abandon(started_at=old)  # not a probe: the probe's slot stays taken
    assert not b.allow()
    b.record_failure(DOWN, started_at=10.0)  # the probe's own verdict
    assert state(b) is BreakerState.OPEN
    assert b.retry_at == 20.0


# -- auth and quota --------------------------------------------------------------------------


async def test_auth_message_names_the_key_and_reset_re_enables() -> None:
    clock = VirtualClock()
    b = CircuitBreaker("deepseek", key_hint="DEEPSEEK_API_KEY", clock=clock)
    b.record_failure(AuthError("invalid api key", status=401), started_at=0.0)
    message = str(b.error())
    assert "rejected its API key" in message
    assert "set a valid $DEEPSEEK_API_KEY for channel 'deepseek'" in message
    assert "router.reset_channel('deepseek')" in message
    assert b.next_allowed_at() == 3600.0
    await clock.advance(5.0)
    b.reset()  # the key was fixed
    assert b.allow()
    b.record_failure(AuthError("invalid api key", status=401), started_at=1.0)
    assert state(b) is BreakerState.CLOSED  # a 401 from before the fix is ignored
    b.record_failure(AuthError("invalid api key", status=401), started_at=5.0)
    assert state(b) is BreakerState.OPEN  # from after it: the key is still wrong


def test_a_shorter_cause_does_not_shorten_an_auth_opening() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    auth = AuthError("forbidden", status=403)
    b.record_failure(auth)
    b.record_failure(QuotaExhausted("no balance", status=402, retry_after=30.0))
    assert b.retry_at == 3600.0
    assert b.last_error is auth


@pytest.mark.parametrize("after", [float("inf"), float("nan"), 1e12, -5.0])
def test_quota_opening_is_always_finite(after: float) -> None:
    b = breaker(VirtualClock())
    b.record_failure(QuotaExhausted("insufficient quota", status=429, retry_after=after))
    assert state(b) is BreakerState.OPEN
    assert b.retry_at is not None and 10.0 <= b.retry_at <= 3600.0


async def test_a_presumed_lost_probe_reporting_late_frees_no_slot() -> None:
    clock = VirtualClock()
    b = breaker(clock, probe_timeout_s=5.0)
    for _ in range(3):
        b.record_failure(DOWN)
    await clock.advance(10.0)
    assert b.allow()  # probe A at 10
    await clock.advance(5.0)
    assert b.allow()  # A presumed lost: probe B at 15
    b.abandon(started_at=10.0)  # A turns up, cancelled: B still holds the only slot
    assert not b.allow()
    b.abandon(started_at=15.0)
    assert b.allow()
