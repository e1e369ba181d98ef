"""Journal write latency and resume read time, per store.

    python bench/journal_bench.py [--writes 2000] [--steps 1000] [--stores sqlite,redis,postgres]

For each store: ``complete_step`` latency p50/p99 over N sequential writes of a
realistic ~2 KB result (target p99 <= 5 ms), the same writes from 16 concurrent
writers on one run (a swarm finishing together), and the time to read back every
step of a 1,000-step run (what a resume reads). Redis and PostgreSQL come from
SHOAL_TEST_REDIS_URL / SHOAL_TEST_PG_DSN (defaults: 127.0.0.1); each run uses a
fresh key prefix / schema and removes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from shoal.stores import RunRecord, StepRecord, Store, StoreError
from shoal.stores.postgres import PostgresStore
from shoal.stores.redis import RedisStore
from shoal.stores.sqlite import SQLiteStore

TARGET_P99_MS = 5.0
REDIS_URL = os.environ.get("SHOAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("SHOAL_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def result_2kb(i: int) -> dict[str, Any]:
    """What an agent step typically returns: some text, a few fields, usage."""
    return {
        "text": f"Finding {i}: " + ("Open-weight models cut serving cost; " * 52)[:1800],
        "points": [f"point {i}.{k}" for k in range(5)],
        "model": "deepseek-chat",
        "usage": {"input_tokens": 1200 + i % 100, "output_tokens": 450},
        "finish_reason": "stop",
    }


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@asynccontextmanager
async def sqlite_store(sync: str) -> AsyncIterator[Store]:
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        async with SQLiteStore(
            Path(tmp) / "runs.db", synchronous="full" if sync == "full" else "normal"
        ) as store:
            yield store


@asynccontextmanager
async def redis_store() -> AsyncIterator[Store]:
    prefix = f"shoalbench:{uuid.uuid4().hex[:10]}"
    try:
        async with RedisStore(REDIS_URL, prefix=prefix) as store:
            yield store
    finally:
        import redis.asyncio as aioredis

        client: Any = aioredis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i : i + 1000])
        await client.aclose()


@asynccontextmanager
async def pg_store(dsn: str = PG_DSN) -> AsyncIterator[Store]:
    schema = f"shoalbench_{uuid.uuid4().hex[:10]}"
    try:
        async with PostgresStore(dsn, schema=schema) as store:
            yield store
    finally:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


STORES: dict[str, Callable[[], Any]] = {
    "sqlite": lambda: sqlite_store("full"),
    "sqlite-normal": lambda: sqlite_store("normal"),
    "redis": redis_store,
    "postgres": pg_store,
    # Unknown DSN options reach PostgreSQL as session settings: commits stop waiting
    # for the WAL fsync (a server crash may lose the last ~0.6 s of steps).
    "postgres-nosync": lambda: pg_store(
        PG_DSN + ("&" if "?" in PG_DSN else "?") + "synchronous_commit=off"
    ),
}


async def pg_floor(writes: int) -> str:
    """The server's own cost of one durable 2 KB upsert: the floor under any PG store."""
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    table = f"shoalbench_floor_{uuid.uuid4().hex[:8]}"
    try:
        await conn.execute(f"CREATE TABLE {table} (k text PRIMARY KEY, v text)")
        payload = json.dumps(result_2kb(0))
        lat: list[float] = []
        for i in range(writes):
            t0 = time.perf_counter()
            await conn.execute(
                f"INSERT INTO {table} VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = $2",
                str(i), payload,
            )
            lat.append(time.perf_counter() - t0)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    return (
        f"{'pg floor':14s} raw asyncpg INSERT x{writes} (no shoal): p50 {pct(lat, .5) * 1e3:.3f} ms"
        f"  p99 {pct(lat, .99) * 1e3:.3f} ms  (the WAL fsync of this machine)"
    )


async def bench_store(name: str, writes: int, steps: int) -> list[str]:
    async with STORES[name]() as store:
        results = [result_2kb(i) for i in range(max(writes, steps))]
        size = len(json.dumps(results[0]))

        # Sequential complete_step: the latency a step pays to become durable.
        await store.create_run(RunRecord("seq", "bench", input={"n": writes}))
        for i in range(50):  # warm up connections, statement caches, scripts
            await store.complete_step("seq", StepRecord(f"warm/{i}", "succeeded", results[i]))
        lat: list[float] = []
        for i in range(writes):
            step = StepRecord(f"s/{i}", "succeeded", results[i], tokens=1650, cost_usd=0.0004)
            t0 = time.perf_counter()
            await store.complete_step("seq", step)
            lat.append(time.perf_counter() - t0)

        # 16 concurrent writers on one run.
        await store.create_run(RunRecord("par", "bench"))
        par_lat: list[float] = []

        async def writer(w: int) -> None:
            for i in range(w, writes, 16):
                t0 = time.perf_counter()
                await store.complete_step("par", StepRecord(f"m/{i}", "succeeded", results[i]))
                par_lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(16)))
        par_wall = time.perf_counter() - t0

        # Resume read: every step of a `steps`-step run.
        await store.create_run(RunRecord("resume", "bench"))
        for i in range(steps):
            await store.complete_step("resume", StepRecord(f"step/{i}", "succeeded", results[i]))
        reads: list[float] = []
        for _ in range(5):
            t0 = time.perf_counter()
            got = await store.get_steps("resume")
            reads.append(time.perf_counter() - t0)
            assert len(got) == steps

    p50, p99 = pct(lat, 0.50) * 1e3, pct(lat, 0.99) * 1e3
    verdict = "OK" if p99 <= TARGET_P99_MS else "OVER TARGET"
    return [
        f"{name:14s} complete_step x{writes} sequential (~{size / 1024:.1f} KB result): "
        f"p50 {p50:.3f} ms  p99 {p99:.3f} ms  max {max(lat) * 1e3:.2f} ms  "
        f"[target p99 <= {TARGET_P99_MS:g} ms: {verdict}]",
        f"{'':14s} 16 concurrent writers: p50 {pct(par_lat, .5) * 1e3:.3f} ms  "
        f"p99 {pct(par_lat, .99) * 1e3:.3f} ms  throughput {writes / par_wall:,.0f} steps/s",
        f"{'':14s} resume read of a {steps}-step run (get_steps): "
        f"median {statistics.median(reads) * 1e3:.1f} ms  best {min(reads) * 1e3:.1f} ms",
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument(
        "--stores", default="sqlite,sqlite-normal,redis,postgres,postgres-nosync,pg-floor"
    )
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"journal bench: {args.writes} writes, {args.steps}-step resume, "
          f"target p99 <= {TARGET_P99_MS:g} ms per durable step write "
          f"({os.cpu_count()} CPUs, load average {load:.1f})")
    for name in args.stores.split(","):
        try:
            if name.strip() == "pg-floor":
                print(await pg_floor(args.writes), flush=True)
                continue
            for line in await bench_store(name.strip(), args.writes, args.steps):
                print(line, flush=True)
        except (OSError, StoreError) as exc:
            print(f"{name:14s} skipped: {exc}")


if __name__ == "__main__":
    asyncio.run(main())
