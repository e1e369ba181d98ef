"""Alerts at a real webhook receiver (aiohttp on 127.0.0.1), in virtual time.

The must-show: token use jumps to 47x its usual rate (every call through a real Router
against the simulator carries a 47x longer history); the burn-rate alert reaches the
receiver within one evaluation interval of the spike, and exactly once while the spike
lasts. Then: the webhook retries a failing receiver with backoff, gives up on a 4xx,
de-duplicates and rate-limits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from aiohttp import web

from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.observe.alert_config import AlertsConfig, WebhookConfig
from shoal.observe.alert_sinks import WebhookSink
from shoal.observe.alerts import Alert, AlertEngine
from shoal.sim import SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

INTERVAL = 15.0
PLAN_PROMPT = "Summarise the ticket. " * 40  # ~220 tokens a call


@dataclass
class Receiver:
    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # what to answer next (then 200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = web.Application()
    runner = web.AppRunner(app)
    rec = Receiver("")

    async def hook(request: web.Request) -> web.Response:
        rec.posts.append(json.loads(await request.read()))
        status = rec.statuses.pop(0) if rec.statuses else 200
        return web.Response(status=status, headers={"Retry-After": "0"})

    app.router.add_post("/hook/{token}", hook)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook/T0-secret-token"
    try:
        yield rec
    finally:
        await runner.cleanup()


async def test_burn_rate_alert_reaches_the_webhook_once_within_an_interval_of_a_47x_spike(
        receiver: Receiver) -> None:
    clock = VirtualClock()
    config = AlertsConfig(interval_s=INTERVAL, burn_rate=10, baseline_min_s=300,
                          webhook=[WebhookConfig.model_validate({"url": receiver.url})])
    async with SimServer(SimConfig()) as sim:
        cfg = Config.from_dict({
            "channels": {"sim": {"protocol": "openai", "base_url": sim.url + "/v1",
                                 "api_key": "sk-test", "provider": "openai",
                                 "max_concurrency": 8}},
            "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}}})
        async with Router(cfg, clock=clock) as router:
            engine = AlertEngine.from_config(router.events, config, clock=clock)

            async def minute_of_calls(history: str) -> int:
                """Four calls a minute, one every 15 s of virtual time; their tokens."""
                used = 0
                for _ in range(4):
                    answer = await router.complete(ChatRequest(
                        model="m", messages=[Message.user(history)], max_tokens=20))
                    used += answer.usage.total_tokens
                    await clock.advance(INTERVAL)
                return used

            async with engine:
                planned = sum([await minute_of_calls(PLAN_PROMPT) for _ in range(10)])
                assert receiver.posts == [] and engine.firing == {}
                assert engine.baseline() == pytest.approx(planned / 10, rel=0.01)
                spike_at = clock.wall()
                spiked = await minute_of_calls(PLAN_PROMPT * 47)
                for _ in range(4):  # the spike goes on: four more minutes
                    spiked += await minute_of_calls(PLAN_PROMPT * 47)
                await engine.drain()
    assert spiked / 5 >= 40 * planned / 10  # the simulator did answer ~47x more tokens
    [post] = receiver.posts  # once: de-duplicated while it fires
    assert post["key"] == "burn_rate:tokens" and post["state"] == "firing"
    assert post["threshold"] == 10
    assert post["value"] == pytest.approx(47, rel=0.1)
    assert 0 < post["at"] - spike_at <= INTERVAL  # within one evaluation interval
    assert [a.key for a in engine.sent] == ["burn_rate:tokens"]


def _alert(subject: str = "ds", state: Literal["firing", "resolved"] = "firing") -> Alert:
    return Alert("breaker_open", subject, state, 1, 1, f"channel {subject!r}: breaker open",
                 1_700_000_000.0)


async def test_webhook_retries_5xx_and_429_with_backoff_then_delivers(
        receiver: Receiver) -> None:
    clock = VirtualClock()
    receiver.statuses = [503, 429]
    sink = WebhookSink(receiver.url, clock=clock, attempts=4, backoff_s=2.0)
    try:
        async def run() -> None:
            await sink.send(_alert())
        await clock.run(run())
    finally:
        await sink.aclose()
    assert len(receiver.posts) == 3
    assert clock.now() == pytest.approx(2.0 + 4.0)  # 2 s, then doubled
    assert sink.delivered == {"breaker_open:ds"}


async def test_webhook_gives_up_on_4xx_and_after_its_attempts(
        receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    clock = VirtualClock()
    receiver.statuses = [400, 500, 500]
    sink = WebhookSink(receiver.url, clock=clock, attempts=2, backoff_s=1.0)
    try:
        await clock.run(sink.send(_alert("a")))  # 400: not retried
        await clock.run(sink.send(_alert("b")))  # 500, 500: two attempts, dropped
    finally:
        await sink.aclose()
    assert [p["subject"] for p in receiver.posts] == ["a", "b", "b"]
    assert sink.delivered == set()
    assert "refused the alert (HTTP 400); not retried" in caplog.text
    assert "failed 2 times (HTTP 500); alert dropped" in caplog.text
    assert "T0-secret-token" not in caplog.text  # only the host is ever logged


async def test_webhook_deduplicates_while_firing_and_rate_limits(receiver: Receiver) -> None:
    clock = VirtualClock()
    sink = WebhookSink(receiver.url, clock=clock, max_per_minute=3)
    try:
        await sink.send(_alert("x"))
        await sink.send(_alert("x"))  # the same key while firing: not sent
        await sink.send(_alert("x", "resolved"))
        await sink.send(_alert("x"))  # fired again after resolving: sent
        await sink.send(_alert("y"))  # the 4th within a minute: dropped
        assert sink.dropped == 1
        await clock.advance(60)
        await sink.send(_alert("y"))
    finally:
        await sink.aclose()
    assert [(p["subject"], p["state"]) for p in receiver.posts] == [
        ("x", "firing"), ("x", "resolved"), ("x", "firing"), ("y", "firing")]
