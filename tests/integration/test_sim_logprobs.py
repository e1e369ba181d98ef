"""Token log probabilities from the simulator (``logprobs: true``, ``top_logprobs: N``),
read by the unmodified ``openai`` SDK and by shoal's Router over real HTTP: whole and
streamed, per provider style, and absent when not asked for."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob
from sim_fixtures import QUESTION, USER, openai_for, running, streamed_whole, style_router

from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.sim.content import REFUSAL_TEXT
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.types import ChatRequest, Message, TextDelta, TokenLogprob

MODEL = "gpt-4o-mini"
FAST = RetryPolicy(attempts=1, backoff=Backoff(base=0.01, cap=0.02), deadline_s=20)
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}},
        "required": ["city"], "additionalProperties": False}}}


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with running(SimConfig(seed=11, models={"*": ModelProfile(output_tokens=12)})) as s:
        yield s


def check_entries(entries: list[ChatCompletionTokenLogprob], top: int) -> None:
    """Each entry is a well-formed ChatCompletionTokenLogprob with ``top`` alternatives,
    the token itself first and the rest no more likely."""
    for entry in entries:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == top
        if top:
            first = entry.top_logprobs[0]
            assert (first.token, first.logprob) == (entry.token, entry.logprob)
        values = [alt.logprob for alt in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-9
        assert all(alt.bytes == list(alt.token.encode()) for alt in entry.top_logprobs)
        assert len({alt.token for alt in entry.top_logprobs}) == top


async def raw_post(sim: SimServer, body: dict[str, Any], style: str | None = None
                   ) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(
        sim.base_url(style) + "/chat/completions", json=body,
        headers={"Authorization": "Bearer sk-test"},
    ) as resp:
        return resp.status, await resp.read()


# -- the official SDK ----------------------------------------------------------------------


@pytest.mark.parametrize("top", [None, 0, 3, 20])
async def test_the_sdk_reads_the_logprobs_of_a_whole_answer(
        sim: SimServer, top: int | None) -> None:
    async with openai_for(sim) as client:
        got = await client.chat.completions.create(
            model=MODEL, messages=USER, logprobs=True,
            top_logprobs=openai.omit if top is None else top)
    choice = got.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    assert got.usage is not None and len(entries) == got.usage.completion_tokens
    assert choice.logprobs.refusal is None
    check_entries(entries, top or 0)


@pytest.mark.parametrize("top", [0, 5])
async def test_the_sdk_reads_logprobs_on_each_streamed_content_chunk(
        sim: SimServer, top: int) -> None:
    async with openai_for(sim) as client:
        whole = await client.chat.completions.create(model=MODEL, messages=USER,
                                                     logprobs=True, top_logprobs=top)
        stream = await client.chat.completions.create(
            model=MODEL, messages=USER, logprobs=True, top_logprobs=top, stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
    streamed: list[ChatCompletionTokenLogprob] = []
    text = ""
    for chunk in chunks:
        if not chunk.choices:
            continue  # the usage chunk
        choice = chunk.choices[0]
        if choice.delta.content:
            assert choice.logprobs is not None and choice.logprobs.content is not None
            assert "".join(e.token for e in choice.logprobs.content) == choice.delta.content
            streamed.extend(choice.logprobs.content)
            text += choice.delta.content
        else:  # the role chunk and the finishing one carry none
            assert choice.logprobs is None
    assert text == whole.choices[0].message.content
    check_entries(streamed, top)
    # the same answer, the same numbers, whole or streamed
    assert whole.choices[0].logprobs is not None
    assert streamed == whole.choices[0].logprobs.content


async def test_without_logprobs_the_answer_says_null(sim: SimServer) -> None:
    async with openai_for(sim) as client:
        got = await client.chat.completions.create(model=MODEL, messages=USER)
        stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        chunks = [c async for c in stream]
        off = await client.chat.completions.create(model=MODEL, messages=USER, logprobs=False)
    assert got.choices[0].logprobs is None and off.choices[0].logprobs is None
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)
    status, body = await raw_post(sim, {"model": MODEL, "messages": USER})
    assert status == 200
    assert json.loads(body)["choices"][0]["logprobs"] is None


async def test_the_same_request_gets_the_same_logprobs(sim: SimServer) -> None:
    async with openai_for(sim) as client:
        first, second = [
            await client.chat.completions.create(model=MODEL, messages=USER, logprobs=True,
                                                 top_logprobs=2)
            for _ in range(2)
        ]
    assert first.choices[0].logprobs == second.choices[0].logprobs


async def test_structured_output_has_one_entry_per_piece_of_its_json(sim: SimServer) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "plan", "schema": {
        "type": "object", "properties": {"goal": {"type": "string"}}, "required": ["goal"]}}}
    async with openai_for(sim) as client:
        got = await client.chat.completions.create(model=MODEL, messages=USER, logprobs=True,
                                                   top_logprobs=1, response_format=fmt)
    choice = got.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.message.content or ""
    assert isinstance(json.loads(content)["goal"], str)
    assert "".join(e.token for e in choice.logprobs.content) == content
    check_entries(choice.logprobs.content, 1)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_call_answer_has_no_content_logprobs(sim: SimServer, stream: bool) -> None:
    async with openai_for(sim) as client:
        if stream:
            chunks = [c async for c in await client.chat.completions.create(
                model=MODEL, messages=USER, tools=[WEATHER], tool_choice="required",
                logprobs=True, top_logprobs=2, stream=True)]
            assert any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
            assert all(c.choices[0].logprobs is None for c in chunks if c.choices)
            return
        got = await client.chat.completions.create(
            model=MODEL, messages=USER, tools=[WEATHER], tool_choice="required",
            logprobs=True, top_logprobs=2)
    choice = got.choices[0]
    assert choice.message.tool_calls and choice.message.content is None
    assert choice.logprobs is None or not choice.logprobs.content


async def test_a_refusal_carries_the_logprobs_of_its_words(sim: SimServer) -> None:
    sim.script(["refusal", "refusal"])
    async with openai_for(sim) as client:
        got = await client.chat.completions.create(model=MODEL, messages=USER, logprobs=True,
                                                   top_logprobs=2)
        chunks = [c async for c in await client.chat.completions.create(
            model=MODEL, messages=USER, logprobs=True, top_logprobs=2, stream=True)]
    logprobs = got.choices[0].logprobs
    assert got.choices[0].message.refusal == REFUSAL_TEXT
    assert logprobs is not None and logprobs.content is None and logprobs.refusal
    assert "".join(e.token for e in logprobs.refusal) == REFUSAL_TEXT
    check_entries(logprobs.refusal, 2)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.refusal or ()]
    assert streamed == logprobs.refusal


@pytest.mark.parametrize(("extra", "code"), [
    ({"logprobs": True, "top_logprobs": 21}, "integer_above_max_value"),
    ({"logprobs": True, "top_logprobs": -1}, "integer_below_min_value"),
    ({"top_logprobs": 2}, "invalid_value"),
])
async def test_openai_style_refuses_a_top_logprobs_openai_refuses(
        sim: SimServer, extra: dict[str, Any], code: str) -> None:
    async with openai_for(sim) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=MODEL, messages=USER, **extra)
    assert (caught.value.param, caught.value.code) == ("top_logprobs", code)


# -- per provider style ---------------------------------------------------------------------


@pytest.mark.parametrize(("style", "model", "answers"), [
    ("openai", MODEL, True),
    ("permissive", MODEL, True),
    ("deepseek", "deepseek-chat", True),  # outside thinking mode
    ("gemini", "gemini-2.5-flash", True),
    ("moonshot", "kimi-k2-0905-preview", False),  # the field is taken, nothing returned
    ("zhipu", "glm-4.6", False),
    ("minimax", "MiniMax-M2", False),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_the_styles_whose_providers_return_logprobs_return_them(
        sim: SimServer, style: str, model: str, answers: bool, stream: bool) -> None:
    body = {"model": model, "messages": USER, "logprobs": True, "top_logprobs": 2,
            "stream": stream}
    status, raw = await raw_post(sim, body, style)
    assert status == 200
    if stream:
        events = [json.loads(line[6:]) for line in raw.decode().splitlines()
                  if line.startswith("data: {")]
        carried = [e["choices"][0]["logprobs"] for e in events
                   if e.get("choices") and e["choices"][0]["delta"].get("content")]
        assert carried
        assert all(lp is not None for lp in carried) if answers else all(
            lp is None for lp in carried)
    else:
        logprobs = json.loads(raw)["choices"][0]["logprobs"]
        assert (logprobs is not None) is answers
        if answers:
            assert len(logprobs["content"][0]["top_logprobs"]) == 2


# -- shoal's Router ------------------------------------------------------------------------


def check_tokens(tokens: tuple[TokenLogprob, ...], top: int) -> None:
    for token in tokens:
        assert token.logprob <= 0 and token.bytes == tuple(token.token.encode())
        assert len(token.top) == top
        if top:
            assert (token.top[0].token, token.top[0].logprob) == (token.token, token.logprob)


@pytest.mark.parametrize("style", ["openai", "deepseek"])
async def test_the_router_answers_with_logprobs(sim: SimServer, style: str) -> None:
    ask = ChatRequest("m", [Message.user(QUESTION)], logprobs=3)
    async with style_router(sim, style, FAST) as router:
        answer = await router.complete(ask)
        plain = await router.complete(ChatRequest("m", [Message.user(QUESTION)]))
    assert answer.logprobs
    assert "".join(t.token for t in answer.logprobs) == answer.text
    check_tokens(answer.logprobs, 3)
    assert plain.text == answer.text and plain.logprobs is None


async def test_the_router_streams_text_deltas_with_their_logprobs(sim: SimServer) -> None:
    ask = ChatRequest("m", [Message.user(QUESTION)], logprobs=2)
    async with style_router(sim, "openai", FAST) as router:
        whole = await router.complete(ask)
        events, end = await streamed_whole(router, ask)
        _, plain_end = await streamed_whole(router, ChatRequest("m", [Message.user(QUESTION)]))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert deltas
    for delta in deltas:
        assert delta.logprobs
        assert "".join(t.token for t in delta.logprobs) == delta.text
        check_tokens(delta.logprobs, 2)
    streamed = tuple(t for d in deltas for t in d.logprobs)
    assert end.logprobs == streamed == whole.logprobs
    assert end.text == whole.text
    assert plain_end.logprobs is None
