"""The official openai and anthropic SDKs, unmodified, with base_url at the gateway:
answers, streams, tool calls and JSON output, each SDK calling a model of its own
protocol and one of the other (translated through shoal's neutral types)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gateway_fixtures import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    anthropic_client,
    gateway,
    openai_client,
    sim_config,
)
from pydantic import BaseModel

from shoal.gateway.server import GatewayServer
from shoal.sim import ModelProfile, SimConfig, SimServer

MODELS = [OPENAI_MODEL, ANTHROPIC_MODEL]
USER: list[Any] = [{"role": "user", "content": "What limits bind when agents share a provider?"}]
WEATHER_OPENAI: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
WEATHER_ANTHROPIC: list[Any] = [{
    "name": "get_weather", "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]}}]


class Answer(BaseModel):
    title: str
    points: list[str]


@pytest.fixture
async def server() -> AsyncIterator[tuple[SimServer, GatewayServer]]:
    async with SimServer(SimConfig()) as sim, gateway(sim_config(sim)) as gw:
        yield sim, gw


@pytest.mark.parametrize("model", MODELS)
async def test_openai_sdk_answer(server: tuple[SimServer, GatewayServer], model: str) -> None:
    sim, gw = server
    async with openai_client(gw) as client:
        answer = await client.chat.completions.create(model=model, messages=USER,
                                                      max_tokens=50)
    assert answer.model == model
    assert answer.choices[0].finish_reason == "stop"
    assert len((answer.choices[0].message.content or "").split()) == 20
    assert answer.usage is not None and answer.usage.completion_tokens == 20
    assert answer.usage.prompt_tokens == sim.stats().requests[-1].prompt_tokens


@pytest.mark.parametrize("model", MODELS)
async def test_openai_sdk_stream_with_usage(server: tuple[SimServer, GatewayServer],
                                           model: str) -> None:
    _, gw = server
    async with openai_client(gw) as client:
        stream = await client.chat.completions.create(
            model=model, messages=USER, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        plain = await client.chat.completions.create(model=model, messages=USER, stream=True)
        plain_chunks = [c async for c in plain]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 20
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20
    assert all(c.usage is None for c in plain_chunks)  # no include_usage: no usage chunk


@pytest.mark.parametrize("model", MODELS)
async def test_openai_sdk_tool_calls(server: tuple[SimServer, GatewayServer],
                                     model: str) -> None:
    _, gw = server
    async with openai_client(gw) as client:
        answer = await client.chat.completions.create(
            model=model, messages=USER, tools=WEATHER_OPENAI, tool_choice="required")
        call = (answer.choices[0].message.tool_calls or [])[0]
        assert answer.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert isinstance(json.loads(call.function.arguments)["city"], str)  # type: ignore[union-attr]
        # The tool's result goes back; the model answers in text.
        turn: list[Any] = [
            *USER, answer.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
        follow = await client.chat.completions.create(model=model, tools=WEATHER_OPENAI,
                                                      messages=turn)
        assert follow.choices[0].finish_reason == "stop"
        assert follow.choices[0].message.content
        # Streamed, assembled by the SDK's own helper.
        async with client.chat.completions.stream(
                model=model, messages=USER, tools=WEATHER_OPENAI,
                tool_choice="required") as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_completion()
    streamed = (final.choices[0].message.tool_calls or [])[0]
    assert streamed.function.name == "get_weather"
    assert json.loads(streamed.function.arguments)


@pytest.mark.parametrize("model", MODELS)
async def test_openai_sdk_json_output(server: tuple[SimServer, GatewayServer],
                                      model: str) -> None:
    _, gw = server
    async with openai_client(gw) as client:
        parsed = await client.chat.completions.parse(model=model, messages=USER,
                                                     response_format=Answer)
        loose = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Reply in JSON."}],
            response_format={"type": "json_object"})
    assert isinstance(parsed.choices[0].message.parsed, Answer)
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)


@pytest.mark.parametrize("model", MODELS)
async def test_anthropic_sdk_json_output(server: tuple[SimServer, GatewayServer],
                                         model: str) -> None:
    """The Anthropic SDK's structured output (``messages.parse(output_format=...)``
    sends ``output_config.format``) to a model of either protocol, whole and streamed."""
    _, gw = server
    async with anthropic_client(gw) as client:
        parsed = await client.messages.parse(model=model, max_tokens=300, messages=USER,
                                             output_format=Answer)
        async with client.messages.stream(model=model, max_tokens=300, messages=USER,
                                          output_format=Answer) as stream:
            streamed = await stream.get_final_message()
    assert isinstance(parsed.parsed_output, Answer)
    assert isinstance(streamed.parsed_output, Answer)


@pytest.mark.parametrize("model", MODELS)
async def test_anthropic_sdk_answer_and_stream(server: tuple[SimServer, GatewayServer],
                                               model: str) -> None:
    _, gw = server
    async with anthropic_client(gw) as client:
        message = await client.messages.create(model=model, max_tokens=100, messages=USER,
                                               system="Be brief.")
        async with client.messages.stream(model=model, max_tokens=100, messages=USER,
                                          system=[{"type": "text", "text": "Be brief."}]
                                          ) as stream:
            pieces = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
    assert message.model == model and message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert len(message.content[0].text.split()) == 20
    assert message.usage.output_tokens == 20 and message.usage.input_tokens > 0
    assert "".join(pieces) == final.content[0].text  # type: ignore[union-attr]
    assert len(pieces) == 20
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 20


@pytest.mark.parametrize("model", MODELS)
async def test_anthropic_sdk_tool_use(server: tuple[SimServer, GatewayServer],
                                      model: str) -> None:
    _, gw = server
    async with anthropic_client(gw) as client:
        message = await client.messages.create(model=model, max_tokens=200, messages=USER,
                                               tools=WEATHER_ANTHROPIC,
                                               tool_choice={"type": "any"})
        use = next(b for b in message.content if b.type == "tool_use")
        assert message.stop_reason == "tool_use"
        assert use.name == "get_weather" and isinstance(use.input["city"], str)
        follow = await client.messages.create(
            model=model, max_tokens=200, tools=WEATHER_ANTHROPIC, messages=[
                *USER, {"role": "assistant", "content": message.content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                              "content": "sunny, 21 C"}]}])
        assert follow.stop_reason == "end_turn"
        async with client.messages.stream(model=model, max_tokens=200, messages=USER,
                                          tools=WEATHER_ANTHROPIC,
                                          tool_choice={"type": "any"}) as stream:
            final = await stream.get_final_message()
    streamed = next(b for b in final.content if b.type == "tool_use")
    assert streamed.name == "get_weather" and isinstance(streamed.input["city"], str)
    assert final.stop_reason == "tool_use"


async def test_models_lists_the_config(server: tuple[SimServer, GatewayServer]) -> None:
    _, gw = server
    async with openai_client(gw) as client:
        names = [m.id async for m in client.models.list()]
    async with anthropic_client(gw) as aclient:
        anames = [m.id async for m in aclient.models.list()]
    assert OPENAI_MODEL in names and ANTHROPIC_MODEL in names
    assert anames == names


async def test_count_tokens(server: tuple[SimServer, GatewayServer]) -> None:
    _, gw = server
    async with anthropic_client(gw) as client:
        short = await client.messages.count_tokens(model=ANTHROPIC_MODEL, messages=USER)
        longer = await client.messages.count_tokens(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "word " * 400}])
    assert 0 < short.input_tokens < longer.input_tokens


async def _answer_tool(client: Any, ask: Any, content: Any) -> Any:
    """Send ``content`` (an assistant turn that called the weather tool) back with the
    tool's result, thinking on: what a client does next in a tool loop."""
    use = next(b for b in content if b.type == "tool_use")
    return await client.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=2000, tools=WEATHER_ANTHROPIC,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[*ask, {"role": "assistant", "content": content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                "content": "sunny"}]}])


async def test_thinking_round_trip(server: tuple[SimServer, GatewayServer]) -> None:
    """Anthropic thinking through the gateway: signed thinking blocks come back and are
    accepted when sent back with a tool result; an OpenAI client gets the reasoning as
    ``reasoning_content``."""
    _, gw = server
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    async with anthropic_client(gw) as client, openai_client(gw) as oa:
        first = await client.messages.create(model=ANTHROPIC_MODEL, max_tokens=2000,
                                             thinking=thinking, messages=USER,
                                             tools=WEATHER_ANTHROPIC)
        think = first.content[0]
        follow = await _answer_tool(client, USER, first.content)
        async with client.messages.stream(model=ANTHROPIC_MODEL, max_tokens=2000,
                                          thinking=thinking, messages=USER,
                                          tools=WEATHER_ANTHROPIC) as stream:
            streamed = await stream.get_final_message()
        streamed_follow = await _answer_tool(client, USER, streamed.content)
        reasoned = await oa.chat.completions.create(model=ANTHROPIC_MODEL, messages=USER,
                                                    reasoning_effort="high", max_tokens=3000)
    assert think.type == "thinking" and think.signature and think.thinking
    assert follow.stop_reason == "end_turn"
    streamed_think = streamed.content[0]
    assert streamed_think.type == "thinking" and streamed_think.signature  # relayed in stream
    assert streamed_follow.stop_reason == "end_turn"
    assert (reasoned.choices[0].message.model_extra or {}).get("reasoning_content")


async def test_redacted_thinking_is_relayed_whole_and_streamed(
        server: tuple[SimServer, GatewayServer]) -> None:
    """Anthropic's documented test prompt makes the answer carry a redacted_thinking
    block: it reaches the client in the stream as in the whole answer, before the
    signed thinking block, and the turn sent back with it is accepted."""
    from shoal.sim.anthropic_wire import REDACTED_TRIGGER

    _, gw = server
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    ask: Any = [{"role": "user", "content": f"{REDACTED_TRIGGER} What is the weather?"}]
    async with anthropic_client(gw) as client:
        whole = await client.messages.create(model=ANTHROPIC_MODEL, max_tokens=2000,
                                             thinking=thinking, messages=ask,
                                             tools=WEATHER_ANTHROPIC)
        async with client.messages.stream(model=ANTHROPIC_MODEL, max_tokens=2000,
                                          thinking=thinking, messages=ask,
                                          tools=WEATHER_ANTHROPIC) as stream:
            streamed = await stream.get_final_message()
        follow = await _answer_tool(client, ask, streamed.content)
    for answer in (whole, streamed):
        kinds = [b.type for b in answer.content]
        assert kinds[:2] == ["redacted_thinking", "thinking"], kinds
        assert answer.content[0].data.startswith("sim-redacted-")  # type: ignore[union-attr]
    assert follow.stop_reason == "end_turn"


@pytest.mark.parametrize("model", MODELS)
async def test_parallel_tool_calls_streamed_both_ways(model: str) -> None:
    two = SimConfig(models={"*": ModelProfile(tool_calls=2)})
    async with SimServer(two) as sim, gateway(sim_config(sim)) as gw:
        async with openai_client(gw) as oa, oa.chat.completions.stream(
                model=model, messages=USER, tools=WEATHER_OPENAI,
                tool_choice="required") as stream:
            completion = await stream.get_final_completion()
        async with anthropic_client(gw) as an, an.messages.stream(
                model=model, max_tokens=300, messages=USER, tools=WEATHER_ANTHROPIC,
                tool_choice={"type": "any"}) as astream:
            message = await astream.get_final_message()
    calls = completion.choices[0].message.tool_calls or []
    assert len(calls) == 2 and len({c.id for c in calls}) == 2
    assert all(json.loads(c.function.arguments)["city"] for c in calls)
    uses = [b for b in message.content if b.type == "tool_use"]
    assert len(uses) == 2 and all(isinstance(u.input["city"], str) for u in uses)


@pytest.mark.parametrize("model", MODELS)
async def test_one_tool_call_at_a_time_when_the_client_says_so(model: str) -> None:
    """OpenAI's ``parallel_tool_calls=false`` and Anthropic's
    ``disable_parallel_tool_use`` reach the upstream in its own protocol (the simulator,
    like the providers, then makes at most one call), whichever protocol it speaks."""
    two = SimConfig(models={"*": ModelProfile(tool_calls=2)})
    async with SimServer(two) as sim, gateway(sim_config(sim)) as gw:
        async with openai_client(gw) as oa:
            single = await oa.chat.completions.create(
                model=model, messages=USER, tools=WEATHER_OPENAI, tool_choice="required",
                parallel_tool_calls=False)
            several = await oa.chat.completions.create(
                model=model, messages=USER, tools=WEATHER_OPENAI, tool_choice="required")
        async with anthropic_client(gw) as an:
            one = await an.messages.create(
                model=model, max_tokens=300, messages=USER, tools=WEATHER_ANTHROPIC,
                tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert len(single.choices[0].message.tool_calls or []) == 1
    assert len(several.choices[0].message.tool_calls or []) == 2
    assert len([b for b in one.content if b.type == "tool_use"]) == 1


@pytest.mark.parametrize("model", MODELS)
async def test_stop_sequences_cut_the_answer_and_anthropic_says_which(
        server: tuple[SimServer, GatewayServer], model: str) -> None:
    """The simulator stops at a stop sequence as providers do (the sequence is not
    sent). Anthropic reports which one, whole and streamed; an OpenAI upstream does not
    say, so its answers end plainly."""
    _, gw = server
    async with anthropic_client(gw) as client:
        free = await client.messages.create(model=model, max_tokens=300, messages=USER)
        words = free.content[0].text.split()  # type: ignore[union-attr]
        stop = words[len(words) // 2]
        cut = await client.messages.create(model=model, max_tokens=300, messages=USER,
                                           stop_sequences=["NEVER-SAID", stop])
        async with client.messages.stream(model=model, max_tokens=300, messages=USER,
                                          stop_sequences=[stop]) as stream:
            streamed = await stream.get_final_message()
    for answer in (cut, streamed):
        text = answer.content[0].text  # type: ignore[union-attr]
        assert stop not in text and free.content[0].text.startswith(text)  # type: ignore[union-attr]
        if model == ANTHROPIC_MODEL:
            assert (answer.stop_reason, answer.stop_sequence) == ("stop_sequence", stop)
        else:
            assert (answer.stop_reason, answer.stop_sequence) == ("end_turn", None)



@pytest.mark.parametrize("model", MODELS)
async def test_strict_function_tools_stay_strict(server: tuple[SimServer, GatewayServer],
                                                 model: str) -> None:
    """A client's ``strict: true`` tool (the OpenAI Agents SDK sends it by default) goes
    upstream strict, and the simulator checks the strict schema as OpenAI does."""
    _, gw = server
    tool: Any = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.", "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": False}}}]
    async with openai_client(gw) as client:
        answer = await client.chat.completions.create(model=model, messages=USER, tools=tool,
                                                      tool_choice="required")
    call: Any = (answer.choices[0].message.tool_calls or [])[0]
    assert isinstance(json.loads(call.function.arguments)["city"], str)
