"""Traffic control: makespan ÷ bound and 429 counts, shoal vs peers, in one run.

The bound is what a perfect scheduler reaches: ceil(calls / cap) × latency. Each
simulator runs in its own process (`shoal sim`, fixed latency); clients run here.

    python bench/traffic_bench.py                # all scenarios, 200 calls, 50 ms
    python bench/traffic_bench.py --calls 100 --only known,adaptive

Peers on the same simulators: a naive `asyncio.gather` over raw aiohttp with
tenacity retries (random exponential backoff on 429/5xx, as the OpenAI cookbook
suggests, scaled to the 50 ms latency), and LiteLLM's Router with the same limits
(`pip install 'shoal[bench]'`; skipped when missing). Every client runs on the same
event loop (uvloop when installed, as shoal's CLI does), one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from shoal.cli.loop import run as run_loop
from shoal.config import Config
from shoal.sim import SimProcess
from shoal.traffic.retry import RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

LATENCY = 0.05
BODY = {"model": "sim-model", "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 16}


@contextlib.contextmanager
def sims(*specs: tuple[str, ...]) -> Iterator[list[SimProcess]]:
    """Simulators in their own processes (their CPU is not the client's), stopped after."""
    started: list[SimProcess] = []
    try:
        for spec in specs:
            started.append(SimProcess(*spec))
        yield started
    finally:
        for s in started:
            s.stop()


def bound(calls: int, cap: int, latency: float = LATENCY) -> float:
    return math.ceil(calls / cap) * latency


def warm_calls(caps: list[int | None]) -> int:
    """Concurrent untimed calls that open one pooled connection per slot before a run:
    a burst's first requests then do not wait for TCP connects behind the other calls'
    queueing work (what is measured is slot handling, not connection set-up)."""
    return sum(cap or 3 for cap in caps)


def shoal_config(sim_list: list[SimProcess], caps: list[int | None], *,
                 shared: bool = False) -> Config:
    channels = {}
    for i, (s, cap) in enumerate(zip(sim_list, caps, strict=True)):
        ch: dict[str, Any] = {"protocol": "openai", "base_url": s.url + "/v1",
                              "api_key": "sk-bench", "provider": "openai", "shared": shared}
        if cap is not None:
            ch["max_concurrency"] = cap
        channels[f"c{i}"] = ch
    return Config.from_dict({
        "channels": channels,
        "models": {"m": {"channels": list(channels), "input": 1.0, "output": 1.0}},
        "redis_url": os.environ.get("SHOAL_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
    })


async def run_shoal(sim_list: list[SimProcess], caps: list[int | None], calls: int,
                    **router_kw: Any) -> dict[str, Any]:
    cfg = shoal_config(sim_list, caps)
    async with Router(cfg, retry=RetryPolicy(attempts=8), **router_kw) as router:
        req = ChatRequest(model="m", messages=[Message.user("hello")], max_tokens=16)
        # Warm the connection pool: one connection per slot, as every client here does.
        await asyncio.gather(*(router.complete(req) for _ in range(warm_calls(caps))))
        for s in sim_list:
            s.reset()
        t0 = time.perf_counter()
        results = await asyncio.gather(*(router.complete(req) for _ in range(calls)),
                                       return_exceptions=True)
        makespan = time.perf_counter() - t0
        lanes = {lane["channel"]: lane for lane in router.stats()}
    ok = sum(not isinstance(r, BaseException) for r in results)
    return {"makespan": makespan, "ok": ok, "lanes": lanes}


async def run_gather(sim_list: list[SimProcess], calls: int) -> dict[str, Any]:
    import aiohttp
    from tenacity import (
        AsyncRetrying,
        retry_if_exception_type,
        stop_after_attempt,
        wait_random_exponential,
    )

    class Retryable(Exception):
        pass

    data = json.dumps(BODY).encode()
    urls = [s.url + "/v1/chat/completions" for s in sim_list]
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> None:
            async for attempt in AsyncRetrying(
                wait=wait_random_exponential(multiplier=LATENCY, max=20 * LATENCY),
                stop=stop_after_attempt(12), retry=retry_if_exception_type(Retryable),
                reraise=True,
            ):
                with attempt:
                    url = urls[(i + attempt.retry_state.attempt_number) % len(urls)]
                    async with session.post(url, data=data, headers={
                            "Authorization": "Bearer sk", "Content-Type": "application/json"}
                                            ) as resp:
                        await resp.read()
                        if resp.status == 429 or resp.status >= 500:
                            raise Retryable(resp.status)
        await asyncio.gather(*(one(i) for i in range(3 * len(urls))))  # warm, as the others do
        for s in sim_list:
            s.reset()
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(calls)), return_exceptions=True)
        makespan = time.perf_counter() - t0
    return {"makespan": makespan, "ok": sum(r is None for r in results)}


async def run_semaphore(sim_list: list[SimProcess], cap: int, calls: int) -> dict[str, Any]:
    """The hand-written peer for a known cap: ``asyncio.Semaphore(cap)`` around raw aiohttp
    (one channel, no retries: with the cap respected none are needed)."""
    import aiohttp

    data = json.dumps(BODY).encode()
    url = sim_list[0].url + "/v1/chat/completions"
    headers = {"Authorization": "Bearer sk", "Content-Type": "application/json"}
    sem = asyncio.Semaphore(cap)
    async with aiohttp.ClientSession() as session:
        async def one() -> bool:
            async with sem, session.post(url, data=data, headers=headers) as resp:
                body = await resp.json()
            return resp.status == 200 and bool(body.get("choices"))

        await asyncio.gather(*(one() for _ in range(cap)))  # warm: a connection per slot
        for s in sim_list:
            s.reset()
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(calls)), return_exceptions=True)
        makespan = time.perf_counter() - t0
    return {"makespan": makespan, "ok": sum(r is True for r in results)}


async def run_litellm(sim_list: list[SimProcess], caps: list[int | None],
                      calls: int) -> dict[str, Any] | None:
    try:
        os.environ.setdefault("LITELLM_LOG", "ERROR")
        from litellm import Router as LiteRouter
    except ImportError:
        return None
    model_list = []
    for s, cap in zip(sim_list, caps, strict=True):
        params: dict[str, Any] = {"model": "openai/sim-model", "api_base": s.url + "/v1",
                                  "api_key": "sk-bench"}
        if cap is not None:
            params["max_parallel_requests"] = cap
        model_list.append({"model_name": "m", "litellm_params": params})
    router = LiteRouter(model_list=model_list, num_retries=8, retry_after=0)
    msgs = [{"role": "user", "content": "hello"}]
    await asyncio.gather(*(router.acompletion(model="m", messages=msgs, max_tokens=16)
                           for _ in range(warm_calls(caps))))  # warm, as the others do
    for s in sim_list:
        s.reset()
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(router.acompletion(model="m", messages=msgs, max_tokens=16) for _ in range(calls)),
        return_exceptions=True)
    makespan = time.perf_counter() - t0
    return {"makespan": makespan, "ok": sum(not isinstance(r, BaseException) for r in results)}


def totals(sim_list: list[SimProcess]) -> dict[str, int]:
    stats = [s.stats() for s in sim_list]
    return {
        "requests": sum(int(x["total_requests"]) for x in stats),
        "429s": sum(int(x["rate_limited"]) for x in stats),
        "max_in_flight": max(int(x["max_in_flight"]) for x in stats),
    }


Row = dict[str, Any]


async def warm(sim_list: list[SimProcess], calls: int = 30) -> None:
    """Untimed requests to fresh simulators, so the first client measured does not pay
    their start-up (first requests on a new server process are slower)."""
    import aiohttp

    data = json.dumps(BODY).encode()
    headers = {"Authorization": "Bearer sk", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async def one(url: str) -> None:
            async with session.post(url, data=data, headers=headers) as resp:
                await resp.read()

        for s in sim_list:
            for _ in range(calls // 3):
                await asyncio.gather(*(one(s.url + "/v1/chat/completions") for _ in range(3)))


async def scenario(name: str, target: float, the_bound: float, sim_list: list[SimProcess],
                   runs: list[tuple[str, Callable[[], Awaitable[Row | None]]]],
                   repeat: int = 1) -> list[Row]:
    """Each client ``repeat`` times, in A B B A order when repeated (no client always
    runs first); a client's row is the mean ratio of its runs and the worst of its
    counters."""
    await warm(sim_list)
    results: dict[str, list[Row]] = {who: [] for who, _ in runs}
    skipped: set[str] = set()
    for r in range(repeat):
        for who, fn in (runs if r % 2 == 0 else runs[::-1]):
            if who in skipped:
                continue
            res = await fn()
            if res is None:
                skipped.add(who)
                continue
            results[who].append({"ratio": res["makespan"] / the_bound, "ok": res["ok"],
                                 **totals(sim_list), "extra": res.get("extra", "")})
    rows: list[Row] = []
    for who, _ in runs:
        got = results[who]
        if who in skipped or not got:
            rows.append({"scenario": name, "client": who, "skipped": True})
            continue
        ratios = [g["ratio"] for g in got]
        extra = got[-1]["extra"]
        if len(got) > 1:
            extra = (extra + " runs " + " ".join(f"{x:.3f}" for x in ratios)).strip()
        rows.append({"scenario": name, "client": who, "ratio": sum(ratios) / len(ratios),
                     "runs": ratios,
                     "target": target if who == "shoal" else None,
                     "ok": min(g["ok"] for g in got),
                     "requests": max(g["requests"] for g in got),
                     "429s": max(g["429s"] for g in got),
                     "max_in_flight": max(g["max_in_flight"] for g in got), "extra": extra})
    return rows


async def main_async(args: argparse.Namespace) -> list[Row]:
    n = args.calls
    only = set(args.only.split(",")) if args.only else None
    lat = ("--latency", str(LATENCY))
    rows: list[Row] = []

    def want(name: str) -> bool:
        return only is None or name in only

    if want("known"):
        with sims(("--cap", "3", *lat)) as ss:
            rows += await scenario("known cap 3", 1.05, bound(n, 3), ss, [
                ("shoal", lambda: run_shoal(ss, [3], n)),
                ("semaphore+aiohttp", lambda: run_semaphore(ss, 3, n)),
                ("gather+tenacity", lambda: run_gather(ss, n)),
                ("litellm", lambda: run_litellm(ss, [3], n)),
            ], repeat=args.repeat)
            by = {r["client"]: r for r in rows if r["scenario"] == "known cap 3"}
            us, sem = by["shoal"], by["semaphore+aiohttp"]
            # Paired by repetition (each pair ran back to back, A B B A): the median of the
            # differences is robust to one run disturbed by the machine.
            diffs = sorted(a - b for a, b in zip(us["runs"], sem["runs"], strict=True))
            mid = len(diffs) // 2
            median = diffs[mid] if len(diffs) % 2 else (diffs[mid - 1] + diffs[mid]) / 2
            us["extra"] = (f"{'<=' if median <= 0 else '>'} semaphore: paired median "
                           f"{median:+.4f}, mean {us['ratio'] - sem['ratio']:+.4f}; "
                           + us["extra"])
    if want("adaptive"):
        with sims(("--cap", "3", *lat)) as ss:
            rows += await scenario("unknown cap 3 (adaptive)", 1.25, bound(n, 3), ss, [
                ("shoal", lambda: run_shoal(ss, [None], n)),
                ("gather+tenacity", lambda: run_gather(ss, n)),
                ("litellm", lambda: run_litellm(ss, [None], n)),
            ])
    if want("three"):
        with sims(*[("--cap", "3", *lat)] * 3) as ss:
            rows += await scenario("3 channels cap 3", 1.10, bound(n, 9), ss, [
                ("shoal", lambda: run_shoal(ss, [3, 3, 3], n)),
                ("gather+tenacity", lambda: run_gather(ss, n)),
                ("litellm", lambda: run_litellm(ss, [3, 3, 3], n)),
            ])
    if want("dead"):
        spec = [("--cap", "3", *lat), ("--cap", "3", *lat),
                ("--cap", "3", *lat, "--error-rate", "1.0", "--error-status", "503")]
        with sims(*spec) as ss:
            async def shoal_dead() -> Row:
                res = await run_shoal(ss, [3, 3, 3], n)
                res["extra"] = f"dead breaker: {res['lanes']['c2']['breaker']}"
                return res
            rows += await scenario("3 channels, 1 dead (503)", 1.20, bound(n, 6), ss, [
                ("shoal", shoal_dead),
                ("gather+tenacity", lambda: run_gather(ss, n)),
                ("litellm", lambda: run_litellm(ss, [3, 3, 3], n)),
            ])
    if want("redis"):
        with sims(("--cap", "5", *lat)) as ss:
            rows += await scenario("4 processes, Redis cap 5", 1.15, bound(n, 5), ss, [
                ("shoal", lambda: run_processes(ss[0], n, procs=4, cap=5)),
            ])
    return rows


async def run_processes(sim: SimProcess, calls: int, *, procs: int, cap: int) -> Row:
    key = f"bench-{uuid.uuid4().hex[:8]}"
    start_at = time.time() + 4.0
    per = [calls // procs + (1 if i < calls % procs else 0) for i in range(procs)]
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", "--url", sim.url, "--calls", str(k),
             "--cap", str(cap), "--key", key, "--start-at", str(start_at)],
            stdout=subprocess.PIPE, text=True)
        for k in per
    ]
    await asyncio.sleep(max(0.0, start_at - 0.3 - time.time()))
    sim.reset()  # count from the start line: the workers' warm-up calls are done by now
    outs = [json.loads(w.communicate(timeout=120)[0].strip().splitlines()[-1]) for w in workers]
    end = max(o["end"] for o in outs)
    return {"makespan": end - start_at, "ok": sum(o["ok"] for o in outs)}


async def worker(args: argparse.Namespace) -> None:
    cfg = Config.from_dict({
        "channels": {args.key: {"protocol": "openai", "base_url": args.url + "/v1",
                                "api_key": "sk-bench", "provider": "openai",
                                "max_concurrency": args.cap, "shared": True}},
        "models": {"m": {"channels": [args.key]}},
        "redis_url": os.environ.get("SHOAL_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
    })
    async with Router(cfg, retry=RetryPolicy(attempts=8)) as router:
        req = ChatRequest(model="m", messages=[Message.user("hello")], max_tokens=16)
        # Warm up before the start line, as run_shoal does in-process: Redis scripts, the
        # token estimator and the first HTTP connection are one-time costs, not scheduling.
        await router.lane(args.key).limiter.connect()
        await router.complete(req)
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
        results = await asyncio.gather(*(router.complete(req) for _ in range(args.calls)),
                                       return_exceptions=True)
        end = time.time()
    ok = sum(not isinstance(r, BaseException) for r in results)
    print(json.dumps({"end": end, "ok": ok}))


def report(rows: list[Row]) -> bool:
    print(f"{'scenario':28} {'client':18} {'makespan/bound':>14} {'target':>7} {'ok':>5} "
          f"{'requests':>8} {'429s':>5} {'max_in_flight':>13}  note")
    passed = True
    for r in rows:
        if r.get("skipped"):
            print(f"{r['scenario']:28} {r['client']:18} {'skipped (not installed)':>14}")
            continue
        target = r["target"]
        verdict = ""
        if target is not None:
            good = r["ratio"] <= target
            passed &= good
            verdict = "PASS" if good else "FAIL"
        print(f"{r['scenario']:28} {r['client']:18} {r['ratio']:14.3f} "
              f"{'' if target is None else f'{target:.2f}':>7} {r['ok']:5d} {r['requests']:8d} "
              f"{r['429s']:5d} {r['max_in_flight']:13d}  {verdict} {r['extra']}")
    return passed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--only", default="", help="known,adaptive,three,dead,redis")
    p.add_argument("--repeat", type=int, default=2,
                   help="runs per client in the known-cap scenario (A B B A order)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--cap", type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        run_loop(worker(args))
        return
    rows = run_loop(main_async(args))
    ok = report(rows)
    print("all shoal targets met" if ok else "some shoal targets MISSED")


if __name__ == "__main__":
    main()
