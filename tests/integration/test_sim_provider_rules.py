"""More of PROVIDERS.md's refusals and shapes in the simulator's strict styles: OpenAI's
role and ``tool_choice`` values, Zhipu's ``tool_stream`` and its overload as a 429,
Anthropic's argument-less tool calls, rounded token headers and its 32 MB cap."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anthropic
import pytest
from sim_fixtures import QUESTION

from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import Overloaded
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEnd, ToolSpec

USER = [{"role": "user", "content": QUESTION}]
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
NOW = ToolSpec("now", "The current time.", {"type": "object", "properties": {}})


async def post(url: str, body: Any, headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, str], bytes]:
    sent = {"authorization": "Bearer sk-test", "x-api-key": "sk-test", **(headers or {})}
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=sent) as r:
        return r.status, dict(r.headers), await r.read()


def data_events(raw: bytes) -> list[Any]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


# -- OpenAI: enum values -------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role",
     "Invalid value: 'bot'. Supported values are: 'system', 'assistant', 'user', 'function', "
     "'tool', and 'developer'."),
    ({"messages": USER, "tools": [tool("lookup", CITY)], "tool_choice": "any"}, "tool_choice",
     "Invalid value: 'any'. Supported values are: 'none', 'auto', and 'required'."),
], ids=["role", "tool_choice"])
async def test_openai_refuses_values_outside_its_enums(
    body: dict[str, Any], param: str, message: str
) -> None:
    """``messages[].role`` and ``tool_choice`` take the values of PROVIDERS.md §1."""
    async with SimServer(SimConfig(style="openai")) as sim:
        status, _, raw = await post(sim.base_url() + "/chat/completions",
                                    {"model": "gpt-4o", **body})
        ok, _, _ = await post(sim.base_url() + "/chat/completions", {
            "model": "gpt-4o", "messages": [{"role": "developer", "content": "Be brief."}, *USER],
            "tools": [tool("lookup", CITY)], "tool_choice": "required"})
    assert status == 400
    assert json.loads(raw)["error"] == {"message": message, "type": "invalid_request_error",
                                        "param": param, "code": "invalid_value"}
    assert ok == 200


# -- Zhipu ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "tool_stream", "pieces"), [
    ("glm-4.6", True, True),
    ("glm-4.6", False, False),
    ("glm-4.5", True, False),  # tool_stream is GLM-4.6 and later
])
async def test_zhipu_streams_tool_arguments_only_with_tool_stream(
    model: str, tool_stream: bool, pieces: bool
) -> None:
    """docs.bigmodel.cn stream-tool: arguments stream incrementally only with
    ``tool_stream: true`` (GLM-4.6+); otherwise each call comes whole in one chunk."""
    body: dict[str, Any] = {"model": model, "messages": USER, "stream": True,
                            "tools": [tool("lookup", CITY)]}
    if tool_stream:
        body["tool_stream"] = True
    async with SimServer(SimConfig(style="zhipu", seed=2)) as sim:
        status, _, raw = await post(sim.base_url() + "/chat/completions", body)
    assert status == 200
    fragments = [f for e in data_events(raw) for c in e["choices"]
                 for f in c["delta"].get("tool_calls", [])]
    assert (len(fragments) > 1) is pieces
    assert fragments[0]["id"] and fragments[0]["function"]["name"] == "lookup"
    joined = "".join(f["function"].get("arguments") or "" for f in fragments)
    assert json.loads(joined)["city"]


async def test_zhipu_tool_stream_through_shoal() -> None:
    request = ChatRequest("m", [Message.user("look it up")],
                          tools=[ToolSpec("lookup", "Look a city up.", CITY)],
                          extra={"tool_stream": True})
    async with SimServer(SimConfig(style="zhipu", seed=2)) as sim:
        cfg = Config.from_dict({
            "channels": {"glm": {"protocol": "openai", "base_url": sim.base_url(),
                                 "api_key": "sk-test", "provider": "zhipu"}},
            "models": {"m": {"channels": ["glm"], "wire_name": "glm-4.6"}},
        })
        async with Router(cfg) as router:
            whole = await router.complete(request)
            streamed: ChatResponse | None = None
            async for event in router.stream(request):
                if isinstance(event, StreamEnd):
                    streamed = event.response
    assert streamed is not None
    assert [(c.id, c.name, c.arguments) for c in streamed.tool_calls] == \
        [(c.id, c.name, c.arguments) for c in whole.tool_calls]


@pytest.mark.parametrize("fault", ["503", "529"])
async def test_zhipu_overload_is_a_429_with_code_1305(fault: str) -> None:
    """Zhipu's overload codes come as HTTP 429 (PROVIDERS.md §8), without Retry-After."""
    async with SimServer(SimConfig(style="zhipu")) as sim:
        status, headers, raw = await post(sim.base_url() + "/chat/completions",
                                          {"model": "glm-4.6", "messages": USER},
                                          {"x-sim-fault": fault})
        provider = OpenAICompatProvider(base_url=sim.base_url(), api_key="sk-test",
                                        name="glm", provider="zhipu")
        async with provider:
            sim.script([fault])
            with pytest.raises(Overloaded) as info:
                await provider.complete(ChatRequest("m", [Message.user(QUESTION)]),
                                        model="glm-4.6")
    assert status == 429
    assert json.loads(raw)["error"]["code"] == "1305"
    assert "retry-after" not in {k.lower() for k in headers}
    assert info.value.retryable


# -- Anthropic -----------------------------------------------------------------------------


async def test_anthropic_argument_less_tool_streams_no_input_json_delta() -> None:
    """Anthropic may send no ``input_json_delta`` for a tool without arguments (trap 3):
    the input is the block start's ``{}``. The SDK and shoal both end with ``{}``."""
    body = {"model": "claude-haiku-4-5", "max_tokens": 256, "stream": True,
            "messages": USER, "tool_choice": {"type": "any"},
            "tools": [{"name": "now", "description": "The time.",
                       "input_schema": {"type": "object", "properties": {}}}]}
    async with SimServer(SimConfig(style="anthropic")) as sim:
        status, _, raw = await post(sim.url + "/v1/messages", body)
        client = anthropic.AsyncAnthropic(base_url=sim.url, api_key="sk-test", max_retries=0)
        try:
            async with client.messages.stream(
                    model="claude-haiku-4-5", max_tokens=256, messages=[
                        {"role": "user", "content": QUESTION}],
                    tool_choice={"type": "any"},
                    tools=[{"name": "now", "description": "The time.",
                            "input_schema": {"type": "object", "properties": {}}}],
            ) as stream:
                final = await stream.get_final_message()
        finally:
            await client.close()
        cfg = Config.from_dict({
            "channels": {"c": {"protocol": "anthropic", "base_url": sim.url,
                               "api_key": "sk-test", "provider": "anthropic"}},
            "models": {"m": {"channels": ["c"], "wire_name": "claude-haiku-4-5"}},
        })
        async with Router(cfg) as router:
            answer: ChatResponse | None = None
            async for event in router.stream(ChatRequest(
                    "m", [Message.user(QUESTION)], tools=[NOW], tool_choice="required",
                    max_tokens=256)):
                if isinstance(event, StreamEnd):
                    answer = event.response
    assert status == 200
    events = data_events(raw)
    start = next(e for e in events if e["type"] == "content_block_start")
    assert start["content_block"]["type"] == "tool_use"
    assert not [e for e in events if e["type"] == "content_block_delta"]
    assert final.content[0].type == "tool_use" and final.content[0].input == {}
    assert answer is not None and answer.tool_calls
    assert json.loads(answer.tool_calls[0].arguments) == {}


async def test_anthropic_tokens_remaining_is_rounded_to_thousands() -> None:
    """``anthropic-ratelimit-tokens-remaining`` is rounded to the nearest thousand
    (platform.claude.com/docs/en/api/rate-limits)."""
    config = SimConfig(style="anthropic", tpm=10_000,
                       models={"*": ModelProfile(output_tokens=700)})
    body = {"model": "claude-haiku-4-5", "max_tokens": 1024, "messages": USER}
    async with SimServer(config, clock=VirtualClock()) as sim:
        status, headers, raw = await post(sim.url + "/v1/messages", body)
    usage = json.loads(raw)["usage"]
    used = usage["input_tokens"] + usage["output_tokens"]
    remaining = int(headers["anthropic-ratelimit-tokens-remaining"])
    assert status == 200
    assert remaining % 1000 == 0
    assert abs(remaining - (10_000 - used)) <= 500
    assert remaining != 10_000 - used  # 700+ used: the exact count is not a round one


async def test_anthropic_refuses_bodies_over_32_mb_with_413() -> None:
    """docs.claude.com/en/api/errors: 413 ``request_too_large`` over 32 MB."""
    big = "x" * (32 * 1024 * 1024 + 1)
    body = {"model": "claude-haiku-4-5", "max_tokens": 16,
            "messages": [{"role": "user", "content": big}]}
    async with SimServer(SimConfig(style="anthropic")) as sim:
        status, headers, raw = await post(sim.url + "/v1/messages", body)
        permissive, _, _ = await post(sim.base_url("permissive", protocol="anthropic")
                                      + "/v1/messages", body)
    error = json.loads(raw)
    assert status == 413
    assert error["type"] == "error"
    assert error["error"]["type"] == "request_too_large"
    assert headers["request-id"] == error["request_id"]
    assert permissive != 413  # the permissive style refuses nothing of the kind
