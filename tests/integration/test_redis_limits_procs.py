"""Several OS processes sharing one RedisLimiter: the simulator never sees more than the
cap at once; and a holder killed with SIGKILL frees its slot within its lease."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import pytest
from worker_procs import read_line

from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.redis_limits import RedisLimiter

pytestmark = pytest.mark.redis

# One worker process: wait for the start signal, then make `calls` calls to the
# simulator, each under a slot of the shared limiter; print a JSON summary.
WORKER = r"""
import asyncio, json, sys
import aiohttp
import redis.asyncio as aioredis
from shoal.traffic.redis_limits import RedisLimiter

async def main(redis_url, key, sim_url, calls, cap):
    r = aioredis.from_url(redis_url)
    limiter = RedisLimiter(r, key=key, max_concurrency=cap)
    statuses = {}
    async with aiohttp.ClientSession() as http:
        async def call(i):
            async with limiter.slot(timeout=60.0):
                async with http.post(sim_url + "/v1/chat/completions", json={
                    "model": "sim-model",
                    "messages": [{"role": "user", "content": f"call {i}"}],
                    "max_tokens": 5,
                }, headers={"authorization": "Bearer sk-test"}) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
        await limiter.connect()
        print("ready", flush=True)
        await r.blpop([key + ":start"], timeout=30)
        await asyncio.gather(*(call(i) for i in range(calls)))
    await limiter.aclose()
    await r.aclose()
    print(json.dumps({str(k): v for k, v in statuses.items()}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""

# A holder that takes a slot, says so, and then hangs until killed.
HOLDER = r"""
import asyncio, sys
from shoal.traffic.redis_limits import RedisLimiter

async def main(redis_url, key):
    limiter = RedisLimiter(redis_url, key=key, max_concurrency=1, lease_s=1.0)
    await limiter.acquire(timeout=10.0)
    print("held", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def spawn(code: str, *args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )


async def test_four_processes_never_exceed_the_shared_cap(
    redis_url: str, unique_prefix: str, redis_client: Any
) -> None:
    cap, procs_n, calls = 5, 4, 30
    config = SimConfig(max_concurrency=cap, models={"*": ModelProfile(latency_s=0.05)})
    async with SimServer(config) as sim:
        procs = [
            await spawn(WORKER, redis_url, unique_prefix, sim.url, str(calls), str(cap))
            for _ in range(procs_n)
        ]
        try:
            for proc in procs:
                assert await read_line(proc, 30.0) == "ready"
            await redis_client.rpush(unique_prefix + ":start", *["go"] * procs_n)
            results = [json.loads(await read_line(proc, 120.0)) for proc in procs]
            for proc in procs:
                assert await proc.wait() == 0
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        stats = sim.stats(log=False)
    assert sum(r.get("200", 0) for r in results) == procs_n * calls
    assert stats.max_in_flight == cap  # used to the full, never above
    assert stats.rate_limited == 0


async def test_a_killed_holder_frees_its_slot_within_the_lease(
    redis_url: str, unique_prefix: str
) -> None:
    holder = await spawn(HOLDER, redis_url, unique_prefix)
    limiter = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=1, lease_s=1.0,
                           poll_s=0.1)
    try:
        assert await read_line(holder, 30.0) == "held"
        assert await limiter.atry_acquire() is None
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
        assert await limiter.atry_acquire() is None  # the lease still runs
        permit = await limiter.acquire(timeout=5.0)  # ... and then is reclaimed
        permit.release()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await limiter.aclose()
