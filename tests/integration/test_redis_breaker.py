"""One channel's breaker shared through Redis: a trip in one Router opens the channel in
every Router sharing it, before they send it a call; the probe that closes one closes
all; a Router started while the channel is open starts open. Real Redis, real HTTP."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sim_fixtures import running

from shoal.config import Config
from shoal.errors import CircuitOpen, ProviderUnavailable
from shoal.sim import Faults, SimConfig
from shoal.traffic.breaker import BreakerState
from shoal.traffic.retry import RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

pytestmark = pytest.mark.redis

REQ = ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=5)


def config(sim_url: str, channel: str, redis_url: str) -> Config:
    return Config.from_dict({
        "channels": {channel: {"protocol": "openai", "base_url": sim_url + "/v1",
                               "api_key": "sk-test", "provider": "openai", "shared": True,
                               "max_concurrency": 4}},
        "models": {"m": {"channels": [channel]}},
        "redis_url": redis_url,
    })


def router(cfg: Config) -> Router:
    return Router(cfg, retry=RetryPolicy(attempts=1),
                  breaker_options={"failure_threshold": 3, "cooldown_s": 30.0})


async def eventually(check: Any, what: str, limit_s: float = 10.0) -> None:
    """Poll ``check()`` until true; the bound only stops a broken test from hanging."""
    for _ in range(int(limit_s / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def test_a_trip_in_one_router_opens_the_channel_in_the_others(redis_url: str) -> None:
    channel = f"brk-{uuid.uuid4().hex[:8]}"
    dead = SimConfig(faults=Faults(error_rate=1.0, error_status=503))
    async with running(dead) as sim:
        cfg = config(sim.url, channel, redis_url)
        async with router(cfg) as a, router(cfg) as b:
            await b.lane(channel).provider()  # b follows the shared state from here
            for _ in range(3):
                with pytest.raises(ProviderUnavailable):
                    await a.complete(REQ)
            assert a.lane(channel).breaker.state is BreakerState.OPEN
            sent_by_a = len(sim.stats(log=False).requests)
            await eventually(lambda: b.lane(channel).breaker._state is BreakerState.OPEN,
                             "b's breaker opened by a's trip")
            with pytest.raises(CircuitOpen, match="another process"):
                await b.complete(REQ, deadline_s=0.5)
            assert len(sim.stats(log=False).requests) == sent_by_a  # b sent nothing

            # A Router that starts while the trip holds starts open.
            async with router(cfg) as c:
                await c.lane(channel).provider()
                assert c.lane(channel).breaker._state is BreakerState.OPEN

            # Fixed by hand in one place (reset after fixing the key, say): closed everywhere.
            a.lane(channel).breaker.reset()
            await eventually(lambda: b.lane(channel).breaker._state is BreakerState.CLOSED,
                             "b's breaker closed by a's reset")
