"""What a hostile provider's body and headers did to the adapters, each from exact bytes
(the companion of test_adapters_hostile.py, found by the same outside check, 2026-12):

- a 200 whose ``Content-Encoding: gzip`` body is not valid gzip was reported as "its
  body was cut before the end" (aiohttp raises the same ``ClientPayloadError`` for
  both); it is a ``MalformedResponse`` saying the body could not be decoded and naming
  the encoding, for ``complete`` and for a stream, before and after output began;
- an empty 200 (a load balancer's) was a billed broken answer on ``complete`` and "a
  stream that ended without a finish_reason" on a stream; a 204 said "an error in a
  200 response". Both are no answer: a ``ProviderUnavailable`` keeping the status;
- a 201 carrying a whole answer was refused as an error, where the official SDKs read
  any 2xx as the answer;
- one response header over 8,190 bytes (a proxy's cookie or policy header) made the
  answer "not valid HTTP", where the SDKs (httpx over h11) read headers up to 100 KB.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from transcript_server import wire

from shoal.errors import MalformedResponse, ProviderError, ProviderUnavailable, StreamInterrupted
from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.base import Provider
from shoal.providers.http import HttpPool
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.types import ChatRequest, Message, StreamEnd, StreamEvent, TextDelta

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQ = ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=64)
PROTOCOLS = ["openai", "anthropic"]


def provider(protocol: str, url: str) -> Provider:
    pool = HttpPool(read_timeout=10.0)
    if protocol == "openai":
        return OpenAICompatProvider(base_url=url + "/v1", api_key="sk-x", name="w", pool=pool,
                                    provider="openai")
    return AnthropicProvider(base_url=url, api_key="sk-x", name="w", pool=pool)


def body(payload: bytes, content_type: str, status: int = 200,
         extra: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        headers = {"Content-Type": content_type, **(extra or {})} if content_type else extra
        return web.Response(body=payload, status=status, headers=headers)
    return handler


def ev(name: str, obj: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


def openai_chunk(text: str, finish: str | None = None) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


def whole(protocol: str) -> bytes:
    if protocol == "openai":
        return json.dumps({
            "id": "c1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "fine"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()
    return json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                       "content": [{"type": "text", "text": "fine"}],
                       "stop_reason": "end_turn",
                       "usage": {"input_tokens": 5, "output_tokens": 1}}).encode()


def first_text(protocol: str) -> bytes:
    """A stream's start, up to its first text ("hello ")."""
    if protocol == "openai":
        return openai_chunk("hello ")
    return b"".join([
        ev("message_start", {"type": "message_start", "message": {
            "id": "msg_z", "type": "message", "role": "assistant", "model": "m",
            "content": [], "stop_reason": None,
            "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ev("content_block_start", {"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}}),
        ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": "hello "}}),
    ])


async def collect(p: Provider) -> list[StreamEvent]:
    return [e async for e in p.stream(REQ, model="m")]


async def outcome(p: Provider, streamed: bool) -> object:
    return await (collect(p) if streamed else p.complete(REQ, model="m"))


# -- a body that cannot be decoded is named so, not called cut ----------------------------

NOT_GZIP = b"\x1f\x8b\x08\x00" + b"these bytes are no deflate stream at all " * 8
NOT_DEFLATE = b"x\x9c" + b"neither are these, whatever the header says " * 8


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(("encoding", "garbage"), [("gzip", NOT_GZIP),
                                                   ("deflate", NOT_DEFLATE)])
async def test_a_body_that_cannot_be_decoded_is_named_not_called_cut(
        protocol: str, streamed: bool, encoding: str, garbage: bytes) -> None:
    kind = "text/event-stream" if streamed else "application/json"
    served = body(garbage, kind, extra={"Content-Encoding": encoding})
    async with wire(served) as url, provider(protocol, url) as p:
        with pytest.raises(ProviderError) as caught:
            await outcome(p, streamed)
    err = caught.value
    assert type(err) is MalformedResponse and err.retryable, err
    assert err.status == 200 and err.code == "content_encoding"
    said = str(err)
    assert f"could not be decoded (content encoding {encoding})" in said
    assert "cut" not in said


def gzip_then_garbage(head: bytes, gate: asyncio.Event) -> Handler:
    """A gzip event stream whose first part (``head``) decodes, then, once ``gate`` is
    set (the client saw the first text), bytes that are no gzip continuation."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Content-Encoding": "gzip"})
        await resp.prepare(request)
        packer = zlib.compressobj(wbits=31)  # gzip framing
        await resp.write(packer.compress(head) + packer.flush(zlib.Z_SYNC_FLUSH))
        await gate.wait()
        await resp.write(b"\xff" * 64)  # a deflate block type that does not exist
        await resp.write_eof()
        return resp
    return handler


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_stream_that_stops_decoding_after_output_says_so(protocol: str) -> None:
    gate = asyncio.Event()
    seen: list[StreamEvent] = []

    async def consume(p: Provider) -> None:
        async for e in p.stream(REQ, model="m"):
            seen.append(e)
            if isinstance(e, TextDelta):
                gate.set()  # output began: now the server sends what cannot be decoded

    async with wire(gzip_then_garbage(first_text(protocol), gate)) as url, \
            provider(protocol, url) as p:
        with pytest.raises(StreamInterrupted) as caught:
            await consume(p)
    err = caught.value
    assert [e.text for e in seen if isinstance(e, TextDelta)] == ["hello "]
    assert err.status == 200 and err.partial_output == "hello "
    assert isinstance(err.__cause__, MalformedResponse)
    assert "could not be decoded (content encoding gzip)" in str(err)
    assert "was cut" not in str(err)


# -- a 2xx without a body is no answer; a 2xx with one is the answer ----------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(("status", "content_type"), [
    (200, "application/json"), (200, "text/event-stream"), (200, ""), (204, ""),
])
async def test_an_empty_2xx_is_no_answer_and_says_so(
        protocol: str, streamed: bool, status: int, content_type: str) -> None:
    async with wire(body(b"", content_type, status=status)) as url, \
            provider(protocol, url) as p:
        with pytest.raises(ProviderError) as caught:
            await outcome(p, streamed)
    err = caught.value
    assert type(err) is ProviderUnavailable and err.retryable, err
    assert err.status == status and err.code == "empty_body" and err.usage is None
    assert f"answered HTTP {status} with an empty body" in str(err)
    assert "in a 200 response" not in str(err)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_201_carrying_the_answer_is_the_answer(protocol: str, streamed: bool) -> None:
    async with wire(body(whole(protocol), "application/json", status=201)) as url, \
            provider(protocol, url) as p:
        if streamed:  # a JSON answer to a stream request: delivered as its events
            end = (await collect(p))[-1]
            assert isinstance(end, StreamEnd)
            text = end.response.text
        else:
            text = (await p.complete(REQ, model="m")).text
    assert text == "fine"


# -- a long header line is read, as the SDKs read it --------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_answer_with_a_20_kb_header_is_read(protocol: str) -> None:
    cookie = {"Set-Cookie": "edge_session=" + "a" * 20_000 + "; Path=/; HttpOnly"}
    async with wire(body(whole(protocol), "application/json", extra=cookie)) as url, \
            provider(protocol, url) as p:
        got = await p.complete(REQ, model="m")
    assert got.text == "fine"
