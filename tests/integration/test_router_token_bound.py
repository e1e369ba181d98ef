"""The Router counts a prompt's tokens only where something needs the count: a channel
with a TPM window, or a prompt whose bytes do not show it fits the context window."""

from __future__ import annotations

import asyncio

import openai
import pytest

from shoal.config import Config
from shoal.errors import ContextOverflow
from shoal.observe.events import Event, EventBus
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.tokens import estimate_call_tokens
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

WINDOW = 600


def _config(url: str, **channel: object) -> Config:
    return Config.from_dict({
        "channels": {"c": {"protocol": "openai", "base_url": url + "/v1", "api_key": "sk-t",
                           "provider": "openai", "max_concurrency": 1, **channel}},
        "models": {"m": {"channels": ["c"], "context_window": WINDOW, "input": 1.0,
                         "output": 2.0}},
    })


def _ask(words: int) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message.user("hello " * words)], max_tokens=16)


async def test_a_prompt_whose_bytes_overrun_the_window_is_counted_and_sent() -> None:
    """1,800 bytes for a 600-token window, ~300 tokens: the bound says maybe not, the
    count says it fits, and it goes out."""
    async with SimServer(SimConfig()) as sim, Router(_config(sim.url)) as router:
        answer = await router.complete(_ask(300))
        assert answer.text
        assert sim.stats().total_requests == 1


async def test_a_prompt_over_the_window_fails_before_any_request() -> None:
    async with SimServer(SimConfig()) as sim, Router(_config(sim.url)) as router:
        with pytest.raises(ContextOverflow, match="over its context window of 600"):
            await router.complete(_ask(1_000))
        with pytest.raises(ContextOverflow):
            await anext(aiter(router.stream(_ask(1_000))))
        assert sim.stats().total_requests == 0


@pytest.mark.parametrize(("channel", "counted"), [({}, False), ({"tpm": 100_000}, True)])
async def test_only_a_tpm_window_reserves_the_estimate(channel: dict[str, object],
                                                       counted: bool) -> None:
    """Two calls on a cap-1 channel: the second queues, and its ``admit`` says what it
    reserved: the estimate on a TPM channel, nothing where no window counts tokens."""
    seen: list[Event] = []
    bus = EventBus()
    bus.subscribe(seen.append)
    slow = SimConfig(models={"*": ModelProfile(latency_s=0.05)})
    async with SimServer(slow) as sim, Router(_config(sim.url, **channel), events=bus) as r:
        await asyncio.gather(r.complete(_ask(20)), r.complete(_ask(20)))
        expected = estimate_call_tokens(_ask(20), r.model_info("m")) if counted else 0
    admits = [e for e in seen if e.kind == "admit"]
    assert admits and all(e.data["tokens"] == expected for e in admits)
    waits = [e for e in seen if e.kind == "wait" and e.channel == "c"]
    assert waits and all(e.data["tokens"] == expected for e in waits)


async def test_the_gateway_checks_the_window_by_bytes_and_counts_for_a_budget() -> None:
    """Through the gateway: a prompt whose bytes overrun the window but whose tokens fit
    is served, one over the window is a 400 ``context_length_exceeded`` before any
    upstream request, and a key with a budget is admitted with the counted estimate."""
    from gateway_fixtures import fake_keys, gateway, openai_client

    from shoal.gateway.keys_api import VirtualKey
    from shoal.tokens import estimate_prompt_tokens

    keys = fake_keys()
    keys.keys["sk-budget"] = VirtualKey(id="k-budget", name="budget", budget_usd=5.0)
    async with SimServer(SimConfig()) as sim, \
            gateway(_config(sim.url), keys=keys) as server, \
            openai_client(server, "sk-good") as client, \
            openai_client(server, "sk-budget") as budgeted:
        fits = await client.chat.completions.create(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "hello " * 300}])
        assert fits.choices[0].message.content
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="m", max_tokens=16,
                messages=[{"role": "user", "content": "hello " * 1_000}])
        await budgeted.chat.completions.create(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "hello " * 20}])
        assert sim.stats().total_requests == 2
    assert info.value.code == "context_length_exceeded"
    counted = estimate_prompt_tokens(_ask(20), "approx") + 16
    assert keys.admitted[-1][0] == "k-budget" and keys.admitted[-1][1] == counted
