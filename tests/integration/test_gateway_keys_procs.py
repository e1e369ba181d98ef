"""Two OS processes with their own StoreKeys over one PostgreSQL store and one Redis:
one key's budget and concurrency hold across both, as if there were one process."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from worker_procs import read_line

from shoal.gateway.key_store import open_key_store

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

# One replica: wait for the start signal, hammer the key with `tasks` concurrent callers
# (admit, a few ms of "upstream", settle a random real cost up to the worst case), count
# the key's calls in flight across processes in a Redis counter, print a JSON summary.
WORKER = r"""
import asyncio, json, random, sys
import redis.asyncio as aioredis
from shoal.gateway.keys import StoreKeys
from shoal.gateway.keys_api import KeyBudgetExceeded, KeyLimited
from shoal.types import Usage

async def main(store_url, redis_url, prefix, secret, tasks):
    r = aioredis.from_url(redis_url)
    keys = await StoreKeys(store_url, redis=redis_url, prefix=prefix, cache_s=0).open()
    key = await keys.authenticate(secret)
    rng = random.Random()
    out = {"admitted": 0, "budget": 0, "limited": 0, "max_in_flight": 0}
    print("ready", flush=True)
    await r.blpop([prefix + ":start"], timeout=30)

    async def caller():
        refused = 0
        for _ in range(1000):  # until the budget refuses this caller three times
            try:
                grant = await keys.admit(key, model="m", tokens=50, max_cost_usd=0.04)
            except KeyBudgetExceeded:
                out["budget"] += 1
                refused += 1
                if refused == 3:
                    return
                await asyncio.sleep(0.01)
                continue
            except KeyLimited:
                out["limited"] += 1
                await asyncio.sleep(0.005)
                continue
            out["admitted"] += 1
            n = await r.incr(prefix + ":in_flight")
            out["max_in_flight"] = max(out["max_in_flight"], n)
            await asyncio.sleep(rng.random() * 0.01)
            await r.decr(prefix + ":in_flight")
            await keys.settle(grant, usage=Usage(40, 10), cost_usd=rng.uniform(0.02, 0.04))
            # A client's own time between calls: without it a caller whose call just
            # ended takes the freed slot back at once, and a loaded machine could let one
            # replica hold all 4 slots while the other's callers back off (seen once).
            await asyncio.sleep(rng.random() * 0.005)

    await asyncio.gather(*(caller() for _ in range(tasks)))
    await keys.aclose()
    await r.aclose()
    print(json.dumps(out), flush=True)

asyncio.run(main(*sys.argv[1:5], int(sys.argv[5])))
"""


async def test_two_processes_share_one_budget_and_one_concurrency_cap(
    pg_url: str, redis_url: str, unique_prefix: str, redis_client: object
) -> None:
    async with open_key_store(pg_url) as store:
        record, secret = await store.create("shared", budget_usd=1.0, max_concurrency=4)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, pg_url, redis_url, unique_prefix, secret, "8",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        for _ in range(2)]
    try:
        for proc in procs:
            assert await read_line(proc) == "ready"
        await redis_client.rpush(unique_prefix + ":start", 1, 1)  # type: ignore[attr-defined]
        results = [json.loads(await read_line(proc, timeout=120)) for proc in procs]
        for proc in procs:
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        keys = [k async for k in redis_client.scan_iter(  # type: ignore[attr-defined]
            match=f"*{unique_prefix}*")]
        if keys:
            await redis_client.delete(*keys)  # type: ignore[attr-defined]
    async with open_key_store(pg_url) as store:
        spend = await store.spend(record.id, "total")
    facts = (spend, results)
    assert spend.usd <= 1.0, facts  # a real cost never exceeds its worst case here
    assert spend.usd > 1.0 - 2 * 0.04, facts  # and the budget, not the test's end, stopped them
    assert spend.requests == sum(r["admitted"] for r in results), facts
    assert max(r["max_in_flight"] for r in results) <= 4, facts
    assert all(r["admitted"] > 0 for r in results), facts  # both replicas took part
    assert sum(r["limited"] for r in results) > 0, facts
