"""The scaling curve of a batch on Dask workers, against an uncapped simulator.

One 3-step flow (one model turn per step, 50 ms each at the simulator, no cap) over
``--items`` inputs, every item journaled on PostgreSQL, the channel shared through
Redis (a cap far above the load: the limiter's round trips are in the figures). Each
worker process runs at most ``--per-worker`` items at once, so one worker's throughput
is bounded by ``per_worker / (3 x 50 ms)`` and adding workers should add throughput,
until this machine's CPUs bind. The configurations run one after the other in this
one run, each on a fresh local cluster (worker processes on 127.0.0.1), after a
warm-up batch; printed: items/s for 1, 2 and 3 workers and each as a ratio to 1 worker,
plus the same batch in this process (a LocalExecutor) for the cost of Dask.

    python bench/scale_bench.py                         # 240 items, 8 per worker
    python bench/scale_bench.py --items 600 --per-worker 16

Needs Redis on 127.0.0.1:6379 and PostgreSQL (``--store``, default the test database).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoal import Agent, Flow
from shoal.flows.batch import Batch
from shoal.flows.context import StepContext
from shoal.scale import DaskExecutor, LocalExecutor
from shoal.sim import SimProcess

MODEL = "sim-fast"
WRITER = Agent("writer", model=MODEL, instructions="Write one short line.", max_tokens=8)


async def step(ctx: StepContext) -> str:
    await ctx.run_agent(WRITER, f"{ctx.step} {ctx.input}")
    return f"{ctx.input}:{ctx.step}"


def flow() -> Flow:
    f = Flow("scale-bench")
    f.add(step, name="a")
    f.add(step, name="b", after="a")
    f.add(step, name="c", after="b")
    return f


def write_config(path: Path, sim_url: str, redis_url: str) -> None:
    channel = f"bench{uuid.uuid4().hex[:8]}"
    path.write_text(
        f'redis_url = "{redis_url}"\n\n[channels.{channel}]\nprotocol = "openai"\n'
        f'provider = "openai"\nbase_url = "{sim_url}/v1"\napi_key = "sk-test"\n'
        f'shared = true\nmax_concurrency = 10000\n\n[models."{MODEL}"]\n'
        f'channels = ["{channel}"]\n')


@contextlib.contextmanager
def local_cluster(workers: int, threads: int) -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,  # type: ignore[no-untyped-call]
                      host="127.0.0.1", dashboard_address=None,
                      worker_dashboard_address=None) as cluster:
        yield str(cluster.scheduler_address)


async def timed(executor: Any, items: int, tag: str) -> float:
    """Items per second of one batch (after a warm-up batch on the same executor)."""
    await Batch(flow(), run_id=f"warm-{tag}-{uuid.uuid4().hex[:6]}").run(
        [f"w{i}" for i in range(12)], executor=executor)
    started = time.perf_counter()
    result = await Batch(flow(), run_id=f"{tag}-{uuid.uuid4().hex[:6]}").run(
        [f"doc{i}" for i in range(items)], executor=executor)
    elapsed = time.perf_counter() - started
    failed = [i.error for i in result.failed]
    if failed:
        raise SystemExit(f"{len(failed)} items failed, e.g. {failed[0]}")
    return items / elapsed


async def drop(store: str) -> None:
    import asyncpg

    dsn, _, schema = store.partition("?schema=")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=240)
    ap.add_argument("--per-worker", type=int, default=8, help="items in flight per worker")
    ap.add_argument("--threads", type=int, default=2, help="Dask threads per worker")
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--store", default=os.environ.get(
        "SHOAL_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args()
    store = f"{args.store}?schema=scalebench_{uuid.uuid4().hex[:8]}"
    config = Path(f"/tmp/shoal-scale-bench-{os.getpid()}.toml")
    rates: dict[str, float] = {}
    with SimProcess("--latency", str(args.latency)) as sim:
        write_config(config, sim.url, args.redis)
        try:
            rates["in-process"] = asyncio.run(timed(
                LocalExecutor(store=store, config=str(config),
                              items_per_worker=args.per_worker), args.items, "local"))
            for n in (1, 2, 3):
                with local_cluster(n, args.threads) as address:
                    executor = DaskExecutor(address, store=store, config=str(config),
                                            chunk_size=max(1, args.per_worker // 2),
                                            items_per_worker=args.per_worker)
                    rates[f"{n} worker{'s' if n > 1 else ''}"] = asyncio.run(
                        timed(executor, args.items, f"w{n}"))
        finally:
            config.unlink(missing_ok=True)
            asyncio.run(drop(store))
    bound = args.per_worker / (3 * args.latency)
    print(f"{args.items} items x 3 steps, {args.latency * 1000:.0f} ms per call, uncapped; "
          f"{args.per_worker} items in flight per worker (bound {bound:.0f} items/s per "
          f"worker); {os.cpu_count()} CPUs")
    base = rates["1 worker"]
    for name, rate in rates.items():
        print(f"  {name:<11} {rate:8.1f} items/s   x{rate / base:.2f} of 1 worker")


if __name__ == "__main__":
    main()
