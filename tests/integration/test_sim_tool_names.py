"""Tool names the real APIs refuse, over real HTTP against the simulator.

OpenAI and Anthropic both take only names of ``[a-zA-Z0-9_-]`` (OpenAI up to 64
characters, ``Invalid 'tools[0].function.name': string does not match pattern``;
Anthropic ``tools.0.custom.name: String should match pattern
'^[a-zA-Z0-9_-]{1,128}$'``), both as a 400 ``invalid_request_error`` in their own
envelope. OpenAI holds ``response_format.json_schema.name`` to the same pattern. The
``permissive`` style accepts them all.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sim_fixtures import USER, running

from shoal.sim import SimConfig

OBJECT: dict[str, Any] = {"type": "object", "properties": {}}
PATTERN_64 = "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."
ANTHROPIC_PATTERN = "String should match pattern '^[a-zA-Z0-9_-]{1,128}$'"


def openai_tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": OBJECT}}


def anthropic_tool(name: Any) -> dict[str, Any]:
    return {"name": name, "input_schema": OBJECT}


async def chat(url: str, **extra: Any) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(url + "/chat/completions", json={
            "model": "gpt-4o", "messages": USER, **extra})


async def messages(url: str, **extra: Any) -> httpx.Response:
    async with httpx.AsyncClient(headers={"x-api-key": "sk-test"}) as http:
        return await http.post(url + "/v1/messages", json={
            "model": "claude-haiku-4-5", "max_tokens": 64, "messages": USER, **extra})


# -- OpenAI --------------------------------------------------------------------------------


@pytest.mark.parametrize(("names", "param", "message", "code"), [
    (["my tool"], "tools[0].function.name",
     f"Invalid 'tools[0].function.name': string does not match pattern. {PATTERN_64}",
     "invalid_value"),
    (["lookup", "get.weather"], "tools[1].function.name",
     f"Invalid 'tools[1].function.name': string does not match pattern. {PATTERN_64}",
     "invalid_value"),
    (["x" * 65], "tools[0].function.name",
     "Invalid 'tools[0].function.name': string too long. Expected a string with maximum "
     "length 64, but got a string with length 65 instead.", "string_above_max_length"),
    (["lookup\n"], "tools[0].function.name",
     f"Invalid 'tools[0].function.name': string does not match pattern. {PATTERN_64}",
     "invalid_value"),
], ids=["space", "second-tool-dot", "too-long", "trailing-newline"])
async def test_openai_refuses_bad_tool_names(
    names: list[str], param: str, message: str, code: str
) -> None:
    async with running(SimConfig(style="openai")) as sim:
        r = await chat(sim.base_url(), tools=[openai_tool(n) for n in names])
    assert r.status_code == 400
    assert r.json() == {"error": {"message": message, "type": "invalid_request_error",
                                  "param": param, "code": code}}


async def test_openai_takes_good_tool_names_and_permissive_takes_any() -> None:
    good = [openai_tool("get_weather-2"), openai_tool("A" * 64)]
    async with running(SimConfig(style="openai")) as sim:
        ok = await chat(sim.base_url(), tools=good)
        loose = await chat(sim.base_url("permissive"), tools=[openai_tool("my tool")])
    assert ok.status_code == 200
    assert loose.status_code == 200


async def test_openai_refuses_bad_json_schema_names() -> None:
    """The audit's claim, checked: ``response_format.json_schema.name`` has the pattern."""
    fmt = {"type": "json_schema", "json_schema": {"name": "my schema", "schema": OBJECT}}
    async with running(SimConfig(style="openai")) as sim:
        r = await chat(sim.base_url(), response_format=fmt)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "response_format.json_schema.name"
    assert "string does not match pattern" in error["message"]


# -- Anthropic -----------------------------------------------------------------------------


@pytest.mark.parametrize(("tools", "message"), [
    ([anthropic_tool("my tool")], f"tools.0.custom.name: {ANTHROPIC_PATTERN}"),
    ([anthropic_tool("lookup"), anthropic_tool("a/b")],
     f"tools.1.custom.name: {ANTHROPIC_PATTERN}"),
    ([anthropic_tool("")], f"tools.0.custom.name: {ANTHROPIC_PATTERN}"),
    ([anthropic_tool("x" * 129)], f"tools.0.custom.name: {ANTHROPIC_PATTERN}"),
    ([anthropic_tool("lookup\n")], f"tools.0.custom.name: {ANTHROPIC_PATTERN}"),
    ([anthropic_tool(7)], "tools.0.custom.name: Input should be a valid string"),
    ([{"input_schema": OBJECT}], "tools.0.custom.name: Field required"),
], ids=["space", "second-tool-slash", "empty", "too-long", "trailing-newline", "not-a-string",
        "missing"])
async def test_anthropic_refuses_bad_tool_names(tools: list[Any], message: str) -> None:
    async with running(SimConfig(style="anthropic")) as sim:
        r = await messages(sim.url, tools=tools)
    assert r.status_code == 400
    body = r.json()
    assert body == {"type": "error",
                    "error": {"type": "invalid_request_error", "message": message},
                    "request_id": r.headers["request-id"]}


async def test_anthropic_takes_good_tool_names_server_tools_and_permissive() -> None:
    good = [anthropic_tool("get_weather-2"), anthropic_tool("A" * 128),
            {"type": "web_search_20250305", "name": "web_search"}]
    async with running(SimConfig(style="anthropic")) as sim:
        ok = await messages(sim.url, tools=good)
        loose = await messages(sim.base_url("permissive", protocol="anthropic"),
                               tools=[anthropic_tool("my tool")])
    assert ok.status_code == 200, ok.text
    assert loose.status_code == 200, loose.text
