"""A 100-node DAG swarm under a concurrency cap: makespan against its lower bound.

Every node is an agent; the simulator (its own process) answers each call after a fixed
latency L and refuses more than ``cap`` concurrent requests (429). The flow and the
channel both know the cap. No schedule can beat

    bound = L × max(critical path length, ceil(nodes / cap))

(the longest chain must run in sequence; at most ``cap`` calls run at once). Target:
makespan <= 1.05 × bound, with zero 429s. The "sched" column is the same flow run in
virtual time against a scripted client (no HTTP, no CPU cost): the scheduler's own
makespan in units of L, which separates the schedule's quality from per-call overhead.
Run:

    python bench/dag_bench.py                 # 100 nodes, cap 8, L = 0.2 s, 3 DAG seeds
    python bench/dag_bench.py --nodes 200 --cap 5 --latency 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from typing import Any

from shoal.agents import Agent
from shoal.agents.testing import ScriptedClient, reply
from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.flows.flow import Flow
from shoal.sim import SimProcess
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

TARGET = 1.05


def random_dag(nodes: int, seed: int) -> dict[str, list[str]]:
    """A layered DAG: node → the nodes it runs after (1-3 of them, from earlier layers,
    mostly the layer just before). Layer widths vary, so the critical path and the
    capacity bound are of similar size — the hard case for a scheduler."""
    rng = random.Random(seed)
    layers: list[list[str]] = []
    made = 0
    while made < nodes:
        width = min(nodes - made, rng.randint(3, 14))
        layers.append([f"n{made + i}" for i in range(width)])
        made += width
    deps: dict[str, list[str]] = {}
    for depth, layer in enumerate(layers):
        for node in layer:
            if depth == 0:
                deps[node] = []
                continue
            pool = layers[depth - 1] + (layers[depth - 2] if depth > 1 else [])
            k = min(len(pool), rng.choice((1, 1, 2, 3)))
            deps[node] = sorted(set(rng.sample(pool, k)))
    return deps


def critical_path(deps: dict[str, list[str]]) -> int:
    depth: dict[str, int] = {}
    for node, parents in deps.items():  # parents always come first
        depth[node] = 1 + max((depth[p] for p in parents), default=0)
    return max(depth.values())


def build_flow(deps: dict[str, list[str]], cap: int) -> Flow:
    flow = Flow("dag-bench", max_concurrency=cap)
    for node, parents in deps.items():
        flow.add(Agent(node, model="m", max_tokens=16, instructions="Reply briefly."),
                 after=parents, input=lambda ctx: f"node {ctx.step}")
    return flow


def config(sim: SimProcess, cap: int) -> Config:
    return Config.from_dict({
        "channels": {"sim": {"protocol": "openai", "base_url": sim.url + "/v1",
                             "api_key": "sk-bench", "provider": "openai",
                             "max_concurrency": cap}},
        "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}},
    })


async def one_run(sim: SimProcess, deps: dict[str, list[str]], cap: int,
                  latency: float) -> dict[str, Any]:
    sim.reset()
    flow = build_flow(deps, cap)
    async with Router(config(sim, cap)) as router:
        # one warm-up call opens the connection pool, so the run measures steady state
        await router.complete(ChatRequest(model="m", messages=[Message.user("warm")],
                                          max_tokens=1))
        sim.reset()
        started = time.perf_counter()
        result = await flow.run("bench", client=router)
        makespan = time.perf_counter() - started
    stats = sim.stats()
    cp = critical_path(deps)
    bound = latency * max(cp, math.ceil(len(deps) / cap))
    return {
        "status": result.status, "makespan": makespan, "bound": bound, "cp": cp,
        "capacity": math.ceil(len(deps) / cap), "ratio": makespan / bound,
        "max_in_flight": stats["max_in_flight"], "429s": stats.get("rate_limited", 0),
        "requests": stats["total_requests"],
    }


async def virtual_rounds(deps: dict[str, list[str]], cap: int) -> float:
    """The flow's makespan in units of L when calls cost nothing but their latency."""
    clock = VirtualClock()
    flow = build_flow(deps, cap)
    client = ScriptedClient(handler=lambda req: reply("ok"), clock=clock, latency_s=1.0)
    result = await clock.run(flow.run("bench", client=client, clock=clock))
    return result.latency_s


async def main_async(args: argparse.Namespace) -> bool:
    sim = SimProcess("--latency", str(args.latency), "--cap", str(args.cap),
                    "--output-tokens", "8")
    ok = True
    try:
        print(f"DAG bench: {args.nodes} nodes, cap {args.cap}, latency {args.latency}s, "
              f"target makespan <= {TARGET} x bound")
        print(f"{'seed':>4} {'crit':>4} {'cap-bound':>9} {'sched':>5} {'bound s':>8} "
              f"{'makespan s':>10} {'ratio':>6} {'in-flight':>9} {'429s':>5}  verdict")
        for seed in range(args.seeds):
            deps = random_dag(args.nodes, seed)
            rounds = await virtual_rounds(deps, args.cap)
            row = await one_run(sim, deps, args.cap, args.latency)
            good = (row["ratio"] <= TARGET and row["429s"] == 0
                    and row["status"] == "succeeded" and row["max_in_flight"] <= args.cap)
            ok &= good
            print(f"{seed:>4} {row['cp']:>4} {row['capacity']:>9} {rounds:>5g} "
                  f"{row['bound']:>8.3f} {row['makespan']:>10.3f} {row['ratio']:>6.3f} "
                  f"{row['max_in_flight']:>9} {row['429s']:>5}  {'OK' if good else 'MISS'}")
    finally:
        sim.stop()
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--cap", type=int, default=8)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    ok = asyncio.run(main_async(args))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
