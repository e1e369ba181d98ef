"""Faults, determinism, provider styles, the control endpoints and clean shutdown."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from sim_fixtures import USER, running

from shoal.clock import VirtualClock
from shoal.errors import ConfigError
from shoal.sim import Faults, ModelProfile, SimConfig, SimServer

BODY: dict[str, Any] = {"model": "m", "messages": USER}
CHAT = "/v1/chat/completions"
MIXED = Faults(
    error_rate=0.15, rate_limit_rate=0.1, cut_rate=0.1, malformed_rate=0.1,
    stream_error_rate=0.1,
)  # fmt: skip


def sse_data(text: str) -> list[Any]:
    """The JSON payloads of an OpenAI-style SSE body (comments and [DONE] dropped)."""
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


async def _run(config: SimConfig, n: int) -> list[tuple[int, str | None, bytes]]:
    out: list[tuple[int, str | None, bytes]] = []
    clock = VirtualClock()  # a fixed wall clock: even "created" is reproducible
    async with running(config, clock=clock) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        for i in range(n):
            body = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]}
            try:
                r = await http.post(CHAT, json=body)
                content = r.content
            except httpx.HTTPError:
                content = b"<cut>"
            out.append((sim.stats().requests[-1].status, sim.stats().requests[-1].fault, content))
    return out


async def test_same_seed_same_faults_and_answers() -> None:
    first = await _run(SimConfig(seed=7, faults=MIXED), 40)
    second = await _run(SimConfig(seed=7, faults=MIXED), 40)
    other = await _run(SimConfig(seed=8, faults=MIXED), 40)
    assert first == second
    faults = {f for _, f, _ in first}
    assert {"500", "429", "cut", "malformed", "stream_error", None} <= faults
    assert [f for _, f, _ in first] != [f for _, f, _ in other]
    ok_first = [c for _, f, c in first if f is None]
    ok_other = [c for _, f, c in other if f is None]
    assert ok_first[0] != ok_other[0]


async def test_answer_depends_on_request_not_on_order() -> None:
    async with running() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        a1 = (await http.post(CHAT, json=BODY)).json()
        other = {"model": "m", "messages": [{"role": "user", "content": "something else"}]}
        b = (await http.post(CHAT, json=other)).json()
        a2 = (await http.post(CHAT, json=BODY)).json()
    text = a1["choices"][0]["message"]["content"]
    assert text == a2["choices"][0]["message"]["content"]
    assert text != b["choices"][0]["message"]["content"]


async def test_fault_rates_are_roughly_honoured() -> None:
    config = SimConfig(seed=3, faults=Faults(error_rate=0.25, error_status=503))
    async with running(config) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        for _ in range(200):
            await http.post(CHAT, json=BODY)
        stats = sim.stats(log=False)
    assert 30 <= stats.by_status[503] <= 70
    assert stats.by_status[503] + stats.by_status[200] == 200
    assert stats.faults == {"503": stats.by_status[503]}


async def test_header_fault_overrides_script_and_bad_names_are_400() -> None:
    async with running() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        sim.script(["503"])
        forced = await http.post(CHAT, json=BODY, headers={"x-sim-fault": "quota"})
        scripted = await http.post(CHAT, json=BODY)
        bogus = await http.post(CHAT, json=BODY, headers={"x-sim-fault": "explode"})
    assert forced.status_code == 429
    assert forced.json()["error"]["code"] == "insufficient_quota"
    assert scripted.status_code == 503
    assert bogus.status_code == 400
    assert "unknown simulator fault 'explode'" in bogus.json()["error"]["message"]


def test_script_rejects_unknown_faults() -> None:
    sim = SimServer()
    with pytest.raises(ConfigError, match="unknown simulator fault 'boom'"):
        sim.script(["ok", "boom"])
    assert sim.scripted == []


async def test_no_done_stream_lacks_only_the_done_marker() -> None:
    async with running() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        sim.script(["no_done", "ok"])
        cut = await http.post(CHAT, json={**BODY, "stream": True})
        whole = await http.post(CHAT, json={**BODY, "stream": True})
    assert cut.status_code == 200
    assert "data: [DONE]" not in cut.text
    assert whole.text.endswith("data: [DONE]\n\n")
    assert cut.text.endswith("}\n\n")
    unnamed = [[{k: v for k, v in c.items() if k != "id"} for c in sse_data(r.text)]
               for r in (cut, whole)]  # fmt: skip
    assert unnamed[0] == unnamed[1]
    assert sim.stats().successes == 2  # a whole answer, as the SDKs read it


async def test_truncated_stream_ends_cleanly_mid_answer() -> None:
    async with running() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        sim.script(["truncated", "ok"])
        cut = await http.post(CHAT, json={**BODY, "stream": True})
        whole = await http.post(CHAT, json={**BODY, "stream": True})
    assert cut.status_code == 200 and cut.text.endswith("}\n\n")
    got, full = sse_data(cut.text), sse_data(whole.text)
    assert 1 < len(got) < len(full) / 2 + 2
    assert all(c["choices"][0]["finish_reason"] is None for c in got)
    assert sim.stats().successes == 1


async def test_non_streamed_faults() -> None:
    async with running() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        sim.script(["malformed", "stream_error", "delay:0.01"])
        malformed = await http.post(CHAT, json=BODY)
        envelope = await http.post(CHAT, json=BODY)
        delayed = await http.post(CHAT, json=BODY)
    assert malformed.status_code == 200
    with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
        malformed.json()
    assert envelope.status_code == 200
    assert envelope.json()["error"]["type"] == "server_error"
    assert delayed.json()["choices"][0]["message"]["content"]


async def test_control_endpoints() -> None:
    async with running() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        assert (await http.get("/_sim/health")).json() == {"ok": True}
        queued = await http.post("/_sim/script", json=["503", "ok"])
        assert queued.json() == {"queued": ["503", "ok"]}
        assert (await http.post(CHAT, json=BODY)).status_code == 503
        assert (await http.post(CHAT, json=BODY)).status_code == 200
        changed = await http.post(
            "/_sim/config",
            json={"max_concurrency": 2, "faults": {"error_rate": 1.0, "error_status": 502}},
        )
        assert changed.status_code == 200
        assert changed.json()["max_concurrency"] == 2
        assert changed.json()["faults"]["error_rate"] == 1.0
        assert (await http.post(CHAT, json=BODY)).status_code == 502
        bad = await http.post("/_sim/config", json={"faults": {"error_rate": 2}})
        assert bad.status_code == 400
        assert "between 0 and 1" in bad.json()["error"]["message"]
        unknown = await http.post("/_sim/config", json={"colour": "blue"})
        assert "unknown simulator setting(s) colour" in unknown.json()["error"]["message"]
        assert sim.config.faults.error_status == 502
        full = (await http.get("/_sim/stats")).json()
        short = (await http.get("/_sim/stats", params={"log": "0"})).json()
        last = (await http.get("/_sim/stats", params={"last": "1"})).json()
        assert full["total_requests"] == 3
        assert full["by_status"] == {"200": 1, "502": 1, "503": 1}
        assert [r["status"] for r in full["requests"]] == [503, 200, 502]
        assert "requests" not in short
        assert [r["status"] for r in last["requests"]] == [502]
        assert (await http.post("/_sim/reset")).json() == {"ok": True}
        assert (await http.get("/_sim/stats")).json()["total_requests"] == 0


async def test_log_is_bounded_but_counters_are_not() -> None:
    async with running(SimConfig(log_size=3)) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        for i in range(8):
            await http.post(CHAT, json=BODY, headers={"x-shoal-tag": str(i)})
        stats = sim.stats()
    assert stats.total_requests == 8
    assert [r.tag for r in stats.requests] == ["5", "6", "7"]
    assert stats.completion_tokens == 8 * 20


async def test_invalid_requests_get_provider_shaped_400() -> None:
    async with running() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        not_json = await http.post(CHAT, content=b"{nope")
        no_model = await http.post(CHAT, json={"messages": USER})
        no_messages = await http.post(CHAT, json={"model": "m", "messages": []})
    for r in (not_json, no_model, no_messages):
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert no_model.json()["error"]["param"] == "model"


async def test_moonshot_stream_puts_usage_inside_the_choice() -> None:
    config = SimConfig(style="moonshot")
    async with running(config) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        r = await http.post(
            CHAT, json={**BODY, "stream": True, "stream_options": {"include_usage": True}}
        )
        err = await http.post(CHAT, json=BODY, headers={"x-sim-fault": "429"})
    chunks = sse_data(r.text)
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["choices"][0]["usage"]["completion_tokens"] == 20
    assert "usage" not in final
    assert all(c["choices"] for c in chunks)
    assert err.json() == {
        "error": {"message": "Rate limit reached. Please try again later.",
                  "type": "rate_limit_reached_error"},
    }  # fmt: skip


async def test_zhipu_stream_usage_on_last_chunk_and_whole_tool_calls() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    config = SimConfig(style="zhipu")
    async with running(config) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        r = await http.post(CHAT, json={**BODY, "stream": True, "tools": tools})
    chunks = sse_data(r.text)
    calls = [c["choices"][0]["delta"]["tool_calls"] for c in chunks
             if c["choices"][0]["delta"].get("tool_calls")]  # fmt: skip
    assert len(calls) == 1
    assert json.loads(calls[0][0]["function"]["arguments"])["q"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


async def test_deepseek_stream_opens_with_keep_alive_comment() -> None:
    config = SimConfig(style="deepseek")
    async with running(config) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        r = await http.post(CHAT, json={**BODY, "stream": True})
    assert r.text.startswith(": keep-alive\n\n")


async def test_models_endpoint_lists_named_profiles() -> None:
    profile = ModelProfile()
    config = SimConfig(models={"*": profile, "gpt-x": profile, "glm-*": profile})
    async with running(config) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        data = (await http.get("/v1/models")).json()
    assert [m["id"] for m in data["data"]] == ["gpt-x"]


async def test_stop_ends_hung_and_slow_requests_and_leaks_no_tasks() -> None:
    before = asyncio.all_tasks()
    config = SimConfig(models={"slow": ModelProfile(latency_s=60)})
    sim = SimServer(config, shutdown_timeout=0.1)
    await sim.start()
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as http:
        hung = asyncio.create_task(
            http.post(CHAT, json=BODY, headers={"x-sim-fault": "hang"})
        )
        slow = asyncio.create_task(http.post(CHAT, json={**BODY, "model": "slow"}))
        for _ in range(500):
            if sim.stats().in_flight == 2:
                break
            await asyncio.sleep(0.01)
        assert sim.stats().in_flight == 2
        await sim.stop()
        results = await asyncio.gather(hung, slow, return_exceptions=True)
    assert all(isinstance(r, httpx.HTTPError) for r in results)
    stats = sim.stats()
    assert stats.in_flight == 0
    assert sorted(str(r.fault) for r in stats.requests) == ["None", "hang"]
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()}
    assert leftover == set()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(sim.url + "/_sim/health")
