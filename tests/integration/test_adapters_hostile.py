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
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from transcript_server import wire

from shoal.errors import BadRequest, MalformedResponse, ProviderUnavailable
from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.base import Provider
from shoal.providers.http import HttpPool
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.types import ChatRequest, Message, StreamEnd, StreamEvent

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


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize(("page", "content_type", "words"), [
    (ENVOY, "text/plain", "upstream connect error"),
    (WAF, "text/html", "Access denied"),
])
async def test_a_page_that_is_not_an_event_stream_is_malformed_with_its_text(
        protocol: str, page: bytes, content_type: str, words: str) -> None:
    async with wire(body(page, content_type)) as url, provider(protocol, url) as p:
        with pytest.raises(MalformedResponse) as caught:
            await collect(p)
    err = caught.value
    assert err.status == 200 and err.provider == "w"
    assert words in err.body and words in str(err)
    assert "not an event stream" in str(err)


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
