"""Moonshot (Kimi) as the simulator's ``moonshot`` style imitates it, and shoal's
adapter reading it (PROVIDERS.md §3 Moonshot, traps 3 and 4).

* Streamed tool-call fragments carry ``"index": null`` (vercel/ai#19727): a fragment
  with an ``id`` opens the next call, one without continues the current call.
* Errors are ``{"error": {"message", "type"}}``; an overloaded engine, like a rate limit
  and an exhausted quota, is HTTP 429 (``engine_overloaded_error``); 403 and 404 have
  their own types (platform.moonshot.cn/api-reference).
* A prompt over the window is 400 "Invalid request: Your request exceeded model token
  limit: N (requested: M)" (MoonshotAI/kimi-cli#2011).
* TPM is counted on the prompt plus ``max_tokens``, not what is generated
  (platform.moonshot.cn/docs/intro, rate limits).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from sim_fixtures import QUESTION

from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import ContextOverflow
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEnd, ToolCallDelta, ToolSpec

MODEL = "kimi-k2-0905-preview"
LOOKUP = ToolSpec("lookup", "Look a topic up.", {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})
WEATHER = ToolSpec("weather", "Weather for a city.", {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"]})


def moonshot(calls: int = 1, **extra: Any) -> SimConfig:
    return SimConfig(style="moonshot", seed=11,
                     models={"*": ModelProfile(output_tokens=12, tool_calls=calls)}, **extra)


async def post(sim: SimServer, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    url = sim.base_url() + "/chat/completions"
    sent = {"authorization": "Bearer sk-test", **(headers or {})}
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=sent) as r:
        return r.status, await r.read()


def data_events(raw: bytes) -> list[Any]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def wire_tool(spec: ToolSpec) -> dict[str, Any]:
    return {"type": "function", "function": {"name": spec.name, "description": spec.description,
                                             "parameters": spec.parameters}}


def config(sim: SimServer) -> Config:
    return Config.from_dict({
        "channels": {"kimi": {"protocol": "openai", "base_url": sim.base_url(),
                              "api_key": "sk-test", "provider": "moonshot"}},
        "models": {"m": {"channels": ["kimi"], "wire_name": MODEL}},
    })


# -- tool-call deltas with a null index ----------------------------------------------------


async def test_tool_call_fragments_carry_a_null_index() -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}],
            "tools": [wire_tool(LOOKUP), wire_tool(WEATHER)], "stream": True}
    async with SimServer(moonshot(calls=2)) as sim:
        status, raw = await post(sim, body)
    assert status == 200
    fragments = [f for e in data_events(raw) for c in e["choices"]
                 for f in c["delta"].get("tool_calls", [])]
    assert len(fragments) > 2  # arguments come in pieces
    assert all("index" in f and f["index"] is None for f in fragments)
    openers = [f for f in fragments if f.get("id")]
    assert [f["function"]["name"] for f in openers] == ["lookup", "weather"]
    # Joined in order, the pieces after each opener are that call's arguments.
    args: list[str] = []
    for f in fragments:
        if f.get("id"):
            args.append("")
        args[-1] += f["function"].get("arguments") or ""
    assert json.loads(args[0])["q"]
    assert json.loads(args[1])["days"] >= 1


async def _streamed(router: Router, request: ChatRequest
                    ) -> tuple[list[ToolCallDelta], ChatResponse]:
    deltas: list[ToolCallDelta] = []
    async for event in router.stream(request):
        if isinstance(event, ToolCallDelta):
            deltas.append(event)
        if isinstance(event, StreamEnd):
            return deltas, event.response
    raise AssertionError("no StreamEnd")


@pytest.mark.parametrize("calls", [1, 2], ids=["one call", "two parallel calls"])
async def test_router_streams_moonshot_tool_calls_with_null_indices(calls: int) -> None:
    """Through shoal's Router, the calls streamed with null indices come out as the
    same calls the non-streamed answer holds: ids, names and arguments."""
    request = ChatRequest("m", [Message.user("find both")], tools=[LOOKUP, WEATHER],
                          max_tokens=512)
    async with SimServer(moonshot(calls=calls)) as sim, Router(config(sim)) as router:
        whole = await router.complete(request)
        deltas, streamed = await _streamed(router, request)
        statuses = [r.status for r in sim.stats().requests]
    assert statuses == [200, 200]
    expected = [(c.id, c.name, json.loads(c.arguments)) for c in whole.tool_calls]
    assert len(expected) == calls
    assert [name for _, name, _ in expected] == ["lookup", "weather"][:calls]
    assert [(c.id, c.name, json.loads(c.arguments)) for c in streamed.tool_calls] == expected
    assert streamed.finish_reason == "tool_calls"
    assert sorted({d.index for d in deltas}) == list(range(calls))
    assert streamed.usage.output_tokens > 0  # read from inside choices[0]


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status", "etype"), [
    ("503", 429, "engine_overloaded_error"),
    ("529", 429, "engine_overloaded_error"),
    ("403", 403, "permission_denied_error"),
    ("404", 404, "resource_not_found_error"),
    ("401", 401, "invalid_authentication_error"),
])
async def test_error_statuses_and_types(fault: str, status: int, etype: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]}
    async with SimServer(moonshot()) as sim:
        got, raw = await post(sim, body, {"x-sim-fault": fault})
    error = json.loads(raw)["error"]
    assert got == status
    assert set(error) == {"message", "type"}
    assert error["type"] == etype


async def test_context_overflow_wording() -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]}
    async with SimServer(moonshot()) as sim:
        status, raw = await post(sim, body, {"x-sim-fault": "context_overflow"})
    error = json.loads(raw)["error"]
    assert status == 400
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(
        "Invalid request: Your request exceeded model token limit: ")
    assert "(requested: " in error["message"]


async def test_shoal_reads_moonshots_context_overflow_as_context_overflow() -> None:
    async with SimServer(moonshot()) as sim, Router(config(sim)) as router:
        sim.script(["context_overflow"])
        with pytest.raises(ContextOverflow):
            await router.complete(ChatRequest("m", [Message.user(QUESTION)]))


# -- TPM counts max_tokens -----------------------------------------------------------------


@pytest.mark.parametrize(("style", "max_tokens", "second"), [
    ("moonshot", 900, 429),  # the prompt plus 900 reserved: the second does not fit
    ("moonshot", None, 200),  # without max_tokens: what was generated
    ("openai", 900, 200),  # OpenAI counts what was generated
])
async def test_tpm_counts_the_prompt_plus_max_tokens(
    style: str, max_tokens: int | None, second: int
) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    config = SimConfig(style=style, tpm=1000, models={"*": ModelProfile(output_tokens=12)})
    async with SimServer(config, clock=VirtualClock()) as sim:
        first, _ = await post(sim, body)
        got, raw = await post(sim, body)
    assert first == 200
    assert got == second
    if second == 429 and style == "moonshot":
        assert json.loads(raw)["error"]["type"] == "rate_limit_reached_error"
