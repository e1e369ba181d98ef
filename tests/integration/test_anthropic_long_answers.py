"""A long Anthropic answer asked for whole goes out streamed (the official SDK refuses it
unstreamed: over ~10 minutes by its estimate, or over the model's non-streaming limit),
and comes back as exactly the answer the whole body gives. Against the simulator over
real HTTP; its request log says what went on the wire."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.config import Config
from shoal.errors import MalformedResponse, Overloaded, ProviderError, ProviderTimeout
from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.http import HttpPool
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.sim.anthropic_wire import REDACTED_TRIGGER
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, Thinking, ToolSpec

CLAUDE = "claude-sonnet-4-6"
LONG = 32_000  # over the SDK's 10-minute estimate (21,333)
SHORT = 4_096
WEATHER = ToolSpec(
    "get_weather", "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}},
     "required": ["city"], "additionalProperties": False},
)
SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"title": {"type": "string"}, "score": {"type": "number"}},
    "required": ["title", "score"], "additionalProperties": False,
}


def sim_config(**profile: Any) -> SimConfig:
    return SimConfig(seed=11, style="anthropic",
                     models={"*": ModelProfile(output_tokens=12, **profile)})


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(sim_config()) as s:
        yield s


def ask(max_tokens: int, **kw: Any) -> ChatRequest:
    messages = kw.pop("messages", [Message.system("Be thorough."),
                                   Message.user("Write the full report.")])
    return ChatRequest(model=CLAUDE, messages=messages, max_tokens=max_tokens, **kw)


async def answer_from(sim: SimServer, request: ChatRequest, *, model: str = CLAUDE
                      ) -> ChatResponse:
    async with AnthropicProvider(base_url=sim.url, api_key="sk-ant-test", name="sim") as p:
        return await p.complete(request, model=model)


def streamed(sim: SimServer) -> list[bool]:
    return [r.stream for r in sim.stats().requests]


def same(resp: ChatResponse) -> ChatResponse:
    return dataclasses.replace(resp, latency_s=0.0)


async def long_and_short(request_kw: dict[str, Any]) -> tuple[ChatResponse, ChatResponse]:
    """The same request with a long and a short max_tokens, each from a fresh simulator
    (same seed, so the same answer and ids): (long, short)."""
    out: list[ChatResponse] = []
    for max_tokens, wire_stream in ((LONG, True), (SHORT, False)):
        async with SimServer(sim_config()) as s:
            out.append(await answer_from(s, ask(max_tokens, **request_kw)))
            assert streamed(s) == [wire_stream]
    return out[0], out[1]


async def test_long_complete_streams_and_gives_the_whole_answer() -> None:
    long, short = await long_and_short({"stop": ["zzz-never"]})
    assert long.text and long.finish_reason == "stop" and long.raw_finish_reason == "end_turn"
    assert long.usage.input_tokens > 0 and long.usage.output_tokens == 12
    assert long.id.startswith("msg_sim") and long.model == CLAUDE and long.channel == "sim"
    assert same(long) == same(short)  # every field, usage and ids included


async def test_long_complete_assembles_tool_calls_and_signed_thinking() -> None:
    long, short = await long_and_short({
        "tools": [WEATHER], "thinking": Thinking(budget_tokens=2048),
        "messages": [Message.user(f"Weather in Lisbon? {REDACTED_TRIGGER}")],
    })
    assert long.finish_reason == "tool_calls" and long.tool_calls
    assert long.tool_calls[0].name == "get_weather" and '"city"' in long.tool_calls[0].arguments
    assert long.reasoning and long.usage.output_tokens > 0
    signed = [p for p in long.reasoning_parts if p.signature]
    redacted = [p for p in long.reasoning_parts if p.redacted]
    assert signed and signed[0].text == long.reasoning and redacted
    assert same(long) == same(short)


async def test_long_complete_assembles_a_typed_answer() -> None:
    long, short = await long_and_short({"output_schema": SCHEMA})
    assert set(json.loads(long.text)) == {"title", "score"}
    assert same(long) == same(short)


async def test_short_complete_stays_unstreamed(sim: SimServer) -> None:
    await answer_from(sim, ask(SHORT))
    await answer_from(sim, ask(21_333))  # the SDK's bound itself: still whole
    await answer_from(sim, ask(8_193))
    assert streamed(sim) == [False, False, False]


async def test_model_with_a_nonstreaming_limit_streams_above_it() -> None:
    # Claude Opus 4: the SDK's MODEL_NONSTREAMING_TOKENS says 8,192.
    async with SimServer(dataclasses.replace(sim_config(), style="permissive")) as s:
        opus = "claude-opus-4-20250514"
        await answer_from(s, ask(8_192), model=opus)
        await answer_from(s, ask(8_193), model=opus)
        assert streamed(s) == [False, True]


async def test_silent_wait_longer_than_read_timeout_is_no_timeout() -> None:
    """The defect: a long answer sent whole is silent until it is done, so a read timeout
    shorter than the answer failed it. Streamed, its events keep the connection alive."""
    async with SimServer(sim_config(ttft_s=0.05, tokens_per_s=20)) as s:  # ~0.65 s
        async with AnthropicProvider(base_url=s.url, api_key="k", name="sim",
                                     pool=HttpPool(read_timeout=0.3)) as p:
            resp = await p.complete(ask(LONG), model=CLAUDE)
            assert resp.usage.output_tokens == 12
            with pytest.raises(ProviderTimeout):  # the short path still waits whole
                await p.complete(ask(SHORT), model=CLAUDE)
        assert streamed(s)[0] is True  # (the timed-out one is still being answered)


@pytest.mark.parametrize(("fault", "error"), [
    ("cut", MalformedResponse),  # the body cut mid-way: a broken, billed answer
    ("truncated", MalformedResponse),  # ended cleanly, early
    ("malformed", MalformedResponse),
    ("stream_error", Overloaded),  # an error in a 200: the error it names
])
async def test_broken_long_answer_is_classified_as_the_unstreamed_one(
        sim: SimServer, fault: str, error: type[ProviderError]) -> None:
    errors: list[ProviderError] = []
    for max_tokens in (SHORT, LONG):
        sim.script([fault])
        with pytest.raises(ProviderError) as got:
            await answer_from(sim, ask(max_tokens))
        errors.append(got.value)
    whole, streamed_err = errors
    assert type(whole) is type(streamed_err) is error
    assert whole.status == streamed_err.status == 200
    assert streamed(sim) == [False, True]
    if fault in ("cut", "truncated", "malformed"):
        # The provider billed it: the prompt as counted, the output at its bound (output
        # began, and the count message_start gave is from before the first token).
        billed = streamed_err.usage
        assert billed is not None and billed.input_tokens > 0 and billed.output_tokens == LONG


async def test_error_status_before_the_stream_is_the_same_error(sim: SimServer) -> None:
    for max_tokens in (SHORT, LONG):
        sim.script(["529"])
        with pytest.raises(Overloaded) as got:
            await answer_from(sim, ask(max_tokens))
        assert got.value.status == 529
    assert streamed(sim) == [False, True]


async def test_received_is_called_once_the_answer_is_read(sim: SimServer) -> None:
    calls: list[int] = []
    async with AnthropicProvider(base_url=sim.url, api_key="k", name="sim") as p:
        resp = await p.send(p.prepare(ask(LONG), model=CLAUDE),
                            received=lambda: calls.append(1))
        assert resp.text and calls == [1]
        sim.script(["cut"])
        with pytest.raises(MalformedResponse):
            await p.send(p.prepare(ask(LONG), model=CLAUDE), received=lambda: calls.append(2))
    assert calls == [1]  # a cut answer is not handed off (as a cut whole body is not)
    assert streamed(sim) == [True, True]


def claude_router(sim: SimServer) -> Router:
    return Router(Config.from_dict({"channels": {"anthropic": {
        "base_url": sim.url, "provider": "anthropic", "api_key": "sk-ant-test"}}}),
        retry=RetryPolicy(attempts=3, backoff=Backoff(base=0.01, cap=0.02), deadline_s=20))


async def test_router_complete_long_claude_call_end_to_end(sim: SimServer) -> None:
    async with claude_router(sim) as router:
        long = await router.complete(ask(LONG))
        short = await router.complete(ask(SHORT))
    assert streamed(sim) == [True, False]
    assert long.text == short.text and long.usage == short.usage
    assert long.cost_usd > 0 and long.cost_usd == short.cost_usd
    assert long.finish_reason == "stop" and long.wasted is None


async def test_router_retries_a_cut_long_answer_and_charges_it(sim: SimServer) -> None:
    sim.script(["cut", "ok"])
    async with claude_router(sim) as router:
        resp = await router.complete(ask(LONG))
    assert resp.attempts == 2 and resp.text
    assert resp.wasted is not None and resp.wasted.output_tokens == LONG
    assert resp.wasted_cost_usd > 0
    assert streamed(sim) == [True, True]
