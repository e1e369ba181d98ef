"""Failures as each official SDK sees them, across protocols: its own error class for
every status (RateLimitError with retry-after, InternalServerError, Anthropic's
OverloadedError for 529, OpenAI's 503 for the same overload), and a stream broken after
its first byte ending with the protocol's error event — carrying the upstream's error
type — never a clean end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from gateway_fixtures import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    anthropic_client,
    gateway,
    openai_client,
    sim_config,
)

from shoal.gateway.server import GatewayServer
from shoal.sim import ModelProfile, SimConfig, SimServer

MODELS = [OPENAI_MODEL, ANTHROPIC_MODEL]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
async def stack() -> AsyncIterator[tuple[SimServer, GatewayServer]]:
    async with SimServer(SimConfig()) as sim, gateway(sim_config(sim)) as gw:
        yield sim, gw


@pytest.mark.parametrize("model", MODELS)
async def test_rate_limits_are_each_sdks_rate_limit_error_with_retry_after(
        stack: tuple[SimServer, GatewayServer], model: str) -> None:
    sim, gw = stack
    async with openai_client(gw) as oa, anthropic_client(gw) as an:
        sim.script(["429"] * 3)  # every attempt of the Router's three
        with pytest.raises(openai.RateLimitError) as oinfo:
            await oa.chat.completions.create(model=model, messages=ASK)
        sim.script(["429"] * 3)
        with pytest.raises(anthropic.RateLimitError) as ainfo:
            await an.messages.create(model=model, max_tokens=50, messages=ASK)
    for err in (oinfo.value, ainfo.value):
        assert err.status_code == 429
        assert float(err.response.headers["retry-after"]) >= 1
    assert oinfo.value.code == "rate_limit_exceeded"
    assert ainfo.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
async def test_server_errors_are_the_sdks_status_errors(
        stack: tuple[SimServer, GatewayServer], model: str, stream: bool) -> None:
    """An upstream 500 that outlasts the Router's retries is a 502 (the SDKs'
    InternalServerError) — streamed requests too, failing before a byte. Overload: the
    next test."""
    sim, gw = stack
    async with openai_client(gw) as oa, anthropic_client(gw) as an:
        sim.script(["500"] * 3)
        with pytest.raises(openai.InternalServerError) as o500:
            await _openai_call(oa, model, stream)
        sim.script(["500"] * 3)
        with pytest.raises(anthropic.InternalServerError) as a500:
            await _anthropic_call(an, model, stream)
    assert o500.value.status_code == 502
    assert a500.value.status_code == 502


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
async def test_an_overload_is_openais_503_and_anthropics_529_with_retry_after(
        stack: tuple[SimServer, GatewayServer], model: str, stream: bool) -> None:
    """Providers said overloaded on every attempt the Router made: the OpenAI caller
    gets what OpenAI answers for an overload (503, ``service_unavailable_error``, code
    ``server_is_overloaded``; 529 is Anthropic's status alone), the Anthropic caller 529
    ``overloaded_error``; both with retry-after, as the gateway's rate limits."""
    sim, gw = stack
    async with openai_client(gw) as oa, anthropic_client(gw) as an:
        sim.script(["529"] * 3)
        with pytest.raises(openai.InternalServerError) as oinfo:
            await _openai_call(oa, model, stream)
        sim.script(["529"] * 3)
        with pytest.raises(anthropic.OverloadedError) as ainfo:
            await _anthropic_call(an, model, stream)
    assert oinfo.value.status_code == 503
    assert oinfo.value.type == "service_unavailable_error"
    assert oinfo.value.code == "server_is_overloaded" and oinfo.value.param is None
    assert ainfo.value.status_code == 529
    assert ainfo.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    for err in (oinfo.value, ainfo.value):
        assert float(err.response.headers["retry-after"]) >= 1
        assert float(err.response.headers["retry-after-ms"]) >= 1000


async def test_the_openai_sdk_retries_an_overload_after_its_retry_after(
        stack: tuple[SimServer, GatewayServer]) -> None:
    """What the openai SDK does with the 503: retries it (as any status >= 500; after
    the retry-after the test above checks) and gets the answer."""
    sim, gw = stack
    sim.script(["529"] * 3)  # every attempt of the Router's three; the SDK's retry is ok
    async with openai_client(gw) as oa:
        raw = await oa.with_options(max_retries=1).chat.completions.with_raw_response.create(
            model=OPENAI_MODEL, messages=ASK)
    assert raw.parse().choices[0].message.content
    assert raw.retries_taken == 1


async def _openai_call(client: openai.AsyncOpenAI, model: str, stream: bool) -> None:
    if stream:
        async for _ in await client.chat.completions.create(model=model, messages=ASK,
                                                            stream=True):
            pass
    else:
        await client.chat.completions.create(model=model, messages=ASK)


async def _anthropic_call(client: anthropic.AsyncAnthropic, model: str, stream: bool) -> None:
    if stream:
        async with client.messages.stream(model=model, max_tokens=50, messages=ASK) as s:
            await s.get_final_message()
    else:
        await client.messages.create(model=model, max_tokens=50, messages=ASK)


async def test_an_upstream_400_is_the_callers_bad_request_in_its_envelope(
        stack: tuple[SimServer, GatewayServer]) -> None:
    sim, gw = stack
    async with openai_client(gw) as oa, anthropic_client(gw) as an:
        sim.script(["400"])
        with pytest.raises(openai.BadRequestError) as oinfo:
            await oa.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK)
        sim.script(["400"])
        with pytest.raises(anthropic.BadRequestError) as ainfo:
            await an.messages.create(model=OPENAI_MODEL, max_tokens=50, messages=ASK)
    assert oinfo.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert ainfo.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert sim.stats().total_requests == 2  # a refusal is not retried


@pytest.mark.parametrize("model", MODELS)
async def test_an_overload_after_the_first_byte_keeps_its_type_in_the_error_event(
        model: str) -> None:
    """The upstream says overloaded inside a stream that has begun (Anthropic's
    ``event: error`` of type ``overloaded_error``, OpenAI's ``data: {"error": ...}``):
    the Anthropic caller's error event says ``overloaded_error`` too, as Anthropic's
    own would, so a client that retries overloads knows it may; the stream has no
    ``message_stop`` / ``[DONE]``."""
    slow = SimConfig(models={"*": ModelProfile(tokens_per_s=2000)})
    async with SimServer(slow) as sim, gateway(sim_config(sim)) as gw:
        raw: dict[str, bytes] = {}
        for route, body in (
                ("/v1/messages", {"model": model, "max_tokens": 50, "messages": ASK,
                                  "stream": True}),
                ("/v1/chat/completions", {"model": model, "messages": ASK, "stream": True})):
            sim.script(["stream_error"])
            async with aiohttp.ClientSession() as session, session.post(
                    gw.url + route, json=body) as response:
                assert response.status == 200
                raw[route] = await response.read()
        async with anthropic_client(gw) as an:
            sim.script(["stream_error"])
            with pytest.raises(anthropic.APIStatusError) as info:  # noqa: PT012
                async with an.messages.stream(model=model, max_tokens=50,
                                              messages=ASK) as stream:
                    async for _ in stream.text_stream:
                        pass
    anth = raw["/v1/messages"]
    assert b"event: message_stop" not in anth and b"content_block_delta" in anth
    assert anth.rstrip().split(b"\n\n")[-1].startswith(b"event: error\n")
    overloaded = model == ANTHROPIC_MODEL  # the simulator's Anthropic style says so
    assert (b'"type":"overloaded_error"' in anth) == overloaded
    assert info.value.body["error"]["type"] == (  # type: ignore[index]
        "overloaded_error" if overloaded else "api_error")
    oai = raw["/v1/chat/completions"]
    assert b"[DONE]" not in oai and oai.rstrip().split(b"\n\n")[-1].startswith(
        b'data: {"error":')


@pytest.mark.parametrize("model", MODELS)
async def test_a_stream_cut_inside_tool_calls_is_an_error_not_a_call(model: str) -> None:
    """The cut comes while the arguments of a tool call are streaming: each SDK raises,
    neither assembles half-written arguments into a finished tool call."""
    tools_oa: list[Any] = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}}, "required": ["city"]}}}]
    tools_an: list[Any] = [{"name": "get_weather", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    async with SimServer(SimConfig(models={"*": ModelProfile(tool_calls=2)})) as sim, \
            gateway(sim_config(sim)) as gw:
        async with openai_client(gw) as oa:
            sim.script(["cut"])
            with pytest.raises(openai.APIError):  # noqa: PT012 - raised mid-stream
                async with oa.chat.completions.stream(
                        model=model, messages=ASK, tools=tools_oa,
                        tool_choice="required") as ostream:
                    async for _ in ostream:
                        pass
        async with anthropic_client(gw) as an:
            sim.script(["cut"])
            with pytest.raises(anthropic.APIError):  # noqa: PT012 - raised mid-stream
                async with an.messages.stream(model=model, max_tokens=200, messages=ASK,
                                              tools=tools_an,
                                              tool_choice={"type": "any"}) as astream:
                    async for _ in astream:
                        pass
