"""A model its provider retires: warned about before the day, refused on it, before sending.

Anthropic retires claude-sonnet-4-5 on 2026-11-30; from that day its API answers 404
``not_found_error``. The simulator's anthropic style does the same (its own table of
dates), the Router refuses the model before any request (or moves the call to the
model's fallback), and the gateway answers 404 ``model_not_found`` in the caller's
protocol. Dates come from the clocks: a :class:`VirtualClock` crosses midnight here.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import anthropic
import openai
import pytest
from gateway_fixtures import gateway, openai_client, sim_config
from sim_fixtures import anthropic_for, running

from shoal.agents import Agent, Runner
from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import BadRequest, ConfigError, ModelRetired
from shoal.sim import SimConfig
from shoal.traffic.retry import RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

pytestmark = pytest.mark.asyncio

EVE = datetime.datetime(2026, 11, 29, 23, 58, tzinfo=datetime.UTC).timestamp()
KEY = "sk-ant-retire-test-0123456789abcdef"


def _config(sim: Any, **models: Any) -> Config:
    return Config.from_dict({
        "channels": {"anthropic": {"base_url": sim.base_url("anthropic", protocol="anthropic"),
                                   "api_key": KEY}},
        "models": models,
    })


def _ask(model: str) -> ChatRequest:
    return ChatRequest(model, [Message.user("Is it still there?")], max_tokens=16)


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and text in r.getMessage()]


async def test_warned_once_the_day_before_then_refused_before_sending(
        caplog: pytest.LogCaptureFixture) -> None:
    """Two minutes before midnight UTC on 2026-11-29 the call goes out, with one warning
    that names the day and the successor; after midnight the Router raises ModelRetired
    and the provider sees no request (the simulator, on the same clock, would 404)."""
    clock = VirtualClock(wall_start=EVE)
    caplog.set_level(logging.WARNING, logger="shoal")
    async with running(SimConfig(style="anthropic"), clock=clock) as sim:
        router = Router(_config(sim), clock=clock)
        try:
            for _ in range(3):
                answer = await clock.run(router.complete(_ask("claude-sonnet-4-5")))
                assert answer.text
            soon = _warnings(caplog, "retires on 2026-11-30")
            assert len(soon) == 1, soon
            assert "(in 1 day)" in soon[0] and "'claude-sonnet-4-6'" in soon[0]
            sent = sim.stats().total_requests
            assert sent == 3

            await clock.advance(180)  # 00:01 on 2026-11-30
            with pytest.raises(ModelRetired) as caught:
                await clock.run(router.complete(_ask("claude-sonnet-4-5")))
            err = caught.value
            assert isinstance(err, ConfigError)  # never retried, as a config mistake
            assert (err.model, err.retired_on, err.replaced_by) == (
                "claude-sonnet-4-5", "2026-11-30", "claude-sonnet-4-6")
            assert "today is 2026-11-30 UTC" in str(err)
            assert "retires to a later date" in str(err)  # the way out if it is extended
            with pytest.raises(ModelRetired):  # streams too, before the first byte
                async for _ in router.stream(_ask("claude-sonnet-4-5")):
                    pass
            assert sim.stats().total_requests == sent  # nothing reached the provider
            # its successor is untouched
            assert (await clock.run(router.complete(_ask("claude-sonnet-4-6")))).text
        finally:
            await router.aclose()


async def test_a_retired_model_with_a_fallback_moves_its_calls_there(
        caplog: pytest.LogCaptureFixture) -> None:
    """Adding the successor to the old model's fallbacks before the day makes the move
    seamless: on the day, calls go to the fallback (one warning); a retired fallback of
    another model is left out of its chain."""
    clock = VirtualClock(wall_start=EVE + 3600)  # 2026-11-30 00:58 UTC
    caplog.set_level(logging.WARNING, logger="shoal")
    async with running(SimConfig(style="anthropic"), clock=clock) as sim:
        config = _config(sim, **{
            "claude-sonnet-4-5": {"fallbacks": ["claude-sonnet-4-6"]},
            "claude-opus-4-6": {"fallbacks": ["claude-sonnet-4-5"]},
        })
        router = Router(config, clock=clock)
        try:
            moved = await clock.run(router.complete(_ask("claude-sonnet-4-5")))
            assert moved.model == "claude-sonnet-4-6"
            assert len(_warnings(caplog, "its calls go to its fallback 'claude-sonnet-4-6'")) == 1
            assert sim.stats().by_status == {200: 1}  # the retired id was never sent

            chain = [info.name for info, _ in router._chain("claude-opus-4-6")]
            assert chain == ["claude-opus-4-6"]
            assert _warnings(caplog, "left out of the fallbacks of 'claude-opus-4-6'")
        finally:
            await router.aclose()


async def test_an_agent_moves_to_its_own_fallback_model_on_the_day() -> None:
    """An agent's fallbacks (not the catalog's) take over from a retired model too, and
    the turn says which model answered."""
    clock = VirtualClock(wall_start=EVE + 600)  # 2026-11-30 00:08 UTC
    async with running(SimConfig(style="anthropic"), clock=clock) as sim:
        router = Router(_config(sim), clock=clock)
        try:
            agent = Agent("writer", model="claude-sonnet-4-5", instructions="Answer briefly.",
                          fallbacks=["claude-sonnet-4-6"])
            result = await clock.run(Runner(router).run(agent, "Still there?"))
            assert result.output
            assert [t.model for t in result.turns] == ["claude-sonnet-4-6"]
            assert sim.stats().total_requests == 1
        finally:
            await router.aclose()


@pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
async def test_the_simulator_answers_404_for_a_retired_model_as_anthropic_does() -> None:
    """The official SDK sees NotFoundError ``model: claude-sonnet-4-5`` from the day on
    (and an answer the day before); shoal's adapter, given a model it does not know to be
    retired, gets BadRequest 404 and does not retry it."""
    async with running(SimConfig(style="anthropic", today="2026-11-29")) as sim, \
            anthropic_for(sim) as client:
        ok = await client.messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                          messages=[{"role": "user", "content": "hi"}])
        assert ok.content
        sim.configure(today="2026-11-30")
        with pytest.raises(anthropic.NotFoundError) as caught:
            await client.messages.create(model="claude-sonnet-4-5-20250929", max_tokens=8,
                                         messages=[{"role": "user", "content": "hi"}])
        body: Any = caught.value.body
        assert body["error"] == {"type": "not_found_error",
                                 "message": "model: claude-sonnet-4-5-20250929"}
        assert (await client.messages.create(  # not retired: served
            model="claude-opus-4-5", max_tokens=8,
            messages=[{"role": "user", "content": "hi"}])).content

        # a user's own entry for the old id, without the catalog's date
        raw = _config(sim, **{"old-sonnet": {"channels": ["anthropic"],
                                             "wire_name": "claude-sonnet-4-5"}})
        before = sim.stats().total_requests
        async with Router(raw, retry=RetryPolicy(attempts=4)) as router:
            with pytest.raises(BadRequest) as bad:
                await router.complete(_ask("old-sonnet"))
        assert bad.value.status == 404
        assert sim.stats().total_requests == before + 1  # a 404 is not retried


async def test_the_simulator_refuses_a_date_it_cannot_read() -> None:
    with pytest.raises(ConfigError, match=r"SimConfig\.today must be an ISO date"):
        SimConfig(today="30.11.2026")
    assert SimConfig.from_dict({"today": datetime.date(2026, 12, 1)}).today == "2026-12-01"


async def test_the_gateway_answers_404_and_stops_listing_a_retired_model() -> None:
    """Through the gateway a retired model is a 404 ``model_not_found`` in the caller's
    protocol (the official SDK's NotFoundError) naming the successor, and GET /v1/models
    leaves it out; no upstream request is made."""
    async with running() as sim:
        base = sim_config(sim)
        models = {name: info.model_dump(exclude={"name"}) for name, info in base.models.items()
                  if name in ("gpt-test", "claude-test")}
        models["gpt-old"] = {**models["gpt-test"], "retires": "2025-06-01",
                             "replaced_by": "gpt-test"}
        config = Config.from_dict({
            "channels": {n: c.model_dump(exclude={"name"}) | {
                "api_key": c.key()} for n, c in base.channels.items() if n in ("oa", "an")},
            "models": models,
        })
        async with gateway(config) as server, openai_client(server) as client:
            listed = [m.id for m in (await client.models.list()).data]
            assert "gpt-test" in listed and "gpt-old" not in listed
            before = sim.stats().total_requests
            with pytest.raises(openai.NotFoundError) as caught:
                await client.chat.completions.create(
                    model="gpt-old", messages=[{"role": "user", "content": "hi"}])
            body: Any = caught.value.body
            assert body["code"] == "model_not_found"
            assert "retired" in body["message"] and "'gpt-test'" in body["message"]
            assert sim.stats().total_requests == before
