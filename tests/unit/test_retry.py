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
    assert (base.attempts, base.backoff.cap) == (10, 30.0)  # frozen, untouched
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


def test_zero_retry_after_means_retry_now() -> None:
    budget = deterministic().budget(VirtualClock())
    assert budget.next_delay(RateLimited("429", retry_after=0.0)) == 0.0


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
    """The documented sizing: 10 attempts, 120 s; 0.39^attempts well under 0.001."""
    policy = RetryPolicy()
    assert (policy.attempts, policy.deadline_s) == (10, 120.0)
    assert 0.39 ** policy.attempts < 0.001
    assert 0.39 ** 4 > 0.02  # the old default of 4 could not get there


async def test_jitter_draws_under_the_time_left() -> None:
    """Full jitter is capped by the time left, so a long backoff step near the deadline
    still retries (earlier), instead of giving up on an unlucky draw."""
    clock = VirtualClock()
    policy = RetryPolicy(attempts=10, deadline_s=10.0,
                         backoff=Backoff(base=8.0, cap=30.0, rand=lambda: 0.99))
    budget = policy.budget(clock)
    await clock.advance(7.0)  # 3 s left; the backoff ceiling is 8 s
    delay = budget.next_delay(ProviderUnavailable("503"))
    assert delay == pytest.approx(0.99 * 3.0)
    assert Backoff(base=8.0, rand=lambda: 0.5).delay(0, limit=2.0) == 1.0
    assert Backoff(base=8.0, rand=lambda: 0.5).delay(0, limit=-1.0) == 0.0


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
