"""A virtual key's budget reservation prices the prompt as a 1-hour cache write (2×
input on Claude, against 1.25× for a 5-minute one) whenever a model of the call's chain
may write one: a 1-hour ``cache_ttl`` on the model or on its channel, not only a 1-hour
``cache_control`` the caller placed. Otherwise a key's budget could be passed by what
its admitted calls were billed for the writes their config asked for.

Each case gives the key a budget between the two worst cases of one call (prompt as a
5-minute write, and as a 1-hour one): the call is refused (the SDK's quota error, no
upstream request) when a 1-hour write may happen, and served when the same config says
5 minutes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from gateway_fixtures import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    anthropic_client,
    gateway,
    openai_client,
    sim_config,
)

from shoal.config import Config
from shoal.gateway.key_store import KeyStore, open_key_store
from shoal.gateway.keys import StoreKeys
from shoal.gateway.server import GatewayServer
from shoal.sim import SimConfig, SimServer

# ~20k tokens: the prompt's price dominates the call's worst case.
PROMPT: list[Any] = [{"role": "user", "content": "Summarise the shared cache. " * 2500}]
MAX_TOKENS = 100
INPUT, OUTPUT = 3.0e-6, 15.0e-6  # claude-test's prices per token (gateway_fixtures)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig()) as server:
        yield server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[KeyStore]:
    async with open_key_store(f"sqlite:///{tmp_path / 'runs.db'}") as s:
        yield s


def _config(sim: SimServer, where: str, ttl: str) -> Config:
    """claude-test's entries may be ``ttl`` long, set ``where``: on the model, on its
    channel, or on the model as the fallback of gpt-test (the model asked for)."""
    if where == "channel":
        return sim_config(sim, channel={"cache_ttl": ttl})
    models: dict[str, dict[str, Any]] = {ANTHROPIC_MODEL: {"cache_ttl": ttl}}
    if where == "fallback":
        models[OPENAI_MODEL] = {"fallbacks": [ANTHROPIC_MODEL]}
    return sim_config(sim, models=models)


async def _prompt_tokens(gw: GatewayServer) -> int:
    """The gateway's estimate of PROMPT, the one admission reserves (count_tokens)."""
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/v1/messages/count_tokens",
            json={"model": ANTHROPIC_MODEL, "messages": PROMPT}) as resp:
        assert resp.status == 200
        return int((await resp.json())["input_tokens"])


async def _ask(gw: GatewayServer, key: str, sdk: Any, model: str) -> Any:
    if sdk is openai:
        async with openai_client(gw, key) as client:
            return await client.chat.completions.create(model=model, messages=PROMPT,
                                                        max_tokens=MAX_TOKENS)
    async with anthropic_client(gw, key) as client:
        return await client.messages.create(model=model, max_tokens=MAX_TOKENS,
                                            messages=PROMPT)


@pytest.mark.parametrize("sdk", [openai, anthropic], ids=["openai", "anthropic"])
@pytest.mark.parametrize("where", ["model", "channel", "fallback"])
async def test_a_configured_1h_cache_ttl_reserves_the_1h_write_price(
        sim: SimServer, store: KeyStore, sdk: Any, where: str) -> None:
    model = OPENAI_MODEL if where == "fallback" else ANTHROPIC_MODEL
    async with gateway(_config(sim, where, "5m")) as gw:
        prompt = await _prompt_tokens(gw)
    five_min = prompt * INPUT * 1.25 + MAX_TOKENS * OUTPUT
    one_hour = prompt * INPUT * 2.0 + MAX_TOKENS * OUTPUT
    budget = (five_min + one_hour) / 2  # room for a 5-minute write, not a 1-hour one
    _, short_key = await store.create("five-minutes", budget_usd=budget)
    _, long_key = await store.create("one-hour", budget_usd=budget)

    async with gateway(_config(sim, where, "5m"), keys=StoreKeys(store, cache_s=0)) as gw:
        assert await _ask(gw, short_key, sdk, model)  # its worst case fits the budget
        await gw.gateway.settled()
    upstream = sim.stats().total_requests

    async with gateway(_config(sim, where, "1h"), keys=StoreKeys(store, cache_s=0)) as gw:
        with pytest.raises(sdk.RateLimitError) as info:
            await _ask(gw, long_key, sdk, model)
        await gw.gateway.settled()
    assert "budget" in info.value.message
    if sdk is openai:
        assert info.value.code == "insufficient_quota"
    assert sim.stats().total_requests == upstream  # refused before any upstream request
