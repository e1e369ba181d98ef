"""A tool loop handed from one provider to another (failover, fallback models).

The first turn is answered over the wire by an OpenAI-style provider and calls a tool;
the conversation then goes to DeepSeek in thinking mode, Claude with thinking on, or
Gemini 3, each of which demands back reasoning that turn never had (PROVIDERS.md trap 9;
the simulator refuses as they do). shoal fills in what is missing
(providers/foreign_turns.py) and the second provider answers. Then the same through a
fallback model of the catalog: the primary fails over mid-loop to the other provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sim_fixtures import running

from shoal.config import Config
from shoal.sim import SimServer
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, Thinking, ToolSpec

pytestmark = pytest.mark.asyncio

LOOKUP = ToolSpec("lookup", "Look something up.",
                  {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})
FAST = RetryPolicy(attempts=2, backoff=Backoff(base=0.01, cap=0.02), deadline_s=20)

# (style, protocol, wire model, thinking asked for)
TARGETS = [
    ("deepseek", "openai", "deepseek-reasoner", None),
    ("deepseek", "openai", "deepseek-chat", Thinking()),
    ("moonshot", "openai", "kimi-k2-thinking", None),
    ("moonshot", "openai", "kimi-k2.5", None),
    ("anthropic", "anthropic", "claude-sonnet-4-6", Thinking()),
    ("anthropic", "anthropic", "claude-haiku-4-5", Thinking(budget_tokens=1024)),
    ("gemini", "openai", "gemini-3-pro-preview", None),
]


def _config(sim: SimServer, style: str, protocol: str, wire: str) -> Config:
    return Config.from_dict({
        "channels": {
            "first": {"protocol": "openai", "base_url": sim.base_url("openai"),
                      "api_key": "sk-first-0123456789", "provider": "openai"},
            "second": {"protocol": protocol, "provider": style, "api_key": "sk-second-012345",
                       "base_url": sim.base_url(style, protocol=protocol)},
        },
        "models": {
            "first": {"channels": ["first"], "wire_name": "gpt-4o-mini"},
            "second": {"channels": ["second"], "wire_name": wire},
            # the catalog's own failover: "primary" falls back to the second provider
            "primary": {"channels": ["first"], "wire_name": "gpt-4o-mini",
                        "fallbacks": ["second"]},
        },
    })


async def _tool_turn(router: Router) -> list[Message]:
    """A conversation whose tool call was answered by the OpenAI-style provider."""
    asked = Message.user("Look up the price of kelp, then answer.")
    first: ChatResponse = await router.complete(ChatRequest("first", [asked], tools=[LOOKUP]))
    assert first.tool_calls and first.provider == "openai"
    return [asked, first.message(),
            *(Message.tool(c.id, "kelp: 3 shells a bundle") for c in first.tool_calls)]


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with running() as server:
        yield server


@pytest.mark.parametrize(("style", "protocol", "wire", "thinking"), TARGETS,
                         ids=[f"{t[0]}-{t[2]}" for t in TARGETS])
async def test_the_next_provider_takes_the_tool_loop_over(
        sim: SimServer, style: str, protocol: str, wire: str, thinking: Any) -> None:
    async with Router(_config(sim, style, protocol, wire), retry=FAST) as router:
        history = await _tool_turn(router)
        request = ChatRequest("second", history, tools=[LOOKUP], thinking=thinking,
                              max_tokens=4096)
        answer = await router.complete(request)  # a 400 here is the bug this guards
        assert answer.provider == style
        streamed = [e async for e in router.stream(request)]
        assert streamed  # the stream is accepted too


async def test_a_fallback_model_takes_the_loop_over_when_the_first_provider_fails(
        sim: SimServer) -> None:
    """The model's own failover: its OpenAI-style channel answers the tool call, then
    fails (a 503); the fallback model on DeepSeek's thinking mode gets the
    history and answers."""
    async with Router(_config(sim, "deepseek", "openai", "deepseek-reasoner"),
                      retry=FAST) as router:
        history = await _tool_turn(router)
        sim.script(["503"])  # the Router fails over to the fallback model at once
        answer = await router.complete(ChatRequest("primary", history, tools=[LOOKUP]))
        assert (answer.provider, answer.model) == ("deepseek", "second")
        assert sim.stats().by_status.get(400, 0) == 0
