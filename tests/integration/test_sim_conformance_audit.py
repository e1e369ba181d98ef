"""Refusals the adapters made locally that the simulator's styles did not know (the
conformance audit of PROVIDERS.md, 2026): the simulator must refuse what the provider
refuses on its own, not only because the adapter never sends it. Each case is checked
twice: raw HTTP to the style (its status, envelope and ``param``), and through shoal with
the field slipped in by ``ChatRequest.extra`` (merged last, past the adapter's check), so
the provider's own 400 is what comes back, classified as a ``BadRequest`` (never
retried: one request).

Plus one rule the adapter lacked: from Claude Opus 4.1 and the 4.5 models on,
``temperature`` and ``top_p`` together are a 400 (integrators' reports with request ids:
langfuse/langfuse#9882, SalesforceAIResearch/MCP-Universe#49); an OpenAI client sending
both through the gateway is now refused before any upstream request, naming ``top_p``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from gateway_fixtures import ANTHROPIC_MODEL, gateway, openai_client, sim_config

from shoal.config import Config
from shoal.errors import BadRequest, RequestRefused
from shoal.sim import SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

USER: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
SONNET_4 = "claude-sonnet-4-20250514"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig()) as s:
        yield s


async def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    headers = {"authorization": "Bearer sk-test", "x-api-key": "sk-test"}
    async with aiohttp.ClientSession() as http, http.post(url, json=body,
                                                          headers=headers) as r:
        return r.status, json.loads(await r.read())


def routed(sim: SimServer, style: str, wire: str) -> Config:
    protocol = "anthropic" if style == "anthropic" else "openai"
    return Config.from_dict({
        "channels": {"ch": {"protocol": protocol,
                            "base_url": sim.base_url(style, protocol=protocol),
                            "api_key": "sk-test", "provider": style}},
        "models": {"m": {"channels": ["ch"], "wire_name": wire}},
    })


# Each: (case, style, wire model, fields, param named by an OpenAI-style 400 or None,
# words of the provider's message).
REFUSED: list[tuple[str, str, str, dict[str, Any], str | None, str]] = [
    ("five stop sequences to OpenAI", "openai", "gpt-4o",
     {"stop": ["a1", "b2", "c3", "d4", "e5"]}, "stop", "array too long"),
    ("top_p to an OpenAI reasoning model", "openai", "o3-mini", {"top_p": 0.5}, "top_p",
     "Only the default (1) value is supported"),
    ("reasoning_effort to an OpenAI model that does not reason", "openai", "gpt-4o",
     {"reasoning_effort": "high"}, "reasoning_effort", "not supported with this model"),
    ("top_p above 1 to OpenAI", "openai", "gpt-4o", {"top_p": 1.5}, "top_p",
     "Expected a value <= 1"),
    ("temperature above 1 to Anthropic", "anthropic", SONNET_4, {"temperature": 1.5}, None,
     "temperature: Input should be less than or equal to 1"),
    ("top_p above 1 to Anthropic", "anthropic", SONNET_4, {"top_p": 1.5}, None,
     "top_p: Input should be less than or equal to 1"),
    ("temperature and top_p to Claude Sonnet 4.5", "anthropic", "claude-sonnet-4-5-20250929",
     {"temperature": 0.5, "top_p": 0.9}, None, "cannot both be specified"),
    ("temperature and top_p to Claude Opus 4.1", "anthropic", "claude-opus-4-1-20250805",
     {"temperature": 0.5, "top_p": 0.9}, None, "cannot both be specified"),
]
IDS = [c[0] for c in REFUSED]


def _url(sim: SimServer, style: str) -> str:
    if style == "anthropic":
        return sim.base_url("anthropic", protocol="anthropic") + "/v1/messages"
    return sim.base_url(style) + "/chat/completions"


@pytest.mark.parametrize(("case", "style", "wire", "fields", "param", "says"), REFUSED,
                         ids=IDS)
async def test_the_style_refuses_what_the_provider_refuses(
        sim: SimServer, case: str, style: str, wire: str, fields: dict[str, Any],
        param: str | None, says: str) -> None:
    body = {"model": wire, "messages": USER, "max_tokens": 200, **fields}
    if style == "openai":
        body["max_completion_tokens"] = body.pop("max_tokens")
    status, answer = await post(_url(sim, style), body)
    assert status == 400, answer
    if style == "anthropic":
        assert answer["type"] == "error"
        assert answer["error"]["type"] == "invalid_request_error"
        assert says in answer["error"]["message"]
    else:
        assert answer["error"]["type"] == "invalid_request_error"
        assert answer["error"]["param"] == param
        assert says in answer["error"]["message"]


@pytest.mark.parametrize(("case", "style", "wire", "fields", "param", "says"), REFUSED,
                         ids=IDS)
async def test_slipped_past_the_adapter_the_provider_400_is_not_retried(
        sim: SimServer, case: str, style: str, wire: str, fields: dict[str, Any],
        param: str | None, says: str) -> None:
    request = ChatRequest("m", [Message.user("What is the weather in Paris?")],
                          max_tokens=200, extra=fields)
    async with Router(routed(sim, style, wire)) as router:
        with pytest.raises(BadRequest) as info:
            await router.complete(request)
    assert info.value.status == 400 and says in info.value.message
    assert sim.stats().total_requests == 1  # a 400: never retried


@pytest.mark.parametrize("wire", ["claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805",
                                  "claude-haiku-4-5", "claude-sonnet-4-6"])
async def test_claude_4_5_temperature_and_top_p_are_refused_before_sending(
        sim: SimServer, wire: str) -> None:
    request = ChatRequest("m", [Message.user("hi")], temperature=0.5, top_p=0.9)
    async with Router(routed(sim, "anthropic", wire)) as router:
        with pytest.raises(RequestRefused) as info:
            await router.complete(request)
        assert info.value.param == "top_p"
        one = await router.complete(ChatRequest("m", [Message.user("hi")], temperature=0.5))
    assert one.text
    assert sim.stats().total_requests == 1  # only the request with one sampler went out


async def test_claude_sonnet_4_still_takes_temperature_and_top_p(sim: SimServer) -> None:
    request = ChatRequest("m", [Message.user("hi")], temperature=0.5, top_p=0.9)
    async with Router(routed(sim, "anthropic", SONNET_4)) as router:
        answer = await router.complete(request)
    assert answer.text and sim.stats().total_requests == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_openai_client_sending_both_to_claude_4_5_gets_a_400_naming_top_p(
        sim: SimServer, stream: bool) -> None:
    cfg = sim_config(sim, models={ANTHROPIC_MODEL: {"wire_name": "claude-sonnet-4-5"}})
    async with gateway(cfg) as gw, openai_client(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model=ANTHROPIC_MODEL, messages=USER,
                                                 temperature=0.5, top_p=0.9, stream=stream)
    assert info.value.status_code == 400
    assert info.value.param == "top_p", info.value.message
    assert sim.stats().total_requests == 0
