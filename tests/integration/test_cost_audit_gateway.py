"""An outside-in audit of a gateway virtual key's money: the spend the store records for
a key equals the sum of its calls' prices worked out by hand from the catalog's list
prices and the usage blocks the upstream sent (PROVIDERS.md: OpenAI ``cached_tokens``
inside ``prompt_tokens``, reasoning inside ``completion_tokens``; Anthropic
``input_tokens`` excluding cache reads and writes, 1-hour writes at 2× input), over both
SDKs, complete and streamed, and across protocols."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from gateway_fixtures import anthropic_client, gateway, openai_client, serving

from shoal.config import Config
from shoal.gateway.key_store import open_key_store
from shoal.gateway.keys import StoreKeys

# gpt-4.1 ($2 in, $0.50 cached, $8 out): 6,000 prompt tokens, 4,000 of them cached;
# 900 out, 300 of them reasoning (billed once, as output).
OPENAI_USAGE = {"prompt_tokens": 6000, "completion_tokens": 900, "total_tokens": 6900,
                "prompt_tokens_details": {"cached_tokens": 4000},
                "completion_tokens_details": {"reasoning_tokens": 300}}
OPENAI_USD = (2000 * 2.0 + 4000 * 0.5 + 900 * 8.0) / 1e6  # $0.0132

# claude-sonnet-4-6 ($3 in, $0.30 read, $3.75 5m write, $6 1h write, $15 out): 120
# uncached, 8,000 read, 2,500 written (500 for 5 minutes, 2,000 for an hour); 700 out.
ANTHROPIC_USAGE = {"input_tokens": 120, "cache_read_input_tokens": 8000,
                   "cache_creation_input_tokens": 2500, "output_tokens": 700,
                   "cache_creation": {"ephemeral_5m_input_tokens": 500,
                                      "ephemeral_1h_input_tokens": 2000}}
ANTHROPIC_USD = (120 * 3 + 8000 * 0.3 + 500 * 3.75 + 2000 * 6 + 700 * 15) / 1e6  # $0.027135


def _openai_body(stream: bool) -> bytes | dict[str, Any]:
    if not stream:
        return {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}], "usage": OPENAI_USAGE}
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"},
                          "finish_reason": "stop"}]}
    tail = {**chunk, "choices": [], "usage": OPENAI_USAGE}
    return f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(tail)}\n\ndata: [DONE]\n\n".encode()


def _anthropic_body(stream: bool) -> bytes | dict[str, Any]:
    if not stream:
        return {"id": "msg_1", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-6", "content": [{"type": "text", "text": "ok"}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": ANTHROPIC_USAGE}

    def ev(name: str, obj: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **obj})}\n\n"

    start = {**ANTHROPIC_USAGE, "output_tokens": 1}
    return "".join([
        ev("message_start", {"message": {"id": "msg_1", "type": "message", "role": "assistant",
                                         "model": "claude-sonnet-4-6", "content": [],
                                         "stop_reason": None, "usage": start}}),
        ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "ok"}}),
        ev("content_block_stop", {"index": 0}),
        # cumulative: the final count of output, not 700 more
        ev("message_delta", {"delta": {"stop_reason": "end_turn"},
                             "usage": {"output_tokens": 700}}),
        ev("message_stop", {}),
    ]).encode()


@asynccontextmanager
async def upstream() -> AsyncIterator[str]:
    """Both protocols' endpoints answering with the canned usage, JSON or SSE."""
    def answer(body: bytes | dict[str, Any]) -> web.Response:
        if isinstance(body, bytes):
            return web.Response(body=body, content_type="text/event-stream")
        return web.json_response(body)

    async def messages(request: web.Request) -> web.Response:
        return answer(_anthropic_body(bool((await request.json()).get("stream"))))

    async def chat(request: web.Request) -> web.Response:
        return answer(_openai_body(bool((await request.json()).get("stream"))))

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/chat/completions", chat)
    async with serving(app) as url:
        yield url


USER: list[Any] = [{"role": "user", "content": "What does a virtual key cost?"}]


async def test_a_virtual_keys_spend_is_the_sum_of_its_calls_prices() -> None:
    async with upstream() as url, open_key_store("memory://") as store:
        cfg = Config.from_dict({"channels": {
            "anthropic": {"base_url": url, "api_key": "k"},
            "openai": {"base_url": url + "/v1", "api_key": "k"}}})
        record, secret = await store.create("audit", budget_usd=5.0, period="month")
        keys = StoreKeys(store, cache_s=0)
        expected, calls = 0.0, 0
        async with gateway(cfg, keys=keys) as gw:
            async with openai_client(gw, secret) as oa:
                for model, usd in (("gpt-4.1", OPENAI_USD), ("claude-sonnet-4-6", ANTHROPIC_USD)):
                    done = await oa.chat.completions.create(model=model, messages=USER,
                                                            max_tokens=1000)
                    assert done.choices[0].message.content == "ok"
                    stream = await oa.chat.completions.create(
                        model=model, messages=USER, max_tokens=1000, stream=True,
                        stream_options={"include_usage": True})
                    async for _ in stream:
                        pass
                    expected, calls = expected + 2 * usd, calls + 2
            async with anthropic_client(gw, secret) as an:
                for model, usd in (("claude-sonnet-4-6", ANTHROPIC_USD), ("gpt-4.1", OPENAI_USD)):
                    msg = await an.messages.create(model=model, max_tokens=1000, messages=USER)
                    assert msg.content[0].type == "text"
                    async with an.messages.stream(model=model, max_tokens=1000,
                                                  messages=USER) as s:
                        await s.get_final_message()
                    expected, calls = expected + 2 * usd, calls + 2
            await gw.gateway.settled()
        await keys.aclose()
        # 4 gpt-4.1 calls and 4 claude-sonnet-4-6 calls: 4 × $0.0132 + 4 × $0.027135.
        assert abs(expected - 4 * (0.0132 + 0.027135)) < 1e-12
        for period, spend in (await store.spend_now(record.id)).items():
            assert spend.requests == calls == 8
            assert abs(spend.usd - expected) < 1e-9, (period, spend.usd, expected)
            assert spend.input_tokens == 4 * 6000 + 4 * (120 + 8000 + 2500)
            assert spend.output_tokens == 4 * 900 + 4 * 700
            assert spend.cached_tokens == 4 * 4000 + 4 * 8000


async def test_sdk_usage_the_gateway_returns_prices_to_the_same_figures() -> None:
    """What the caller is shown agrees with what the key is billed: OpenAI's usage with
    ``cached_tokens`` ⊂ ``prompt_tokens``, Anthropic's with ``input_tokens`` uncached."""
    async with upstream() as url:
        cfg = Config.from_dict({"channels": {
            "anthropic": {"base_url": url, "api_key": "k"},
            "openai": {"base_url": url + "/v1", "api_key": "k"}}})
        async with gateway(cfg) as gw:
            async with openai_client(gw) as oa:
                done = await oa.chat.completions.create(model="gpt-4.1", messages=USER,
                                                        max_tokens=1000)
            async with anthropic_client(gw) as an:
                msg = await an.messages.create(model="claude-sonnet-4-6", max_tokens=1000,
                                               messages=USER)
    u = done.usage
    assert u is not None and u.prompt_tokens_details is not None
    cached = u.prompt_tokens_details.cached_tokens or 0
    assert ((u.prompt_tokens - cached) * 2.0 + cached * 0.5
            + u.completion_tokens * 8.0) / 1e6 == OPENAI_USD
    a = msg.usage
    split = a.cache_creation
    assert split is not None
    one_hour, five = split.ephemeral_1h_input_tokens, split.ephemeral_5m_input_tokens
    assert (a.cache_creation_input_tokens or 0) == one_hour + five
    shown = (a.input_tokens * 3 + (a.cache_read_input_tokens or 0) * 0.3 + five * 3.75
             + one_hour * 6 + a.output_tokens * 15) / 1e6
    assert abs(shown - ANTHROPIC_USD) < 1e-12
