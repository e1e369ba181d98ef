"""Recorded-shape fixtures: the exact wire body shoal sends per provider family, and the
answers it gets back, written from PROVIDERS.md (§1-4, traps 9, 10, 12).

A tiny HTTP server stands in for the provider: it records each request body and answers
with the next fixture (a JSON body, or SSE events). The adapters are the real ones, over
real HTTP; nothing of shoal is faked."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from shoal.errors import ConfigError
from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.base import Provider
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.providers.profiles import schema_instructions
from shoal.types import (
    ChatRequest,
    ChatResponse,
    Message,
    StreamEnd,
    Thinking,
    ToolSpec,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"topic": {"type": "string"},
                   "points": {"type": "array", "items": {"type": "string"}}},
    "required": ["topic", "points"],
    "title": "Findings",
}
LOOKUP = ToolSpec("lookup", "Look something up.",
                  {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})
LOOKUP_WIRE = {"type": "function", "function": {"name": "lookup",
                                                "description": "Look something up.",
                                                "parameters": LOOKUP.parameters}}


@dataclass
class FakeProvider:
    """The provider's side: records bodies, answers with queued fixtures."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[str, Any]] = field(default_factory=list)  # ("json"|"sse", payload)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        kind, payload = self.answers.pop(0)
        if kind == "json":
            return web.json_response(payload)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in payload:
            if isinstance(event, tuple):  # Anthropic: (event name, data)
                await resp.write(f"event: {event[0]}\ndata: {json.dumps(event[1])}\n\n".encode())
            else:
                data = event if isinstance(event, str) else json.dumps(event)
                await resp.write(f"data: {data}\n\n".encode())
        await resp.write_eof()
        return resp


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    fp = FakeProvider()
    app = web.Application()
    app.router.add_post("/{tail:.*}", fp.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # started
    fp.url = f"http://127.0.0.1:{port}"
    try:
        yield fp
    finally:
        await runner.cleanup()


def openai_like(fake: FakeProvider, family: str) -> OpenAICompatProvider:
    return OpenAICompatProvider(base_url=fake.url + "/v1", api_key="sk-test", provider=family)


def anthropic(fake: FakeProvider) -> AnthropicProvider:
    return AnthropicProvider(base_url=fake.url, api_key="sk-ant-test", provider="anthropic")


def completion(message: dict[str, Any], finish: str, model: str = "m") -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1_760_000_000,
            "model": model, "choices": [{"index": 0, "message": message, "logprobs": None,
                                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}}


async def ask(provider: Provider, request: ChatRequest, model: str, *,
              stream: bool = False) -> ChatResponse:
    async with provider:
        if not stream:
            return await provider.complete(request, model=model)
        async for event in provider.stream(request, model=model):
            if isinstance(event, StreamEnd):
                return event.response
    raise AssertionError("no StreamEnd")


# -- DeepSeek: JSON mode, never json_schema (trap 12) ------------------------------------------


async def test_deepseek_structured_output_body(fake: FakeProvider) -> None:
    answer = '{"topic":"costs","points":["fall"]}'
    fake.answers.append(("json", completion({"role": "assistant", "content": answer}, "stop",
                                            "deepseek-chat")))
    request = ChatRequest("deepseek-chat", [Message.system("Be brief."),
                                            Message.user("List the findings")],
                          output_schema=SCHEMA, output_schema_name="Findings", max_tokens=200)
    response = await ask(openai_like(fake, "deepseek"), request, "deepseek-chat")
    assert fake.bodies == [{
        "model": "deepseek-chat",
        "messages": [
            {"role": "system", "content": "Be brief.\n\n" + schema_instructions(SCHEMA)},
            {"role": "user", "content": "List the findings"},
        ],
        "response_format": {"type": "json_object"},
        "max_tokens": 200,
    }]
    assert response.text == answer


async def test_deepseek_thinking_tool_turn_sends_reasoning_content_back(
    fake: FakeProvider,
) -> None:
    # Thinking mode streams reasoning_content while content is null, then the tool call.
    fake.answers.append(("sse", [
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": None,
                                             "reasoning_content": "Need the index."},
                      "finish_reason": None}]},
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat",
         "choices": [{"index": 0, "delta": {"tool_calls": [
             {"index": 0, "id": "call_0", "type": "function",
              "function": {"name": "lookup", "arguments": ""}}]}, "finish_reason": None}]},
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat",
         "choices": [{"index": 0, "delta": {"tool_calls": [
             {"index": 0, "function": {"arguments": "{\"q\":\"x\"}"}}]},
             "finish_reason": "tool_calls"}]},
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat",
         "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7,
                                  "total_tokens": 16, "prompt_cache_hit_tokens": 0,
                                  "prompt_cache_miss_tokens": 9}},
        "[DONE]",
    ]))
    fake.answers.append(("json", completion({"role": "assistant", "content": "x is 1",
                                             "reasoning_content": "Done."}, "stop")))
    provider = openai_like(fake, "deepseek")
    messages = [Message.user("what is x?")]
    first = ChatRequest("deepseek-chat", messages, tools=[LOOKUP], thinking=Thinking())
    response = await ask(provider, first, "deepseek-chat", stream=True)
    assert fake.bodies[0]["thinking"] == {"type": "enabled"}
    messages += [response.message(), Message.tool("call_0", "x = 1")]
    second = ChatRequest("deepseek-chat", messages, tools=[LOOKUP], thinking=Thinking())
    await ask(openai_like(fake, "deepseek"), second, "deepseek-chat")
    assert fake.bodies[1]["messages"] == [
        {"role": "user", "content": "what is x?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need the index.",
         "tool_calls": [{"id": "call_0", "type": "function",
                         "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "x = 1"},
    ]


# -- OpenAI: native strict json_schema, max_completion_tokens ----------------------------------


async def test_openai_strict_json_schema_body(fake: FakeProvider) -> None:
    fake.answers.append(("json", completion(
        {"role": "assistant", "content": '{"topic":"t","points":[]}', "refusal": None},
        "stop", "gpt-4o-2024-08-06")))
    request = ChatRequest("gpt-4o", [Message.user("go")], output_schema=SCHEMA,
                          output_schema_name="Findings", max_tokens=64)
    response = await ask(openai_like(fake, "openai"), request, "gpt-4o")
    assert fake.bodies == [{
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "go"}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "Findings", "strict": True,
            "schema": {**SCHEMA, "additionalProperties": False}}},
        "max_completion_tokens": 64,
    }]
    assert response.model == "gpt-4o-2024-08-06"


# -- Zhipu: tool_choice only "auto", max_tokens, system not developer (trap 10) ----------------


async def test_zhipu_tool_body(fake: FakeProvider) -> None:
    fake.answers.append(("json", completion({"role": "assistant", "content": "ok"}, "stop")))
    request = ChatRequest("glm-4.6", [Message.system("rules"), Message.user("go")],
                          tools=[LOOKUP], tool_choice="auto", max_tokens=32)
    await ask(openai_like(fake, "zhipu"), request, "glm-4.6")
    assert fake.bodies == [{
        "model": "glm-4.6",
        "messages": [{"role": "system", "content": "rules"}, {"role": "user", "content": "go"}],
        "tools": [LOOKUP_WIRE],
        "tool_choice": "auto",
        "max_tokens": 32,
    }]
    # Zhipu takes only "auto": a required tool is refused before any request.
    with pytest.raises(ConfigError, match="takes only tool_choice='auto'"):
        await ask(openai_like(fake, "zhipu"),
                  dataclasses.replace(request, tool_choice="required"), "glm-4.6")
    assert len(fake.bodies) == 1


# -- Gemini: thought_signature round-trip (§4) -------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_thought_signature_goes_back(fake: FakeProvider, stream: bool) -> None:
    call = {"id": "call_g", "type": "function",
            "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"},
            "extra_content": {"google": {"thought_signature": "CsYBAY8a"}}}
    if stream:  # whole call in one chunk, no index, finish "stop" (Gemini's stream quirks)
        fake.answers.append(("sse", [
            {"id": "g1", "object": "chat.completion.chunk", "created": 1, "model": "gemini",
             "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]},
                          "finish_reason": "stop"}]},
            "[DONE]",
        ]))
    else:
        fake.answers.append(("json", completion(
            {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls")))
    fake.answers.append(("json", completion({"role": "assistant", "content": "1"}, "stop")))
    messages = [Message.user("x?")]
    first = await ask(openai_like(fake, "gemini"), ChatRequest("g", messages, tools=[LOOKUP]),
                      "gemini-3-pro", stream=stream)
    assert first.tool_calls[0].signature == "CsYBAY8a"
    messages += [first.message(), Message.tool("call_g", "1")]
    await ask(openai_like(fake, "gemini"), ChatRequest("g", messages, tools=[LOOKUP]),
              "gemini-3-pro")
    sent = fake.bodies[1]["messages"][1]
    assert sent == {"role": "assistant", "content": "", "tool_calls": [call]}


# -- Anthropic: output tool offered with the caller's tools; thinking blocks go back -----------


def message(content: list[dict[str, Any]], stop: str) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 30, "output_tokens": 12,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


THINKING: dict[str, Any] = {"type": "thinking", "thinking": "I should look it up.",
                            "signature": "EqQBCkYI"}
TOOL_USE: dict[str, Any] = {"type": "tool_use", "id": "toolu_01", "name": "lookup",
                            "input": {"q": "café ☕", "n": [1, 2]}}


async def test_anthropic_output_tool_with_tools_and_thinking_round_trip(
    fake: FakeProvider,
) -> None:
    fake.answers.append(("json", message([THINKING, TOOL_USE], "tool_use")))
    fake.answers.append(("json", message(
        [{"type": "tool_use", "id": "toolu_02", "name": "Findings",
          "input": {"topic": "t", "points": ["p"]}}], "tool_use")))
    messages = [Message.system("Be brief."), Message.user("find it")]
    request = ChatRequest("claude", messages, tools=[LOOKUP], output_schema=SCHEMA,
                          output_schema_name="Findings", max_tokens=4000,
                          thinking=Thinking(budget_tokens=2048))
    first = await ask(anthropic(fake), request, "claude-sonnet-4-6")
    output_tool = {"name": "Findings", "description": fake.bodies[0]["tools"][1]["description"],
                   "input_schema": SCHEMA}
    assert fake.bodies[0] == {
        "model": "claude-sonnet-4-6",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "find it"}]}],
        "max_tokens": 4000,
        "system": "Be brief.",
        "tools": [{"name": "lookup", "description": "Look something up.",
                   "input_schema": LOOKUP.parameters}, output_tool],
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    assert [c.name for c in first.tool_calls] == ["lookup"]
    messages += [first.message(), Message.tool("toolu_01", "found", is_error=False)]
    request.messages = messages
    second = await ask(anthropic(fake), request, "claude-sonnet-4-6")
    assert fake.bodies[1]["messages"][1:] == [
        {"role": "assistant", "content": [THINKING, TOOL_USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                                      "content": "found", "is_error": False}]},
    ]
    assert json.loads(second.text) == {"topic": "t", "points": ["p"]}
    assert second.tool_calls == []


def anthropic_stream(content: list[dict[str, Any]], stop: str) -> list[tuple[str, Any]]:
    """The SSE events the API sends for ``content`` (PROVIDERS.md §2)."""
    events: list[tuple[str, Any]] = [("message_start", {"type": "message_start", "message": {
        **message([], ""), "stop_reason": None, "usage": {"input_tokens": 30,
                                                          "output_tokens": 1}}})]
    for i, block in enumerate(content):
        if block["type"] == "thinking":
            start: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": block["thinking"]},
                      {"type": "signature_delta", "signature": block["signature"]}]
        else:
            start = {**block, "input": {}}
            # the API writes compact JSON with non-ASCII as is, in pieces
            raw = json.dumps(block["input"], ensure_ascii=False, separators=(",", ":"))
            deltas = [{"type": "input_json_delta", "partial_json": raw[j:j + 5]}
                      for j in range(0, len(raw), 5)]
        events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                               "content_block": start}))
        events += [("content_block_delta", {"type": "content_block_delta", "index": i,
                                            "delta": d}) for d in deltas]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 12}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


async def test_anthropic_stream_and_whole_answers_give_the_same_message(
    fake: FakeProvider,
) -> None:
    content = [THINKING, TOOL_USE]
    fake.answers.append(("json", message(content, "tool_use")))
    fake.answers.append(("sse", anthropic_stream(content, "tool_use")))
    request = ChatRequest("claude", [Message.user("find it")], tools=[LOOKUP])
    whole = await ask(anthropic(fake), request, "claude-sonnet-4-6")
    streamed = await ask(anthropic(fake), request, "claude-sonnet-4-6", stream=True)
    assert whole.tool_calls == streamed.tool_calls
    assert whole.tool_calls[0].arguments == '{"q":"café ☕","n":[1,2]}'
    assert whole.reasoning_parts == streamed.reasoning_parts
    assert whole.message() == streamed.message()
