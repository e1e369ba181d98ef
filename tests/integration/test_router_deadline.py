"""A hung provider over real HTTP: the call's deadline cancels the request in flight.

Timing itself is measured by bench/deadline_bench.py; here the behaviour: the caller
gets ``DeadlineExceeded`` (not a 300 s read timeout) and the simulator sees the
connection closed, for ``complete``, ``stream`` and an agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shoal import Agent, Runner
from shoal.config import Config
from shoal.errors import DeadlineExceeded
from shoal.sim import Faults, SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message


@pytest.fixture
async def hung() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(faults=Faults(hang_rate=1.0, hang_max_s=60))) as sim:
        yield sim


def router_for(sim: SimServer) -> Router:
    return Router(Config.from_dict({
        "channels": {"hung": {"protocol": "openai", "base_url": sim.url + "/v1",
                              "api_key": "sk-test", "max_concurrency": 2}},
        "models": {"m": {"channels": ["hung"]}},
    }))


def ask() -> ChatRequest:
    return ChatRequest(model="m", messages=[Message.user("hello?")], max_tokens=8)


async def gone(sim: SimServer) -> int:
    for _ in range(100):  # the server notices the closed connection asynchronously
        if sim.stats().in_flight == 0:
            return 0
        await asyncio.sleep(0.02)
    return sim.stats().in_flight


async def test_complete(hung: SimServer) -> None:
    async with router_for(hung) as router:
        with pytest.raises(DeadlineExceeded, match="in flight"):
            await router.complete(ask(), deadline_s=0.3)
        assert router.lane("hung").limiter.in_flight == 0
    assert await gone(hung) == 0


async def test_stream(hung: SimServer) -> None:
    async with router_for(hung) as router:
        with pytest.raises(DeadlineExceeded, match="streaming"):
            async for _ in router.stream(ask(), deadline_s=0.3):
                pass
    assert await gone(hung) == 0


async def test_agent(hung: SimServer) -> None:
    agent = Agent("waiter", model="m", call_deadline_s=0.3)
    async with router_for(hung) as router:
        with pytest.raises(DeadlineExceeded):
            await Runner(router).run(agent, "hello?")
    assert await gone(hung) == 0
