"""Rate limits (concurrency, RPM, TPM) and their headers, in virtual time over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sim_fixtures import USER, prompt_tokens_of, running

from shoal.clock import VirtualClock
from shoal.sim import ModelProfile, SimConfig

BODY: dict[str, Any] = {"model": "m", "messages": USER}
CHAT = "/v1/chat/completions"


async def test_rpm_cap_refuses_until_the_window_frees() -> None:
    clock = VirtualClock()
    async with (
        running(SimConfig(rpm=3), clock=clock) as sim,
        httpx.AsyncClient(base_url=sim.url) as http,
    ):
        ok = [await http.post(CHAT, json=BODY) for _ in range(3)]
        refused = await http.post(CHAT, json=BODY)
        await clock.advance(30)
        still = await http.post(CHAT, json=BODY)
        await clock.advance(30)
        freed = await http.post(CHAT, json=BODY)
        stats = sim.stats()
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "3"
    assert ok[0].headers["x-ratelimit-reset-requests"] == "1m0s"
    assert refused.status_code == 429
    assert refused.json() == {
        "error": {
            "message": "Rate limit reached for requests per min (RPM): Limit 3. "
            "Please try again later.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert refused.headers["retry-after"] == "60"
    assert refused.headers["retry-after-ms"] == "60000"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert still.status_code == 429
    assert still.headers["retry-after-ms"] == "30000"
    assert still.headers["x-ratelimit-reset-requests"] == "30s"
    assert freed.status_code == 200
    assert stats.by_status == {200: 4, 429: 2}
    assert [r.fault for r in stats.requests if r.status == 429] == ["rpm", "rpm"]


async def test_tpm_cap_counts_prompt_plus_completion() -> None:
    clock = VirtualClock()
    per_request = prompt_tokens_of(USER[0]["content"]) + 20
    config = SimConfig(tpm=2 * per_request + 5, rate_window_s=10)
    async with running(config, clock=clock) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        first = await http.post(CHAT, json=BODY)
        await clock.advance(4)
        second = await http.post(CHAT, json=BODY)
        third = await http.post(CHAT, json=BODY)
        await clock.advance(6)
        fourth = await http.post(CHAT, json=BODY)
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert first.headers["x-ratelimit-remaining-tokens"] == str(per_request + 5)
    assert third.json()["error"]["type"] == "tokens"
    # The first request's tokens leave the window 10 s after it, i.e. 6 s from now.
    assert third.headers["retry-after-ms"] == "6000"
    assert third.headers["x-ratelimit-reset-tokens"] == "6s"
    assert fourth.status_code == 200


async def test_request_larger_than_tpm_is_refused_for_a_whole_window() -> None:
    config = SimConfig(tpm=10)
    async with running(config, clock=VirtualClock()) as sim, httpx.AsyncClient() as http:
        r = await http.post(sim.url + CHAT, json=BODY)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "60"


async def test_concurrency_cap_counts_only_admitted_requests() -> None:
    config = SimConfig(max_concurrency=3, models={"*": ModelProfile(latency_s=0.3)})
    async with running(config) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        results = await asyncio.gather(*(http.post(CHAT, json=BODY) for _ in range(5)))
        after = await http.post(CHAT, json=BODY)
        stats = sim.stats()
    assert sorted(r.status_code for r in results) == [200, 200, 200, 429, 429]
    assert after.status_code == 200
    # Rejections are answered at once, so not all 5 need overlap; but more than the cap did.
    assert stats.max_in_flight > 3
    assert stats.in_flight == 0
    assert stats.rate_limited == 2


async def test_client_within_the_cap_never_sees_429() -> None:
    config = SimConfig(max_concurrency=4, models={"*": ModelProfile(latency_s=0.02)})
    gate = asyncio.Semaphore(4)

    async def call(http: httpx.AsyncClient) -> int:
        async with gate:
            return (await http.post(CHAT, json=BODY)).status_code

    async with running(config) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        statuses = await asyncio.gather(*(call(http) for _ in range(40)))
        stats = sim.stats()
    assert set(statuses) == {200}
    assert stats.max_in_flight == 4


async def test_concurrency_cap_can_be_changed_live() -> None:
    config = SimConfig(max_concurrency=1, models={"*": ModelProfile(latency_s=0.2)})
    async with running(config) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        before = await asyncio.gather(*(http.post(CHAT, json=BODY) for _ in range(2)))
        sim.configure(max_concurrency=2)
        after = await asyncio.gather(*(http.post(CHAT, json=BODY) for _ in range(2)))
    assert sorted(r.status_code for r in before) == [200, 429]
    assert [r.status_code for r in after] == [200, 200]


async def test_cap_retry_after_is_configurable_in_ms() -> None:
    config = SimConfig(
        max_concurrency=1, cap_retry_after_s=0.25, models={"*": ModelProfile(latency_s=0.2)}
    )
    async with running(config) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        results = await asyncio.gather(*(http.post(CHAT, json=BODY) for _ in range(2)))
    refused = next(r for r in results if r.status_code == 429)
    assert refused.headers["retry-after-ms"] == "250"
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-ratelimit-reset-requests"] == "250ms"


async def test_zhipu_style_cap_has_business_code_and_no_headers() -> None:
    config = SimConfig(
        style="zhipu", max_concurrency=1, models={"*": ModelProfile(latency_s=0.2)}
    )
    async with running(config) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        results = await asyncio.gather(*(http.post(CHAT, json=BODY) for _ in range(2)))
    refused = next(r for r in results if r.status_code == 429)
    assert refused.json()["error"]["code"] == "1302"
    assert "retry-after" not in refused.headers
    assert not [h for h in refused.headers if h.startswith("x-ratelimit")]


async def test_deepseek_style_cap_has_retry_after_only() -> None:
    config = SimConfig(
        style="deepseek", max_concurrency=1, models={"*": ModelProfile(latency_s=0.2)}
    )
    async with running(config) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        results = await asyncio.gather(*(http.post(CHAT, json=BODY) for _ in range(2)))
    refused = next(r for r in results if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert not [h for h in refused.headers if h.startswith("x-ratelimit")]


async def test_reset_that_rounds_to_a_minute_is_1m0s_over_http() -> None:
    """59.9996 s left in the window: Go (and so OpenAI) prints ``1m0s``, never ``60s``."""
    clock = VirtualClock()
    async with (
        running(SimConfig(rpm=5), clock=clock) as sim,
        httpx.AsyncClient(base_url=sim.url) as http,
    ):
        await http.post(CHAT, json=BODY)
        await clock.advance(0.0004)
        second = await http.post(CHAT, json=BODY)
    assert second.status_code == 200
    assert second.headers["x-ratelimit-reset-requests"] == "1m0s"


def _thousands(n: int) -> str:
    """Anthropic's ``…tokens-remaining``: rounded to the nearest thousand."""
    return str((n + 500) // 1000 * 1000)


async def test_anthropic_sends_input_and_output_token_headers() -> None:
    """PROVIDERS.md §2: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
    {limit,remaining,reset}``; input and output are counted apart in the TPM window, and
    every ``…tokens-remaining`` is rounded to the nearest thousand."""
    clock = VirtualClock()
    config = SimConfig(style="anthropic", rpm=10, tpm=12_000,
                       models={"*": ModelProfile(output_tokens=2_600)})
    long_prompt = [{"role": "user", "content": "word " * 6_000}]  # ~7,500 input tokens
    body = {"model": "claude-haiku-4-5", "max_tokens": 4_000, "messages": long_prompt}
    async with (
        running(config, clock=clock) as sim,
        httpx.AsyncClient(base_url=sim.url, headers={"x-api-key": "sk-test"}) as http,
    ):
        ok = await http.post("/v1/messages", json=body)
        await clock.advance(20)
        refused = await http.post("/v1/messages", json=body)
    assert ok.status_code == 200
    usage = ok.json()["usage"]
    used_in, used_out = usage["input_tokens"], usage["output_tokens"]
    assert used_out == 2_600 and 5_000 < used_in < 12_000 - used_out
    h = ok.headers
    # VirtualClock's wall clock starts at 2023-11-14T22:13:20Z; the window is 60 s.
    for unit in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert h[f"anthropic-ratelimit-{unit}-reset"] == "2023-11-14T22:14:20Z", unit
    assert h["anthropic-ratelimit-requests-limit"] == "10"
    assert h["anthropic-ratelimit-requests-remaining"] == "9"
    assert h["anthropic-ratelimit-tokens-limit"] == "12000"
    assert h["anthropic-ratelimit-tokens-remaining"] == _thousands(12_000 - used_in - used_out)
    assert h["anthropic-ratelimit-input-tokens-limit"] == "12000"
    assert h["anthropic-ratelimit-input-tokens-remaining"] == _thousands(12_000 - used_in)
    assert h["anthropic-ratelimit-output-tokens-limit"] == "12000"
    assert h["anthropic-ratelimit-output-tokens-remaining"] == _thousands(12_000 - used_out)
    # The second request does not fit the TPM window: the 429 carries all four units too,
    # and counts nothing of the refused request.
    assert refused.status_code == 429
    r = refused.headers
    assert r["anthropic-ratelimit-tokens-remaining"] == _thousands(12_000 - used_in - used_out)
    assert r["anthropic-ratelimit-input-tokens-remaining"] == _thousands(12_000 - used_in)
    assert r["anthropic-ratelimit-output-tokens-remaining"] == _thousands(12_000 - used_out)
    assert r["anthropic-ratelimit-input-tokens-reset"] == "2023-11-14T22:14:20Z"
    assert r["anthropic-ratelimit-output-tokens-reset"] == "2023-11-14T22:14:20Z"


async def test_openai_style_has_no_input_or_output_token_headers() -> None:
    async with running(SimConfig(tpm=10_000), clock=VirtualClock()) as sim, \
            httpx.AsyncClient(base_url=sim.url) as http:
        r = await http.post(CHAT, json=BODY)
    assert r.headers["x-ratelimit-limit-tokens"] == "10000"
    assert not [k for k in r.headers if "input-tokens" in k or "output-tokens" in k]
