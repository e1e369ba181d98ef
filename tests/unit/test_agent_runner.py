"""The turn loop against a scripted model client: tools, structured output and re-asks,
fallbacks, turn limits, results and the recorder hook."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from shoal.agents import Agent, MemoryRecorder, RunContext, Runner
from shoal.agents.testing import Reply, ScriptedClient, call, reply
from shoal.clock import VirtualClock
from shoal.errors import (
    BadRequest,
    BudgetExceeded,
    CircuitOpen,
    ConfigError,
    OutputInvalid,
    ProviderUnavailable,
)
from shoal.types import ChatRequest, Message, ToolCall


class Findings(BaseModel):
    points: list[str]
    confidence: float


async def test_plain_text_run_result() -> None:
    client = ScriptedClient([reply("Hello there")])
    agent = Agent("greeter", model="m", instructions="Be nice.", temperature=0.3, max_tokens=50)
    result = await Runner(client).run(agent, "hi")
    assert result.output == "Hello there"
    assert result.text == "Hello there"
    assert [m.role for m in result.messages] == ["system", "user", "assistant"]
    assert result.messages[0].content == "Be nice."
    assert len(result.turns) == 1
    assert result.usage.output_tokens == 3
    assert result.cost_usd == pytest.approx(
        (result.usage.input_tokens * 1.0 + result.usage.output_tokens * 2.0) / 1e6
    )
    req = client.requests[0]
    assert req.model == "m"
    assert req.temperature == 0.3
    assert req.max_tokens == 50
    assert req.output_schema is None
    assert req.tools == []


async def test_default_max_tokens_is_bounded_by_the_model() -> None:
    from shoal.config import ModelInfo

    client = ScriptedClient(
        [reply("a"), reply("b")],
        models={"small": ModelInfo(name="small", max_output=100), "big": ModelInfo(name="big")},
    )
    runner = Runner(client, default_max_tokens=1000)
    await runner.run(Agent("a", model="small"), "x")
    await runner.run(Agent("a", model="big"), "x")
    assert [r.max_tokens for r in client.requests] == [100, 1000]


async def test_model_none_uses_runner_default_or_fails_clearly() -> None:
    client = ScriptedClient([reply("ok")])
    await Runner(client, default_model="dflt").run(Agent("a"), "x")
    assert client.requests[0].model == "dflt"
    with pytest.raises(ConfigError, match="has no model"):
        await Runner(ScriptedClient()).run(Agent("a"), "x")


async def test_tool_loop_runs_tools_and_feeds_results_back() -> None:
    seen: list[tuple[str, int]] = []

    def lookup(city: str, days: int = 1) -> dict[str, object]:
        """Weather forecast."""
        seen.append((city, days))
        return {"city": city, "temp": 21}

    client = ScriptedClient([call("lookup", city="Oslo", days=2), reply("It is 21 in Oslo")])
    agent = Agent("w", model="m", tools=[lookup])
    result = await Runner(client).run(agent, "weather?")
    assert seen == [("Oslo", 2)]
    assert result.output == "It is 21 in Oslo"
    roles = [m.role for m in result.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    tool_msg = result.messages[2]
    assert json.loads(tool_msg.content) == {"city": "Oslo", "temp": 21}
    assert tool_msg.tool_call_id == result.messages[1].tool_calls[0].id
    # the second request carried the tool result; both carried the tool's schema
    assert client.requests[1].messages[-1].role == "tool"
    assert client.requests[0].tools[0].name == "lookup"
    assert client.requests[0].tools[0].description == "Weather forecast."
    assert result.turns[0].tool_calls == ["lookup"]
    assert len(result.turns) == 2


async def test_parallel_tool_calls_in_one_turn_keep_their_order() -> None:
    clock = VirtualClock()

    async def slow(n: int) -> int:
        await clock.sleep(10 - n)
        return n * 10

    both = Reply(
        tool_calls=(ToolCall("c1", "slow", '{"n": 1}'), ToolCall("c2", "slow", '{"n": 2}'))
    )
    client = ScriptedClient([both, reply("done")], clock=clock)
    result = await clock.run(Runner(client, clock=clock).run(Agent("p", model="m", tools=[slow]),
                                                             "go"))
    tool_msgs = [m for m in result.messages if m.role == "tool"]
    assert [(m.tool_call_id, m.content) for m in tool_msgs] == [("c1", "10"), ("c2", "20")]
    assert clock.now() == 9  # concurrent: max(9, 8), not 17


async def test_invalid_tool_arguments_and_unknown_tools_go_back_to_the_model() -> None:
    def add(a: int, b: int) -> int:
        return a + b

    client = ScriptedClient(
        [call("add", arguments='{"a": 1}'), call("mul", a=1), call("add", a=1, b=2), reply("3")]
    )
    result = await Runner(client).run(Agent("calc", model="m", tools=[add]), "1+2")
    assert result.output == "3"
    tool_msgs = [m for m in result.messages if m.role == "tool"]
    assert tool_msgs[0].is_error
    assert "b: Field required" in tool_msgs[0].content
    assert tool_msgs[1].is_error
    assert "no tool named 'mul'" in tool_msgs[1].content
    assert "Available tools: add" in tool_msgs[1].content
    assert not tool_msgs[2].is_error
    assert tool_msgs[2].content == "3"
    assert result.turns[0].tool_errors == ["add: invalid_arguments"]


async def test_structured_output_reasks_with_the_validation_error() -> None:
    fenced = '```json\n{"points": ["a"], "confidence": 0.9}\n```'
    client = ScriptedClient([reply('{"points": "not a list"}'), reply(fenced)])
    agent = Agent("r", model="m", output_type=Findings)
    result = await Runner(client).run(agent, "topic")
    assert isinstance(result.output, Findings)
    assert result.output.points == ["a"]
    first, second = client.requests
    assert first.output_schema is not None
    assert first.output_schema["properties"]["points"]["type"] == "array"
    assert first.output_schema_name == "Findings"
    assert "JSON schema" in first.messages[0].content  # schema also stated in the prompt
    reask = second.messages[-1]
    assert reask.role == "user"
    assert "points: Input should be a valid list" in reask.content
    assert "confidence: Field required" in reask.content
    assert result.turns[0].note.startswith("output invalid, re-asked")


async def test_output_invalid_after_the_last_reask() -> None:
    client = ScriptedClient([reply("nope"), reply("still nope"), reply("{}")])
    agent = Agent("r", model="m", output_type=Findings, output_retries=2)
    with pytest.raises(OutputInvalid, match=r"after 2 re-ask\(s\)"):
        await Runner(client).run(agent, "topic")
    assert client.calls == 3


async def test_non_object_output_types_are_wrapped() -> None:
    client = ScriptedClient([reply('{"result": ["x", "y"]}'), reply('["z"]')])
    agent: Agent[list[str]] = Agent("l", model="m", output_type=list[str])
    result = await Runner(client).run(agent, "list")
    assert result.output == ["x", "y"]
    assert client.requests[0].output_schema is not None
    assert client.requests[0].output_schema["required"] == ["result"]
    assert (await Runner(client).run(agent, "list")).output == ["z"]


async def test_max_turns_stops_the_run() -> None:
    def noop(i: int) -> str:
        return "ok"

    client = ScriptedClient(handler=lambda req: call("noop", i=len(req.messages)))
    with pytest.raises(BudgetExceeded, match="max_turns=3"):
        await Runner(client).run(Agent("a", model="m", tools=[noop], max_turns=3), "go")
    assert client.calls == 3


async def test_fallback_models_on_provider_failure_not_on_bad_request() -> None:
    client = ScriptedClient(
        [ProviderUnavailable("down", status=503), CircuitOpen("all open"), reply("from c")]
    )
    agent = Agent("a", model="a-model", fallbacks=["b-model", "c-model"])
    result = await Runner(client).run(agent, "x")
    assert result.output == "from c"
    assert [r.model for r in client.requests] == ["a-model", "b-model", "c-model"]
    assert result.model == "c-model"
    assert "a-model failed (ProviderUnavailable)" in result.turns[0].note

    client = ScriptedClient([BadRequest("bad field", status=400), reply("unused")])
    with pytest.raises(BadRequest):
        await Runner(client).run(agent, "x")
    assert client.calls == 1

    client = ScriptedClient([ProviderUnavailable("down"), ProviderUnavailable("down")])
    with pytest.raises(ProviderUnavailable):
        await Runner(client).run(Agent("a", model="a", fallbacks=["b"]), "x")


async def test_dynamic_instructions_and_deps_reach_tools() -> None:
    async def instructions(ctx: RunContext) -> str:
        return f"You serve {ctx.deps['user']}."

    def whoami(ctx: RunContext) -> str:
        return str(ctx.deps["user"])

    client = ScriptedClient([call("whoami"), reply("done")])
    agent = Agent("a", model="m", instructions=instructions, tools=[whoami])
    result = await Runner(client).run(agent, "who?", deps={"user": "ada"})
    assert client.requests[0].messages[0].content == "You serve ada."
    assert result.messages[3].content == "ada"


async def test_message_history_input() -> None:
    client = ScriptedClient([reply("fine")])
    history = [Message.user("hi"), Message.assistant("hello"), Message.user("how are you")]
    result = await Runner(client).run(Agent("a", model="m", instructions="sys"), history)
    assert [m.role for m in client.requests[0].messages] == [
        "system", "user", "assistant", "user"
    ]
    assert result.output == "fine"


async def test_recorder_gets_every_turn_and_a_resumed_run_replays_them() -> None:
    def step(n: int) -> int:
        return n + 1

    rec = MemoryRecorder()
    client = ScriptedClient([call("step", n=1), reply("final")])
    agent = Agent("a", model="m", tools=[step])
    first = await Runner(client, recorder=rec).run(agent, "go", run_id="run-1")
    assert sorted(k[2] for k in rec.turns) == [0, 1]
    # Resume: the same run id replays both turns; the model is not called at all.
    empty = ScriptedClient()
    again = await Runner(empty, recorder=rec).run(agent, "go", run_id="run-1")
    assert empty.calls == 0
    assert again.output == first.output == "final"
    assert all(t.replayed for t in again.turns)
    assert again.usage == first.usage
    assert again.cost_usd == pytest.approx(first.cost_usd)


async def test_trace_latency_comes_from_the_clock() -> None:
    clock = VirtualClock()
    client = ScriptedClient([reply("a")], clock=clock, latency_s=2.5)
    result = await clock.run(Runner(client, clock=clock).run(Agent("a", model="m"), "x"))
    assert result.turns[0].latency_s == 2.5
    assert result.latency_s == 2.5


async def test_agent_run_shortcut_with_a_client() -> None:
    client = ScriptedClient([reply("short")])
    result = await Agent("a", model="m").run("x", client=client)
    assert result.output == "short"


def test_agent_validation_and_clone() -> None:
    with pytest.raises(ConfigError):
        Agent("a/b")
    with pytest.raises(ConfigError, match="max_turns"):
        Agent("a", max_turns=0)
    base = Agent("a", model="m")
    other = base.clone(model="n", output_type=Findings)
    assert base.model == "m"
    assert other.model == "n"
    assert other.output.schema is not None
    assert base.output.schema is None
    with pytest.raises(ConfigError, match="no setting"):
        base.clone(colour="red")


def test_scripted_estimate_counts_messages_and_max_tokens() -> None:
    client = ScriptedClient()
    req = ChatRequest(model="m", messages=[Message.user("x" * 40)], max_tokens=100)
    assert client.estimate_tokens(req) == 10 + 4 + 100
