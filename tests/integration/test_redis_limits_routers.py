"""Routers in four OS processes share one channel's cap through Redis, counted at the
provider: the simulator (its own process) never has more than the cap in flight and
answers no 429, even with calls slower than the lease (the heartbeat keeps them); a
process killed with SIGKILL gives its slots back within the configured ``lease_s``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from worker_procs import read_line

from shoal.config import Config
from shoal.errors import DeadlineExceeded
from shoal.sim import SimProcess
from shoal.traffic.retry import RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

pytestmark = pytest.mark.redis

CAP = 5
LEASE_S = 1.0  # shorter than the slow calls: only the heartbeat keeps their slots
SLOW_S = 2.5

# A worker: a Router on the shared channel; wait for the start signal, then make
# `slow` slow calls and `fast` fast ones at once; print a JSON summary.
WORKER = r"""
import asyncio, json, sys
import redis.asyncio as aioredis
from shoal.config import Config
from shoal.traffic.retry import RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

async def main(redis_url, channel, sim_url, fast, slow, cap, lease):
    cfg = Config.from_dict({
        "channels": {channel: {"protocol": "openai", "base_url": sim_url + "/v1",
                               "api_key": "sk-test", "provider": "openai", "shared": True,
                               "max_concurrency": cap, "lease_s": lease}},
        "models": {"sim-fast": {"channels": [channel]}, "sim-slow": {"channels": [channel]},
                   "sim-hang": {"channels": [channel]}},
        "redis_url": redis_url,
    })
    r = aioredis.from_url(redis_url)
    async with Router(cfg, retry=RetryPolicy(attempts=1, deadline_s=120.0)) as router:
        def ask(model):
            return router.complete(ChatRequest(model=model, messages=[Message.user("hi")],
                                               max_tokens=5))
        await router.lane(channel).limiter.connect()
        await ask("sim-fast")  # warm-up: scripts, connection, token estimator
        print("ready", flush=True)
        if slow < 0:  # the victim: hold -slow slots with calls that never end in time
            calls = [asyncio.ensure_future(ask("sim-hang")) for _ in range(-slow)]
            while router.lane(channel).limiter.in_flight < -slow:
                await asyncio.sleep(0.01)
            print("held", flush=True)
            await asyncio.gather(*calls)
            return
        await r.blpop([channel + ":start"], timeout=30)
        calls = [ask("sim-slow") for _ in range(slow)] + [ask("sim-fast") for _ in range(fast)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    await r.aclose()
    errors = [type(x).__name__ for x in results if isinstance(x, BaseException)]
    print(json.dumps({"ok": len(results) - len(errors), "errors": errors}), flush=True)

a = sys.argv
asyncio.run(main(a[1], a[2], a[3], int(a[4]), int(a[5]), int(a[6]), float(a[7])))
"""


PROFILES = {"*": {"latency_s": 0.05}, "sim-slow": {"latency_s": SLOW_S},
            "sim-hang": {"latency_s": 600.0}}


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    with SimProcess("--cap", str(CAP), "--latency", "0.05") as s:
        s.configure(models=PROFILES)
        yield s


@pytest.fixture
def uncapped_sim() -> Iterator[SimProcess]:
    """No cap: the killed client's abandoned requests may linger at the server."""
    with SimProcess("--latency", "0.05") as s:
        s.configure(models=PROFILES)
        yield s


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )


async def stop(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def channel_name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def test_four_router_processes_never_exceed_the_cap_at_the_provider(
    redis_url: str, redis_client: Any, sim: SimProcess
) -> None:
    channel, procs_n, fast, slow = channel_name(), 4, 25, 1
    # A cap another run learned under this key (adaptive, a day's TTL) must not lift
    # the configured one.
    await redis_client.set("{shoal:limit:" + channel + "}:cap", CAP + 3, px=60_000)
    args = (redis_url, channel, sim.url, str(fast), str(slow), str(CAP), str(LEASE_S))
    procs = [await spawn(*args) for _ in range(procs_n)]
    try:
        for proc in procs:
            assert await read_line(proc) == "ready"
        sim.reset()
        await redis_client.rpush(channel + ":start", *["go"] * procs_n)
        results = [json.loads(await read_line(proc, 120.0)) for proc in procs]
        for proc in procs:
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await stop(procs)
    stats = sim.stats()
    assert [r["errors"] for r in results] == [[]] * procs_n
    assert sum(r["ok"] for r in results) == procs_n * (fast + slow)
    assert stats["total_requests"] == procs_n * (fast + slow)  # no retries were needed
    assert stats["rate_limited"] == 0
    assert stats["max_in_flight"] == CAP  # used to the full, never above


def router_for(redis_url: str, channel: str, sim_url: str) -> Router:
    cfg = Config.from_dict({
        "channels": {channel: {"protocol": "openai", "base_url": sim_url + "/v1",
                               "api_key": "sk-test", "provider": "openai", "shared": True,
                               "max_concurrency": CAP, "lease_s": 2.0}},
        "models": {"sim-fast": {"channels": [channel]}},
        "redis_url": redis_url,
    })
    return Router(cfg, retry=RetryPolicy(attempts=1))


async def test_a_killed_process_slots_come_back_within_the_lease(
    redis_url: str, uncapped_sim: SimProcess
) -> None:
    sim = uncapped_sim
    channel, lease = channel_name(), 2.0
    victim = await spawn(redis_url, channel, sim.url, "0", str(-CAP), str(CAP), str(lease))
    req = ChatRequest(model="sim-fast", messages=[Message.user("hi")], max_tokens=5)
    try:
        async with router_for(redis_url, channel, sim.url) as router:
            await router.lane(channel).limiter.connect()
            assert await read_line(victim) == "ready"
            assert await read_line(victim) == "held"  # all CAP slots, in calls that hang
            with pytest.raises(DeadlineExceeded):
                await router.complete(req, deadline_s=0.5)  # the slots really are held
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            # The dead process renews nothing more: its leases lapse within lease_s of
            # the kill, and waiters re-check when the first one expires.
            answers = await asyncio.gather(
                *(router.complete(req, deadline_s=lease + 1.0) for _ in range(CAP)))
        assert len(answers) == CAP
    finally:
        await stop([victim])


async def test_a_shared_adaptive_channel_learns_the_cap_from_its_seed(redis_url: str) -> None:
    channel = channel_name()
    with SimProcess("--cap", "3", "--latency", "0.05") as sim:
        cfg = Config.from_dict({
            "channels": {channel: {"protocol": "openai", "base_url": sim.url + "/v1",
                                   "api_key": "sk-test", "provider": "openai",
                                   "shared": True}},
            "models": {"sim-fast": {"channels": [channel]}},
            "redis_url": redis_url,
        })
        req = ChatRequest(model="sim-fast", messages=[Message.user("hi")], max_tokens=5)
        async with Router(cfg) as router:
            lane = router.lane(channel)
            assert lane.adaptive is not None
            answers = await asyncio.gather(*(router.complete(req) for _ in range(60)))
            learned = lane.adaptive.limit
            shared_cap = lane.limiter.capacity
        stats = sim.stats()
    assert len(answers) == 60
    assert learned in (3, 4)  # the cap, or one above it (docs/traffic.md says why)
    assert shared_cap == learned  # no configured cap clamps an adaptive channel
    assert stats["rate_limited"] <= 6
