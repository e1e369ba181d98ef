"""Backoff, RetryPolicy and the one-budget-per-call RetryBudget, in virtual time."""

from __future__ import annotations

import random

import pytest

from shoal.clock import VirtualClock
from shoal.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    ContextOverflow,
    MalformedResponse,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    StreamInterrupted,
)
from shoal.traffic.retry import Backoff, RetryPolicy, parse_retry_after
from shoal.traffic.retry_budget import ChannelRetryBudget

# 2015-10-21 07:28:00 GMT as epoch seconds.
OCT_21_2015 = 1445412480.0


def test_backoff_ceiling_is_exponential_and_capped() -> None:
    b = Backoff(base=0.5, cap=4.0, multiplier=2.0)
    assert [b.ceiling(k) for k in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.ceiling(10_000) == 4.0  # no overflow
    assert Backoff(base=0.0).ceiling(3) == 0.0
    with pytest.raises(ConfigError):
        b.ceiling(-1)


def test_full_jitter_stays_in_bounds_and_spreads() -> None:
    rng = random.Random(1234)
    b = Backoff(base=1.0, cap=8.0, rand=rng.random)
    for k in range(6):
        samples = [b.delay(k) for _ in range(2000)]
        ceiling = b.ceiling(k)
        assert all(0.0 <= s < ceiling for s in samples)
        # Full jitter: uniform on [0, ceiling): mean about half, both halves used.
        assert sum(samples) / len(samples) == pytest.approx(ceiling / 2, rel=0.08)
        assert min(samples) < 0.1 * ceiling
        assert max(samples) > 0.9 * ceiling


def test_jitter_is_reproducible_with_a_seed() -> None:
    a = Backoff(rand=random.Random(7).random)
    b = Backoff(rand=random.Random(7).random)
    assert [a.delay(k) for k in range(5)] == [b.delay(k) for k in range(5)]


def test_no_jitter_waits_the_ceiling() -> None:
    b = Backoff(base=0.25, cap=1.0, jitter=False)
    assert [b.delay(k) for k in range(4)] == [0.25, 0.5, 1.0, 1.0]


def test_invalid_values_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        Backoff(multiplier=0.5)
    with pytest.raises(ConfigError):
        Backoff(base=-1)
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(deadline_s=0)
    with pytest.raises(ConfigError, match="deadline_s"):
        RetryPolicy(deadline_s=float("nan"))


def test_policies_compose_with_replace() -> None:
    base = RetryPolicy()
    quick = base.replace(attempts=2, backoff=base.backoff.replace(cap=1.0))
    assert (quick.attempts, quick.backoff.cap) == (2, 1.0)
    assert (base.attempts, base.backoff.cap) == (16, 30.0)  # frozen, untouched
    assert quick.retry_on == base.retry_on


def test_retryable_classes() -> None:
    policy = RetryPolicy()
    for err in (RateLimited("x"), ProviderUnavailable("x"), ProviderTimeout("x"),
                MalformedResponse("x"), StreamInterrupted("x")):
        assert policy.is_retryable(err)
    for bad in (AuthError("x"), BadRequest("x"), ContextOverflow("x"), QuotaExhausted("x"),
                ValueError("x")):
        assert not policy.is_retryable(bad)


def deterministic(**changes: object) -> RetryPolicy:
    return RetryPolicy(backoff=Backoff(base=1.0, cap=10.0, jitter=False)).replace(**changes)


def test_budget_gives_up_after_attempts() -> None:
    clock = VirtualClock()
    budget = deterministic(attempts=3).budget(clock)
    err = ProviderUnavailable("503")
    assert budget.next_delay(err) == 1.0
    assert budget.next_delay(err) == 2.0
    assert budget.next_delay(err) is None  # the third failure was the last attempt
    assert budget.attempts == 3
    assert budget.attempts_left == 0
    assert budget.exhausted()
    assert budget.last_error is err


def test_not_retryable_stops_at_once() -> None:
    budget = deterministic().budget(VirtualClock())
    assert budget.next_delay(BadRequest("400")) is None
    assert budget.attempts == 1


def test_retry_after_comes_first_and_is_capped() -> None:
    budget = deterministic(max_retry_after_s=20.0).budget(VirtualClock())
    assert budget.next_delay(RateLimited("429", retry_after=7.5)) == 7.5
    assert budget.next_delay(RateLimited("429", retry_after=3600.0)) == 20.0
    # Without Retry-After: backoff, and the index counts only backoff retries.
    assert budget.next_delay(ProviderUnavailable("503")) == 4.0


def test_zero_retry_after_backs_off_as_the_sdks_do() -> None:
    """A server under load saying "Retry-After: 0" (or a date already past) would get
    every attempt within milliseconds; the official SDKs back off then, and so does
    shoal (a positive Retry-After is still honoured as given)."""
    budget = deterministic().budget(VirtualClock())
    assert budget.next_delay(RateLimited("429", retry_after=0.0)) == 1.0
    assert budget.next_delay(RateLimited("429", retry_after=0.0)) == 2.0
    assert budget.next_delay(RateLimited("429", retry_after=0.25)) == 0.25


async def test_deadline_bounds_the_delay() -> None:
    clock = VirtualClock()
    budget = deterministic(attempts=10, deadline_s=10.0).budget(clock)
    assert budget.deadline == 10.0
    await clock.advance(6.0)
    assert budget.remaining() == pytest.approx(4.0)
    assert budget.next_delay(ProviderUnavailable("503")) == 1.0
    assert budget.next_delay(RateLimited("429", retry_after=5.0)) is None  # 6 + 5 > 10
    await clock.advance(5.0)
    assert budget.remaining() == 0.0
    assert budget.expired
    assert budget.next_delay(ProviderUnavailable("503"), failover=True) is None


def test_no_deadline() -> None:
    budget = deterministic(deadline_s=None).budget(VirtualClock())
    assert budget.deadline is None
    assert budget.remaining() is None
    assert not budget.expired


def test_one_budget_spans_failover() -> None:
    """Two channels and a fallback share 4 attempts: layers never multiply them."""
    clock = VirtualClock()
    budget = deterministic(attempts=4).budget(clock)
    err = RateLimited("429", retry_after=30.0)
    # channel A fails -> fail over to B at once (no wait for A's Retry-After)
    assert budget.next_delay(err, failover=True) == 0.0
    # channel B fails -> fail over to the fallback model's channel
    assert budget.next_delay(ProviderTimeout("t"), failover=True) == 0.0
    # the fallback fails -> only one attempt is left: retry it after Retry-After
    assert budget.next_delay(err) == 30.0
    assert budget.next_delay(err, failover=True) is None
    assert budget.attempts == 4
    assert budget.retries == 1


def test_record_attempt_counts_without_delay() -> None:
    budget = deterministic(attempts=2).budget(VirtualClock())
    auth = AuthError("401")
    assert budget.record_attempt(auth) is True
    assert budget.last_error is auth
    assert budget.record_attempt() is False
    assert budget.exhausted()


def test_parse_retry_after_ms_first() -> None:
    headers = {"retry-after-ms": "1500.5", "retry-after": "9"}
    assert parse_retry_after(headers, 0.0) == pytest.approx(1.5005)


def test_parse_retry_after_seconds_and_case() -> None:
    assert parse_retry_after({"Retry-After": "2.5"}, 0.0) == 2.5
    assert parse_retry_after({"retry-after": " 30 "}, 0.0) == 30.0


def test_parse_retry_after_http_date() -> None:
    headers = {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert parse_retry_after(headers, OCT_21_2015 - 12.0) == pytest.approx(12.0)
    assert parse_retry_after(headers, OCT_21_2015 + 5.0) == 0.0  # already past
    minus_zero = {"retry-after": "Wed, 21 Oct 2015 07:28:00 -0000"}
    assert parse_retry_after(minus_zero, OCT_21_2015 - 3.0) == pytest.approx(3.0)


def test_parse_retry_after_rejects_garbage() -> None:
    assert parse_retry_after({}, 0.0) is None
    assert parse_retry_after({"retry-after": "soon"}, 0.0) is None
    assert parse_retry_after({"retry-after": "-3"}, 0.0) is None
    assert parse_retry_after({"retry-after": "nan"}, 0.0) is None
    # A bad retry-after-ms falls through to retry-after.
    assert parse_retry_after({"retry-after-ms": "x", "retry-after": "4"}, 0.0) == 4.0


def test_default_attempts_reach_three_nines_at_39_percent_failures() -> None:
    """The documented sizing: 16 attempts, 120 s; 0.39^attempts under one call in a
    million, so even a 10,000-call storm loses none in practice."""
    policy = RetryPolicy()
    assert (policy.attempts, policy.deadline_s) == (16, 120.0)
    assert 0.39 ** policy.attempts < 1e-6
    assert 0.39 ** 4 > 0.02  # the old default of 4 could not get there


async def test_jitter_draws_under_half_the_time_left_once() -> None:
    """A backoff step longer than half the time left still retries once, under half the
    time left (so that attempt has the other half to finish), instead of giving up on
    an unlucky draw; the next such step gives up."""
    clock = VirtualClock()
    policy = RetryPolicy(attempts=10, deadline_s=10.0,
                         backoff=Backoff(base=8.0, cap=30.0, rand=lambda: 0.99))
    budget = policy.budget(clock)
    await clock.advance(7.0)  # 3 s left; the backoff ceiling is 8 s
    delay = budget.next_delay(ProviderUnavailable("503"))
    assert delay == pytest.approx(0.99 * 1.5)
    assert budget.squeezed
    assert budget.next_delay(ProviderUnavailable("503")) is None  # no second squeeze
    assert Backoff(base=8.0, rand=lambda: 0.5).delay(0, limit=2.0) == 1.0
    assert Backoff(base=8.0, rand=lambda: 0.5).delay(0, limit=-1.0) == 0.0


@pytest.mark.parametrize("seed", range(40))
async def test_retries_do_not_bunch_up_before_the_deadline(seed: int) -> None:
    """A channel that answers 429 to every attempt, the default policy, a 10 s
    deadline, each attempt taking 20 ms: drawn under the time left, the waits used to
    halve with every retry, sending up to half the attempts in the last second, ms
    apart (an independent provider's finding). Now at most two attempts start in the
    last second and every attempt but the first starts with at least half the time
    that was left when the one before failed."""
    clock = VirtualClock()
    rng = random.Random(seed)
    policy = RetryPolicy(deadline_s=10.0, backoff=Backoff(rand=rng.random))
    budget = policy.budget(clock)
    starts = [0.0]
    while True:
        await clock.advance(0.02)  # the attempt's round trip
        left = budget.remaining()
        assert left is not None
        delay = budget.next_delay(RateLimited("429"))
        if delay is None:
            break
        assert delay <= left / 2 + 1e-9
        await clock.advance(delay)
        starts.append(clock.now())
    assert sum(1 for t in starts if t > 9.0) <= 2, starts
    assert len(starts) <= policy.attempts


async def test_a_deterministic_step_past_the_deadline_gives_up() -> None:
    clock = VirtualClock()
    budget = deterministic(attempts=10, deadline_s=10.0).budget(clock)
    await clock.advance(9.5)  # 0.5 s left; the first backoff step is 1 s
    assert budget.next_delay(ProviderUnavailable("503")) is None
    assert budget.attempts == 1


async def test_retry_after_past_the_deadline_gives_up() -> None:
    """Retry-After is the provider's word, not ours to shorten: past the deadline = stop."""
    clock = VirtualClock()
    budget = RetryPolicy(deadline_s=10.0).budget(clock)
    assert budget.next_delay(RateLimited("429", retry_after=10.0)) is None
    assert budget.next_delay(RateLimited("429", retry_after=9.0)) == 9.0


# -- ChannelRetryBudget: retries a channel may receive, relative to its successes -----------


def test_channel_budget_defaults_and_validation() -> None:
    tokens = ChannelRetryBudget("ds", clock=VirtualClock())
    assert (tokens.ratio, tokens.min_per_s, tokens.cap) == (1.0, 10.0, 100.0)
    assert tokens.balance == 100.0  # a new channel starts full
    for bad in ({"ratio": -0.1}, {"min_per_s": float("nan")}, {"cap": 0.5},
                {"cap": float("inf")}):
        with pytest.raises(ConfigError):
            ChannelRetryBudget("ds", **bad)  # type: ignore[arg-type]


def test_a_dead_channel_gets_the_cap_then_the_floor() -> None:
    clock = VirtualClock()
    tokens = ChannelRetryBudget("ds", ratio=1.0, min_per_s=10.0, cap=100.0, clock=clock)
    granted = sum(tokens.try_withdraw() for _ in range(500))
    assert granted == 100
    assert tokens.denied == 400
    assert tokens.balance == 0.0
    assert tokens.next_token_at() == pytest.approx(0.1)


async def test_the_floor_refills_over_time_up_to_the_cap() -> None:
    clock = VirtualClock()
    tokens = ChannelRetryBudget("ds", min_per_s=10.0, cap=100.0, clock=clock)
    while tokens.try_withdraw():
        pass
    await clock.advance(1.0)
    assert sum(tokens.try_withdraw() for _ in range(50)) == 10  # 10 per second
    await clock.advance(3600.0)
    assert tokens.balance == 100.0  # never more than the cap


def test_successes_earn_retries() -> None:
    clock = VirtualClock()
    tokens = ChannelRetryBudget("ds", ratio=0.5, min_per_s=0.0, cap=10.0, clock=clock)
    while tokens.try_withdraw():
        pass
    assert tokens.next_token_at() is None  # no floor: only a success brings one
    tokens.deposit()
    assert not tokens.try_withdraw()  # half a token
    tokens.deposit()
    assert tokens.try_withdraw()
    for _ in range(100):
        tokens.deposit()
    assert tokens.balance == 10.0
    assert tokens.deposits == 102


def test_refund_returns_an_unsent_retry() -> None:
    tokens = ChannelRetryBudget("ds", min_per_s=0.0, cap=1.0, clock=VirtualClock())
    assert tokens.try_withdraw()
    assert not tokens.try_withdraw()
    tokens.refund()
    assert tokens.withdrawn == 0
    assert tokens.try_withdraw()


def test_a_39_percent_channel_is_fully_served_at_any_traffic() -> None:
    """p/(1-p) ≈ 0.64 retries per success are needed; ratio 1 earns 1. Simulate 10,000
    attempts to one channel, each failure retried there, with no time passing at all
    (no floor help): every retry gets its token."""
    rng = random.Random(39)
    tokens = ChannelRetryBudget("ds", clock=VirtualClock())
    refused = 0
    for _ in range(10_000):
        if rng.random() < 0.39:
            refused += not tokens.try_withdraw()
        else:
            tokens.deposit()
    assert refused == 0
    assert tokens.withdrawn > 3_500
