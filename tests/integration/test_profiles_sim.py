"""Structured output and tools per provider profile, through the Router and an Agent
against the simulator over HTTP (issue 9, items 1-3)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from shoal.agents import Agent, Runner, tool
from shoal.config import Config
from shoal.errors import ConfigError
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEnd, Thinking, ToolSpec


class Findings(BaseModel):
    topic: str
    points: list[str]


class Answer(BaseModel):
    answer: str


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(seed=3, models={"*": ModelProfile(output_tokens=12)})) as s:
        yield s


def config(base_url: str, protocol: str, provider: str) -> Config:
    return Config.from_dict({
        "channels": {"ch": {"protocol": protocol, "base_url": base_url, "api_key": "sk-test",
                            "provider": provider}},
        "models": {"m": {"channels": ["ch"]}},
    })


async def test_anthropic_agent_calls_its_tool_then_returns_the_typed_output(
    sim: SimServer,
) -> None:
    looked_up: list[str] = []

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        looked_up.append(q)
        return "costs fall, usage grows"

    async with Router(config(sim.url, "anthropic", "anthropic")) as router:
        agent = Agent("researcher", model="m", tools=[lookup], output_type=Findings)
        result = await Runner(router).run(agent, "open-weight LLM economics")
    assert isinstance(result.output, Findings)
    assert len(looked_up) == 1  # the model was free to call its tool first
    assert result.turns[0].tool_calls == ["lookup"]
    log = sim.stats().requests
    assert all(r.status == 200 for r in log)
    assert len(log) == len(result.turns)
    # the tool result went back to the model before the final answer
    assert [m.role for m in result.messages[:4]] == ["system", "user", "assistant", "tool"]


async def test_anthropic_agent_without_tools_gets_the_output_in_one_call(
    sim: SimServer,
) -> None:
    async with Router(config(sim.url, "anthropic", "anthropic")) as router:
        agent = Agent("a", model="m", output_type=Findings)
        result = await Runner(router).run(agent, "summarise")
    assert isinstance(result.output, Findings)
    assert sim.stats().total_requests == 1


async def test_deepseek_agent_with_output_type_uses_json_mode(sim: SimServer) -> None:
    # The DeepSeek style answers json_schema with 400 (trap 12): one 200 proves json_object.
    async with Router(config(sim.base_url("deepseek"), "openai", "deepseek")) as router:
        agent = Agent("a", model="m", output_type=Answer)
        result = await Runner(router).run(agent, "summarise")
    assert isinstance(result.output, Answer)
    log = sim.stats().requests
    assert [r.status for r in log] == [200]


# -- against the simulator's strict provider styles (it refuses what the provider refuses) ----


def styled(sim: SimServer, style: str, wire_model: str, *,
           protocol: str = "openai") -> Config:
    return Config.from_dict({
        "channels": {"ch": {"protocol": protocol, "base_url": sim.base_url(style,
                                                                           protocol=protocol),
                            "api_key": "sk-test", "provider": style}},
        "models": {"m": {"channels": ["ch"], "wire_name": wire_model}},
    })


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return f"{q}: costs fall"


LOOKUP_SPEC = ToolSpec("lookup", "Look something up.",
                       {"type": "object", "properties": {"q": {"type": "string"}}})


@pytest.mark.parametrize(("style", "wire_model"), [
    ("openai", "gpt-4o"),
    ("deepseek", "deepseek-chat"),
    ("moonshot", "kimi-k2-0905-preview"),
    ("zhipu", "glm-4.6"),
    ("gemini", "gemini-2.5-flash"),
    ("gemini", "gemini-3-pro-preview"),  # signs its tool calls; refuses them unsigned
])
async def test_tools_and_output_type_on_each_strict_style(
    sim: SimServer, style: str, wire_model: str
) -> None:
    async with Router(styled(sim, style, wire_model)) as router:
        agent = Agent("a", model="m", tools=[lookup], output_type=Answer)
        result = await Runner(router).run(agent, "open-weight LLM economics")
    assert isinstance(result.output, Answer)
    assert result.turns[0].tool_calls == ["lookup"]
    assert [r.status for r in sim.stats().requests] == [200, 200]


async def test_minimax_gets_one_system_message(sim: SimServer) -> None:
    async with Router(styled(sim, "minimax", "MiniMax-M2")) as router:
        agent = Agent("a", model="m", tools=[lookup], instructions="Be brief.")
        history = [Message.system("Cite sources."), Message.user("go")]
        result = await Runner(router).run(agent, history)
    assert result.output
    assert [r.status for r in sim.stats().requests] == [200, 200]


async def test_deepseek_thinking_mode_tool_turns_carry_reasoning_content(
    sim: SimServer,
) -> None:
    # deepseek-reasoner thinks by default; its tool turns must bring reasoning_content back
    async with Router(styled(sim, "deepseek", "deepseek-reasoner")) as router:
        agent = Agent("a", model="m", tools=[lookup])
        result = await Runner(router).run(agent, "find it")
    tool_turn = next(m for m in result.messages if m.role == "assistant")
    assert tool_turn.tool_calls and tool_turn.reasoning
    assert [r.status for r in sim.stats().requests] == [200, 200]


async def test_anthropic_thinking_signed_blocks_round_trip(sim: SimServer) -> None:
    spec = lookup.spec()
    async with Router(styled(sim, "anthropic", "claude-haiku-4-5",
                             protocol="anthropic")) as router:
        messages = [Message.user("find it")]
        thinking = Thinking(budget_tokens=1024)
        first = await router.complete(ChatRequest("m", messages, tools=[spec],
                                                  max_tokens=2048, thinking=thinking))
        assert first.tool_calls and first.reasoning_parts
        assert first.reasoning_parts[0].signature
        call = first.tool_calls[0]
        later = [*messages, first.message(), Message.tool(call.id, "found", is_error=False)]
        second = await router.complete(ChatRequest("m", later, tools=[spec], max_tokens=2048,
                                                   thinking=thinking))
        assert second.text
        # Without its signed thinking block the turn would be refused with thinking on
        # (as Anthropic does: test_sim_styles checks the refusal): shoal leaves thinking
        # off for that request instead, and the loop goes on.
        unsigned = Message.assistant("", first.tool_calls, reasoning=first.reasoning)
        third = await router.complete(ChatRequest(
            "m", [*messages, unsigned, Message.tool(call.id, "found")], tools=[spec],
            max_tokens=2048, thinking=thinking))
        assert third.text and not third.reasoning_parts
    assert [r.status for r in sim.stats().requests] == [200, 200, 200]


async def test_anthropic_thinking_with_an_output_schema_is_offered_not_forced(
    sim: SimServer,
) -> None:
    async with Router(styled(sim, "anthropic", "claude-haiku-4-5",
                             protocol="anthropic")) as router:
        response = await router.complete(ChatRequest(
            "m", [Message.user("summarise")], output_schema=Answer.model_json_schema(),
            output_schema_name="Answer", max_tokens=2048, thinking=Thinking(budget_tokens=1024)))
    assert Answer.model_validate_json(response.text)
    assert response.reasoning_parts


async def test_agent_with_thinking_sends_its_signed_blocks_back_on_tool_turns(
    sim: SimServer,
) -> None:
    async with Router(styled(sim, "anthropic", "claude-haiku-4-5",
                             protocol="anthropic")) as router:
        agent = Agent("a", model="m", tools=[lookup], max_tokens=2048,
                      thinking=Thinking(budget_tokens=1024))
        result = await Runner(router).run(agent, "find it")
    assert result.turns[0].tool_calls == ["lookup"]
    tool_turn = next(m for m in result.messages if m.role == "assistant")
    assert tool_turn.reasoning_parts and tool_turn.reasoning_parts[0].signature
    assert [r.status for r in sim.stats().requests] == [200, 200]


async def streamed(router: Router, request: ChatRequest) -> ChatResponse:
    async for event in router.stream(request):
        if isinstance(event, StreamEnd):
            return event.response
    raise AssertionError("no StreamEnd")


@pytest.mark.parametrize(("style", "wire_model", "protocol", "thinking"), [
    ("gemini", "gemini-3-pro-preview", "openai", None),
    ("deepseek", "deepseek-chat", "openai", Thinking()),
    ("anthropic", "claude-haiku-4-5", "anthropic", Thinking(budget_tokens=1024)),
])
async def test_streamed_tool_turns_round_trip_on_strict_styles(
    sim: SimServer, style: str, wire_model: str, protocol: str, thinking: Thinking | None
) -> None:
    spec = lookup.spec()
    async with Router(styled(sim, style, wire_model, protocol=protocol)) as router:
        messages = [Message.user("find it")]
        first = await streamed(router, ChatRequest("m", messages, tools=[spec],
                                                   max_tokens=2048, thinking=thinking))
        assert first.tool_calls
        call = first.tool_calls[0]
        later = [*messages, first.message(), Message.tool(call.id, "found")]
        second = await streamed(router, ChatRequest("m", later, tools=[spec], max_tokens=2048,
                                                    thinking=thinking))
    assert second.text
    assert [r.status for r in sim.stats().requests] == [200, 200]


@pytest.mark.parametrize(("style", "wire_model"), [("zhipu", "glm-4.6"),
                                                   ("deepseek", "deepseek-chat")])
async def test_thinking_switched_on_streams_reasoning_before_the_answer(
    sim: SimServer, style: str, wire_model: str
) -> None:
    """Zhipu and DeepSeek answer thinking {"type": "enabled"} with reasoning_content
    (PROVIDERS.md §3): it reaches the caller first, as ReasoningDelta, and is kept on the
    answer; switched off, none comes."""
    async with Router(styled(sim, style, wire_model)) as router:
        kinds = [type(e).__name__ async for e in router.stream(ChatRequest(
            "m", [Message.user("think first")], max_tokens=256, thinking=Thinking()))]
        whole = await router.complete(ChatRequest("m", [Message.user("think first")],
                                                  max_tokens=256, thinking=Thinking()))
        plain = await router.complete(ChatRequest(
            "m", [Message.user("think first")], max_tokens=256,
            thinking=Thinking(enabled=False)))
    assert "ReasoningDelta" in kinds and "TextDelta" in kinds
    assert kinds.index("ReasoningDelta") < kinds.index("TextDelta")
    assert whole.reasoning and whole.usage.reasoning_tokens > 0
    assert plain.reasoning is None


@pytest.mark.parametrize("tools", [[], [lookup]], ids=["alone", "with a tool"])
async def test_claude_5_5_typed_output_without_forcing_a_tool(
    sim: SimServer, tools: list[object]
) -> None:
    """Claude 5.5 refuses forced tool use (the simulator's Anthropic style too): a typed
    output comes through the native JSON-schema format when nothing else may be called,
    and through the offered output tool next to the agent's tools."""
    cfg = styled(sim, "anthropic", "claude-sonnet-5-5", protocol="anthropic")
    async with Router(cfg) as router:
        agent = Agent("a", model="m", tools=tools, output_type=Findings)  # type: ignore[arg-type]
        result = await Runner(router).run(agent, "summarise")
    assert isinstance(result.output, Findings)
    assert [r.status for r in sim.stats().requests] == [200] * len(result.turns)


async def test_claude_5_sampling_is_refused_before_sending(sim: SimServer) -> None:
    cfg = styled(sim, "anthropic", "claude-sonnet-5-5", protocol="anthropic")
    async with Router(cfg) as router:
        with pytest.raises(ConfigError, match="refuses temperature and top_p"):
            await router.complete(ChatRequest("m", [Message.user("hi")], temperature=0.2))
        with pytest.raises(ConfigError, match="refuses forced tool use"):
            await router.complete(ChatRequest("m", [Message.user("hi")], tools=[LOOKUP_SPEC],
                                              tool_choice="required"))
    assert sim.stats().total_requests == 0
