"""What an independent hostile provider found at the wire, each from exact bytes.

An outside check (a fake provider shoal's authors did not write, 2026-11-28) found four
places where real servers' and proxies' behaviour got a wrong answer out of the adapters:

- a redirect was followed, and aiohttp re-sent ``x-api-key`` and a channel's own
  credential headers to the address it named (it drops only ``Authorization``);
- an event stream starting with a byte order mark lost its first event, silently (the
  SSE parsing rules say one leading BOM is ignored);
- a proxy's text or HTML page answered with 200 to a stream request came out as "the
  stream ended without a finish_reason", with its text thrown away;
- an error envelope inside a 200 said "(HTTP 400)", a status the wire never carried.

The next check (2026-12) found three more, fixed here:

- a proxy's page answered with 200 (HTML or plain text, not JSON) was a
  ``MalformedResponse``, which the Router charges as a billed answer: a phantom waste of
  ``max_tokens``, for an answer no model made. It is a ``ProviderUnavailable`` keeping
  the 200 (retried, nothing charged); a JSON-typed body that does not parse is still a
  broken, billed answer;
- a stream cut after its 200 raised an error with ``status`` 0; and a connection closed
  before any status was called a cut stream;
- (in test_adapters_hostile_body.py) a body whose ``Content-Encoding`` could not be
  decoded was called "cut before the end".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from transcript_server import wire

from shoal.config import Config
from shoal.errors import (
    BadRequest,
    ProviderError,
    ProviderUnavailable,
    StreamInterrupted,
)
from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.base import Provider
from shoal.providers.http import HttpPool
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEnd, StreamEvent, TextDelta

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQ = ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=64)
KEY = "sk-hostile-SECRET-1234567890"
PROXY_TOKEN = "proxy-SECRET-9876543210"
BOM = b"\xef\xbb\xbf"


def provider(protocol: str, url: str) -> Provider:
    pool = HttpPool(read_timeout=10.0)
    headers = {"X-Proxy-Token": PROXY_TOKEN}
    if protocol == "openai":
        return OpenAICompatProvider(base_url=url + "/v1", api_key=KEY, name="w", pool=pool,
                                    provider="openai", headers=headers)
    return AnthropicProvider(base_url=url, api_key=KEY, name="w", pool=pool, headers=headers)


def body(payload: bytes, content_type: str, status: int = 200,
         extra: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(body=payload, status=status,
                            headers={"Content-Type": content_type, **(extra or {})})
    return handler


async def collect(p: Provider) -> list[StreamEvent]:
    return [e async for e in p.stream(REQ, model="m")]


def data(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def ev(name: str, obj: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


def openai_chunk(text: str, finish: str | None = None) -> bytes:
    return data({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                 "choices": [{"index": 0, "delta": {"content": text},
                              "finish_reason": finish}]})


# -- redirects are refused, and nothing goes to the address they name ---------------------


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_redirect_is_refused_and_no_credential_follows_it(
        protocol: str, streamed: bool) -> None:
    reached: list[dict[str, str]] = []

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        reached.append(dict(request.headers))
        return web.json_response({"error": {"message": "should never be asked"}}, status=500)

    async with wire(elsewhere) as other:
        path = "/v1/chat/completions" if protocol == "openai" else "/v1/messages"
        redirect = body(b"", "text/plain", status=307,
                        extra={"Location": other.replace("127.0.0.1", "localhost") + path})
        async with wire(redirect) as url, provider(protocol, url) as p:
            ask = collect(p) if streamed else p.complete(REQ, model="m")
            with pytest.raises(BadRequest) as caught:
                await ask
    assert reached == []  # neither the key nor the proxy token went anywhere
    said = str(caught.value)
    assert "HTTP 307" in said and "redirect" in said and "base_url" in said
    assert KEY not in said and PROXY_TOKEN not in said


# -- one leading byte order mark is ignored ------------------------------------------------


async def test_an_openai_stream_starting_with_a_bom_keeps_its_first_event() -> None:
    stream = (BOM + openai_chunk("FIRST ") + openai_chunk("second")
              + openai_chunk("", finish="stop") + b"data: [DONE]\n\n")
    async with wire(body(stream, "text/event-stream")) as url, provider("openai", url) as p:
        seen = await collect(p)
    end = seen[-1]
    assert isinstance(end, StreamEnd) and end.response.text == "FIRST second"


async def test_an_anthropic_stream_starting_with_a_bom_keeps_its_message_start() -> None:
    stream = BOM + b"".join([
        ev("message_start", {"type": "message_start", "message": {
            "id": "msg_bom", "type": "message", "role": "assistant", "model": "m",
            "content": [], "stop_reason": None,
            "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ev("content_block_start", {"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}}),
        ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": "hello"}}),
        ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                             "usage": {"output_tokens": 5}}),
        ev("message_stop", {"type": "message_stop"}),
    ])
    async with wire(body(stream, "text/event-stream")) as url, provider("anthropic", url) as p:
        seen = await collect(p)
    end = seen[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.text == "hello" and end.response.usage.input_tokens == 25


# -- a proxy's page answered with 200 to a stream request ----------------------------------

ENVOY = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
WAF = (b"<html><head><title>Access denied</title></head>\n<body><h1>Access denied</h1>\n"
       b"<p>Request blocked by the web application firewall.</p></body></html>\n")


PAGES = [(ENVOY, "text/plain", "upstream connect error"), (WAF, "text/html", "Access denied")]


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize(("page", "content_type", "words"), PAGES)
async def test_a_page_that_is_not_an_event_stream_is_no_answer_with_its_text(
        protocol: str, page: bytes, content_type: str, words: str) -> None:
    async with wire(body(page, content_type)) as url, provider(protocol, url) as p:
        with pytest.raises(ProviderUnavailable) as caught:
            await collect(p)
    err = caught.value
    assert err.status == 200 and err.provider == "w" and err.code == "not_an_answer"
    assert words in err.body and words in str(err)
    assert "not an event stream" in str(err) and "nothing is charged" in str(err)


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize(("page", "content_type", "words"), PAGES)
async def test_a_page_answering_complete_is_no_answer_with_its_text(
        protocol: str, page: bytes, content_type: str, words: str) -> None:
    async with wire(body(page, content_type)) as url, provider(protocol, url) as p:
        with pytest.raises(ProviderUnavailable) as caught:
            await p.complete(REQ, model="m")
    err = caught.value
    assert type(err) is ProviderUnavailable and err.retryable
    assert err.status == 200 and err.code == "not_an_answer" and err.usage is None
    assert words in err.body and words in str(err)
    assert f"HTTP 200 with a {content_type} page, not a JSON answer" in str(err)


def router_at(url: str, protocol: str) -> Router:
    """A Router whose one channel ``ch`` speaks ``protocol`` to ``url``, serving ``m``."""
    return Router(Config.from_dict({
        "channels": {"ch": {"protocol": protocol, "provider": protocol, "api_key": KEY,
                            "base_url": url + "/v1" if protocol == "openai" else url}},
        "models": {"m": {"channels": ["ch"]}},
    }), retry=RetryPolicy(attempts=3, backoff=Backoff(base=0.01, cap=0.02), deadline_s=20))


def answer(protocol: str, streamed: bool) -> Handler:
    """A whole answer ("fine", 5 prompt and 1 output token), streamed or not."""
    if protocol == "openai" and streamed:
        return body(openai_chunk("fine") + openai_chunk("", finish="stop")
                    + b"data: [DONE]\n\n", "text/event-stream")
    if protocol == "openai":
        return body(json.dumps({
            "id": "c1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "fine"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }).encode(), "application/json")
    usage = {"input_tokens": 5, "output_tokens": 1}
    if streamed:
        return body(b"".join([
            ev("message_start", {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                "content": [], "stop_reason": None, "usage": usage}}),
            ev("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
            ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "fine"}}),
            ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                 "usage": {"output_tokens": 1}}),
            ev("message_stop", {"type": "message_stop"}),
        ]), "text/event-stream")
    return body(json.dumps({"id": "msg_1", "type": "message", "role": "assistant",
                            "model": "m", "content": [{"type": "text", "text": "fine"}],
                            "stop_reason": "end_turn", "usage": usage}).encode(),
                "application/json")


def in_turn(*handlers: Handler) -> Handler:
    """Each request answered by the next handler (the last one repeats)."""
    asked: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        asked.append(1)
        return await handlers[min(len(asked), len(handlers)) - 1](request)
    return handler


async def routed(url: str, protocol: str, streamed: bool) -> ChatResponse:
    async with router_at(url, protocol) as r:
        if not streamed:
            return await r.complete(REQ)
        events = [e async for e in r.stream(REQ)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    return end.response


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_the_router_charges_no_waste_for_a_proxy_page(protocol: str,
                                                            streamed: bool) -> None:
    """The phantom waste: the page was charged as a billed answer of ``max_tokens``."""
    page = body(WAF, "text/html")
    async with wire(in_turn(page, answer(protocol, streamed))) as url:
        got = await routed(url, protocol, streamed)
    assert got.text == "fine"
    assert got.wasted is None and got.wasted_cost_usd == 0.0


async def test_a_json_body_that_does_not_parse_is_still_a_billed_answer() -> None:
    """The line drawn: a body typed as JSON that does not parse (cut short) is the
    provider's broken answer, charged as waste, as before."""
    broken = body(b'{"id": "c1", "object": "chat.completion", "choi', "application/json")
    async with wire(in_turn(broken, answer("openai", False))) as url:
        got = await routed(url, "openai", streamed=False)
    assert got.text == "fine"
    assert got.wasted is not None and got.wasted.output_tokens == REQ.max_tokens


# -- a cut stream keeps the status its answer had -----------------------------------------


def cut_after(payload: bytes) -> Handler:
    """A 200 event stream that sends ``payload`` then drops the connection (no final
    chunk); an empty ``payload``: dropped before any answer, with no status line."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if payload:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(payload)
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(3600)  # cancelled when the server closes
        raise AssertionError("unreachable")
    return handler


FIRST_TEXT = {"openai": openai_chunk("hello "), "anthropic": b"".join([
    ev("message_start", {"type": "message_start", "message": {
        "id": "msg_cut", "type": "message", "role": "assistant", "model": "m", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
    ev("content_block_start", {"type": "content_block_start", "index": 0,
                               "content_block": {"type": "text", "text": ""}}),
    ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": "hello "}}),
])}


async def consume(p: Provider, seen: list[StreamEvent]) -> None:
    async for e in p.stream(REQ, model="m"):
        seen.append(e)


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_a_stream_cut_after_output_says_200_and_what_happened(protocol: str) -> None:
    seen: list[StreamEvent] = []
    async with wire(cut_after(FIRST_TEXT[protocol])) as url, provider(protocol, url) as p:
        with pytest.raises(StreamInterrupted) as caught:
            await consume(p, seen)
    err = caught.value
    assert [e.text for e in seen if isinstance(e, TextDelta)] == ["hello "]
    assert err.status == 200 and err.partial_output == "hello "
    said = str(err)
    assert "cut" in said and "answered HTTP 200" in said and "connection closed" in said


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_a_stream_cut_before_output_says_200_and_is_retried(protocol: str) -> None:
    async with wire(cut_after(b": keep-alive\n\n")) as url, provider(protocol, url) as p:
        with pytest.raises(StreamInterrupted) as caught:
            await collect(p)
    assert caught.value.status == 200 and caught.value.partial_output == ""
    assert "answered HTTP 200" in str(caught.value)
    # before output the Router still retries it (the same class as before the fix)
    async with wire(in_turn(cut_after(b": keep-alive\n\n"),
                            answer(protocol, True))) as url:
        got = await routed(url, protocol, streamed=True)
    assert got.text == "fine" and got.wasted is None


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_a_connection_dropped_before_any_status_is_not_called_a_cut_stream(
        protocol: str) -> None:
    async with wire(cut_after(b"")) as url, provider(protocol, url) as p:
        with pytest.raises(ProviderError) as streamed:
            await collect(p)
        with pytest.raises(ProviderError) as whole:
            await p.complete(REQ, model="m")
    for err in (streamed.value, whole.value):
        assert type(err) is ProviderUnavailable and err.status == 0, err
        assert "cut" not in str(err) and "closed the connection before answering" in str(err)


# -- an error inside a 200 names the status the wire carried -------------------------------


async def test_a_request_error_inside_a_200_does_not_claim_http_400() -> None:
    envelope = json.dumps({"error": {"message": "Invalid value for 'temperature'",
                                     "type": "invalid_request_error",
                                     "code": "invalid_value"}}).encode()
    async with wire(body(envelope, "application/json")) as url, provider("openai", url) as p:
        with pytest.raises(BadRequest) as caught:
            await p.complete(REQ, model="m")
    said = str(caught.value)
    assert caught.value.status == 200
    assert "HTTP 400" not in said and "in an HTTP 200 answer" in said


# -- a base_url with a query string --------------------------------------------------------


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_a_base_url_query_follows_the_endpoint_path(protocol: str) -> None:
    """Azure OpenAI's ``?api-version=`` (and a gateway's ``?key=``) ride on base_url: the
    endpoint's path went after the query (``/v1?api-version=…/chat/completions``, a
    404 from every server), as a newcomer found."""
    asked: list[str] = []

    async def record(request: web.Request) -> web.StreamResponse:
        asked.append(request.path_qs)
        return web.json_response({"error": {"message": "recorded", "type": "server_error"}},
                                 status=500)

    async with wire(record) as url:
        p = (OpenAICompatProvider(base_url=url + "/v1?api-version=2024-10-21", api_key=KEY,
                                  name="w", provider="openai")
             if protocol == "openai" else
             AnthropicProvider(base_url=url + "?api-version=2024-10-21", api_key=KEY, name="w"))
        async with p:
            with pytest.raises(ProviderUnavailable):
                await p.complete(REQ, model="m")
    path = "/v1/chat/completions" if protocol == "openai" else "/v1/messages"
    assert asked == [f"{path}?api-version=2024-10-21"]
