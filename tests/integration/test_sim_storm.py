"""The storm's faults in the simulator: named scenario, mixed 5xx and Retry-After forms,
bounded hangs, and the provider-side counts (successes, billed tokens, completions by key)."""

from __future__ import annotations

import asyncio
import email.utils
import json
from typing import Any

import httpx
import pytest
from sim_fixtures import USER, running

from shoal.clock import VirtualClock
from shoal.errors import ConfigError
from shoal.sim import Faults, SimConfig, SimProcess
from shoal.sim.config import RETRY_AFTER_FORMS, SCENARIOS, scenario_faults

BODY: dict[str, Any] = {"model": "m", "messages": USER}
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
ANT_BODY: dict[str, Any] = {**BODY, "max_tokens": 64}


def test_storm_scenario_is_the_issue_mix_and_unknown_names_are_refused() -> None:
    storm = scenario_faults("storm")
    shares: dict[str, float] = {}
    for name, rate in storm.table():
        kind = "429" if name.startswith("429") else ("5xx" if name[0] == "5" else name)
        shares[kind] = shares.get(kind, 0.0) + rate
    assert shares == pytest.approx(
        {"5xx": 0.20, "429": 0.10, "hang": 0.05, "cut": 0.02, "malformed": 0.02}
    )
    assert {n for n, _ in storm.table() if n.startswith("429")} == {
        f"429:{form}" for form in RETRY_AFTER_FORMS
    }
    # a scenario file / POST /_sim/config may name it and refine it
    cfg = SimConfig.from_dict({"scenario": "storm", "faults": {"hang_rate": 0.0}})
    assert cfg.faults.error_statuses == (500, 502, 503, 529)
    assert cfg.faults.hang_rate == 0.0
    assert SCENARIOS["calm"].table() == ()
    with pytest.raises(ConfigError, match="unknown simulator scenario 'hurricane'; known"):
        SimConfig.from_dict({"scenario": "hurricane"})
    with pytest.raises(ConfigError, match="unknown form 'weeks'"):
        Faults(rate_limit_rate=0.1, retry_after_forms=("weeks",))
    with pytest.raises(ConfigError, match=r"error_statuses must be a 5xx status .* got 429"):
        Faults(error_rate=0.1, error_statuses=(500, 429))


async def test_retry_after_forms_on_both_wires() -> None:
    clock = VirtualClock()
    forms = [f"429:{f}" for f in RETRY_AFTER_FORMS]
    async with running(SimConfig(fault_retry_after_s=1.5), clock=clock) as sim, \
            httpx.AsyncClient(base_url=sim.url) as http:  # fmt: skip
        sim.script(forms + forms)
        oai = [await http.post(CHAT, json=BODY) for _ in forms]
        ant = [await http.post(MESSAGES, json=ANT_BODY) for _ in forms]
        stats = sim.stats()
    date = email.utils.formatdate(clock.wall() + 2, usegmt=True)
    expected = [
        {"retry-after": "2"},
        {"retry-after": "1.50"},
        {"retry-after": date},
        {"retry-after-ms": "1500"},
        {},
    ]
    for responses in (oai, ant):
        assert [r.status_code for r in responses] == [429] * 5
        got = [{k: v for k, v in r.headers.items() if k.startswith("retry-after")}
               for r in responses]  # fmt: skip
        assert got == expected
    assert ant[0].json()["error"]["type"] == "rate_limit_error"
    assert stats.faults == dict.fromkeys(forms, 2)


async def test_mixed_5xx_draw_and_529_is_overloaded_on_anthropic_503_on_openai() -> None:
    faults = Faults(error_rate=1.0, error_statuses=(500, 502, 503, 529))
    async with running(SimConfig(seed=3, faults=faults)) as sim, \
            httpx.AsyncClient(base_url=sim.url) as http:  # fmt: skip
        oai = [(await http.post(CHAT, json=BODY)).status_code for _ in range(60)]
        ant = [await http.post(MESSAGES, json=ANT_BODY) for _ in range(60)]
    assert set(oai) == {500, 502, 503}
    assert {r.status_code for r in ant} == {500, 502, 503, 529}
    overloaded = [r.json()["error"]["type"] for r in ant if r.status_code == 529]
    assert set(overloaded) == {"overloaded_error"}


async def test_hang_is_bounded_by_hang_max() -> None:
    clock = VirtualClock()
    cfg = SimConfig(faults=Faults(hang_max_s=600.0))
    async with running(cfg, clock=clock) as sim, \
            httpx.AsyncClient(base_url=sim.url, timeout=30) as http:  # fmt: skip
        sim.script(["hang"])
        hung = asyncio.create_task(http.post(CHAT, json=BODY))
        for _ in range(500):
            if sim.stats().in_flight == 1 and clock.pending:
                break
            await asyncio.sleep(0.01)
        await clock.advance(599.0)
        await asyncio.sleep(0.05)
        assert not hung.done()
        await clock.advance(1.0)
        with pytest.raises(httpx.HTTPError):
            await hung
        for _ in range(500):
            if sim.stats().in_flight == 0:
                break
            await asyncio.sleep(0.01)
        stats = sim.stats()
    assert stats.in_flight == 0
    assert stats.faults == {"hang": 1}
    assert stats.by_status == {0: 1}
    assert stats.billed_prompt_tokens == 0


async def test_billed_tokens_successes_and_completions_by_key() -> None:
    async with running() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        sim.script(["ok", "ok", "cut", "malformed", "503", "ok"])
        ok = await http.post(CHAT, json=BODY, headers={"x-shoal-tag": "call-1"})
        again = await http.post(CHAT, json=BODY, headers={"Idempotency-Key": "call-1"})
        with pytest.raises(httpx.HTTPError):  # cut mid-stream
            await http.post(CHAT, json={**BODY, "stream": True}, headers={"x-shoal-tag": "call-2"})
        broken = await http.post(CHAT, json={**BODY, "stream": True},
                                 headers={"x-shoal-tag": "call-3"})  # fmt: skip
        failed = await http.post(CHAT, json=BODY, headers={"x-shoal-tag": "call-4"})
        other = await http.post(MESSAGES, json=ANT_BODY, headers={"x-shoal-tag": "call-4"})
        for _ in range(200):
            if sim.stats().in_flight == 0:
                break
            await asyncio.sleep(0.01)
        stats = sim.stats()
        over_http = (await http.get("/_sim/stats")).json()
    assert [ok.status_code, again.status_code, broken.status_code, failed.status_code,
            other.status_code] == [200, 200, 200, 503, 200]  # fmt: skip
    usage = ok.json()["usage"]
    records = stats.requests
    assert stats.successes == 3
    assert [r.complete for r in records] == [True, True, False, False, False, True]
    # billed: every 200 answer, the cut and malformed ones included; never the 503
    billed = [r for r in records if r.status == 200]
    assert len(billed) == 5
    assert stats.billed_prompt_tokens == sum(r.prompt_tokens for r in billed)
    assert stats.billed_completion_tokens == sum(r.completion_tokens for r in billed)
    assert records[0].completion_tokens == usage["completion_tokens"]
    assert 0 < records[2].completion_tokens < usage["completion_tokens"]  # cut after some
    assert stats.billed_completion_tokens > 3 * usage["completion_tokens"]
    assert stats.completions_by_key == {"call-1": 2, "call-4": 1}
    assert stats.duplicate_completions == 1
    assert over_http["duplicate_completions"] == 1
    assert over_http["completions_by_key"] == {"call-1": 2, "call-4": 1}
    assert over_http["billed_prompt_tokens"] == stats.billed_prompt_tokens


async def test_midstream_data_lines_malformed_and_overload_after_tokens() -> None:
    async with running() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        sim.script(["malformed", "stream_error"])
        bad = await http.post(CHAT, json={**BODY, "stream": True})
        overloaded = await http.post(MESSAGES, json={**ANT_BODY, "stream": True})
    lines = [ln[6:] for ln in bad.text.splitlines() if ln.startswith("data: ")]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line) if line != "[DONE]" else "DONE")
        except ValueError:
            parsed.append(None)
    broken_at = parsed.index(None)
    assert any(isinstance(p, dict) and p["choices"] and p["choices"][0]["delta"].get("content")
               for p in parsed[:broken_at])  # tokens came first  # fmt: skip
    assert parsed[-1] == "DONE"
    text = overloaded.text
    assert text.index("text_delta") < text.index("event: error")
    assert '"overloaded_error"' in text.split("event: error", 1)[1]


def test_cli_scenario_with_flags_refining_it() -> None:
    with SimProcess("--scenario", "storm", "--seed", "1", "--quota", "--hang-max", "30") as sim:
        faults = sim.control("/_sim/config")["faults"]
    assert faults["error_rate"] == 0.2
    assert faults["error_statuses"] == [500, 502, 503, 529]
    assert faults["retry_after_forms"] == list(RETRY_AFTER_FORMS)
    assert faults["quota_exhausted"] is True
    assert faults["hang_max_s"] == 30.0
