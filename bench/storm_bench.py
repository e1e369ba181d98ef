"""The storm: a bad hour at the providers, through shoal's Router with default settings.

Three simulator channels in their own processes serve one model: `c0` (OpenAI wire) and
`c1` (Anthropic wire) run `shoal sim --scenario storm` (20% 5xx, 10% 429 with mixed
Retry-After forms, 5% hangs, 2% cut streams, 2% malformed bodies); `c2` (OpenAI wire)
answers every request with its quota error. The Router keeps its defaults; only the
channels' read timeout is lowered (2.5 s) so a hang costs seconds, not minutes.

    python bench/storm_bench.py                 # 10,000 calls + 300 agent runs
    python bench/storm_bench.py --quick         # 1,000 calls + 60 agent runs
    python bench/storm_bench.py --calls 20000 --seed 3 --concurrency 200

Half the logical calls are `Router.complete`, half `Router.stream`, each tagged
`call-<i>` (the simulator counts complete answers per tag: duplicates); agent runs (a
tool turn, then the answer) share the same pool. A call that neither returned nor
raised within the watchdog is *lost*. Then agents run against one shared dollar budget
until it stops them: the simulator's billed tokens × the model's price is the real
spend. Last, a fault-free run of the same size gives the latency baseline.
tests/chaos/test_storm.py runs the same harness at a bounded size and asserts the
targets of issue 8.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from shoal.agents import Agent, Budget, Runner, tool
from shoal.cli.loop import run as run_loop
from shoal.config import Config
from shoal.errors import BudgetExceeded
from shoal.sim import SimProcess
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message, StreamEnd, TextDelta, ToolCallDelta
from traffic_bench import sims  # simulators in their own processes, stopped after

MODEL = "m"
PRICE_IN, PRICE_OUT = 3.0, 15.0  # $ per million tokens: the model's price in this config
PROFILE = ("--ttft", "0.05", "--tokens-per-s", "400", "--output-tokens", "16")


@dataclass
class StormOptions:
    calls: int = 10_000  # logical calls, half complete, half stream
    agents: int = 300  # agent runs in the same pool
    seed: int = 1
    concurrency: int = 200
    read_timeout_s: float = 2.5
    budget_usd: float = 0.10  # shared by the budget phase's agents
    budget_workers: int = 20
    watchdog_s: float = 300.0  # a call still running after this is counted as lost
    baseline: bool = True  # also run the fault-free comparison


@dataclass
class Outcome:
    kind: str  # "complete" | "stream" | "agent"
    ok: bool
    seconds: float
    error: str | None = None  # exception class name
    after_first_token: bool = False
    tokens: int = 0  # useful tokens: usage of the accepted answer(s)
    lost: bool = False


@dataclass
class Phase:
    """What one run of the pool saw, at the client and at the simulators."""

    outcomes: list[Outcome]
    sims: list[dict[str, Any]]  # /_sim/stats of each channel, completions_by_key included
    records: list[dict[str, Any]]  # every channel's request log
    seconds: float
    lanes: list[list[dict[str, Any]]] = field(default_factory=list)  # Router.stats() each second


@dataclass
class BudgetPhase:
    budget_usd: float
    billed_usd: float  # what the simulators billed during the phase, in dollars
    counted_usd: float  # what shoal's budget counted
    one_call_usd: float  # the dearest single billed request
    requests: int
    stopped: bool  # BudgetExceeded ended the phase
    errors: Counter[str] = field(default_factory=Counter)


# -- simulators and the router ----------------------------------------------------------


@contextlib.contextmanager
def channels(seed: int, *, storm: bool = True) -> Iterator[list[SimProcess]]:
    """c0 OpenAI + c1 Anthropic in the storm, c2 OpenAI in quota (fault-free: all calm)."""
    scenario = "storm" if storm else "calm"
    specs = [
        ("--scenario", scenario, "--seed", str(seed), *PROFILE),
        ("--scenario", scenario, "--seed", str(seed + 1), *PROFILE),
        ("--scenario", scenario, "--seed", str(seed + 2), *PROFILE, *(["--quota"] * storm)),
    ]
    with sims(*specs) as started:
        yield started


def router_config(sims: list[SimProcess], read_timeout_s: float, *,
                  api_key: str = "sk-storm") -> Config:
    """Default settings except the channels' read timeout (``api_key``: the upstream key
    every channel sends)."""
    base = {"api_key": api_key, "read_timeout": read_timeout_s}
    chans = {
        "c0": {**base, "protocol": "openai", "provider": "openai", "base_url": sims[0].url + "/v1"},
        "c1": {**base, "protocol": "anthropic", "provider": "anthropic", "base_url": sims[1].url},
        "c2": {**base, "protocol": "openai", "provider": "openai", "base_url": sims[2].url + "/v1"},
    }
    return Config.from_dict({
        "channels": chans,
        "models": {MODEL: {"channels": list(chans), "input": PRICE_IN, "output": PRICE_OUT}},
    })


# -- one logical call of each kind ------------------------------------------------------


async def one_complete(router: Router, i: int) -> Outcome:
    req = ChatRequest(model=MODEL, messages=[Message.user(f"question {i}")], max_tokens=32,
                      metadata={"tag": f"call-{i}"})
    start = time.perf_counter()
    try:
        resp = await router.complete(req)
    except Exception as exc:
        return Outcome("complete", False, time.perf_counter() - start, type(exc).__name__)
    tokens = resp.usage.input_tokens + resp.usage.output_tokens
    return Outcome("complete", True, time.perf_counter() - start, tokens=tokens)


async def one_stream(router: Router, i: int) -> Outcome:
    req = ChatRequest(model=MODEL, messages=[Message.user(f"question {i}")], max_tokens=32,
                      metadata={"tag": f"call-{i}"})
    start = time.perf_counter()
    first = False
    try:
        async for event in router.stream(req):
            if isinstance(event, TextDelta | ToolCallDelta):
                first = True
            elif isinstance(event, StreamEnd):
                usage = event.response.usage
                return Outcome("stream", True, time.perf_counter() - start,
                               tokens=usage.input_tokens + usage.output_tokens)
    except Exception as exc:
        return Outcome("stream", False, time.perf_counter() - start, type(exc).__name__,
                       after_first_token=first)
    return Outcome("stream", False, time.perf_counter() - start, "NoStreamEnd",
                   after_first_token=first)


@tool
def lookup(topic: str) -> str:
    """Look a topic up."""
    return f"notes on {topic}"


def storm_agent(tag: str) -> Agent[str]:
    return Agent("researcher", model=MODEL, tools=[lookup], max_tokens=32,
                 metadata={"tag": tag})


async def one_agent(runner: Runner, i: int) -> Outcome:
    start = time.perf_counter()
    try:
        result = await runner.run(storm_agent(f"agent-{i}"), f"topic {i}")
    except Exception as exc:
        return Outcome("agent", False, time.perf_counter() - start, type(exc).__name__)
    tokens = result.usage.input_tokens + result.usage.output_tokens
    return Outcome("agent", True, time.perf_counter() - start, tokens=tokens)


async def watched(kind: str, make: Callable[[], Awaitable[Outcome]], watchdog_s: float
                  ) -> Outcome:
    start = time.perf_counter()
    try:
        return await asyncio.wait_for(make(), watchdog_s)
    except TimeoutError:
        return Outcome(kind, False, time.perf_counter() - start, "Lost", lost=True)


# -- phases -----------------------------------------------------------------------------


async def run_pool(opts: StormOptions, sims: list[SimProcess]) -> Phase:
    """opts.calls logical calls (even i: complete, odd i: stream) and opts.agents agent
    runs, interleaved, at most opts.concurrency at once."""
    for s in sims:
        s.reset()
    jobs: list[tuple[str, Callable[[], Awaitable[Outcome]]]] = []
    sem = asyncio.Semaphore(opts.concurrency)
    async with Router(router_config(sims, opts.read_timeout_s)) as router:
        runner = Runner(router)
        every = max(opts.calls // max(opts.agents, 1), 1)
        agent_i = 0
        for i in range(opts.calls):
            if i % 2 == 0:
                jobs.append(("complete", functools.partial(one_complete, router, i)))
            else:
                jobs.append(("stream", functools.partial(one_stream, router, i)))
            if i % every == every - 1 and agent_i < opts.agents:
                jobs.append(("agent", functools.partial(one_agent, runner, agent_i)))
                agent_i += 1
        while agent_i < opts.agents:
            jobs.append(("agent", functools.partial(one_agent, runner, agent_i)))
            agent_i += 1

        async def job(kind: str, make: Callable[[], Awaitable[Outcome]]) -> Outcome:
            async with sem:
                return await watched(kind, make, opts.watchdog_s)

        lanes: list[list[dict[str, Any]]] = []

        async def sample() -> None:
            while True:
                lanes.append(router.stats())
                await asyncio.sleep(1.0)

        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(job(k, m) for k, m in jobs))
        seconds = time.perf_counter() - start
        sampler.cancel()
    records: list[dict[str, Any]] = []
    for s in sims:
        records += s.request_log()
    stats = [dict(s.control("/_sim/stats?last=0")) for s in sims]
    return Phase(list(outcomes), stats, records, seconds, lanes)


async def run_budget(opts: StormOptions, sims: list[SimProcess]) -> BudgetPhase:
    """Agents in opts.budget_workers loops share one Budget until it stops them."""
    for s in sims:
        s.reset()
    budget = Budget(max_usd=opts.budget_usd)
    errors: Counter[str] = Counter()
    stop = asyncio.Event()
    async with Router(router_config(sims, opts.read_timeout_s)) as router:
        runner = Runner(router)

        async def worker(w: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    await runner.run(storm_agent(f"budget-{w}-{n}"), f"topic {w}.{n}",
                                     budget=budget)
                except BudgetExceeded:
                    stop.set()
                except Exception as exc:
                    errors[type(exc).__name__] += 1

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(worker(w) for w in range(opts.budget_workers))),
                opts.watchdog_s)
    records: list[dict[str, Any]] = []
    for s in sims:
        records += s.request_log()
    billed = [r for r in records if r["status"] == 200]
    costs = [(r["prompt_tokens"] * PRICE_IN + r["completion_tokens"] * PRICE_OUT) / 1e6
             for r in billed]
    return BudgetPhase(opts.budget_usd, sum(costs), budget.spent_usd, max(costs, default=0.0),
                       len(records), stop.is_set(), errors)


# -- figures ----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


@dataclass
class Figures:
    success: dict[str, float]  # kind -> share of logical calls that returned
    counts: dict[str, int]
    errors: dict[str, Counter[str]]
    stream_before_first: int
    stream_after_first: int
    stream_after_not_interrupted: int  # after the first token but not StreamInterrupted
    lost: int
    duplicates: int
    requests: int
    requests_per_call: float
    p: float  # measured per-attempt failure rate of the logical calls' requests
    geometric: float  # 1 / (1 - p)
    wasted_per_useful: float
    latency: dict[str, tuple[float, float]]  # kind -> (p50, p99) seconds
    faults: Counter[str]
    seconds: float
    lanes: dict[str, str]  # channel -> its capacity and breaker states over the run


def lane_summary(samples: list[list[dict[str, Any]]]) -> dict[str, str]:
    """Per channel, from the Router's once-a-second stats: capacity (the limiter's limit,
    learned by adaptive concurrency) median and range, share of samples per breaker state."""
    by: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        for lane in sample:
            by.setdefault(str(lane["channel"]), []).append(lane)
    out = {}
    for name, rows in sorted(by.items()):
        caps = sorted(int(r["capacity"]) for r in rows if r.get("capacity") is not None)
        states = Counter(str(r["breaker"]) for r in rows)
        shares = ", ".join(f"{k} {v / len(rows):.0%}" for k, v in states.most_common())
        cap = f"capacity median {caps[len(caps) // 2]} ({caps[0]}-{caps[-1]})" if caps else ""
        out[name] = f"{cap}; breaker {shares}"
    return out


def figures(phase: Phase) -> Figures:
    by_kind: dict[str, list[Outcome]] = {"complete": [], "stream": [], "agent": []}
    for o in phase.outcomes:
        by_kind[o.kind].append(o)
    success = {k: (sum(o.ok for o in v) / len(v) if v else float("nan"))
               for k, v in by_kind.items()}
    errors = {k: Counter(o.error for o in v if o.error) for k, v in by_kind.items()}
    failed_streams = [o for o in by_kind["stream"] if not o.ok]
    calls = [r for r in phase.records if str(r.get("tag") or "").startswith("call-")]
    n_calls = len(by_kind["complete"]) + len(by_kind["stream"])
    complete = sum(1 for r in calls if r["complete"])
    p = 1 - complete / len(calls) if calls else 0.0
    duplicates = 0
    for s in phase.sims:
        duplicates += sum(c - 1 for k, c in s.get("completions_by_key", {}).items()
                          if k.startswith("call-"))
    billed = sum(s["billed_prompt_tokens"] + s["billed_completion_tokens"] for s in phase.sims)
    useful = sum(o.tokens for o in phase.outcomes if o.ok)
    faults: Counter[str] = Counter()
    for s in phase.sims:
        faults.update(s["faults"])
    return Figures(
        success=success,
        counts={k: len(v) for k, v in by_kind.items()},
        errors=errors,
        stream_before_first=sum(1 for o in failed_streams if not o.after_first_token),
        stream_after_first=sum(1 for o in failed_streams if o.after_first_token),
        stream_after_not_interrupted=sum(
            1 for o in failed_streams if o.after_first_token and o.error != "StreamInterrupted"),
        lost=sum(o.lost for o in phase.outcomes),
        duplicates=duplicates,
        requests=len(calls),
        requests_per_call=len(calls) / n_calls if n_calls else float("nan"),
        p=p,
        geometric=1 / (1 - p) if p < 1 else float("inf"),
        wasted_per_useful=(billed - useful) / useful if useful else float("inf"),
        latency={k: (pct([o.seconds for o in v], 0.5), pct([o.seconds for o in v], 0.99))
                 for k, v in by_kind.items()},
        faults=faults,
        seconds=phase.seconds,
        lanes=lane_summary(phase.lanes),
    )


def targets(f: Figures, b: BudgetPhase | None) -> list[tuple[str, bool, str]]:
    """Issue 8's must-show targets: (name, met, the measured figure)."""
    out = [
        ("complete success >= 99.9%", f.success["complete"] >= 0.999,
         f"{f.success['complete']:.2%}"),
        ("agent success >= 99.9%", f.success["agent"] >= 0.999, f"{f.success['agent']:.2%}"),
        ("stream failures only StreamInterrupted after the first token",
         f.stream_before_first == 0 and f.stream_after_not_interrupted == 0,
         f"{f.stream_before_first} before, {f.stream_after_not_interrupted} after but not "
         "StreamInterrupted"),
        ("0 lost", f.lost == 0, str(f.lost)),
        ("0 duplicate completions", f.duplicates == 0, str(f.duplicates)),
        ("requests/calls <= 1.1 x 1/(1-p)", f.requests_per_call <= 1.1 * f.geometric,
         f"{f.requests_per_call:.3f} vs 1.1 x {f.geometric:.3f}"),
    ]
    if b is not None:
        out.append(("billed <= budget + one call", b.billed_usd <= b.budget_usd + b.one_call_usd,
                    f"${b.billed_usd:.4f} vs ${b.budget_usd:.4f} + ${b.one_call_usd:.4f}"))
    return out


def report(f: Figures, b: BudgetPhase | None, base: Figures | None) -> list[str]:
    lines = [f"storm phase: {sum(f.counts.values())} logical runs in {f.seconds:.1f}s; "
             f"faults at the simulators: {dict(sorted(f.faults.items()))}"]
    for kind in ("complete", "stream", "agent"):
        top = ", ".join(f"{e} {n}" for e, n in f.errors[kind].most_common(4))
        lines.append(f"  {kind:8} success {f.success[kind]:8.3%} of {f.counts[kind]}"
                     + (f"   failures: {top}" if top else ""))
    lines += [
        f"  stream failures: {f.stream_before_first} before the first token, "
        f"{f.stream_after_first} after ({f.stream_after_not_interrupted} of them not "
        "StreamInterrupted)",
        f"  lost {f.lost}   duplicate completions {f.duplicates}",
        f"  requests/logical call {f.requests_per_call:.3f} vs 1/(1-p) {f.geometric:.3f} "
        f"(p = {f.p:.3f} measured per attempt; ratio {f.requests_per_call / f.geometric:.3f})",
        f"  wasted/useful tokens {f.wasted_per_useful:.3f}",
        *(f"  router lane {name}: {text}" for name, text in f.lanes.items()),
    ]
    for kind in ("complete", "stream", "agent"):
        p50, p99 = f.latency[kind]
        line = f"  latency {kind:8} p50 {p50 * 1000:7.0f} ms  p99 {p99 * 1000:7.0f} ms"
        if base is not None:
            b50, b99 = base.latency[kind]
            line += f"   fault-free p50 {b50 * 1000:5.0f} ms  p99 {b99 * 1000:5.0f} ms"
        lines.append(line)
    if b is not None:
        over = b.billed_usd - b.budget_usd
        calls = over / b.one_call_usd if b.one_call_usd else float("nan")
        lines.append(
            f"budget phase: ${b.budget_usd:.4f} budget, billed ${b.billed_usd:.4f} "
            f"(overshoot ${over:+.4f} = {calls:+.1f} dearest calls), shoal counted "
            f"${b.counted_usd:.4f}; {b.requests} requests; stopped by budget: {b.stopped}"
            + (f"; other errors {dict(b.errors)}" if b.errors else ""))
    lines.append("targets (issue 8):")
    for name, ok, got in targets(f, b):
        lines.append(f"  [{'PASS' if ok else 'FAIL'}] {name}: {got}")
    return lines


async def storm(opts: StormOptions) -> tuple[Figures, BudgetPhase, Figures | None]:
    """The whole bench: storm pool, budget phase, fault-free baseline."""
    with channels(opts.seed) as sims:
        f = figures(await run_pool(opts, sims))
        b = await run_budget(opts, sims)
    base = None
    if opts.baseline:
        with channels(opts.seed, storm=False) as sims:
            base = figures(await run_pool(opts, sims))
    return f, b, base


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--agents", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--read-timeout", type=float, default=2.5)
    p.add_argument("--budget", type=float, default=0.10, help="dollars for the budget phase")
    p.add_argument("--quick", action="store_true", help="1,000 calls and 60 agent runs")
    p.add_argument("--no-baseline", action="store_true", help="skip the fault-free run")
    args = p.parse_args()
    opts = StormOptions(
        calls=1000 if args.quick else args.calls, agents=60 if args.quick else args.agents,
        seed=args.seed, concurrency=args.concurrency, read_timeout_s=args.read_timeout,
        budget_usd=args.budget, baseline=not args.no_baseline,
    )
    start = time.perf_counter()
    f, b, base = run_loop(storm(opts))
    for line in report(f, b, base):
        print(line)
    print(f"total {time.perf_counter() - start:.0f}s (calls={opts.calls}, agents={opts.agents}, "
          f"seed={opts.seed}, concurrency={opts.concurrency}, read timeout "
          f"{opts.read_timeout_s}s)")


if __name__ == "__main__":
    main()
