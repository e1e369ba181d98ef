"""Storm faults at the provider edge, from exact wire bytes (PROVIDERS.md §1, §2, §6).

A tiny aiohttp server in each test speaks the bytes a real provider (or a proxy in
front of it) sends: error events after tokens, huge SSE events, a JSON 200 answer to a
stream request, usage reported before a cut, reasoning that streams before the text,
cut and hung streams, a response that is not HTTP. Each must come out of the adapter
as the right type of shoal's error tree, and nothing else.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from aiohttp import web
from transcript_server import wire

from shoal.errors import (
    BadRequest,
    MalformedResponse,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    StreamInterrupted,
)
from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.base import Provider
from shoal.providers.http import HttpPool
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.types import (
    ChatRequest,
    Message,
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQ = ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=64)


def provider(protocol: str, url: str, *, read_timeout: float = 10.0) -> Provider:
    pool = HttpPool(read_timeout=read_timeout)
    if protocol == "openai":
        return OpenAICompatProvider(base_url=url + "/v1", api_key="sk-x", name="w", pool=pool,
                                    provider="deepseek")
    return AnthropicProvider(base_url=url, api_key="sk-x", name="w", pool=pool)


def sse(chunks: list[bytes], *, cut: bool = False, hang_after: int | None = None,
        content_type: str = "text/event-stream", gate: asyncio.Event | None = None,
        gate_after: int = 1) -> Handler:
    """Send ``chunks`` as a chunked 200 body; then end, cut the connection (``cut``), or
    go silent after ``hang_after`` chunks. With ``gate``, wait for it after ``gate_after``
    chunks (the test opens it when it has seen what it must see first)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        for i, chunk in enumerate(chunks):
            if gate is not None and i == gate_after:
                await gate.wait()
            if hang_after is not None and i == hang_after:
                await asyncio.sleep(3600)
            await resp.write(chunk)
        if cut:
            assert request.transport is not None
            request.transport.close()  # no terminating chunk: the body is incomplete
            return resp
        if hang_after is not None and hang_after >= len(chunks):
            await asyncio.sleep(3600)
        await resp.write_eof()
        return resp
    return handler


def ev(name: str, obj: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


def data(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def chunk(delta: dict[str, Any], **extra: Any) -> bytes:
    return data({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": None}], **extra})


MSG_START = ev("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
    "stop_reason": None, "usage": {"input_tokens": 25, "output_tokens": 1}}})
TEXT_START = ev("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": ""}})
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def text_delta(text: str, index: int = 0) -> bytes:
    return ev("content_block_delta", {"type": "content_block_delta", "index": index,
                                      "delta": {"type": "text_delta", "text": text}})


def anthropic_tail(output_tokens: int = 5) -> list[bytes]:
    return [
        ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                             "usage": {"output_tokens": output_tokens}}),
        ev("message_stop", {"type": "message_stop"}),
    ]


async def drain(p: Provider, seen: list[StreamEvent]) -> None:
    async for e in p.stream(REQ, model="m"):
        seen.append(e)


E = TypeVar("E", bound=ProviderError)


async def fails(p: Provider, cls: type[E]) -> tuple[E, list[StreamEvent]]:
    seen: list[StreamEvent] = []
    with pytest.raises(cls) as exc:
        await drain(p, seen)
    assert not any(isinstance(e, StreamEnd) for e in seen)
    return exc.value, seen


# -- 1/2: error events after tokens are StreamInterrupted; before, the mapped error ---------


async def test_anthropic_overloaded_after_text_is_interrupted_with_cause() -> None:
    body = [MSG_START, TEXT_START, text_delta("Hello "), text_delta("wor"),
            ev("error", OVERLOADED)]
    async with wire(sse(body)) as url, provider("anthropic", url) as p:
        err, seen = await fails(p, StreamInterrupted)
    assert type(err) is StreamInterrupted and err.status == 200
    assert isinstance(err.__cause__, Overloaded) and err.__cause__.code == "overloaded_error"
    assert "Overloaded" in str(err)
    assert err.partial_output == "Hello wor"
    assert err.usage == Usage(25, 1)  # message_start's usage: the provider billed the prompt
    assert [e.text for e in seen if isinstance(e, TextDelta)] == ["Hello ", "wor"]


async def test_anthropic_overloaded_before_any_output_is_overloaded() -> None:
    ping = ev("ping", {"type": "ping"})
    async with wire(sse([MSG_START, ping, TEXT_START, ev("error", OVERLOADED)])) as url, \
            provider("anthropic", url) as p:
        err, seen = await fails(p, Overloaded)
    assert type(err) is Overloaded and err.status == 200 and err.retryable
    assert err.usage == Usage(25, 1)
    assert seen == []


async def test_openai_error_chunk_after_tokens_is_interrupted_with_cause() -> None:
    err_chunk = data({"error": {"message": "The engine is currently overloaded",
                                "type": "engine_overloaded_error"}})
    body = [chunk({"role": "assistant", "content": "Par"}), chunk({"content": "tial"}),
            err_chunk]
    async with wire(sse(body)) as url, provider("openai", url) as p:
        err, _ = await fails(p, StreamInterrupted)
    assert isinstance(err.__cause__, Overloaded)
    assert "overloaded" in str(err) and err.partial_output == "Partial"


@pytest.mark.parametrize(
    ("payload", "cls"),
    [
        ({"error": {"message": "bad", "type": "BadRequestError", "param": None, "code": 400}},
         BadRequest),  # vLLM's create_streaming_error_response
        ({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}},
         ProviderUnavailable),
        ({"error": {"message": "overloaded", "type": "engine_overloaded_error"}}, Overloaded),
        ([{"error": {"code": 429, "message": "Resource exhausted", "status":
                     "RESOURCE_EXHAUSTED"}}], RateLimited),  # Gemini's array envelope
        ({"base_resp": {"status_code": 1002, "status_msg": "rate limit"}}, RateLimited),
    ],
)
async def test_openai_error_chunk_before_tokens_is_the_mapped_error(
    payload: dict[str, Any], cls: type[ProviderError]
) -> None:
    body = [chunk({"role": "assistant", "content": ""}), data(payload)]
    async with wire(sse(body)) as url, provider("openai", url) as p:
        err, _ = await fails(p, cls)
    assert type(err) is cls and err.status == 200


async def test_llama_cpp_error_field_is_an_error() -> None:
    """Old llama.cpp sent errors under a non-standard ``error:`` SSE field."""
    body = [chunk({"content": "Hi"}), b"error: the model crashed\n\n"]
    async with wire(sse(body)) as url, provider("openai", url) as p:
        err, _ = await fails(p, StreamInterrupted)
    assert isinstance(err.__cause__, ProviderUnavailable) and "crashed" in str(err)


async def test_a_tool_call_or_reasoning_counts_as_output() -> None:
    tool = chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                  "function": {"name": "f", "arguments": "{\"a\":"}}]})
    body = [chunk({"reasoning_content": "think "}), tool,
            data({"error": {"message": "boom", "type": "server_error"}})]
    async with wire(sse(body)) as url, provider("openai", url) as p:
        err, _ = await fails(p, StreamInterrupted)
    assert isinstance(err.__cause__, ProviderUnavailable)
    assert err.partial_output == "think {\"a\":"


# -- 3: any SSE event size ----------------------------------------------------------------


@pytest.mark.parametrize("size", [600 * 1024, 5 * 1024 * 1024])
async def test_huge_sse_events_parse(size: int) -> None:
    big = "x" * size
    line = chunk({"content": big})
    pieces = [line[i:i + 65536] for i in range(0, len(line), 65536)]  # many reads, one line
    body = [chunk({"role": "assistant", "content": "a"}), *pieces,
            chunk({}, usage=None), b"data: [DONE]\n\n"]
    async with wire(sse(body)) as url, provider("openai", url) as p:
        seen: list[StreamEvent] = []
        await drain(p, seen)
    end = seen[-1]
    assert isinstance(end, StreamEnd) and end.response.text == "a" + big


async def test_huge_anthropic_tool_argument_with_crlf_split_across_reads() -> None:
    args = json.dumps({"blob": "y" * (700 * 1024)})
    tool_start = ev("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "tool_use", "id": "tu_1",
                                                              "name": "f", "input": {}}})
    delta = ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
        "type": "input_json_delta", "partial_json": args}}).replace(b"\n", b"\r\n")
    cr_split = [delta[:-1], delta[-1:]]  # the last CRLF split: CR in one read, LF in the next
    body = [MSG_START, tool_start, *cr_split, *anthropic_tail()]
    async with wire(sse(body)) as url, provider("anthropic", url) as p:
        seen: list[StreamEvent] = []
        await drain(p, seen)
    end = seen[-1]
    assert isinstance(end, StreamEnd)
    (call,) = end.response.tool_calls
    assert json.loads(call.arguments) == json.loads(args)
    assert end.response.finish_reason == "tool_calls"


async def test_a_response_that_is_not_http_is_malformed() -> None:
    async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(raw, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with provider("openai", f"http://127.0.0.1:{port}") as p:
            with pytest.raises(MalformedResponse):
                await p.complete(REQ, model="m")
            with pytest.raises(MalformedResponse):
                await drain(p, [])
    finally:
        server.close()
        await server.wait_closed()


# -- 4: a JSON 200 answer to a stream request ----------------------------------------------


def json_answer(body: Any, content_type: str = "application/json") -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(text=text, headers={"Content-Type": content_type})
    return handler


OPENAI_ANSWER = {
    "id": "chatcmpl-9", "object": "chat.completion", "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "The answer.", "reasoning_content": "Hmm."}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
}
ANTHROPIC_ANSWER = {
    "id": "msg_9", "type": "message", "role": "assistant", "model": "m",
    "content": [{"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "tu_9", "name": "f", "input": {"q": 1}}],
    "stop_reason": "tool_use", "usage": {"input_tokens": 20, "output_tokens": 9},
}


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_json_answer_to_a_stream_request_is_the_answer(content_type: str) -> None:
    async with wire(json_answer("\n\n" + json.dumps(OPENAI_ANSWER), content_type)) as url, \
            provider("openai", url) as p:
        seen: list[StreamEvent] = []
        await drain(p, seen)
    assert [type(e) for e in seen] == [ReasoningDelta, TextDelta, UsageEvent, StreamEnd]
    end = seen[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.text == "The answer." and end.response.reasoning == "Hmm."
    assert end.response.usage == Usage(11, 4)


async def test_anthropic_json_answer_to_a_stream_request() -> None:
    async with wire(json_answer(ANTHROPIC_ANSWER)) as url, provider("anthropic", url) as p:
        seen: list[StreamEvent] = []
        await drain(p, seen)
    deltas = [e for e in seen if isinstance(e, ToolCallDelta)]
    assert deltas and deltas[0].name == "f" and json.loads(deltas[0].arguments) == {"q": 1}
    end = seen[-1]
    assert isinstance(end, StreamEnd) and end.response.finish_reason == "tool_calls"
    assert end.response.text == "Let me look." and end.response.usage == Usage(20, 9)


@pytest.mark.parametrize(
    ("protocol", "body", "cls"),
    [
        ("openai", {"base_resp": {"status_code": 1008, "status_msg": "insufficient balance"}},
         QuotaExhausted),  # MiniMax
        ("openai", {"error": {"message": "slow down", "type": "engine_overloaded_error"}},
         Overloaded),
        ("anthropic", OVERLOADED, Overloaded),
        ("openai", {"hello": "world"}, MalformedResponse),  # valid JSON, not an answer
        ("anthropic", {"type": "message", "content": 7}, MalformedResponse),
        ("openai", "{not json", MalformedResponse),
    ],
)
async def test_json_body_to_a_stream_request_that_is_no_answer(
    protocol: str, body: Any, cls: type[ProviderError]
) -> None:
    async with wire(json_answer(body)) as url, provider(protocol, url) as p:
        err, seen = await fails(p, cls)
    assert type(err) is cls and seen == []
    assert "error in a 200 response" not in str(err)


# -- 5: usage reported before a failure travels on the error -------------------------------


async def test_openai_usage_chunk_before_a_cut_is_on_the_error() -> None:
    usage = {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}
    body = [chunk({"content": "All done"}),
            data({"id": "c1", "object": "chat.completion.chunk", "choices": [],
                  "usage": usage})]
    async with wire(sse(body, cut=True)) as url, provider("openai", url) as p:
        err, _ = await fails(p, StreamInterrupted)
    assert err.usage == Usage(30, 7) and err.partial_output == "All done"


async def test_anthropic_usage_seen_before_a_cut_is_on_the_error() -> None:
    body = [MSG_START, TEXT_START, text_delta("Almost"), anthropic_tail(output_tokens=6)[1]]
    async with wire(sse(body, cut=True)) as url, provider("anthropic", url) as p:
        err, _ = await fails(p, StreamInterrupted)
    assert err.usage == Usage(25, 6)  # message_delta's cumulative output count
    assert err.partial_output == "Almost"


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_malformed_answer_keeps_its_usage(protocol: str) -> None:
    if protocol == "openai":
        body: dict[str, Any] = {"id": "x", "choices": [],
                                "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
    else:
        body = {"type": "message", "content": None,
                "usage": {"input_tokens": 9, "output_tokens": 2}}
    async with wire(json_answer(body)) as url, provider(protocol, url) as p:
        with pytest.raises(MalformedResponse) as exc:
            await p.complete(REQ, model="m")
    assert exc.value.usage == Usage(9, 2)


# -- 6: reasoning deltas are yielded as they arrive -----------------------------------------


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_reasoning_deltas_arrive_before_the_rest_is_sent(protocol: str) -> None:
    gate = asyncio.Event()  # the server sends the rest only after we saw the reasoning
    if protocol == "openai":
        body = [chunk({"role": "assistant", "content": None, "reasoning_content": "Let me "}),
                chunk({"content": "42"}), chunk({}, usage=None), b"data: [DONE]\n\n"]
        gate_after = 1
    else:
        think_start = ev("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "thinking",
                                                                   "thinking": ""}})
        think = ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "thinking_delta",
                                                     "thinking": "Let me "}})
        body = [MSG_START, think_start, think, TEXT_START, text_delta("42"),
                *anthropic_tail()]
        gate_after = 3
    seen: list[StreamEvent] = []
    async with wire(sse(body, gate=gate, gate_after=gate_after)) as url, \
            provider(protocol, url) as p:
        async for e in p.stream(REQ, model="m"):
            seen.append(e)
            if isinstance(e, ReasoningDelta):
                assert not any(isinstance(x, TextDelta) for x in seen)
                gate.set()
    assert any(isinstance(e, ReasoningDelta) and e.text == "Let me " for e in seen)
    end = seen[-1]
    assert isinstance(end, StreamEnd) and end.response.reasoning == "Let me "


# -- 7: cut and hung streams ----------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_cut_before_any_output_is_interrupted_without_partial(protocol: str) -> None:
    body = [MSG_START] if protocol == "anthropic" else [b": keep-alive\n\n"]
    async with wire(sse(body, cut=True)) as url, provider(protocol, url) as p:
        err, _ = await fails(p, StreamInterrupted)
    assert err.partial_output == "" and err.retryable


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_hang_before_output_is_a_timeout_and_after_is_interrupted(protocol: str) -> None:
    first = ([MSG_START, TEXT_START, text_delta("Hi")] if protocol == "anthropic"
             else [chunk({"content": "Hi"})])
    async with wire(sse(first, hang_after=0)) as url, \
            provider(protocol, url, read_timeout=0.3) as p:
        timeout, _ = await fails(p, ProviderTimeout)
    assert timeout.code == "read_timeout"
    async with wire(sse(first, hang_after=len(first))) as url, \
            provider(protocol, url, read_timeout=0.3) as p:
        err, _ = await fails(p, StreamInterrupted)
    assert isinstance(err.__cause__, ProviderTimeout) and err.partial_output == "Hi"


# -- no foreign exception escapes: chunks of the wrong shape --------------------------------


async def outcome(p: Provider) -> type:
    """The type of error the stream raised (a foreign one fails the test), or StreamEnd."""
    seen: list[StreamEvent] = []
    try:
        await drain(p, seen)
    except ProviderError as e:
        return type(e)
    return type(seen[-1])


@pytest.mark.parametrize(
    "bad",
    [
        {"choices": [{"index": 0, "delta": "oops"}]},
        {"choices": "nope"},
        {"choices": [{"delta": {"tool_calls": [{"index": "0", "function": {
            "name": "f", "arguments": ["a"]}}]}}]},
        {"choices": [{"delta": {"content": ["x"], "reasoning_content": 5}}],
         "usage": {"prompt_tokens": "many"}},
        [1, 2, 3],
    ],
)
async def test_openai_chunks_of_the_wrong_shape_stay_in_the_tree(bad: Any) -> None:
    body = [data(bad), chunk({}, usage=None), b"data: [DONE]\n\n"]
    async with wire(sse(body)) as url, provider("openai", url) as p:
        assert await outcome(p) in (MalformedResponse, StreamEnd)


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "content_block_start", "index": "zero", "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 0, "delta": "oops"},
        {"type": "message_start", "message": {"usage": {"input_tokens": "lots"}}},
        {"type": "message_delta", "delta": None, "usage": [1]},
    ],
)
async def test_anthropic_events_of_the_wrong_shape_stay_in_the_tree(bad: Any) -> None:
    body = [MSG_START, ev(str(bad["type"]), bad), *anthropic_tail()]
    async with wire(sse(body)) as url, provider("anthropic", url) as p:
        assert await outcome(p) in (MalformedResponse, StreamEnd)
