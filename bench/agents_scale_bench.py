"""10,000 concurrent agent runs in one process against a zero-latency simulator.

All runs start at once (one task each) and go through one Router whose channel admits
``--channel-cap`` calls at a time; the rest wait in the limiter, holding their state,
so every run is alive at the peak. Printed: model calls per second, and peak memory
per concurrent run = (peak RSS − RSS before the runs) / runs, against the target of
50 KB. The simulator runs in its own process, so neither its CPU nor its memory count.

    python bench/agents_scale_bench.py                    # 10,000 runs, one call each
    python bench/agents_scale_bench.py --tools            # a tool round trip: two calls
    python bench/agents_scale_bench.py --runs 2000 --tracemalloc   # Python heap per run
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import time
import tracemalloc

from shoal.agents import Agent, Runner, tool
from shoal.config import Config
from shoal.sim import SimProcess
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

TARGET_KB = 50.0


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux


@tool(threaded=False, timeout_s=None, retries=0)
def lookup(query: str) -> str:
    """Look something up."""
    return f"facts about {query}"


async def run(args: argparse.Namespace) -> bool:
    sim = SimProcess("--output-tokens", "16")
    try:
        cfg = Config.from_dict({
            "channels": {"sim": {"protocol": "openai", "base_url": sim.url + "/v1",
                                 "api_key": "sk-bench", "provider": "openai",
                                 "max_concurrency": args.channel_cap,
                                 "pool_size": args.channel_cap}},
            "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}},
        })
        agent = Agent("worker", model="m", max_tokens=32, instructions="Answer briefly.",
                      tools=[lookup] if args.tools else ())
        async with Router(cfg) as router:
            runner = Runner(router)
            # warm up: connections, tokenizer, code paths
            await asyncio.gather(*(runner.run(agent, f"warm {i}") for i in range(200)))
            await router.complete(ChatRequest(model="m", messages=[Message.user("w")],
                                              max_tokens=1))
            sim.reset()
            gc.collect()
            if args.tracemalloc:
                tracemalloc.start()
            before_rss = rss_kb()
            before_peak = peak_rss_kb()
            started = time.perf_counter()
            results = await asyncio.gather(
                *(runner.run(agent, f"question {i}") for i in range(args.runs)),
                return_exceptions=True,
            )
            elapsed = time.perf_counter() - started
            heap_peak = tracemalloc.get_traced_memory()[1] if args.tracemalloc else 0
            if args.tracemalloc:
                tracemalloc.stop()
            after_peak = peak_rss_kb()
        stats = sim.stats()
    finally:
        sim.stop()
    failures = [r for r in results if isinstance(r, BaseException)]
    calls = stats["total_requests"]
    grown = max(after_peak, before_peak) - before_rss
    per_run_kb = grown / args.runs
    print(f"agents scale bench: {args.runs} concurrent runs "
          f"({'tool round trip, 2 calls' if args.tools else '1 call'} each), "
          f"channel cap {args.channel_cap}, zero-latency simulator in its own process")
    print(f"  runs ok / failed       : {args.runs - len(failures)} / {len(failures)}")
    print(f"  model calls            : {calls} in {elapsed:.2f} s = {calls / elapsed:,.0f} calls/s"
          f" ({args.runs / elapsed:,.0f} runs/s)")
    print(f"  429s at the provider   : {stats.get('rate_limited', 0)}")
    print(f"  RSS before / peak      : {before_rss / 1024:.1f} MB / "
          f"{max(after_peak, before_peak) / 1024:.1f} MB")
    print(f"  peak memory per run    : {per_run_kb:.1f} KB (target <= {TARGET_KB:.0f} KB, "
          f"ratio {per_run_kb / TARGET_KB:.2f})")
    if args.tracemalloc:
        print(f"  Python heap peak / run : {heap_peak / 1024 / args.runs:.1f} KB (tracemalloc)")
    if failures:
        print(f"  first failure          : {failures[0]!r}")
    return not failures and per_run_kb <= TARGET_KB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--channel-cap", type=int, default=64)
    p.add_argument("--tools", action="store_true", help="each run makes a tool round trip")
    p.add_argument("--tracemalloc", action="store_true", help="also trace the Python heap")
    ok = asyncio.run(run(p.parse_args()))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
