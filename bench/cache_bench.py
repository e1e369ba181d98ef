"""Prompt caching, measured: what caching on vs off bills, side by side in one run.

Against the simulator (which caches and reports usage by each provider's rules,
shoal.sim.caching), through the real Router and agents:

1. **Fan-out**: 20 agents at once sharing a 3,000-token system prompt and 10 tools,
   each a tool round trip (two calls), on a Claude model and on an OpenAI model,
   with ``cache = "auto"`` and ``"off"`` on the channel. Printed per model: tokens
   by kind (fresh input, cache read, cache write, output), dollars as shoal prices
   them (``RunResult.cost_usd``), and the on/off ratios — of all dollars, of input
   dollars, and of the shared-prefix part at list prices (Anthropic: write 1.25×,
   read 0.1× input; OpenAI: the catalog's cached-input price; goal ≤ 0.35 on Claude).
2. **A 10-turn tool-using agent on Claude**: per turn, cached-read and written tokens
   and the turn's cost with vs without caching.

    python bench/cache_bench.py
    python bench/cache_bench.py --latency 0.2 --agents 20

The shared-prefix part of one call: reads come first in the prompt, then writes, then
fresh tokens, so of a P-token prefix, min(read, P) was read, min(write, P - read)
written and the rest sent fresh. Counts are the simulator's (4 characters a token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from shoal.agents import Agent, LoopPolicy, Runner, tool
from shoal.agents.runner import RunResult
from shoal.config import Config, ModelInfo
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import Usage

CLAUDE = "claude-sonnet-4-6"
GPT = "gpt-4.1"
SYSTEM = ("You are a contract analyst. Read the supplier contract the user names, look up "
          "the clauses you need with the tools, and report liability caps, termination "
          "rights and payment terms with clause numbers. ") * 60  # ~12,000 chars: 3,000 tok
SYSTEM = SYSTEM[:12_000]
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


def make_tools() -> list[Any]:
    tools = []
    for i in range(10):
        def lookup(query: str, limit: int = 5) -> str:
            return f"{limit} matches for {query}: clause 7.1 caps liability at 12 months' fees."

        lookup.__name__ = f"search_source_{i}"
        lookup.__doc__ = f"Search archive {i} of signed contracts for clauses matching a query."
        tools.append(tool(lookup))
    return tools


TOOLS = make_tools()


def config(sim: SimServer, cache: str, key: str) -> Config:
    """Channels to the simulator; each experiment has its own API key, so its own cache."""
    common = {"cache": cache, "max_concurrency": 64, "api_key": key}
    return Config.from_dict({"channels": {
        "anthropic": {"base_url": sim.url, "provider": "anthropic", **common},
        "openai": {"base_url": sim.url + "/v1", "provider": "openai", **common},
    }})


def prefix_tokens(model: str) -> int:
    """Tokens of the shared prefix (tools + system) as the simulator counts them."""
    if model.startswith("claude"):
        tools = [{"name": t.name, "description": t.description, "input_schema": t.parameters}
                 for t in (x.spec() for x in TOOLS)]
    else:
        tools = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                   "parameters": t.parameters}}
                 for t in (x.spec() for x in TOOLS)]
    return (len(_DUMPS(tools)) + len(SYSTEM)) // 4


@dataclass
class Tally:
    calls: int = 0
    usage: Usage = field(default_factory=Usage)
    usd: float = 0.0
    uncached_usd: float = 0.0  # every token at its base price: no cache at all
    input_usd: float = 0.0
    prefix_usd: float = 0.0
    writes_of_prefix: int = 0  # calls that wrote the shared prefix

    def add(self, result: RunResult[Any], info: ModelInfo, prefix: int) -> None:
        for t in result.turns:
            u = t.usage
            self.calls += 1
            self.usage = self.usage + u
            self.usd += t.cost_usd
            self.uncached_usd += (u.input_tokens * info.input
                                  + u.output_tokens * info.output) / 1e6
            self.input_usd += t.cost_usd - u.output_tokens * info.output / 1e6
            read = min(u.cached_input_tokens, prefix)
            wrote = min(u.cache_write_tokens, prefix - read)
            wrote_1h = min(u_1h(u), wrote)
            fresh = prefix - read - wrote
            cached_price = info.cached_input if info.cached_input is not None else info.input
            claude = info.name.startswith("claude")
            self.prefix_usd += (fresh * info.input + read * cached_price
                                + (wrote - wrote_1h) * info.input * (1.25 if claude else 1)
                                + wrote_1h * info.input * 2.0) / 1e6
            self.writes_of_prefix += wrote > prefix // 2


def u_1h(u: Usage) -> int:
    return int(getattr(u, "cache_write_1h_tokens", 0))  # present once exact pricing lands


async def fan_out(sim: SimServer, model: str, cache: str, agents: int) -> Tally:
    cfg = config(sim, cache, f"sk-fan-{model}-{cache}")
    info = cfg.model(model)
    agent = Agent("contract-analyst", model=model, instructions=SYSTEM, tools=TOOLS,
                  max_tokens=256)
    tally = Tally()
    async with Router(cfg) as router:
        runner = Runner(router)
        results = await asyncio.gather(*(
            runner.run(agent, f"Contract SUP-{1000 + i}: what are the liability terms?")
            for i in range(agents)))
    for r in results:
        tally.add(r, info, prefix_tokens(model))
    return tally


async def ten_turns(sim: SimServer, cache: str) -> tuple[list[Usage], list[float]]:
    agent = Agent("auditor", model=CLAUDE, instructions=SYSTEM, tools=TOOLS,
                  tool_choice="required", max_turns=10, max_tokens=256,
                  loop=LoopPolicy(max_repeats=9, on_loop="nudge"))
    async with Router(config(sim, cache, f"sk-ten-{cache}")) as router:
        result = await Runner(router).run(agent, "Audit contract SUP-2001 clause by clause.")
    return [t.usage for t in result.turns], [t.cost_usd for t in result.turns]


def fmt(n: float) -> str:
    return f"{n:,.0f}"


async def main(args: argparse.Namespace) -> None:
    profile = ModelProfile(latency_s=args.latency, output_tokens=40)
    async with SimServer(SimConfig(seed=11, models={"*": profile})) as sim:
        print(f"1. Fan-out: {args.agents} agents at once, a {prefix_tokens(CLAUDE):,}-token "
              "shared prefix (3,000-token system prompt + 10 tools), a tool round trip each")
        head = (f"{'model':<18} {'cache':<5} {'calls':>5} {'input':>9} {'read':>9} "
                f"{'write':>8} {'fresh':>8} {'output':>6} {'$ total':>9} {'$ input':>9} "
                f"{'$ prefix':>9} {'prefix writes':>13}")
        print(head)
        for model in (CLAUDE, GPT):
            runs = {}
            for cache in ("auto", "off"):
                t = runs[cache] = await fan_out(sim, model, cache, args.agents)
                u = t.usage
                fresh = u.input_tokens - u.cached_input_tokens - u.cache_write_tokens
                print(f"{model:<18} {cache:<5} {t.calls:>5} {fmt(u.input_tokens):>9} "
                      f"{fmt(u.cached_input_tokens):>9} {fmt(u.cache_write_tokens):>8} "
                      f"{fmt(fresh):>8} {fmt(u.output_tokens):>6} {t.usd:>9.4f} "
                      f"{t.input_usd:>9.4f} {t.prefix_usd:>9.4f} {t.writes_of_prefix:>13}")
            on, off = runs["auto"], runs["off"]
            print(f"{'':<18} ratio on/off: $ total {on.usd / off.usd:.3f}, "
                  f"$ input {on.input_usd / off.input_usd:.3f}, "
                  f"$ shared prefix (list prices) {on.prefix_usd / off.prefix_usd:.3f}"
                  + ("  (goal <= 0.35)" if model == CLAUDE else ""))
            if model == GPT:  # OpenAI caches by itself: "off" only stops shoal's help
                print(f"{'':<18} vs no caching at all (${on.uncached_usd:.4f}): "
                      f"$ total {on.usd / on.uncached_usd:.3f} with shoal's cache help, "
                      f"{off.usd / off.uncached_usd:.3f} with the provider's alone")
        print()
        print(f"2. A 10-turn tool-using agent on {CLAUDE}: per turn, caching on vs off")
        on_u, on_usd = await ten_turns(sim, "auto")
        off_u, off_usd = await ten_turns(sim, "off")
        print(f"{'turn':>4} {'prompt':>7} {'read':>7} {'write':>6} {'$ on':>9} {'$ off':>9} "
              f"{'on/off':>7}")
        for i, (u, a, b) in enumerate(zip(on_u, on_usd, off_usd, strict=False)):
            print(f"{i + 1:>4} {fmt(u.input_tokens):>7} {fmt(u.cached_input_tokens):>7} "
                  f"{fmt(u.cache_write_tokens):>6} {a:>9.5f} {b:>9.5f} {a / b:>7.3f}")
        print(f"{'all':>4} {fmt(sum(u.input_tokens for u in on_u)):>7} "
              f"{fmt(sum(u.cached_input_tokens for u in on_u)):>7} "
              f"{fmt(sum(u.cache_write_tokens for u in on_u)):>6} {sum(on_usd):>9.5f} "
              f"{sum(off_usd):>9.5f} {sum(on_usd) / sum(off_usd):>7.3f}")
        assert len(off_u) == len(on_u)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.05,
                        help="the simulator's seconds to first token (default 0.05)")
    asyncio.run(main(parser.parse_args()))
