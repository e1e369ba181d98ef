"""What a virtual key adds before the upstream call: authenticate + check_model + admit,
per call, for OpenKeys (none), StoreKeys on SQLite (in-process limits) and StoreKeys on
PostgreSQL + Redis (shared limits); and the settlement after it (off the latency path in
the gateway: it runs once the answer is sent); then admit+settle per second with 64
callers at once. Side by side in one run, printed as µs per
call and as a ratio to the in-process limits.

    .venv/bin/python bench/gateway_keys_bench.py [--calls 2000] [--no-shared]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from shoal.gateway.key_store import open_key_store
from shoal.gateway.keys import StoreKeys
from shoal.gateway.keys_api import KeyService, OpenKeys
from shoal.types import Usage

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


async def measure(keys: KeyService, secret: str, calls: int) -> tuple[list[float], list[float]]:
    before: list[float] = []
    after: list[float] = []
    for _ in range(calls):
        t0 = time.perf_counter()
        key = await keys.authenticate(secret)
        keys.check_model(key, "gpt-4o")
        grant = await keys.admit(key, model="gpt-4o", tokens=1000, max_cost_usd=0.001)
        t1 = time.perf_counter()
        await keys.settle(grant, usage=Usage(800, 100), cost_usd=0.0005)
        t2 = time.perf_counter()
        before.append((t1 - t0) * 1e6)
        after.append((t2 - t1) * 1e6)
    return before, after


async def throughput(keys: KeyService, secret: str, calls: int, concurrency: int) -> float:
    """Calls per second through admit + settle with ``concurrency`` callers at once."""
    key = await keys.authenticate(secret)

    async def caller(n: int) -> None:
        for _ in range(n):
            grant = await keys.admit(key, model="gpt-4o", tokens=1000, max_cost_usd=0.001)
            await keys.settle(grant, usage=Usage(800, 100), cost_usd=0.0005)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))
    return (calls // concurrency * concurrency) / (time.perf_counter() - t0)


def row(name: str, before: list[float], after: list[float], base: float) -> str:
    q = statistics.quantiles(before, n=100)
    p50 = statistics.median(before)
    return (f"{name:<28} admit p50 {p50:7.0f} µs  p99 {q[98]:7.0f} µs  ({p50 / base:5.1f}× "
            f"local)   settle p50 {statistics.median(after):7.0f} µs")


async def main(calls: int, shared: bool) -> None:
    results: dict[str, tuple[list[float], list[float]]] = {}
    rates: dict[str, float] = {}
    results["OpenKeys (no keys)"] = await measure(OpenKeys(), "", calls)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'runs.db'}"
        async with open_key_store(url) as store:
            _, secret = await store.create("bench", budget_usd=1e9, rpm=10**9, tpm=10**10,
                                           max_concurrency=1000, models=["gpt-*"])
        keys = await StoreKeys(url).open()
        await measure(keys, secret, 50)  # warm-up
        results["StoreKeys SQLite, local"] = await measure(keys, secret, calls)
        rates["StoreKeys SQLite, local"] = await throughput(keys, secret, calls, 64)
        await keys.aclose()
    if shared:
        import asyncpg

        schema = f"bench_{uuid.uuid4().hex[:8]}"
        pg = f"{PG}?schema={schema}"
        async with open_key_store(pg) as store:
            _, secret = await store.create("bench", budget_usd=1e9, rpm=10**9, tpm=10**10,
                                           max_concurrency=1000, models=["gpt-*"])
        keys = await StoreKeys(pg, redis=REDIS, prefix=f"bench:{schema}").open()
        await measure(keys, secret, 50)
        results["StoreKeys PostgreSQL+Redis"] = await measure(keys, secret, calls)
        rates["StoreKeys PostgreSQL+Redis"] = await throughput(keys, secret, calls, 64)
        await keys.aclose()
        conn = await asyncpg.connect(PG)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    base = statistics.median(results["StoreKeys SQLite, local"][0])
    print(f"{calls} calls each, one after another (the machine is shared: compare rows)")
    for name, (before, after) in results.items():
        print(row(name, before, after, base))
    for name, rate in rates.items():
        print(f"{name:<28} 64 callers at once: {rate:8.0f} admit+settle per second "
              "(spend written in group commits)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--no-shared", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.calls, not args.no_shared))
