"""What an official-SDK client asks for reaches the upstream as it asked, through the
gateway and shoal's neutral types: ``response_format``'s ``strict`` and ``json_object``,
``logprobs``/``top_logprobs`` (or a clear 400 where the upstream has none), and
Anthropic's top-level ``cache_control``.

The channels point at a :class:`~gateway_fixtures.Recorder` in front of the simulator:
real HTTP both ways, and the bodies the gateway sent upstream kept for the asserts.
The simulator answers log probabilities when asked (its own tokens and values); one test
also checks them against a small upstream that sends the exact bytes OpenAI sends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web
from gateway_fixtures import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    UPSTREAM_KEY,
    Recorder,
    anthropic_client,
    gateway,
    openai_client,
    recording,
    serving,
    sim_config,
)
from pydantic import BaseModel

from shoal.config import Config
from shoal.gateway.server import GatewayServer
from shoal.sim import SimConfig, SimServer

DEEPSEEK_MODEL = "deepseek-test"  # an OpenAI-protocol channel in DeepSeek's style
USER: list[Any] = [{"role": "user", "content": "What limits bind when agents share a provider?"}]
# Fits OpenAI's strict mode once additionalProperties: false is added (shoal adds it
# when it sends a schema strict), so "strict or not" shows in what is sent.
SCHEMA: dict[str, Any] = {"type": "object", "properties": {"title": {"type": "string"}},
                          "required": ["title"]}


class Answer(BaseModel):
    title: str
    points: list[str]


def _config(rec: Recorder) -> Config:
    """``gpt-test``/``claude-test`` as usual plus a DeepSeek-style channel; caching off
    on every channel, so a cache hit can only come from what the client asked."""
    config = sim_config(rec, channel={"cache": "off"})
    extra = Config.from_dict({
        "channels": {"ds": {"protocol": "openai", "base_url": rec.base_url("deepseek"),
                            "api_key": UPSTREAM_KEY, "provider": "deepseek", "cache": "off"}},
        "models": {DEEPSEEK_MODEL: {"channels": ["ds"], "wire_name": "deepseek-chat",
                                    "input": 0.3, "output": 1.2, "fallbacks": []}},
    })
    config.add_channel(extra.channels["ds"])
    config.add_model(extra.model(DEEPSEEK_MODEL))
    return config


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Recorder, GatewayServer]]:
    async with SimServer(SimConfig()) as sim, recording(sim) as rec, \
            gateway(_config(rec)) as gw:
        yield rec, gw


# -- response_format: the client's strict ----------------------------------------------------


@pytest.mark.parametrize(("strict", "sent"), [(False, None), (None, None), (True, True)])
async def test_json_schema_goes_strict_only_when_the_client_asked(
        upstream: tuple[Recorder, GatewayServer], strict: bool | None,
        sent: bool | None) -> None:
    rec, gw = upstream
    spec: dict[str, Any] = {"name": "Answer", "schema": SCHEMA}
    if strict is not None:
        spec["strict"] = strict
    fmt: Any = {"type": "json_schema", "json_schema": spec}
    async with openai_client(gw) as client:
        answer = await client.chat.completions.create(model=OPENAI_MODEL, messages=USER,
                                                      response_format=fmt)
    assert isinstance(json.loads(answer.choices[0].message.content or "")["title"], str)
    upstream_spec = rec.bodies[-1]["response_format"]["json_schema"]
    assert upstream_spec.get("strict") is sent
    if sent is None:  # non-strict: the schema as the client wrote it
        assert upstream_spec["schema"] == SCHEMA


async def test_anthropic_structured_output_stays_strict_on_an_openai_upstream(
        upstream: tuple[Recorder, GatewayServer]) -> None:
    """Anthropic's structured outputs are always constrained: strict is what it asked."""
    rec, gw = upstream
    async with anthropic_client(gw) as client:
        parsed = await client.messages.parse(model=OPENAI_MODEL, max_tokens=300,
                                             messages=USER, output_format=Answer)
    assert isinstance(parsed.parsed_output, Answer)
    assert rec.bodies[-1]["response_format"]["json_schema"]["strict"] is True


# -- response_format: json_object is JSON mode ---------------------------------------------


@pytest.mark.parametrize("model", [OPENAI_MODEL, DEEPSEEK_MODEL])
async def test_json_object_goes_upstream_as_json_mode_with_the_prompt_as_written(
        upstream: tuple[Recorder, GatewayServer], model: str) -> None:
    rec, gw = upstream
    messages: list[Any] = [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "List three risks, as a JSON object."}]
    async with openai_client(gw) as client:
        answer = await client.chat.completions.create(
            model=model, messages=messages, response_format={"type": "json_object"})
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    sent = rec.bodies[-1]
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["messages"] == messages  # no schema stated for the client


async def test_json_object_to_anthropic_is_an_open_object_through_structured_output(
        upstream: tuple[Recorder, GatewayServer]) -> None:
    """Anthropic has no JSON mode: an open object schema asks for exactly "a JSON object"."""
    rec, gw = upstream
    async with openai_client(gw) as client:
        answer = await client.chat.completions.create(
            model=ANTHROPIC_MODEL, messages=[{"role": "user", "content": "Risks, in JSON."}],
            response_format={"type": "json_object"})
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    tools = rec.bodies[-1]["tools"]
    assert [t["input_schema"] for t in tools] == [{"type": "object",
                                                   "additionalProperties": True}]


# -- logprobs ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_logprobs_for_an_anthropic_upstream_are_a_400_before_any_upstream_request(
        upstream: tuple[Recorder, GatewayServer], stream: bool) -> None:
    rec, gw = upstream
    async with openai_client(gw) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=ANTHROPIC_MODEL, messages=USER,
                                                 logprobs=True, top_logprobs=2, stream=stream)
    err = caught.value
    assert err.param == "logprobs" and err.code == "unsupported_parameter"
    assert "log probabilities" in err.message and "leave logprobs" in err.message
    assert rec.bodies == []


async def test_top_logprobs_without_logprobs_is_a_400(
        upstream: tuple[Recorder, GatewayServer]) -> None:
    rec, gw = upstream
    async with openai_client(gw) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=OPENAI_MODEL, messages=USER,
                                                 top_logprobs=2)
    assert caught.value.param == "top_logprobs"
    assert rec.bodies == []


@pytest.mark.parametrize("stream", [False, True])
async def test_logprobs_go_upstream_to_an_openai_channel(
        upstream: tuple[Recorder, GatewayServer], stream: bool) -> None:
    rec, gw = upstream
    async with openai_client(gw) as client:
        if stream:
            chunks = await client.chat.completions.create(
                model=OPENAI_MODEL, messages=USER, logprobs=True, top_logprobs=3, stream=True)
            pieces = [(choice.delta.content or "", choice.logprobs) async for c in chunks
                      for choice in c.choices if choice.delta.content]
            text = "".join(p for p, _ in pieces)
            entries = [e for _, lp in pieces if lp is not None and lp.content
                       for e in lp.content]
        else:
            whole = await client.chat.completions.create(model=OPENAI_MODEL, messages=USER,
                                                         logprobs=True, top_logprobs=3)
            choice = whole.choices[0]
            text = choice.message.content or ""
            assert choice.logprobs is not None and choice.logprobs.content is not None
            entries = choice.logprobs.content
        await client.chat.completions.create(model=OPENAI_MODEL, messages=USER, logprobs=True)
    # what the simulator's model said came back with its log probabilities, token by token
    assert text and "".join(e.token for e in entries) == text
    assert all(len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
               and e.logprob <= 0 for e in entries)
    asked, plain = rec.bodies[-2:]
    assert (asked["logprobs"], asked["top_logprobs"]) == (True, 3)
    assert plain["logprobs"] is True and "top_logprobs" not in plain


_TOKENS = [("Hello", -0.01, [("Hello", -0.01), ("Hi", -4.6)]),
           (" world", -0.2, [(" world", -0.2), (" there", -1.7)])]


def _logprobs(tokens: list[tuple[str, float, list[tuple[str, float]]]]) -> dict[str, Any]:
    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [one(t, lp) | {"top_logprobs": [one(a, alp) for a, alp in top]}
                        for t, lp, top in tokens], "refusal": None}


@asynccontextmanager
async def logprobs_upstream(ignores_stream: bool) -> AsyncIterator[str]:
    """An OpenAI upstream answering "Hello world" with the log probabilities of its two
    tokens, in OpenAI's exact shapes (whole: ``choices[0].logprobs``; streamed: each
    chunk's choice carries its delta's tokens). ``ignores_stream``: a whole JSON answer
    to a stream request too, as a proxy that drops ``stream: true`` sends (trap 13)."""
    head = {"id": "chatcmpl-lp", "created": 1, "model": "gpt-4o-mini"}
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if ignores_stream or not body.get("stream"):
            return web.json_response(head | {"object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": "Hello world",
                                        "refusal": None},
                "logprobs": _logprobs(_TOKENS), "finish_reason": "stop"}], "usage": usage})
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        chunk = head | {"object": "chat.completion.chunk"}
        for token in _TOKENS:
            await out.write(b"data: " + json.dumps(chunk | {"choices": [{
                "index": 0, "delta": {"content": token[0]}, "logprobs": _logprobs([token]),
                "finish_reason": None}]}).encode() + b"\n\n")
        await out.write(b"data: " + json.dumps(chunk | {"choices": [{
            "index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}).encode()
            + b"\n\n")
        await out.write(b"data: " + json.dumps(chunk | {"choices": [], "usage": usage}).encode()
                        + b"\n\ndata: [DONE]\n\n")
        return out

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    async with serving(app) as url:
        yield url + "/v1"


@pytest.mark.parametrize("ignores_stream", [False, True])
async def test_logprobs_come_back_whole_and_streamed(ignores_stream: bool) -> None:
    async with logprobs_upstream(ignores_stream) as url, gateway(Config.from_dict({
            "channels": {"lp": {"protocol": "openai", "base_url": url, "api_key": UPSTREAM_KEY,
                                "provider": "openai"}},
            "models": {"gpt-lp": {"channels": ["lp"], "wire_name": "gpt-4o-mini",
                                  "input": 1.0, "output": 2.0, "fallbacks": []}}})) as gw, \
            openai_client(gw) as client:
        whole = await client.chat.completions.create(model="gpt-lp", messages=USER,
                                                     logprobs=True, top_logprobs=2)
        stream = await client.chat.completions.create(model="gpt-lp", messages=USER,
                                                      logprobs=True, top_logprobs=2,
                                                      stream=True)
        chunks = [c async for c in stream]
    expected = _logprobs(_TOKENS)["content"]
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [t.model_dump() for t in logprobs.content] == expected
    streamed = [t.model_dump() for c in chunks for choice in c.choices
                if choice.logprobs is not None for t in choice.logprobs.content or ()]
    assert streamed == expected
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello world"


# -- Anthropic's top-level cache_control (automatic caching) --------------------------------

LONG_SYSTEM = " ".join(f"Rule {i}: cite the source of every figure you give." for i in range(200))


@pytest.mark.parametrize("ttl", [None, "1h"])
async def test_top_level_cache_control_reaches_an_anthropic_upstream(
        upstream: tuple[Recorder, GatewayServer], ttl: str | None) -> None:
    rec, gw = upstream
    marker: Any = {"type": "ephemeral"} if ttl is None else {"type": "ephemeral", "ttl": ttl}
    async with anthropic_client(gw) as client:
        first = await client.messages.create(model=ANTHROPIC_MODEL, max_tokens=50,
                                              system=LONG_SYSTEM, messages=USER,
                                              cache_control=marker)
        second = await client.messages.create(model=ANTHROPIC_MODEL, max_tokens=50,
                                               system=LONG_SYSTEM, messages=USER,
                                               cache_control=marker)
    assert rec.bodies[-1]["cache_control"] == marker
    assert (first.usage.cache_creation_input_tokens or 0) > 0
    assert (second.usage.cache_read_input_tokens or 0) > 0


async def test_top_level_cache_control_is_a_no_op_for_an_openai_upstream(
        upstream: tuple[Recorder, GatewayServer]) -> None:
    """OpenAI-style providers cache prefixes on their own: nothing to send, no refusal."""
    rec, gw = upstream
    async with anthropic_client(gw) as client:
        message = await client.messages.create(model=OPENAI_MODEL, max_tokens=50,
                                               system=LONG_SYSTEM, messages=USER,
                                               cache_control={"type": "ephemeral"})
    assert message.stop_reason == "end_turn"
    assert "cache_control" not in rec.bodies[-1]


# -- an upstream's 413 -----------------------------------------------------------------------


async def test_an_upstream_413_reaches_the_caller_as_a_413_not_a_context_overflow(
        upstream: tuple[Recorder, GatewayServer]) -> None:
    """Anthropic's 413 request_too_large is about bytes: not a context overflow (which a
    fallback with a larger window could serve), so it is not resent, and the caller's
    SDK sees the same status."""
    rec, gw = upstream
    rec.sim.script(["413"])
    async with anthropic_client(gw) as client:
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(model=ANTHROPIC_MODEL, max_tokens=32,
                                         messages=USER)
    assert info.value.status_code == 413
    assert "too large" in str(info.value)
    assert len(rec.bodies) == 1  # sent once, to one channel
