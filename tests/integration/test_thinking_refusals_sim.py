"""Thinking's refusals on both sides of the wire (see tests/unit/test_thinking_refusals.py).

shoal refuses before sending what Anthropic and Gemini refuse around thinking (the
simulator's request log stays empty), and the simulator refuses the same raw requests on
its own, with the provider's status and envelope, so an adapter that lost its check
cannot go unnoticed. The allowed neighbours (top_p 0.95, temperature 1, each Gemini
thinking knob alone) still pass both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from sim_fixtures import USER, anthropic_for, openai_for, running

from shoal.config import Config
from shoal.errors import RequestRefused
from shoal.sim import SimConfig, SimServer
from shoal.sim.anthropic_rules import sign_thinking
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message, Thinking

ENABLED: Any = {"type": "enabled", "budget_tokens": 1024}
ADAPTIVE: Any = {"type": "adaptive"}
PREFILL: Any = [*USER, {"role": "assistant", "content": "The answer is"}]


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with running(SimConfig(seed=5)) as s:
        yield s


def styled(sim: SimServer, style: str, wire_model: str, protocol: str) -> Config:
    return Config.from_dict({
        "channels": {"ch": {"protocol": protocol, "base_url": sim.base_url(style,
                                                                           protocol=protocol),
                            "api_key": "sk-test", "provider": style}},
        "models": {"m": {"channels": ["ch"], "wire_name": wire_model}},
    })


def ask(**kw: Any) -> ChatRequest:
    kw.setdefault("messages", [Message.user("Name a colour.")])
    kw.setdefault("max_tokens", 2048)
    return ChatRequest("m", **kw)


def google(**config: Any) -> dict[str, Any]:
    return {"extra_body": {"google": {"thinking_config": config}}}


# -- the adapter refuses first --------------------------------------------------------------

# (case, style, wire model, protocol, request, the field named)
REFUSED: list[tuple[str, str, str, str, ChatRequest, str]] = [
    ("top_p 0.9 with thinking", "anthropic", "claude-haiku-4-5", "anthropic",
     ask(thinking=Thinking(budget_tokens=1024), top_p=0.9), "top_p"),
    ("top_k with adaptive thinking", "anthropic", "claude-sonnet-4-6", "anthropic",
     ask(thinking=Thinking(), extra={"top_k": 20}), "top_k"),
    ("a temperature with thinking from extra", "anthropic", "claude-haiku-4-5", "anthropic",
     ask(temperature=0.2, extra={"thinking": ENABLED}), "temperature"),
    ("a pre-filled answer with thinking", "anthropic", "claude-haiku-4-5", "anthropic",
     ask(thinking=Thinking(budget_tokens=1024),
         messages=[Message.user("Name a colour."), Message.assistant("The colour is")]),
     "messages"),
    ("Gemini: an effort and a thinking budget", "gemini", "gemini-2.5-flash", "openai",
     ask(thinking=Thinking(effort="low"), extra=google(thinking_budget=512)), "thinking"),
]


@pytest.mark.parametrize(("case", "style", "wire", "protocol", "request_", "param"), REFUSED,
                         ids=[c[0] for c in REFUSED])
async def test_shoal_refuses_before_anything_is_sent(
        sim: SimServer, case: str, style: str, wire: str, protocol: str,
        request_: ChatRequest, param: str) -> None:
    async with Router(styled(sim, style, wire, protocol)) as router:
        with pytest.raises(RequestRefused) as info:
            await router.complete(request_)
    assert info.value.param == param, str(info.value)
    assert sim.stats().total_requests == 0  # the simulator saw nothing


@pytest.mark.parametrize(("case", "style", "wire", "protocol", "request_"), [
    ("top_p 0.95 with thinking", "anthropic", "claude-haiku-4-5", "anthropic",
     ask(thinking=Thinking(budget_tokens=1024), top_p=0.95)),
    ("temperature 1 with thinking", "anthropic", "claude-haiku-4-5", "anthropic",
     ask(thinking=Thinking(budget_tokens=1024), temperature=1.0)),
    ("top_p 0.95 with adaptive thinking", "anthropic", "claude-sonnet-4-6", "anthropic",
     ask(thinking=Thinking(effort="low"), top_p=0.95)),
    ("Gemini: an effort with include_thoughts", "gemini", "gemini-2.5-flash", "openai",
     ask(thinking=Thinking(effort="low"), extra=google(include_thoughts=True))),
    ("Gemini: a budget alone", "gemini", "gemini-2.5-flash", "openai",
     ask(thinking=Thinking(budget_tokens=1024))),
], ids=lambda v: v if isinstance(v, str) and " " in v else "")
async def test_the_allowed_neighbour_is_answered(
        sim: SimServer, case: str, style: str, wire: str, protocol: str,
        request_: ChatRequest) -> None:
    async with Router(styled(sim, style, wire, protocol)) as router:
        answer = await router.complete(request_)
    assert answer.text
    assert [r.status for r in sim.stats().requests] == [200]


# -- the simulator refuses on its own ---------------------------------------------------------


@pytest.mark.parametrize(("model", "thinking", "fields", "words"), [
    ("claude-haiku-4-5", ENABLED, {"top_k": 5}, "`top_k` must be unset when thinking is "
     "enabled"),
    ("claude-sonnet-4-6", ADAPTIVE, {"top_k": 5}, "`top_k` must be unset when thinking is "
     "enabled"),
    ("claude-haiku-4-5", ENABLED, {"top_p": 0.9}, "`top_p` must be greater than or equal to "
     "0.95 or unset when thinking is enabled"),
    ("claude-sonnet-4-6", ADAPTIVE, {"top_p": 0.5}, "`top_p` must be greater than or equal "
     "to 0.95"),
    ("claude-haiku-4-5", ENABLED, {"messages": PREFILL}, "messages.1.content.0.type: Expected "
     "`thinking` or `redacted_thinking`, but found `text`. When `thinking` is enabled"),
])
async def test_the_simulator_refuses_a_raw_anthropic_request(
        model: str, thinking: Any, fields: dict[str, Any], words: str) -> None:
    fields = dict(fields)
    messages = fields.pop("messages", USER)  # the rest as extra_body: this SDK has no top_k
    async with running(SimConfig(style="anthropic")) as sim, anthropic_for(sim) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(model=model, max_tokens=2048, thinking=thinking,
                                         messages=messages, extra_body=fields)
        # the same request without thinking is answered
        ok = await client.messages.create(model=model, max_tokens=2048, messages=messages,
                                          extra_body=fields)
    assert info.value.status_code == 400
    assert words in info.value.message
    body: Any = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert ok.content


async def test_the_simulator_refuses_a_prefill_that_starts_with_its_thinking() -> None:
    """A pre-filled answer is refused with thinking on even when it opens with a signed
    thinking block (the documented rule; these words are the simulator's own)."""
    signed = {"type": "thinking", "thinking": "Colours...",
              "signature": sign_thinking("req_1", "Colours...")}
    request = {"model": "claude-haiku-4-5", "max_tokens": 2048, "thinking": ENABLED,
               "messages": [*USER, {"role": "assistant", "content": [
                   signed, {"type": "text", "text": "The answer is"}]}]}
    headers = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
    async with running(SimConfig(style="anthropic")) as sim, aiohttp.ClientSession() as http, \
            http.post(sim.url + "/v1/messages", json=request, headers=headers) as r:
        status, refused = r.status, await r.json()
    assert status == 400
    assert refused["error"]["type"] == "invalid_request_error"
    assert "pre-filling the assistant response is not supported when thinking is enabled" in (
        refused["error"]["message"])


async def test_the_simulator_takes_the_allowed_anthropic_neighbours() -> None:
    async with running(SimConfig(style="anthropic")) as sim, anthropic_for(sim) as client:
        for thinking, fields in ((ENABLED, {"top_p": 0.95}), (ENABLED, {"top_p": 1.0}),
                                 (ENABLED, {"temperature": 1.0}), (ADAPTIVE, {"top_p": 0.95})):
            model = "claude-sonnet-4-6" if thinking is ADAPTIVE else "claude-haiku-4-5"
            ok = await client.messages.create(model=model, max_tokens=2048, messages=USER,
                                              thinking=thinking, extra_body=fields)
            assert ok.content[0].type == "thinking", (thinking, fields)
    assert [r.status for r in sim.stats().requests] == [200] * 4


@pytest.mark.parametrize("config", [{"thinking_budget": 1024, "include_thoughts": True},
                                    {"thinking_level": "low"}])
async def test_the_simulator_refuses_a_raw_gemini_request(config: dict[str, Any]) -> None:
    overlap = {"model": "gemini-2.5-flash", "messages": USER, "reasoning_effort": "low",
               "extra_body": {"google": {"thinking_config": config}}}
    async with running(SimConfig(style="gemini")) as sim:
        async with aiohttp.ClientSession() as http, http.post(
                sim.base_url() + "/chat/completions", json=overlap,
                headers={"authorization": "Bearer sk-test"}) as r:
            status, refused = r.status, await r.json()
        async with openai_for(sim) as client:
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(
                    model="gemini-2.5-flash", messages=USER, reasoning_effort="low",
                    extra_body={"extra_body": {"google": {"thinking_config": config}}})
            alone = [
                await client.chat.completions.create(model="gemini-2.5-flash", messages=USER,
                                                     reasoning_effort="low"),
                await client.chat.completions.create(
                    model="gemini-2.5-flash", messages=USER,
                    extra_body={"extra_body": {"google": {"thinking_config": config}}}),
                await client.chat.completions.create(
                    model="gemini-2.5-flash", messages=USER, reasoning_effort="low",
                    extra_body={"extra_body": {"google": {"thinking_config": {
                        "include_thoughts": True}}}}),
            ]
    assert status == 400
    assert isinstance(refused, list) and len(refused) == 1  # Google's error array
    err = refused[0]["error"]
    assert (err["code"], err["status"]) == (400, "INVALID_ARGUMENT")
    assert "reasoning_effort and extra_body.google.thinking_config." in err["message"]
    assert "cannot be used at the same time" in err["message"]
    assert isinstance(info.value.body, list)
    assert all(a.choices[0].message.content for a in alone)
