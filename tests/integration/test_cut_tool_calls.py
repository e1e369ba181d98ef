"""An answer cut at max_tokens in the middle of a tool call, and a streamed tool that
takes no arguments, over the real wire (the simulator truncates as providers do).

A cut call's arguments are incomplete (OpenAI: JSON text cut short; Anthropic: what of
the input it could parse): the answer says ``finish_reason ==
"length"`` (not ``tool_calls``, which would read as a finished call), and an agent
refuses to run it with an error that names max_tokens. Anthropic streams no
``input_json_delta`` for a tool without arguments: the deltas still add up to "{}".
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sim_fixtures import running

from shoal.agents import Agent, Runner, tool
from shoal.config import Config
from shoal.errors import BudgetExceeded
from shoal.sim import SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message, StreamEnd, ToolCallDelta, ToolSpec

pytestmark = pytest.mark.asyncio

CITY = ToolSpec("weather", "The weather in a city.", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
NOTHING = ToolSpec("now", "The time now.", {"type": "object", "properties": {}})
WIRES = [("openai", "openai", "gpt-4o-mini"), ("anthropic", "anthropic", "claude-sonnet-4-6")]


def _config(sim: SimServer, style: str, protocol: str, wire: str) -> Config:
    return Config.from_dict({
        "channels": {"ch": {"protocol": protocol, "provider": style, "api_key": "sk-test-0123",
                            "base_url": sim.base_url(style, protocol=protocol)}},
        "models": {"m": {"channels": ["ch"], "wire_name": wire}},
    })


@pytest.mark.parametrize(("style", "protocol", "wire"), WIRES, ids=[w[0] for w in WIRES])
async def test_a_call_cut_at_max_tokens_says_length(style: str, protocol: str,
                                                    wire: str) -> None:
    async with running(SimConfig(style=style)) as sim, \
            Router(_config(sim, style, protocol, wire)) as router:
        request = ChatRequest("m", [Message.user("weather?")], tools=[CITY],
                              tool_choice="required", max_tokens=3)
        whole = await router.complete(request)
        events = [e async for e in router.stream(request)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    for answer in (whole, end.response):
        assert answer.finish_reason == "length"
        assert answer.tool_calls  # what arrived is kept, marked as cut
        if style == "openai":  # the argument text stops mid-JSON
            with pytest.raises(json.JSONDecodeError):
                json.loads(answer.tool_calls[0].arguments)


@pytest.mark.parametrize(("style", "protocol", "wire"), WIRES, ids=[w[0] for w in WIRES])
async def test_an_agent_does_not_run_a_cut_call(style: str, protocol: str, wire: str) -> None:
    ran: list[Any] = []

    @tool
    def weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return "sunny"

    async with running(SimConfig(style=style)) as sim, \
            Router(_config(sim, style, protocol, wire)) as router:
        agent = Agent("forecaster", model="m", tools=[weather], max_tokens=3,
                      tool_choice="required")
        with pytest.raises(BudgetExceeded, match=r"cut at max_tokens .* inside its call of "
                                                 r"'weather'.*raise the agent's max_tokens"):
            await Runner(router).run(agent, "weather?")
    assert ran == []


async def test_a_streamed_tool_without_arguments_adds_up_to_an_empty_object() -> None:
    async with running(SimConfig(style="anthropic")) as sim, \
            Router(_config(sim, "anthropic", "anthropic", "claude-sonnet-4-6")) as router:
        request = ChatRequest("m", [Message.user("time?")], tools=[NOTHING],
                              tool_choice="required")
        events = [e async for e in router.stream(request)]
    pieces = "".join(e.arguments or "" for e in events if isinstance(e, ToolCallDelta))
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert pieces == end.response.tool_calls[0].arguments == "{}"
    assert end.response.finish_reason == "tool_calls"
