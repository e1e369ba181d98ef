"""Time to resume a 1,000-step run whose every step is journaled (zero model calls), per store.

    python bench/resume_bench.py [--steps 1000] [--repeat 5] [--stores sqlite,redis,postgres]

The flow: ``--steps`` agent steps in layers of 10 (each layer after the whole previous
one), answered once by an instant scripted model (~200-character answers) with every
step and turn journaled. Then the run is resumed ``--repeat`` times by a fresh
recorder, as a restarted process would: the client has no answers at all, so a single
model call would fail the bench. Printed per store: the first run (all journal writes
included), the resume (median and worst), the part of it spent reading and verifying
the journal, and the same flow run in memory with no journal (the scheduler's own cost).
Redis and PostgreSQL come from SHOAL_TEST_REDIS_URL / SHOAL_TEST_PG_DSN; each store
gets a fresh prefix / schema, removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from journal_bench import STORES
from shoal.agents import Agent
from shoal.agents.testing import ScriptedClient, reply
from shoal.flows.flow import Flow
from shoal.flows.resume import resume, run_durable
from shoal.stores import Store, StoreError
from shoal.types import ChatRequest

WIDTH = 10


def build(steps: int) -> Flow:
    flow = Flow("bench", max_concurrency=WIDTH)
    previous: list[str] = []
    for start in range(0, steps, WIDTH):
        layer = [f"s{i:04d}" for i in range(start, min(steps, start + WIDTH))]
        for name in layer:
            flow.add(Agent(name, model="m", instructions=f"You are {name}."), after=previous)
        previous = layer
    return flow


def answer(request: ChatRequest) -> object:
    return reply(f"{request.messages[0].content} " + "finding " * 25)


async def bench_store(name: str, steps: int, repeat: int) -> str:
    flow = build(steps)
    async with STORES[name]() as store:
        t0 = time.perf_counter()
        first = await run_durable(flow, "topic", store=store, run_id="bench-1",
                                  client=ScriptedClient(handler=answer))
        first_s = time.perf_counter() - t0
        assert first.status == "succeeded"
        resumes: list[float] = []
        loads: list[float] = []
        for _ in range(repeat):
            silent = ScriptedClient()  # no answers: any model call raises
            t0 = time.perf_counter()
            result = await resume("bench-1", flow, store=store, client=silent)
            resumes.append(time.perf_counter() - t0)
            assert silent.calls == 0
            assert all(s.status == "replayed" for s in result.steps.values())
            assert result.output == first.output
            loads.append(await read_time(store))
    return (f"{name:9s} {steps} steps ({2 * steps} records): first run {first_s * 1e3:7.0f} ms"
            f" | resume median {statistics.median(resumes) * 1e3:6.0f} ms, worst "
            f"{max(resumes) * 1e3:6.0f} ms, of which reading the journal "
            f"{statistics.median(loads) * 1e3:5.0f} ms | model calls 0")


async def read_time(store: Store) -> float:
    t0 = time.perf_counter()
    await store.get_steps("bench-1")
    return time.perf_counter() - t0


async def in_memory(steps: int, repeat: int) -> str:
    flow = build(steps)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await flow.run("topic", client=ScriptedClient(handler=answer))
        times.append(time.perf_counter() - t0)
    return (f"{'no store':9s} {steps} steps, every step called (instant model): "
            f"median {statistics.median(times) * 1e3:6.0f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--stores", default="sqlite,redis,postgres")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"resume bench: {args.steps}-step run, all journaled ({os.cpu_count()} CPUs, "
          f"load average {load:.1f})")
    print(await in_memory(args.steps, args.repeat), flush=True)
    for name in args.stores.split(","):
        try:
            print(await bench_store(name.strip(), args.steps, args.repeat), flush=True)
        except (OSError, StoreError) as exc:
            print(f"{name:9s} skipped: {exc}")


if __name__ == "__main__":
    asyncio.run(main())
