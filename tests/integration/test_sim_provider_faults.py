"""The simulator's provider-only faults on the wire, read with raw HTTP and the official
SDKs (unmodified): business codes (``code:<code>``), finish reasons that end an answer
short (``finish:<reason>``), ``<status>:no_retry``, and the SSE dialects (``crlf``,
``data_nospace``, ``no_done``, ``json_body``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from anthropic.types import Message
from sim_fixtures import USER, anthropic_for, openai_for, running

from shoal.clock import VirtualClock
from shoal.errors import ConfigError
from shoal.sim import SimConfig, SimServer

CHAT = "/chat/completions"


def body(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": USER, "stream": stream, **extra}


async def test_zhipu_codes_carry_their_status_and_reset_time() -> None:
    async with running(clock=VirtualClock()) as sim, httpx.AsyncClient() as http:
        url = sim.base_url("zhipu") + CHAT
        sim.script(["code:1301", "code:1310"])
        unsafe = await http.post(url, json=body())
        capped = await http.post(url, json=body())
    assert unsafe.status_code == 400 and unsafe.json()["error"]["code"] == "1301"
    assert capped.status_code == 429 and "retry-after" not in capped.headers
    # the virtual wall clock is 2023-11-14 22:13:20 UTC; three days on, in Beijing time
    assert capped.json()["error"]["message"].endswith("will reset at 2023-11-18 06:13:20")


@pytest.mark.parametrize("stream", [False, True])
async def test_minimax_codes_are_base_resp_inside_a_200(stream: bool) -> None:
    async with running() as sim, httpx.AsyncClient() as http:
        sim.script(["code:2056"])
        r = await http.post(sim.base_url("minimax") + CHAT, json=body(stream))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == {"base_resp": {"status_code": 2056,
                                      "status_msg": "usage limit exceeded"}}


async def test_openai_slow_down_and_no_retry_with_the_sdk() -> None:
    async with running() as sim, openai_for(sim) as client:
        sim.script(["code:slow_down", "503:no_retry"])
        with pytest.raises(openai.RateLimitError) as slow:
            await client.chat.completions.create(model="m", messages=USER)
        with pytest.raises(openai.InternalServerError) as declined:
            await client.chat.completions.create(model="m", messages=USER)
    assert slow.value.code == "slow_down" and slow.value.response.headers["retry-after"]
    assert declined.value.response.headers["x-should-retry"] == "false"


async def test_the_sdk_obeys_no_retry() -> None:
    async with running() as sim, openai_for(sim, max_retries=2) as client:
        sim.script(["503:no_retry", "503", "ok"])
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=USER)
        answer = await client.chat.completions.create(model="m", messages=USER)
    assert answer.choices[0].message.content
    assert [q.retry_count for q in sim.stats().requests] == [0, 0, 1]


@pytest.mark.parametrize(("style", "reason"), [("deepseek", "insufficient_system_resource"),
                                                ("zhipu", "sensitive"),
                                                ("zhipu", "network_error"),
                                                ("openai", "content_filter")])
async def test_finish_reasons_end_half_an_answer(style: str, reason: str) -> None:
    async with running() as sim, openai_for(sim) as default:
        client = default.with_options(base_url=sim.base_url(style))
        sim.script(["ok", f"finish:{reason}", f"finish:{reason}"])
        full = await client.chat.completions.create(model="m", messages=USER)
        short = await client.chat.completions.create(model="m", messages=USER)
        chunks = [c async for c in await client.chat.completions.create(
            model="m", messages=USER, stream=True)]
    assert short.choices[0].finish_reason == reason
    words = (short.choices[0].message.content or "").split()
    assert len(words) == 10 and " ".join(words) in (full.choices[0].message.content or "")
    assert short.usage is not None and short.usage.completion_tokens == 10
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == reason and sim.stats().successes == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_pause_turn_with_the_sdk(stream: bool) -> None:
    message: Message
    async with running() as sim, anthropic_for(sim) as client:
        sim.script(["finish:pause_turn"])
        if stream:
            async with client.messages.stream(model="m", max_tokens=256,
                                              messages=USER) as events:
                message = await events.get_final_message()
        else:
            message = await client.messages.create(model="m", max_tokens=256, messages=USER)
    assert message.stop_reason == "pause_turn"
    kinds = [block.type for block in message.content]
    assert kinds == ["text", "server_tool_use", "web_search_tool_result"]
    use, result = message.content[1], message.content[2]
    assert use.type == "server_tool_use" and use.id.startswith("srvtoolu_")
    assert use.input == {"query": " ".join(USER[0]["content"].split()[:8])}
    assert result.type == "web_search_tool_result" and result.tool_use_id == use.id


async def test_a_fault_the_style_lacks_is_refused_clearly() -> None:
    async with running() as sim, httpx.AsyncClient() as http:
        sim.script(["finish:pause_turn", "code:1008"])
        wrong_end = await http.post(sim.base_url("openai") + CHAT, json=body())
        wrong_code = await http.post(sim.base_url("moonshot") + CHAT, json=body())
    assert wrong_end.status_code == 400
    assert "no finish reason 'pause_turn'" in wrong_end.json()["error"]["message"]
    assert "it has: content_filter" in wrong_end.json()["error"]["message"]
    assert wrong_code.status_code == 400 and "no business error code '1008'" in \
        wrong_code.json()["error"]["message"]


def test_script_checks_the_new_fault_names() -> None:
    sim = SimServer()
    sim.script(["code:1301", "finish:sensitive", "503:no_retry", "crlf", "json_body"])
    for bad in ("code:", "finish:Pause", "200:no_retry", "no_retry", "code:a b"):
        with pytest.raises(ConfigError, match="unknown simulator fault"):
            sim.script([bad])


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_sse_dialects_on_the_wire(protocol: str) -> None:
    path = CHAT if protocol == "openai" else "/messages"
    payload = body(True) if protocol == "openai" else {**body(True), "max_tokens": 64}
    async with running(SimConfig()) as sim, httpx.AsyncClient() as http:
        url = sim.base_url(protocol=protocol) + ("" if protocol == "openai" else "/v1") + path
        sim.script(["ok", "crlf", "data_nospace", "no_done", "json_body"])
        plain, crlf, nospace, no_done, whole = [
            await http.post(url, json=payload) for _ in range(5)]
    assert "\r" not in plain.text and crlf.text.count("\r\n") == plain.text.count("\n")
    assert "data: " not in nospace.text and nospace.text.count("data:{") == \
        plain.text.count("data: {")
    end = "data: [DONE]\n\n" if protocol == "openai" else "event: message_stop"
    assert end in plain.text and end not in no_done.text
    assert whole.headers["content-type"].startswith("application/json")
    assert json.loads(whole.text)["usage"]
