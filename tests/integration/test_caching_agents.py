"""Agents use prompt caching without being told: through the real Router against the
simulator (which bills cache reads and writes by the providers' rules), a tool-using
agent on Claude reads its whole previous prompt from the cache every turn (so its
prefix is byte-stable: no timestamps, tools in the same order), a fan-out writes its
shared prefix once, OpenAI requests carry the agent's prompt_cache_key, and
``cache = "off"`` turns all of it off."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.agents import Agent, LoopPolicy, Runner, tool
from shoal.config import Config
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message, StreamEnd

CLAUDE = "claude-sonnet-4-6"
GPT = "gpt-4.1"
INSTRUCTIONS = "You audit supplier contracts and flag risky clauses precisely. " * 190


def make_tools() -> list[Any]:
    tools = []
    for i in range(10):
        def lookup(query: str, limit: int = 5) -> str:
            return f"{limit} results for {query}: clause 4.2 caps liability at fees paid."

        lookup.__name__ = f"lookup_{i}"
        lookup.__doc__ = f"Search source {i} of the contract archive for matching clauses."
        tools.append(tool(lookup))
    return tools


def config(sim: SimServer, **channel: Any) -> Config:
    return Config.from_dict({
        "channels": {
            "anthropic": {"base_url": sim.url, "provider": "anthropic",
                          "api_key": "sk-ant-test", **channel},
            "openai": {"base_url": sim.url + "/v1", "provider": "openai",
                       "api_key": "sk-test", **channel},
        },
    })


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    profile = ModelProfile(output_tokens=12, latency_s=0.02)
    async with SimServer(SimConfig(seed=3, models={"*": profile})) as s:
        yield s


def tool_agent(name: str = "auditor", model: str = CLAUDE) -> Agent[str]:
    # The simulator calls a tool whenever the model must; the ninth identical call is
    # a loop, so the tenth turn answers: 10 turns.
    return Agent(name, model=model, instructions=INSTRUCTIONS, tools=make_tools(),
                 tool_choice="required", max_turns=10,
                 loop=LoopPolicy(max_repeats=9, on_loop="nudge"))


async def test_ten_turn_tool_agent_reads_its_whole_previous_prompt_each_turn(
        sim: SimServer) -> None:
    async with Router(config(sim)) as router:
        result = await Runner(router).run(tool_agent(), "Audit the Acme supply contract.")
    turns = [t.usage for t in result.turns]
    assert len(turns) == 10
    assert turns[0].cached_input_tokens == 0 and turns[0].cache_write_tokens > 3000
    for prev, cur in itertools.pairwise(turns):
        # everything the previous request sent is read back (a few tokens of rounding
        # and the breakpoint markers aside): the prefix did not change between turns
        assert prev.input_tokens - 16 <= cur.cached_input_tokens <= prev.input_tokens
        assert cur.cache_write_tokens < 200  # only the new turn is written
    reads = [u.cached_input_tokens for u in turns]
    assert reads == sorted(reads) and len(set(reads)) == 10


async def test_cache_off_on_the_channel_sends_nothing(sim: SimServer) -> None:
    async with Router(config(sim, cache="off")) as router:
        result = await Runner(router).run(tool_agent(), "Audit the Acme supply contract.")
    assert all(t.usage.cached_input_tokens == t.usage.cache_write_tokens == 0
               for t in result.turns)


async def test_fan_out_writes_the_shared_prefix_once(sim: SimServer) -> None:
    agent = Agent("reviewer", model=CLAUDE, instructions=INSTRUCTIONS, tools=make_tools())
    async with Router(config(sim)) as router:
        runner = Runner(router)
        results = await asyncio.gather(*(
            runner.run(agent, f"Review contract number {i}.") for i in range(20)))
    first_turns = [r.turns[0].usage for r in results]
    writers = [u for u in first_turns if u.cached_input_tokens == 0]
    assert len(writers) == 1  # the others waited for its answer, then read
    assert all(u.cached_input_tokens > 3000 for u in first_turns if u not in writers)


async def test_openai_agents_share_a_cache_per_agent_name(sim: SimServer) -> None:
    async with Router(config(sim)) as router:
        runner = Runner(router)
        first = await runner.run(Agent("summariser", model=GPT, instructions=INSTRUCTIONS),
                                 "Summarise contract 1.")
        again = await runner.run(Agent("summariser", model=GPT, instructions=INSTRUCTIONS),
                                 "Summarise contract 2.")
        other = await runner.run(Agent("checker", model=GPT, instructions=INSTRUCTIONS),
                                 "Summarise contract 3.")
    assert first.usage.cached_input_tokens == 0
    assert again.usage.cached_input_tokens >= 2048  # same prompt_cache_key: a hit
    assert other.usage.cached_input_tokens == 0  # another agent, another key


async def test_streamed_calls_cache_and_report_it(sim: SimServer) -> None:
    request = ChatRequest(CLAUDE, [Message.system(INSTRUCTIONS), Message.user("Clause 9?")])
    usages = []
    async with Router(config(sim)) as router:
        for _ in range(2):
            async for event in router.stream(request):
                if isinstance(event, StreamEnd):
                    usages.append(event.response.usage)
    assert usages[0].cache_write_tokens > 2800 and usages[0].cached_input_tokens == 0
    assert usages[1].cached_input_tokens == usages[0].cache_write_tokens
