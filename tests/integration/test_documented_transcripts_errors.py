"""Documented error answers mapped into shoal's error tree, and documented transcripts
through :class:`shoal.traffic.router.Router` (bodies and sources:
:mod:`documented_transcripts`)."""

from __future__ import annotations

import pytest
from documented_transcripts import (
    ANTHROPIC_429,
    ANTHROPIC_529,
    DEEPSEEK_402,
    GEMINI_429_ARRAY,
    MINIMAX_1002,
    MINIMAX_1008,
    MOONSHOT_QUOTA_429,
    MOONSHOT_RATE_429,
    OPENAI_QUOTA_429,
    OPENAI_RATE_429,
    ZHIPU_1113,
    ZHIPU_1302,
    load,
    sse_events,
)
from transcript_server import completed, serve, streamed

from shoal.config import Config
from shoal.errors import (
    Overloaded,
    ProviderError,
    QuotaExhausted,
    RateLimited,
)
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message, StreamEnd, StreamEvent, Usage


@pytest.mark.parametrize(
    ("family", "status", "body", "headers", "cls", "retry_after"),
    [
        ("anthropic", 429, ANTHROPIC_429, {"retry-after": "30"}, RateLimited, 30.0),
        ("anthropic", 529, ANTHROPIC_529, {}, Overloaded, None),
        ("openai", 429, OPENAI_QUOTA_429, {}, QuotaExhausted, None),
        ("openai", 429, OPENAI_RATE_429, {"retry-after-ms": "1500"}, RateLimited, 1.5),
        # Google's RetryInfo says when the per-minute quota frees up: a rate limit to wait
        # out (ai.google.dev rate limits), not an exhausted balance, despite its wording.
        ("gemini", 429, GEMINI_429_ARRAY, {}, RateLimited, 34.4),
        ("moonshot", 429, MOONSHOT_QUOTA_429, {}, QuotaExhausted, None),
        ("moonshot", 429, MOONSHOT_RATE_429, {}, RateLimited, None),
        ("zhipu", 429, ZHIPU_1302, {}, RateLimited, None),
        ("zhipu", 429, ZHIPU_1113, {}, QuotaExhausted, None),
        ("deepseek", 402, DEEPSEEK_402, {}, QuotaExhausted, None),
        ("minimax", 200, MINIMAX_1008, {}, QuotaExhausted, None),  # base_resp in a 200
        ("minimax", 200, MINIMAX_1002, {}, RateLimited, None),
    ],
)
@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_documented_error_answers(
    family: str, status: int, body: bytes, headers: dict[str, str],
    cls: type[ProviderError], retry_after: float | None, mode: str,
) -> None:
    async with serve(body, status=status, content_type="application/json",
                     headers=headers) as url:
        call = completed(url, family) if mode == "complete" else streamed(url, family)
        with pytest.raises(ProviderError) as exc:
            await call
    err = exc.value
    assert type(err) is cls, err
    assert err.status == status
    assert err.retry_after == (pytest.approx(retry_after) if retry_after is not None else None)
    assert err.retryable == (cls is not QuotaExhausted)


# -- through the Router --------------------------------------------------------------------------

FAST = RetryPolicy(attempts=2, backoff=Backoff(base=0.01, cap=0.02), max_retry_after_s=0.05,
                   deadline_s=20)


def one_channel(url: str, protocol: str, family: str) -> Config:
    base = url + "/v1" if protocol == "openai" else url
    return Config.from_dict({
        "channels": {"c": {"protocol": protocol, "base_url": base, "api_key": "sk-x",
                           "provider": family}},
        "models": {"m": {"channels": ["c"], "input": 1.0, "output": 2.0}},
    })


ASK = ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=256)


async def test_router_streams_a_recorded_openai_answer_with_usage() -> None:
    async with serve(sse_events(load("openai_two_tool_calls"))) as url, \
            Router(one_channel(url, "openai", "openai"), retry=FAST) as router:
        seen: list[StreamEvent] = [e async for e in router.stream(ASK)]
    end = seen[-1]
    assert isinstance(end, StreamEnd)
    assert [c.name for c in end.response.tool_calls] == ["GetWeatherArgs", "get_stock_price"]
    assert end.response.usage == Usage(149, 60) and end.response.finish_reason == "tool_calls"


async def test_router_completes_a_recorded_anthropic_thinking_answer() -> None:
    async with serve(load("anthropic_thinking_tool"), content_type="application/json") as url, \
            Router(one_channel(url, "anthropic", "anthropic"), retry=FAST) as router:
        answer = await router.complete(ASK)
    assert answer.tool_calls[0].parsed_arguments() == {"location": "Florence, Italy"}
    assert answer.reasoning_parts[0].signature
    assert answer.usage == Usage(424, 118)


async def test_router_keeps_anthropic_thinking_tokens_from_a_stream() -> None:
    async with serve(sse_events(load("anthropic_delta_fields"))) as url, \
            Router(one_channel(url, "anthropic", "anthropic"), retry=FAST) as router:
        seen = [e async for e in router.stream(ASK)]
    end = seen[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.usage.reasoning_tokens == 3
    assert end.response.usage.cached_input_tokens == 7


async def test_router_does_not_retry_a_documented_quota_answer() -> None:
    async with serve(OPENAI_QUOTA_429, status=429, content_type="application/json") as url, \
            Router(one_channel(url, "openai", "openai"), retry=FAST) as router:
        with pytest.raises(ProviderError) as exc:
            await router.complete(ASK)
    err = exc.value
    assert isinstance(err, QuotaExhausted) or isinstance(err.__cause__, QuotaExhausted), \
        repr(err)
    assert not err.retryable
