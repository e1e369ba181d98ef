"""The gateway's fast paths keep its behaviour: orjson bodies (non-ASCII text, a lone
surrogate, a big integer) answer as the stdlib did, and a channel allowed more calls at
once than its connection pool holds still gets them all to the upstream at once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from gateway_fixtures import ANTHROPIC_MODEL, OPENAI_MODEL, gateway, sim_config

from shoal.sim import ModelProfile, SimConfig, SimServer

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


async def _post(session: aiohttp.ClientSession, url: str, raw: bytes,
                headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    async with session.post(url, data=raw, headers={"Content-Type": "application/json",
                                                    **(headers or {})}) as resp:
        body = await resp.read()
        return resp.status, json.loads(body), body


def _body(content: str, **extra: Any) -> bytes:
    # ensure_ascii: a lone surrogate travels as the escape "\ud800" (valid JSON text)
    return json.dumps({"model": OPENAI_MODEL, "max_tokens": 5,
                       "messages": [{"role": "user", "content": content}], **extra}).encode()


async def test_unicode_surrogates_and_big_integers_answer_as_before() -> None:
    async with SimServer(SimConfig()) as sim, gateway(sim_config(sim)) as gw, \
            aiohttp.ClientSession() as session:
        for path in (CHAT, MESSAGES):
            raw = _body("héllo wörld ✓ 漢字 🙂") if path == CHAT else json.dumps({
                "model": ANTHROPIC_MODEL, "max_tokens": 5,
                "messages": [{"role": "user", "content": "héllo wörld ✓ 漢字 🙂"}]}).encode()
            status, answer, _ = await _post(session, gw.url + path, raw)
            assert status == 200, answer
        # A lone surrogate is valid JSON text (orjson refuses it; the stdlib reads it).
        status, answer, _ = await _post(session, gw.url + MESSAGES + "/count_tokens",
                                        json.dumps({"model": ANTHROPIC_MODEL, "messages": [
                                            {"role": "user", "content": "a \ud800 b"}]}
                                        ).encode())
        assert status == 200 and answer["input_tokens"] > 0, answer
        # An integer past 64 bits is still a number: a 4xx naming max_tokens, never a 5xx.
        status, answer, _ = await _post(
            session, gw.url + CHAT, _body("hi").replace(b'"max_tokens": 5',
                                                        b'"max_tokens": ' + b"9" * 30))
        assert 400 <= status < 500 and "max_tokens" in answer["error"]["message"]
        # NaN is not JSON (either decoder): 400 in the caller's envelope.
        status, answer, _ = await _post(
            session, gw.url + CHAT, _body("hi").replace(b'"max_tokens": 5',
                                                        b'"max_tokens": NaN'))
        assert status == 400 and "not valid JSON" in answer["error"]["message"]


async def test_an_error_echoing_a_lone_surrogate_is_still_json() -> None:
    async with SimServer(SimConfig()) as sim, gateway(sim_config(sim)) as gw, \
            aiohttp.ClientSession() as session:
        raw = json.dumps({"model": "no-such-\ud800-model", "max_tokens": 5,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()
        status, answer, body = await _post(session, gw.url + CHAT, raw)
    assert status == 404 and answer["error"]["code"] == "model_not_found"
    assert b"\\ud800" in body  # the stdlib's escape: orjson cannot encode it


async def test_a_concurrency_cap_above_the_pool_size_reaches_the_upstream() -> None:
    """max_concurrency 120 with the default pool_size of 100: 120 calls are in flight
    upstream together (the pool grows to the cap), none waits for a connection."""
    sim_cfg = SimConfig(models={"*": ModelProfile(latency_s=0.6)})
    async with SimServer(sim_cfg) as sim:
        config = sim_config(sim, channel={"max_concurrency": 120})
        async with gateway(config) as gw, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0)) as session:
            results = await asyncio.gather(*(
                _post(session, gw.url + CHAT, _body(f"call {i}")) for i in range(120)))
        stats = sim.stats()
    assert [s for s, _, _ in results] == [200] * 120
    assert stats.max_in_flight == 120


async def test_a_model_refused_for_want_of_a_key_is_served_once_the_key_is_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway keeps a model's plan (chain, protocols) only once it is servable."""
    from shoal.config import Config

    env = "SHOAL_TEST_PERF_LATE_KEY"
    monkeypatch.delenv(env, raising=False)
    async with SimServer(SimConfig()) as sim:
        config = Config.from_dict({
            "channels": {"late": {"protocol": "openai", "base_url": sim.base_url("openai"),
                                  "api_key_env": env, "provider": "openai"}},
            "models": {"late-model": {"channels": ["late"], "wire_name": "gpt-4o-mini"}}})
        raw = json.dumps({"model": "late-model", "max_tokens": 5,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            first, answer, _ = await _post(session, gw.url + CHAT, raw)
            monkeypatch.setenv(env, "sk-late-0123456789abcdef0123")
            second, _, _ = await _post(session, gw.url + CHAT, raw)
            third, _, _ = await _post(session, gw.url + CHAT, raw)
    assert first == 404 and "none of its channels has an API key" in answer["error"]["message"]
    assert (second, third) == (200, 200)
    assert sim.stats().total_requests == 2
