"""Exact pricing: recorded-style usage blocks from Anthropic, OpenAI and DeepSeek go
through the real adapters (over HTTP, complete and stream, and through the Router) and
come out priced as a hand computation at the catalog's list prices says."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from shoal.agents.recorder import response_from_json, response_to_json
from shoal.config import Config, ModelInfo
from shoal.errors import ConfigError
from shoal.pricing import (
    ModelPrice,
    project,
    projected_usage,
    savings_usd,
    uncached,
)
from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.http import HttpPool
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEnd, Usage

REQ = ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=64)

# A Claude answer that read 9,000 cached tokens and wrote 3,000 (2,000 with the 5-minute
# TTL, 1,000 with the 1-hour TTL); 50 uncached prompt tokens; 400 out.
ANTHROPIC_USAGE = {
    "input_tokens": 50, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 9000,
    "output_tokens": 400,
    "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000},
}
# claude-sonnet-4-6 at list: $3 in, $3.75 5m write, $6 1h write, $0.30 read, $15 out.
ANTHROPIC_USD = (50 * 3 + 2000 * 3.75 + 1000 * 6 + 9000 * 0.30 + 400 * 15) / 1e6  # 0.02235
ANTHROPIC_UNCACHED_USD = (12050 * 3 + 400 * 15) / 1e6

# gpt-4.1: 12,000 prompt tokens of which 9,000 cached; 500 out (120 of them reasoning).
OPENAI_USAGE = {
    "prompt_tokens": 12000, "completion_tokens": 500, "total_tokens": 12500,
    "prompt_tokens_details": {"cached_tokens": 9000, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 120},
}
OPENAI_USD = (3000 * 2.0 + 9000 * 0.5 + 500 * 8.0) / 1e6  # 0.0145

# deepseek-chat: hit + miss = prompt.
DEEPSEEK_USAGE = {
    "prompt_tokens": 12000, "completion_tokens": 500, "total_tokens": 12500,
    "prompt_cache_hit_tokens": 9000, "prompt_cache_miss_tokens": 3000,
}
DEEPSEEK_USD = (3000 * 0.28 + 9000 * 0.028 + 500 * 0.42) / 1e6  # 0.001302


def anthropic_answer() -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": ANTHROPIC_USAGE}


def openai_answer(usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}], "usage": usage}


def anthropic_stream() -> bytes:
    def ev(name: str, obj: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps(obj)}\n\n"
    start_usage = {k: v for k, v in ANTHROPIC_USAGE.items() if k != "output_tokens"}
    return "".join([
        ev("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [], "stop_reason": None, "usage": {**start_usage, "output_tokens": 1}}}),
        ev("content_block_start", {"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}}),
        ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": "ok"}}),
        ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
        # The final message_delta's usage is cumulative and authoritative.
        ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                             "usage": ANTHROPIC_USAGE}),
        ev("message_stop", {"type": "message_stop"}),
    ]).encode()


def openai_stream(usage: dict[str, Any]) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"},
                          "finish_reason": "stop"}]}
    tail = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [],
            "usage": usage}
    return (f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(tail)}\n\n"
            "data: [DONE]\n\n").encode()


@asynccontextmanager
async def server(openai_usage: dict[str, Any]) -> AsyncIterator[str]:
    """Both protocols' endpoints, answering JSON or SSE as the request asks."""
    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):
            return web.Response(body=anthropic_stream(), content_type="text/event-stream")
        return web.json_response(anthropic_answer())

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):
            return web.Response(body=openai_stream(openai_usage),
                                content_type="text/event-stream")
        return web.json_response(openai_answer(openai_usage))

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def catalog() -> Config:
    return Config.from_dict({})


async def final(provider: Any, stream: bool) -> ChatResponse:
    if not stream:
        response: ChatResponse = await provider.complete(REQ, model="m")
        return response
    async for event in provider.stream(REQ, model="m"):
        if isinstance(event, StreamEnd):
            return event.response
    raise AssertionError("no StreamEnd")


# -- the adapters read every kind of token --------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_usage_block_is_priced_by_hand(stream: bool) -> None:
    async with server(OPENAI_USAGE) as url, \
            AnthropicProvider(base_url=url, api_key="k", name="a", pool=HttpPool()) as p:
        usage = (await final(p, stream)).usage
    assert usage == Usage(input_tokens=12050, output_tokens=400, cached_input_tokens=9000,
                          cache_write_tokens=3000, cache_write_1h_tokens=1000)
    info = catalog().model("claude-sonnet-4-6")
    assert info.cost(usage) == pytest.approx(ANTHROPIC_USD, rel=1e-12)
    assert info.cost(usage) == pytest.approx(0.02235)  # the figure by hand
    assert savings_usd(usage, info.price) == pytest.approx(ANTHROPIC_UNCACHED_USD - ANTHROPIC_USD)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("raw", "model", "usd"), [
    (OPENAI_USAGE, "gpt-4.1", OPENAI_USD), (DEEPSEEK_USAGE, "deepseek-chat", DEEPSEEK_USD)])
async def test_openai_style_usage_block_is_priced_by_hand(
        stream: bool, raw: dict[str, Any], model: str, usd: float) -> None:
    async with server(raw) as url, OpenAICompatProvider(
            base_url=url + "/v1", api_key="k", name="o", pool=HttpPool(),
            provider="deepseek" if model.startswith("deepseek") else "openai") as p:
        usage = (await final(p, stream)).usage
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == \
        (12000, 9000, 500)
    assert usage.cache_write_tokens == 0
    assert catalog().model(model).cost(usage) == pytest.approx(usd, rel=1e-12)


@pytest.mark.parametrize("stream", [False, True])
async def test_router_charges_each_call_its_exact_price(stream: bool) -> None:
    """cost_usd on the Router's answer, complete and streamed, at the catalog's prices."""
    async with server(OPENAI_USAGE) as url:
        cfg = Config.from_dict({
            "channels": {"anthropic": {"base_url": url, "api_key": "k"},
                         "openai": {"base_url": url + "/v1", "api_key": "k"}}})
        async with Router(cfg) as router:
            for model, usd in (("claude-sonnet-4-6", ANTHROPIC_USD), ("gpt-4.1", OPENAI_USD)):
                request = ChatRequest(model=model, messages=[Message.user("hi")],
                                      max_tokens=64)
                if stream:
                    ends = [e async for e in router.stream(request)
                            if isinstance(e, StreamEnd)]
                    response = ends[0].response
                else:
                    response = await router.complete(request)
                assert response.cost_usd == pytest.approx(usd, rel=1e-12), model


# -- ModelPrice and the catalog ---------------------------------------------------------


def test_every_kind_of_token_has_its_price() -> None:
    price = ModelPrice(input=1.0, output=10.0, cached_input=0.1, cache_write=1.25,
                       cache_write_1h=2.0)
    usage = Usage(input_tokens=1_000_000 + 2_000_000 + 3_000_000 + 500_000,
                  output_tokens=4_000_000, cached_input_tokens=2_000_000,
                  reasoning_tokens=1_000_000, cache_write_tokens=3_500_000,
                  cache_write_1h_tokens=500_000)
    parts = price.breakdown(usage)
    assert (parts.fresh_input, parts.cache_read, parts.cache_write, parts.cache_write_1h,
            parts.output) == pytest.approx((1.0, 0.2, 3.75, 1.0, 40.0))
    assert price.cost(usage) == pytest.approx(45.95)
    assert uncached(usage) == Usage(6_500_000, 4_000_000, 0, 1_000_000)
    assert savings_usd(usage, price) == pytest.approx(6.5 + 40.0 - 45.95)


def test_a_write_never_read_back_costs_more_than_no_cache() -> None:
    price = catalog().model("claude-sonnet-4-6").price
    assert savings_usd(Usage(1000, 0, cache_write_tokens=1000), price) == \
        pytest.approx(-1000 * 0.75 / 1e6)


def test_catalog_cache_prices_follow_the_providers_rules() -> None:
    cfg = catalog()
    for name in ("claude-sonnet-4-6", "claude-opus-4-6"):
        p = cfg.model(name).price
        assert (p.cache_write, p.cache_write_1h, p.cached_input) == \
            pytest.approx((1.25 * p.input, 2 * p.input, 0.1 * p.input)), name
    openai = cfg.model("gpt-4.1").price
    assert (openai.input, openai.cached_input, openai.output, openai.cache_write) == \
        (2.0, 0.5, 8.0, 2.0)  # automatic caching: no write fee
    deepseek = cfg.model("deepseek-chat").price
    assert (deepseek.input, deepseek.cached_input, deepseek.output) == (0.28, 0.028, 0.42)


def test_defaults_for_models_a_user_adds() -> None:
    claude = ModelInfo(name="claude-next", input=2.0, output=10.0)
    assert (claude.price.cache_write, claude.price.cache_write_1h, claude.price.cached_input) \
        == (2.5, 4.0, 2.0)  # no read discount is assumed when none is given
    other = ModelInfo(name="local-thing", provider="openai", input=1.0, output=1.0,
                      cached_input=0.25)
    assert (other.price.cache_write, other.price.cached_input) == (1.0, 0.25)
    overridden = ModelInfo(name="claude-x", input=2.0, output=10.0, cache_write=3.0)
    assert overridden.price.cache_write == 3.0


def test_the_older_cost_signature_still_works() -> None:
    info = catalog().model("gpt-4.1")
    assert info.cost(12000, 500, 9000) == info.cost(Usage(12000, 500, 9000))


# -- Usage ------------------------------------------------------------------------------


def test_usage_adds_every_kind() -> None:
    a = Usage(10, 2, 3, 1, 4, 1)
    assert a + a == Usage(20, 4, 6, 2, 8, 2)
    assert a.fresh_input_tokens == 3


def test_journal_round_trips_1h_writes_and_reads_older_records() -> None:
    response = ChatResponse(text="ok", tool_calls=[], finish_reason="stop",
                            usage=Usage(12050, 400, 9000, 0, 3000, 1000),
                            provider="anthropic", model="claude-sonnet-4-6")
    data = response_to_json(response)
    assert response_from_json(data).usage == response.usage
    old = json.loads(json.dumps(data))
    del old["usage"]["cache_write_1h_tokens"]  # a record written before the field
    assert response_from_json(old).usage == Usage(12050, 400, 9000, 0, 3000, 0)


# -- projections --------------------------------------------------------------------------


def test_projection_is_prices_times_volume() -> None:
    price = catalog().model("claude-sonnet-4-6").price
    one = (3000 * 3.0 + 800 * 15.0) / 1e6
    p = project(price, projected_usage(3000, 800), 10_000)
    assert (p.per_request, p.daily, p.monthly, p.yearly) == pytest.approx(
        (one, one * 1e4, one * 1e4 * 30, one * 1e4 * 365))
    assert p.saved_monthly == pytest.approx(0.0)
    cached = project(price, projected_usage(3000, 800, cache_hit_rate=0.8), 10_000)
    one_cached = (600 * 3.0 + 2400 * 0.3 + 800 * 15.0) / 1e6
    assert cached.daily == pytest.approx(one_cached * 1e4)
    assert cached.saved_monthly == pytest.approx((one - one_cached) * 1e4 * 30)


@pytest.mark.parametrize(("hit", "write"), [(1.5, 0.0), (-0.1, 0.0), (0.7, 0.5)])
def test_projection_refuses_rates_that_are_not_fractions(hit: float, write: float) -> None:
    with pytest.raises(ConfigError, match=r"1\.0"):
        projected_usage(3000, 800, cache_hit_rate=hit, cache_write_rate=write)
