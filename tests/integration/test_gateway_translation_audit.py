"""An outside-in audit of the gateway's protocol translation, as a demanding user with the
unmodified official SDKs sees it: each SDK calling a model of the *other* protocol,
whole and streamed — parallel tool calls (ids, order, arguments split across deltas,
``index``), tool-result turns sent back, stop sequences, ``max_tokens`` cuts, usage in
the final event, system prompts, every ``tool_choice`` form, structured output — with
what went upstream read off a :class:`Recorder` in front of the simulator.

Requests the target cannot express are in test_gateway_translation_audit_refusals.py,
failures in test_gateway_translation_audit_errors.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gateway_fixtures import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    WEATHER_TOOLS_AN,
    WEATHER_TOOLS_OA,
    Recorder,
    anthropic_client,
    openai_client,
    recorded_gateway,
)
from pydantic import BaseModel

from shoal.gateway.server import GatewayServer
from shoal.sim import ModelProfile, SimConfig, SimServer

ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris and in Rome?"}]
Stack = tuple[SimServer, Recorder, GatewayServer]


@pytest.fixture
async def two_calls() -> AsyncIterator[Stack]:
    """Every tool-calling turn makes two parallel calls."""
    async with recorded_gateway(SimConfig(models={"*": ModelProfile(tool_calls=2)})) as parts:
        yield parts


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with recorded_gateway() as parts:
        yield parts


# -- parallel tool calls, streamed event by event ------------------------------------------

async def test_anthropic_sdk_gets_two_parallel_calls_of_an_openai_model_block_by_block(
        two_calls: Stack) -> None:
    _, _, gw = two_calls
    async with anthropic_client(gw) as client:
        stream = await client.messages.create(model=OPENAI_MODEL, max_tokens=300,
                                              messages=ASK, tools=WEATHER_TOOLS_AN,
                                              tool_choice={"type": "any"}, stream=True)
        events = [e async for e in stream]
        whole = await client.messages.create(model=OPENAI_MODEL, max_tokens=300, messages=ASK,
                                             tools=WEATHER_TOOLS_AN, tool_choice={"type": "any"})
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    starts = [e for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert [s.index for s in starts] == stops == [0, 1]  # opened and closed in order
    ids = [s.content_block.id for s in starts]  # type: ignore[union-attr]
    assert len(set(ids)) == 2 and all(ids)
    for start in starts:
        pieces = [e.delta.partial_json for e in events  # type: ignore[union-attr]
                  if e.type == "content_block_delta" and e.index == start.index]
        assert len(pieces) > 1  # the arguments arrive split, each block's in its own deltas
        assert isinstance(json.loads("".join(pieces))["city"], str)
    end = next(e for e in events if e.type == "message_delta")
    assert end.delta.stop_reason == "tool_use" and end.delta.stop_sequence is None
    assert end.usage.output_tokens > 0 and (end.usage.input_tokens or 0) > 0
    uses = [b for b in whole.content if b.type == "tool_use"]
    assert whole.stop_reason == "tool_use" and len(uses) == 2
    assert len({u.id for u in uses}) == 2 and all(isinstance(u.input["city"], str) for u in uses)


async def test_openai_sdk_gets_two_parallel_calls_of_an_anthropic_model_chunk_by_chunk(
        two_calls: Stack) -> None:
    _, _, gw = two_calls
    async with openai_client(gw) as client:
        stream = await client.chat.completions.create(
            model=ANTHROPIC_MODEL, messages=ASK, tools=WEATHER_TOOLS_OA, tool_choice="required",
            stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        whole = await client.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK,
                                                     tools=WEATHER_TOOLS_OA, tool_choice="required")
    assert len({c.id for c in chunks}) == 1  # one id for the whole stream
    fragments = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [f.index for f in fragments if f.id] == [0, 1]  # each call opens once, in order
    args: dict[int, str] = {}
    for f in fragments:
        if f.id is None:  # a continuation: arguments only, no id, type or name repeated
            assert f.type is None and (f.function is None or f.function.name is None)
        else:
            assert f.type == "function" and f.function and f.function.name == "get_weather"
        args[f.index] = args.get(f.index, "") + (f.function.arguments or "" if f.function
                                                 else "")
    assert sum(1 for f in fragments if f.index == 0) > 2  # split over several deltas
    assert all(isinstance(json.loads(a)["city"], str) for a in args.values())
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and finishes.count("tool_calls") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].usage.prompt_tokens > 0
    calls = whole.choices[0].message.tool_calls or []
    assert whole.choices[0].finish_reason == "tool_calls" and len(calls) == 2
    assert whole.choices[0].message.content is None
    assert [c.id for c in calls] != [] and len({c.id for c in calls}) == 2


# -- tool results sent back --------------------------------------------------------------

async def test_anthropic_tool_results_reach_an_openai_model_as_tool_messages(
        stack: Stack) -> None:
    """Two tool_result blocks (one an error, one with block content) and a text block in
    one user turn: one ``role: tool`` message per result, in order, then the text; the
    error stays an error (OpenAI has no ``is_error``: it is said in the content)."""
    _, rec, gw = stack
    turn: list[Any] = [
        *ASK,
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather",
             "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny, 21 C"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "is_error": True,
             "content": [{"type": "text", "text": "weather service timed out"}]},
            {"type": "text", "text": "Summarize."}]}]
    async with anthropic_client(gw) as client:
        answer = await client.messages.create(model=OPENAI_MODEL, max_tokens=100,
                                              messages=turn, tools=WEATHER_TOOLS_AN)
    assert answer.stop_reason in ("end_turn", "tool_use")
    sent = rec.bodies[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool", "user"]
    assistant = sent[1]
    assert assistant["content"] == "Checking both."
    assert [c["id"] for c in assistant["tool_calls"]] == ["toolu_a", "toolu_b"]
    assert [json.loads(c["function"]["arguments"]) for c in assistant["tool_calls"]] == [
        {"city": "Paris"}, {"city": "Rome"}]
    assert (sent[2]["tool_call_id"], sent[2]["content"]) == ("toolu_a", "sunny, 21 C")
    assert sent[3]["tool_call_id"] == "toolu_b"
    assert "weather service timed out" in sent[3]["content"]
    assert sent[3]["content"].lower().startswith("error")  # not passed off as a result
    assert sent[4]["content"] == "Summarize."


async def test_openai_tool_messages_reach_an_anthropic_model_as_one_user_turn(
        stack: Stack) -> None:
    _, rec, gw = stack
    turn: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b",
         "content": [{"type": "text", "text": "rain"}, {"type": "text", "text": "12 C"}]}]
    async with openai_client(gw) as client:
        answer = await client.chat.completions.create(model=ANTHROPIC_MODEL, messages=turn,
                                                      tools=WEATHER_TOOLS_OA)
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    sent = rec.bodies[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]  # alternating
    assert [b["type"] for b in sent[1]["content"]] == ["tool_use", "tool_use"]
    assert [b["input"] for b in sent[1]["content"]] == [{"city": "Paris"}, {"city": "Rome"}]
    results = sent[2]["content"]
    assert [(b["type"], b["tool_use_id"]) for b in results] == [
        ("tool_result", "call_a"), ("tool_result", "call_b")]
    assert results[1]["content"] == "rain\n12 C" and "is_error" not in results[0]


# -- how an answer ends ------------------------------------------------------------------

async def test_openai_sdk_on_an_anthropic_model_stop_and_length(stack: Stack) -> None:
    """``stop`` reaches Anthropic as ``stop_sequences`` and an answer cut there ends with
    ``finish_reason: "stop"``; a ``max_tokens`` cut is ``length``, whole and streamed."""
    _, rec, gw = stack
    async with openai_client(gw) as client:
        free = await client.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK)
        words = (free.choices[0].message.content or "").split()
        cut = await client.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK,
                                                   stop=words[5])
        assert rec.bodies[-1]["stop_sequences"] == [words[5]]
        short = await client.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK,
                                                     max_completion_tokens=5)
        stream = await client.chat.completions.create(
            model=ANTHROPIC_MODEL, messages=ASK, max_tokens=5, stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
    assert cut.choices[0].finish_reason == "stop"
    # the text before the sequence, as the provider cut it (the space before it kept)
    assert (cut.choices[0].message.content or "").rstrip() == " ".join(words[:5])
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


async def test_anthropic_sdk_on_an_openai_model_max_tokens_and_usage(stack: Stack) -> None:
    """A ``max_tokens`` cut is ``stop_reason: "max_tokens"``, whole and streamed; the
    stream's ``message_delta`` carries the real usage (the SDK keeps it as final)."""
    sim, rec, gw = stack
    async with anthropic_client(gw) as client:
        whole = await client.messages.create(model=OPENAI_MODEL, max_tokens=5, messages=ASK)
        assert rec.bodies[-1]["max_completion_tokens"] == 5
        async with client.messages.stream(model=OPENAI_MODEL, max_tokens=5,
                                          messages=ASK) as stream:
            final = await stream.get_final_message()
    real = sim.stats().requests[-1]
    for answer in (whole, final):
        assert (answer.stop_reason, answer.stop_sequence) == ("max_tokens", None)
        assert answer.usage.output_tokens == 5
        assert answer.usage.input_tokens == real.prompt_tokens
        assert len(answer.content[0].text.split()) == 5  # type: ignore[union-attr]


# -- system prompts, tool_choice ---------------------------------------------------------

async def test_system_prompts_in_every_form_cross_over(stack: Stack) -> None:
    _, rec, gw = stack
    async with anthropic_client(gw) as an, openai_client(gw) as oa:
        await an.messages.create(model=OPENAI_MODEL, max_tokens=20, messages=ASK,
                                 system="Be brief.")
        as_string = rec.bodies[-1]["messages"]
        await an.messages.create(model=OPENAI_MODEL, max_tokens=20, messages=ASK, system=[
            {"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric."}])
        as_blocks = rec.bodies[-1]["messages"]
        await oa.chat.completions.create(model=ANTHROPIC_MODEL, messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]}, *ASK])
        to_anthropic = rec.bodies[-1]
    assert as_string[0] == {"role": "system", "content": "Be brief."}
    assert [m["content"] for m in as_blocks if m["role"] == "system"] == [
        "Be brief.", "Use metric."]
    assert as_blocks[-1]["role"] == "user"
    assert to_anthropic["system"] == "Be brief.\n\nUse metric."
    assert [m["role"] for m in to_anthropic["messages"]] == ["user"]


ANTHROPIC_CHOICES: list[tuple[Any, Any]] = [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"},
     {"type": "function", "function": {"name": "get_weather"}}),
]
OPENAI_CHOICES: list[tuple[Any, Any]] = [
    ("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"}),
]


@pytest.mark.parametrize(("choice", "upstream"), ANTHROPIC_CHOICES,
                         ids=["auto", "any", "none", "tool"])
async def test_anthropic_tool_choice_reaches_an_openai_model(
        stack: Stack, choice: Any, upstream: Any) -> None:
    _, rec, gw = stack
    async with anthropic_client(gw) as client:
        answer = await client.messages.create(model=OPENAI_MODEL, max_tokens=100, messages=ASK,
                                              tools=WEATHER_TOOLS_AN, tool_choice=choice)
    assert rec.bodies[-1]["tool_choice"] == upstream
    called = any(b.type == "tool_use" for b in answer.content)
    assert called == (choice["type"] != "none")
    assert answer.stop_reason == ("tool_use" if called else "end_turn")


@pytest.mark.parametrize(("choice", "upstream"), OPENAI_CHOICES,
                         ids=["auto", "required", "none", "function"])
async def test_openai_tool_choice_reaches_an_anthropic_model(
        stack: Stack, choice: Any, upstream: Any) -> None:
    _, rec, gw = stack
    async with openai_client(gw) as client:
        answer = await client.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK,
                                                      tools=WEATHER_TOOLS_OA, tool_choice=choice)
    assert rec.bodies[-1]["tool_choice"] == upstream
    called = bool(answer.choices[0].message.tool_calls)
    assert called == (choice != "none")
    assert answer.choices[0].finish_reason == ("tool_calls" if called else "stop")


# -- structured output through an Anthropic model, streamed ------------------------------

class City(BaseModel):
    city: str
    reasons: list[str]


async def test_json_schema_streams_from_an_anthropic_model_as_content(stack: Stack) -> None:
    """``response_format`` json_schema to an Anthropic-protocol model goes as a forced
    output tool; the OpenAI client gets the JSON as message content, streamed in
    content deltas (no tool call), and the SDK's parse helper accepts it."""
    _, rec, gw = stack
    async with openai_client(gw) as client, client.chat.completions.stream(
            model=ANTHROPIC_MODEL, messages=ASK, response_format=City) as stream:
        chunks = [e.chunk async for e in stream if e.type == "chunk"]
        final = await stream.get_final_completion()
    sent = rec.bodies[-1]
    assert sent["tool_choice"]["type"] == "tool" and sent["tools"][0]["name"] == "City"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not any(d.tool_calls for d in deltas)
    assert sum(1 for d in deltas if d.content) > 1
    assert final.choices[0].finish_reason == "stop"
    assert isinstance(final.choices[0].message.parsed, City)
