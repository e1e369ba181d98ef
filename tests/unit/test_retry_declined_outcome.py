"""A declined retry (``x-should-retry: false``) teaches the channel's policies what the
error itself is (traffic/outcome.py): a 5xx is the breaker's, an overload lowers adaptive
concurrency and is not ill health, whatever the header said about retrying."""

from __future__ import annotations

from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import (
    Overloaded,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RetryDeclined,
)
from shoal.observe.events import EventBus
from shoal.traffic.call import Attempt
from shoal.traffic.lane import Lane, build_lane
from shoal.traffic.outcome import attempt_failed


def adaptive_lane() -> tuple[Config, Lane]:
    """A channel whose adaptive concurrency has grown past its start (8 calls at once)."""
    cfg = Config.from_dict({
        "channels": {"c": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                           "api_key": "sk-test", "adaptive": True}},
        "models": {"m": {"channels": ["c"]}}})
    lane = build_lane(cfg.channels["c"], clock=VirtualClock(), events=EventBus())
    assert lane.adaptive is not None
    while lane.adaptive.limit < 8:
        lane.adaptive.on_success(0.05, in_flight=int(lane.adaptive.limit))
    return cfg, lane


def fail_once(cfg: Config, lane: Lane, err: ProviderError) -> None:
    permit = lane.limiter.try_acquire()
    assert permit is not None
    lane.pending += 1
    assert lane.breaker.allow()
    attempt_failed(Attempt(cfg.model("m"), lane, permit, 0.0), err)
    assert lane.limiter.in_flight == 0 and lane.pending == 0  # the slot is back


def declined(original: ProviderError) -> RetryDeclined:
    return RetryDeclined("declined: x-should-retry: false", original=original,
                         status=original.status, provider="openai")


def test_a_declined_5xx_is_a_breaker_failure_like_the_5xx_itself() -> None:
    cfg, lane = adaptive_lane()
    fail_once(cfg, lane, declined(ProviderUnavailable("503", status=503, provider="openai")))
    assert lane.breaker.failure_count == 1


def test_a_declined_overload_lowers_adaptive_concurrency_and_spares_the_breaker() -> None:
    cfg, lane = adaptive_lane()
    adaptive = lane.adaptive
    assert adaptive is not None
    before = adaptive.limit
    fail_once(cfg, lane, declined(Overloaded("529", status=529, provider="anthropic")))
    assert lane.breaker.failure_count == 0
    assert adaptive.limit < before  # the overload rule, as for a plain 529
    # the same overload without the header: the same lesson
    cfg2, lane2 = adaptive_lane()
    assert lane2.adaptive is not None
    fail_once(cfg2, lane2, Overloaded("529", status=529, provider="anthropic"))
    assert (lane2.breaker.failure_count, lane2.adaptive.limit) == (0, adaptive.limit)


def test_a_declined_429_is_backpressure_not_ill_health() -> None:
    cfg, lane = adaptive_lane()
    fail_once(cfg, lane, declined(RateLimited("429", status=429, provider="openai")))
    assert lane.breaker.failure_count == 0
