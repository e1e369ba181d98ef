"""AdaptiveConcurrency: the AIMD rules of docs/traffic.md, exactly, in virtual time."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from shoal.clock import VirtualClock
from shoal.errors import ConfigError, RateLimited
from shoal.observe.events import Event, EventBus
from shoal.traffic.adaptive import AdaptiveConcurrency
from shoal.traffic.limits import LocalLimiter
from shoal.traffic.retry import Backoff, RetryPolicy


def make(clock: VirtualClock, **kw: object) -> tuple[LocalLimiter, AdaptiveConcurrency]:
    lim = LocalLimiter(clock=clock, name="kimi")
    ada = AdaptiveConcurrency(lim, clock=clock, **kw)  # type: ignore[arg-type]
    return lim, ada


def probing(ada: AdaptiveConcurrency) -> bool:
    """Read through a call, so the type checker does not pin the flag between steps."""
    return ada.probing


def learn_ceiling(ada: AdaptiveConcurrency, ceiling: int) -> None:
    """Slow-start to ceiling + 1, then a 429 there: the ceiling is learned."""
    while ada.limit <= ceiling:
        ada.on_success(1.0, ada.limit)
    ada.on_rate_limited(ceiling + 1)
    assert (ada.limit, ada.ceiling) == (ceiling, ceiling)


def test_starts_at_initial_and_drives_the_limiter() -> None:
    clock = VirtualClock()
    lim, ada = make(clock, initial=2)
    assert lim.capacity == 2
    assert ada.limit == 2
    assert ada.slow_start
    assert ada.ceiling is None


def test_slow_start_adds_one_per_busy_success() -> None:
    clock = VirtualClock()
    lim, ada = make(clock, max_limit=5)
    seen = []
    for _ in range(6):
        ada.on_success(1.0, ada.limit)
        seen.append(lim.capacity)
    assert seen == [2, 3, 4, 5, 5, 5]


def test_a_quiet_channel_does_not_grow() -> None:
    clock = VirtualClock()
    _, ada = make(clock, initial=8)
    ada.on_success(1.0, 3)  # 2·3 < 8: the channel was not busy
    assert ada.limit == 8
    ada.on_success(1.0, 4)  # 2·4 >= 8
    assert ada.limit == 9


def test_first_429_learns_the_ceiling_exactly() -> None:
    clock = VirtualClock()
    lim, ada = make(clock)
    for _ in range(5):
        ada.on_success(0.5, ada.limit)
    assert ada.limit == 6
    ada.on_rate_limited(in_flight=4)  # the provider took 3 but not 4
    assert (ada.limit, ada.ceiling, lim.capacity) == (3, 3, 3)
    assert not ada.slow_start
    assert ada.srtt == pytest.approx(0.5)
    assert ada.next_probe_at == pytest.approx(30 * 0.5)  # probe_after_rtts = 30


def test_without_in_flight_the_current_limit_is_the_observation() -> None:
    clock = VirtualClock()
    _, ada = make(clock, initial=5)
    ada.on_rate_limited()
    assert (ada.limit, ada.ceiling) == (4, 4)
    assert not ada.slow_start


def test_stale_429s_from_an_old_overshoot_are_ignored() -> None:
    clock = VirtualClock()
    _, ada = make(clock)
    for _ in range(7):
        ada.on_success(1.0, ada.limit)
    assert ada.limit == 8
    assert ada.on_rate_limited(8)
    assert (ada.limit, ada.ceiling) == (7, 7)
    assert ada.on_rate_limited(8)  # admitted at 8, above today's 7: already cut
    assert ada.limit == 7
    assert ada.on_rate_limited(7)  # admitted at 7 and refused: 7 is too many
    assert (ada.limit, ada.ceiling) == (6, 6)


def test_a_429_at_the_lowest_limit_is_not_explained_by_concurrency() -> None:
    clock = VirtualClock()
    _, ada = make(clock)
    assert not ada.on_rate_limited(1)  # one call alone was refused: RPM, other clients...
    assert ada.limit == 1


async def test_without_in_flight_429s_within_one_rtt_are_one_event() -> None:
    clock = VirtualClock()
    _, ada = make(clock, initial=5)
    ada.on_success(1.0)  # srtt = 1.0, L = 6
    ada.on_rate_limited()
    ada.on_rate_limited()
    assert ada.limit == 5
    await clock.advance(1.0)
    ada.on_rate_limited()
    assert ada.limit == 4


async def test_slow_start_ends_one_above_the_proven_level_then_late_proofs_climb() -> None:
    clock = VirtualClock()
    _, ada = make(clock)
    # Answers lag admissions: successes prove at most 4 while L reaches 8.
    for n in (1, 2, 2, 3, 3, 4, 4):
        ada.on_success(1.0, n)
    assert ada.limit == 8
    ada.on_rate_limited(8)  # the provider refused the 8th: the cap is in [4, 7]
    assert (ada.limit, ada.ceiling) == (5, 5)
    # Calls admitted during slow start answer now: each proves one more level, up to 7.
    for expected in (6, 7, 7):
        ada.on_success(1.0, 7)
        assert (ada.limit, ada.ceiling) == (expected, expected)
    await clock.advance(1.2)  # past 1.1 rtt: the window is closed
    ada.on_success(1.0, 7)
    assert ada.ceiling == 7


async def test_a_429_closes_the_late_proof_window() -> None:
    clock = VirtualClock()
    _, ada = make(clock)
    for n in (1, 2, 2, 3, 3, 4, 4):
        ada.on_success(1.0, n)
    ada.on_rate_limited(8)
    ada.on_success(1.0, 7)
    assert ada.limit == 6
    ada.on_rate_limited(6)  # 6 was one too many after all
    assert ada.limit == 5
    ada.on_success(1.0, 7)
    assert (ada.limit, ada.ceiling) == (5, 5)


async def test_additive_increase_back_to_the_ceiling() -> None:
    clock = VirtualClock()
    _, ada = make(clock)
    learn_ceiling(ada, 6)
    await clock.advance(1.0)
    ada.on_overload()  # L = ⌊6·0.5⌋ = 3, C stays 6
    assert (ada.limit, ada.ceiling) == (3, 6)
    limits = []
    for _ in range(15):
        ada.on_success(1.0, ada.limit)
        limits.append(ada._limit)
    expected = [3.0]
    for _ in range(15):
        expected.append(min(6.0, expected[-1] + 1 / expected[-1]))
    assert limits == pytest.approx(expected[1:])
    assert ada.limit == 6


async def test_probe_after_the_gap_and_its_success_raises_the_ceiling() -> None:
    clock = VirtualClock()
    lim, ada = make(clock, probe_after_rtts=20.0)
    learn_ceiling(ada, 3)  # at t=0 with srtt 1.0: next probe at t=20
    assert ada.next_probe_at == pytest.approx(20.0)
    await clock.advance(19.0)
    ada.on_success(1.0, 3)
    assert (ada.limit, ada.probing) == (3, False)
    await clock.advance(1.0)
    ada.on_success(1.0, 2)  # not saturated at the ceiling: no probe
    assert not probing(ada)
    ada.on_success(1.0, 3)
    assert (ada.limit, ada.probing, lim.capacity) == (4, True, 4)
    ada.on_success(1.0, 3)  # admitted below the probe level: proves nothing
    assert probing(ada)
    ada.on_success(1.0, 4)  # 4 concurrent were accepted
    assert (ada.limit, ada.ceiling, ada.probing) == (4, 4, False)
    assert ada.next_probe_at == pytest.approx(20.0 + 10.0)  # gap halved to 10 rtts


async def test_failed_probes_space_out_exponentially() -> None:
    clock = VirtualClock()
    _, ada = make(clock, probe_after_rtts=20.0, max_probe_interval_s=100.0)
    learn_ceiling(ada, 3)
    probe_times = []
    for _ in range(6):
        while not probing(ada):
            await clock.advance(1.0)
            ada.on_success(1.0, 3)
        probe_times.append(clock.now())
        ada.on_rate_limited(4)  # the probe hit the cap
        assert (ada.limit, ada.ceiling) == (3, 3)
    gaps = [b - a for a, b in zip([0.0, *probe_times], probe_times, strict=False)]
    assert gaps == pytest.approx([20.0, 40.0, 80.0, 100.0, 100.0, 100.0])


def test_probing_without_in_flight_needs_a_window_of_successes() -> None:
    clock = VirtualClock()
    _, ada = make(clock, probe_after_rtts=1.0)
    learn_ceiling(ada, 2)
    ada._next_probe_at = 0.0  # due now
    ada.on_success(1.0)
    assert probing(ada)
    ada.on_success(1.0)
    ada.on_success(1.0)
    assert probing(ada)
    ada.on_success(1.0)  # ceiling + 1 = 3 successes while probing
    assert (ada.ceiling, ada.probing) == (3, False)


def test_slow_responses_do_not_grow_the_limit() -> None:
    clock = VirtualClock()
    _, ada = make(clock, latency_tolerance=2.0)
    ada.on_success(1.0, 1)
    assert ada.limit == 2
    ada.on_success(2.5, 2)  # > 2 × srtt(1.0): queueing at the provider
    assert ada.limit == 2
    assert ada.srtt == pytest.approx(1.0 + 0.125 * 1.5)
    ada.on_success(1.0, 2)
    assert ada.limit == 3


async def test_overload_halves_and_keeps_the_ceiling() -> None:
    clock = VirtualClock()
    _, ada = make(clock)
    learn_ceiling(ada, 9)
    await clock.advance(1.0)
    ada.on_overload()
    assert (ada.limit, ada.ceiling) == (4, 9)
    ada.on_overload()  # within one rtt: same event
    assert ada.limit == 4
    await clock.advance(1.0)
    ada.on_overload()
    assert ada.limit == 2


async def test_a_burst_of_overloads_halves_once_keeps_the_ceiling_and_recovers() -> None:
    # The measured bug: four concurrent 529s cut a learned 27 to 1 (ceiling 1), and it
    # was still 2 after 6 s of healthy traffic.
    clock = VirtualClock()
    lim, ada = make(clock, max_limit=64)
    rtt = 0.05
    while ada.limit <= 27:
        ada.on_success(rtt, ada.limit)
    ada.on_rate_limited(28)
    assert (ada.limit, ada.ceiling) == (27, 27)
    await clock.advance(1.0)
    for _ in range(4):  # one incident: calls in flight together all answer 529
        ada.on_overload()
    assert (ada.limit, ada.ceiling, lim.capacity) == (13, 27, 13)
    elapsed = 0.0
    while elapsed < 6.0 and ada.limit < 27:  # healthy traffic: the channel kept busy
        for _ in range(ada.limit):
            ada.on_success(rtt, ada.limit)
        await clock.advance(rtt)
        elapsed += rtt
    assert (ada.limit, ada.ceiling) == (27, 27)
    assert elapsed == pytest.approx(14 * rtt, abs=3 * rtt)  # about +1 per rtt


async def test_overloads_before_any_latency_is_known_are_one_event() -> None:
    clock = VirtualClock()
    _, ada = make(clock, initial=16, max_limit=64)
    for _ in range(4):
        ada.on_overload()
    assert ada.limit == 8  # one rtt defaults to 1 s until measured
    await clock.advance(0.9)
    ada.on_overload()
    assert ada.limit == 8
    await clock.advance(0.2)
    ada.on_overload()
    assert ada.limit == 4


async def test_an_overload_from_a_call_admitted_before_the_last_cut_is_ignored() -> None:
    clock = VirtualClock()
    _, ada = make(clock)
    learn_ceiling(ada, 20)  # srtt 1 s
    await clock.advance(5.0)
    ada.on_overload(admitted_at=clock.now() - 0.1)
    assert ada.limit == 10
    await clock.advance(30.0)  # a hung call of the same incident times out much later
    ada.on_overload(admitted_at=clock.now() - 60.0)
    assert (ada.limit, ada.ceiling) == (10, 20)
    ada.on_overload(admitted_at=clock.now() - 1.0)  # sent after the cut: a new signal
    assert (ada.limit, ada.ceiling) == (5, 20)


async def test_a_429_after_an_overload_keeps_its_own_rule() -> None:
    clock = VirtualClock()
    _, ada = make(clock)
    learn_ceiling(ada, 10)
    await clock.advance(2.0)
    ada.on_overload()
    assert (ada.limit, ada.ceiling) == (5, 10)
    await clock.advance(2.0)
    # Level 5 was served during slow start: a first 429 there is not taken for a cap...
    assert ada.on_rate_limited(5) is False
    assert (ada.limit, ada.ceiling) == (5, 10)
    # ...but 429s there, repeated until they rival what was served, are: one level down.
    while ada.on_rate_limited(5) is False:
        assert (ada.limit, ada.ceiling) == (5, 10)
    assert (ada.limit, ada.ceiling) == (4, 4)


def test_min_and_max_limits_hold() -> None:
    clock = VirtualClock()
    _, ada = make(clock, initial=2, min_limit=2, max_limit=3)
    for _ in range(5):
        ada.on_success(1.0, ada.limit)
    assert ada.limit == 3
    ada.on_rate_limited()  # (a 429 at level 1 after level 3 served five times is no cap)
    assert ada.limit == 2
    ada.on_rate_limited()
    assert ada.limit == 2  # never under min_limit


def test_adopts_a_cap_another_process_wrote() -> None:
    clock = VirtualClock()
    lim, ada = make(clock)
    learn_ceiling(ada, 6)
    lim.set_capacity(4)  # e.g. another process saw a 429 on the shared limiter
    ada.on_success(1.0, 4)
    assert (ada.limit, ada.ceiling) == (4, 4)
    lim.set_capacity(5)  # ... or proved a higher level
    ada.on_success(1.0, 5)
    assert (ada.limit, ada.ceiling) == (5, 5)


def test_limit_change_events() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    seen: list[Event] = []
    bus.subscribe(seen.append)
    lim = LocalLimiter(clock=clock, name="glm")
    ada = AdaptiveConcurrency(lim, clock=clock, events=bus)
    ada.on_success(1.0, 1)
    ada.on_rate_limited(2)
    assert [(e.kind, e.channel, dict(e.data)) for e in seen] == [
        ("limit_change", "glm", {"from": 1, "to": 2, "reason": "slow_start"}),
        ("limit_change", "glm", {"from": 2, "to": 1, "reason": "rate_limited"}),
    ]


def test_invalid_options() -> None:
    lim = LocalLimiter()
    with pytest.raises(ConfigError):
        AdaptiveConcurrency(lim, initial=0)
    with pytest.raises(ConfigError):
        AdaptiveConcurrency(lim, initial=10, max_limit=5)
    with pytest.raises(ConfigError):
        AdaptiveConcurrency(lim, beta=1.0)
    with pytest.raises(ConfigError):
        AdaptiveConcurrency(lim, latency_tolerance=0.5)


async def run_unknown_cap(cap: int, calls: int, latency: float) -> tuple[float, int, int]:
    """200 calls against a virtual provider with a hidden concurrency cap, through a
    LocalLimiter + AdaptiveConcurrency + RetryBudget: (makespan, 429s, max in flight)."""
    clock = VirtualClock()
    lim = LocalLimiter(clock=clock, name="unknown")
    ada = AdaptiveConcurrency(lim, clock=clock)
    policy = RetryPolicy(attempts=20, backoff=Backoff(base=latency, cap=1.0,
                                                       rand=random.Random(3).random))
    provider = {"in": 0, "max": 0, "429": 0}

    async def call() -> None:
        budget = policy.budget(clock)
        while True:
            permit = await lim.acquire()
            if provider["in"] >= cap:  # the provider rejects at once
                provider["429"] += 1
                await clock.sleep(0.001)
                explained = ada.on_rate_limited(permit.in_flight)
                permit.release()
                # Explained by our overshoot: queue again at once (the cap is lower now).
                delay = budget.next_delay(RateLimited("429", retry_after=1.0),
                                          failover=explained)
                assert delay is not None
                await clock.sleep(delay)
                continue
            provider["in"] += 1
            provider["max"] = max(provider["max"], provider["in"])
            await clock.sleep(latency)
            provider["in"] -= 1
            ada.on_success(latency, permit.in_flight)
            permit.release()
            return

    await clock.run(asyncio.gather(*(call() for _ in range(calls))))
    return clock.now(), provider["429"], provider["max"]


@pytest.mark.parametrize("cap", [3, 5])
async def test_unknown_cap_is_learned_within_the_targets(cap: int) -> None:
    calls, latency = 200, 0.05
    makespan, rejected, peak = await run_unknown_cap(cap, calls, latency)
    bound = math.ceil(calls / cap) * latency
    assert peak == cap
    assert makespan <= 1.25 * bound
    assert rejected <= 0.03 * calls


def test_random_429s_at_served_levels_do_not_ratchet_the_ceiling_down() -> None:
    """A storm's 10% random 429s hit every level; the provider keeps serving those levels,
    so they are not its concurrency cap (the measured bug: ceiling ratcheted to 1)."""
    clock = VirtualClock()
    _, ada = make(clock)
    learn_ceiling(ada, 20)
    rng = random.Random(7)
    counted = 0
    for _ in range(2000):  # saturated: calls are admitted at or near the limit
        level = max(1, ada.limit - rng.randint(0, 3))
        if rng.random() < 0.1:
            counted += ada.on_rate_limited(level)  # False: honour its Retry-After instead
        else:
            ada.on_success(1.0, level)
        clock._now += 0.05
    assert counted <= 5  # of ~200 random 429s
    assert ada.ceiling is not None and ada.ceiling >= 19
    assert ada.limit >= 18


def test_a_cap_429_is_still_a_cap_after_a_storm_of_random_ones() -> None:
    clock = VirtualClock()
    _, ada = make(clock)
    learn_ceiling(ada, 20)
    for level in range(1, 21):
        ada.on_success(1.0, level)
    # The provider's cap drops to 8: every call at 9 or more is refused, repeatedly.
    refused = 0
    while ada.limit > 8 and refused < 200:
        ada.on_rate_limited(ada.limit)
        refused += 1
        clock._now += 2.0  # past one rtt: each 429 is its own incident
    assert ada.limit <= 8


async def test_a_channel_sets_its_own_adaptive_bound_in_config() -> None:
    """``adaptive_max`` in shoal.toml: slow start grows past the default 64 on a channel
    that asks for more (a gateway's streams), and only there."""
    from shoal.config import Config
    from shoal.traffic.router import Router

    config = Config.from_dict({
        "channels": {"wide": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                              "api_key": "sk-test", "adaptive_max": 300},
                     "plain": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                               "api_key": "sk-test"}},
        "models": {"m": {"channels": ["wide", "plain"]}}})
    clock = VirtualClock()
    async with Router(config, clock=clock) as router:
        wide, plain = router.lane("wide").adaptive, router.lane("plain").adaptive
        assert wide is not None and plain is not None
        for lane in (wide, plain):
            for _ in range(400):  # successes at the full limit: slow start to the bound
                lane.on_success(0.1, int(lane.limit))
        assert (int(wide.limit), int(plain.limit)) == (300, 64)
    with pytest.raises(ConfigError, match="adaptive_max"):
        Config.from_dict({"channels": {"c": {"protocol": "openai", "base_url": "http://x/v1",
                                             "adaptive_max": 0}}, "models": {}})
