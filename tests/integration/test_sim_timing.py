"""Latency profiles, checked in virtual time: the server sleeps on an injected VirtualClock,
so durations in the request log are exact and the tests take no real time to wait."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sim_fixtures import USER, running

from shoal.clock import VirtualClock
from shoal.sim import ModelProfile, SimConfig

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "m", "messages": USER}


async def _durations(config: SimConfig, bodies: list[dict[str, Any]]) -> list[float]:
    clock = VirtualClock()
    async with running(config, clock=clock) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        for body in bodies:
            response = await clock.run(http.post(CHAT, json=body))
            assert response.status_code == 200
        return [r.duration for r in sim.stats().requests]


async def test_whole_answer_takes_latency_s() -> None:
    config = SimConfig(models={"*": ModelProfile(latency_s=2.5)})
    assert await _durations(config, [BODY]) == [2.5]


async def test_stream_takes_ttft_plus_tokens_over_speed() -> None:
    profile = ModelProfile(latency_s=9, ttft_s=1.0, tokens_per_s=10, output_tokens=20)
    config = SimConfig(models={"*": profile})
    whole, streamed = await _durations(config, [BODY, {**BODY, "stream": True}])
    assert streamed == pytest.approx(1.0 + 20 * 0.1)
    assert whole == pytest.approx(1.0 + 20 * 0.1)


async def test_max_tokens_shortens_generation_time() -> None:
    profile = ModelProfile(ttft_s=0.5, tokens_per_s=4, output_tokens=20)
    durations = await _durations(SimConfig(models={"*": profile}), [{**BODY, "max_tokens": 2}])
    assert durations == [pytest.approx(0.5 + 2 / 4)]


async def test_jitter_is_bounded_and_seeded() -> None:
    profile = ModelProfile(latency_s=1.0, jitter_s=0.5)
    first = await _durations(SimConfig(seed=1, models={"*": profile}), [BODY] * 5)
    again = await _durations(SimConfig(seed=1, models={"*": profile}), [BODY] * 5)
    other = await _durations(SimConfig(seed=2, models={"*": profile}), [BODY] * 5)
    assert first == again
    assert first != other
    assert all(1.0 <= d < 1.5 for d in first)
    assert len(set(first)) == 5


async def test_delay_fault_adds_to_latency() -> None:
    clock = VirtualClock()
    config = SimConfig(models={"*": ModelProfile(latency_s=0.5)})
    async with running(config, clock=clock) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        sim.script(["delay:3"])
        await clock.run(http.post(CHAT, json=BODY))
        await clock.run(http.post(CHAT, json=BODY))
        durations = [r.duration for r in sim.stats().requests]
    assert durations == [3.5, 0.5]


async def test_per_model_profiles() -> None:
    config = SimConfig(models={"*": ModelProfile(latency_s=1), "fast-*": ModelProfile()})
    durations = await _durations(config, [BODY, {**BODY, "model": "fast-one"}])
    assert durations == [1.0, 0.0]
