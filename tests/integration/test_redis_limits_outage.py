"""A shared limiter in bad weather at Redis: an outage costs calls time, never the call,
and never a slot over the cap; a Redis that stops answering cannot hold a call past its
deadline.

Redis is real, reached through a TCP proxy the test stops, starts and stalls
(tests/integration/tcp_proxy.py); the provider is the simulator, which counts what it
saw in flight. Nothing here asserts a duration: the bounds are outcomes (every call
answered with the lease far longer than the deadline, ``DeadlineExceeded`` rather
than a hang caught by the test's own safety timeout).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tcp_proxy import TcpProxy

from shoal.config import Config
from shoal.errors import DeadlineExceeded
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.redis_limits import RedisLimiter
from shoal.traffic.redis_link import RedisAway
from shoal.traffic.retry import RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

CAP = 2
LEASE_S = 60.0  # far longer than any deadline here: no call may wait for a lease to lapse
SAFETY_S = 45.0  # the test's own bound on a call: only a hang reaches it


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", 6379)
    await p.start()
    yield p
    await p.close()


def _router(sim: SimServer, proxy: TcpProxy, redis_url: str, *, deadline_s: float,
            **channel: Any) -> tuple[Router, str]:
    name = f"outage-{uuid.uuid4().hex[:10]}"  # its own Redis key
    cfg = Config.from_dict({
        "channels": {name: {"protocol": "openai", "base_url": sim.url + "/v1",
                            "api_key": "sk-test", "provider": "openai", "shared": True,
                            "max_concurrency": CAP, "lease_s": LEASE_S, **channel}},
        "models": {"m": {"channels": [name]}},
        "redis_url": proxy.url_for(redis_url),
    })
    return Router(cfg, retry=RetryPolicy(attempts=2, deadline_s=deadline_s)), name


def _ask(router: Router) -> Any:
    return router.complete(ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=5))


async def test_a_redis_outage_costs_time_not_calls(redis_url: str, proxy: TcpProxy) -> None:
    """Redis goes away while calls hold slots and others queue, then comes back: every
    call is answered, the provider never sees more than the cap, and the slots released
    while Redis was away come back when it does (not when their 60 s leases lapse)."""
    sim_cfg = SimConfig(max_concurrency=CAP, models={"*": ModelProfile(latency_s=0.3)})
    async with SimServer(sim_cfg) as sim:
        router, name = _router(sim, proxy, redis_url, deadline_s=30.0)
        async with router:
            await _ask(router)  # warm: scripts loaded, connection open
            sim.reset_stats()
            calls = [asyncio.ensure_future(_ask(router)) for _ in range(8)]
            limiter = router.lane(name).limiter
            assert isinstance(limiter, RedisLimiter)
            while limiter.in_flight < CAP:
                await asyncio.sleep(0.01)
            await proxy.stop()  # the held calls finish and release while Redis is away
            await asyncio.sleep(1.0)
            await proxy.start()
            results = await asyncio.wait_for(
                asyncio.gather(*calls, return_exceptions=True), SAFETY_S)
            # Every slot is back in Redis now, 60 s before a lease would have lapsed.
            held = await _held_in_redis(redis_url, limiter.key)
        stats = sim.stats(log=False)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert held == 0
    assert stats.max_in_flight <= CAP
    assert stats.rate_limited == 0


async def _held_in_redis(redis_url: str, key: str) -> int:
    """Slots Redis counts as held under ``key``, read directly (not through the proxy),
    once the orphans' hand-back has had a moment (it backs off at most a second)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        for _ in range(50):
            held = int(await client.zcard("{" + key + "}:holders"))
            if held == 0:
                break
            await asyncio.sleep(0.1)
        return held
    finally:
        await client.aclose()


async def test_slots_released_while_redis_is_away_are_handed_back_when_it_answers(
        redis_url: str, proxy: TcpProxy) -> None:
    """Calls that end while Redis is away cannot release their slots there; with nobody
    of this process queued to take them over, Redis would count them held until their
    leases lapse (60 s: an outage of a second would stop every replica for a minute).
    They are released again as soon as Redis answers."""
    sim_cfg = SimConfig(models={"*": ModelProfile(latency_s=0.5)})
    async with SimServer(sim_cfg) as sim:
        router, name = _router(sim, proxy, redis_url, deadline_s=30.0)
        async with router:
            await _ask(router)
            limiter = router.lane(name).limiter
            assert isinstance(limiter, RedisLimiter)
            calls = [asyncio.ensure_future(_ask(router)) for _ in range(CAP)]
            while limiter.in_flight < CAP:
                await asyncio.sleep(0.01)
            await proxy.stop()
            results = await asyncio.wait_for(
                asyncio.gather(*calls, return_exceptions=True), SAFETY_S)
            await proxy.start()
            held = await _held_in_redis(redis_url, limiter.key)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert held == 0


async def test_a_stalled_redis_cannot_hold_a_call_past_its_deadline(
        redis_url: str, proxy: TcpProxy) -> None:
    """Redis accepts and never answers (a half-dead node, a black-holed route): the call
    ends with DeadlineExceeded naming Redis, at its deadline, not when a socket gives up."""
    async with SimServer(SimConfig()) as sim:
        router, _ = _router(sim, proxy, redis_url, deadline_s=1.5)
        async with router:
            await _ask(router)
            proxy.stall()
            with pytest.raises(DeadlineExceeded, match="Redis"):
                await asyncio.wait_for(_ask(router), SAFETY_S)
            proxy.unstall()
            await asyncio.wait_for(_ask(router), SAFETY_S)  # and it recovers
        assert sim.stats(log=False).total_requests == 2  # nothing sent while it stalled


async def test_an_outage_longer_than_the_deadline_is_a_deadline_naming_redis(
        redis_url: str, proxy: TcpProxy) -> None:
    async with SimServer(SimConfig()) as sim:
        router, _ = _router(sim, proxy, redis_url, deadline_s=1.0)
        async with router:
            await _ask(router)
            await proxy.stop()
            with pytest.raises(DeadlineExceeded, match="Redis did not answer"):
                await asyncio.wait_for(_ask(router), SAFETY_S)
            await proxy.start()
            await asyncio.wait_for(_ask(router), SAFETY_S)


async def test_without_a_deadline_an_outage_still_ends_the_wait(
        redis_url: str, proxy: TcpProxy) -> None:
    """A limiter used directly, with no timeout: a Redis that stays away ends the wait
    with an error after ``lease_s`` (as long as slots held elsewhere last), not never."""
    key = f"shoaltest:outage:{uuid.uuid4().hex[:10]}"
    limiter = RedisLimiter(proxy.url_for(redis_url), key=key, max_concurrency=1, lease_s=1.0,
                           poll_s=0.1)
    async with limiter:
        (await limiter.acquire()).release()
        await proxy.stop()
        with pytest.raises(RedisAway, match="Redis did not answer"):
            await asyncio.wait_for(limiter.acquire(), SAFETY_S)
        await proxy.start()


async def test_redis_away_from_the_start_ends_the_call_and_closes_cleanly(
        redis_url: str, proxy: TcpProxy) -> None:
    """Redis down before the Router starts: the call ends with the deadline naming
    Redis, and closing the Router raises nothing. The shared breaker's follower used to
    die on its first subscribe, and Router.aclose() re-raised its ConnectionError over
    the run's own error (a newcomer's finding: a 670-line traceback that hid it)."""
    async with SimServer(SimConfig()) as sim:
        await proxy.stop()
        router, _ = _router(sim, proxy, redis_url, deadline_s=1.0)
        async with router:
            with pytest.raises(DeadlineExceeded, match="Redis did not answer"):
                await asyncio.wait_for(_ask(router), SAFETY_S)
        # leaving the block closed the Router (its shared breaker's follower with it)
        assert sim.stats().total_requests == 0  # nothing was sent without the shared cap
