"""The official SDKs, unmodified, against the gateway with real virtual keys (StoreKeys
on a SQLite store): a good key is billed in the store; an over-budget key and a
rate-limited key are the SDKs' RateLimitError, refused before any upstream request; a
model the key may not use is PermissionDeniedError; a revoked or rotated-away secret is
AuthenticationError; keys are managed over HTTP with the admin key."""

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

from shoal.gateway.key_store import KeyStore, open_key_store
from shoal.gateway.keys import StoreKeys
from shoal.sim import SimConfig, SimServer

USER: list[Any] = [{"role": "user", "content": "What binds when agents share a provider?"}]
ADMIN = "admin-key-for-tests-0123456789"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig()) as server:
        yield server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[KeyStore]:
    async with open_key_store(f"sqlite:///{tmp_path / 'runs.db'}") as s:
        yield s


async def ask(gw: Any, key: str, *, sdk: Any = openai, model: str = OPENAI_MODEL,
              max_tokens: int = 5) -> Any:
    if sdk is openai:
        async with openai_client(gw, key) as client:
            return await client.chat.completions.create(model=model, messages=USER,
                                                        max_tokens=max_tokens)
    async with anthropic_client(gw, key) as client:
        return await client.messages.create(model=model, max_tokens=max_tokens, messages=USER)


@pytest.mark.parametrize("sdk", [openai, anthropic], ids=["openai", "anthropic"])
async def test_virtual_keys_through_each_sdk(
    sim: SimServer, store: KeyStore, sdk: Any
) -> None:
    keys = StoreKeys(store, cache_s=0)
    good_rec, good = await store.create("good", budget_usd=1.0, period="month")
    _, broke = await store.create("broke", budget_usd=0.00001)
    _, busy = await store.create("busy", rpm=1)
    _, narrow = await store.create("narrow", models=["gpt-*"])
    gone_rec, gone = await store.create("gone")
    turned_rec, turned = await store.create("turned")
    async with gateway(sim_config(sim), keys=keys) as gw:
        assert await ask(gw, good, sdk=sdk)
        assert await ask(gw, good, sdk=sdk, model=ANTHROPIC_MODEL)  # the other protocol
        upstream = sim.stats().total_requests

        with pytest.raises(sdk.RateLimitError) as budget:
            await ask(gw, broke, sdk=sdk, max_tokens=1000)
        assert "out of budget" in budget.value.message
        if sdk is openai:
            assert budget.value.code == "insufficient_quota"

        assert await ask(gw, busy, sdk=sdk)
        with pytest.raises(sdk.RateLimitError) as limited:
            await ask(gw, busy, sdk=sdk)
        assert 0 < float(limited.value.response.headers["retry-after"]) <= 60
        assert "1 requests per minute" in limited.value.message

        with pytest.raises(sdk.PermissionDeniedError):
            await ask(gw, narrow, sdk=sdk, model=ANTHROPIC_MODEL)
        assert await ask(gw, narrow, sdk=sdk)

        await store.revoke(gone_rec.id)
        with pytest.raises(sdk.AuthenticationError) as revoked:
            await ask(gw, gone, sdk=sdk)
        assert "revoked" in revoked.value.message
        new = await store.rotate(turned_rec.id)
        assert new is not None
        with pytest.raises(sdk.AuthenticationError):
            await ask(gw, turned, sdk=sdk)
        assert await ask(gw, new, sdk=sdk)
        with pytest.raises(sdk.AuthenticationError):
            await ask(gw, "sk-shoal-not-a-key", sdk=sdk)

        # only the admitted calls went upstream: busy's first, narrow's, the rotated key's
        assert sim.stats().total_requests == upstream + 3
        await gw.gateway.settled()
    spend = await store.spend(good_rec.id, "total")
    assert spend.requests == 2 and spend.usd > 0 and spend.input_tokens > 0
    for text in (budget.value.message, limited.value.message, revoked.value.message):
        assert good not in text and broke not in text and gone not in text


async def test_keys_managed_over_http_with_the_admin_key(
    sim: SimServer, store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOAL_ADMIN_KEY", ADMIN)
    await store.create("first")  # the gateway serves virtual keys once one exists
    keys = StoreKeys(store, cache_s=60)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with gateway(sim_config(sim), keys=keys) as gw, aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/admin/keys", json={"name": "team-b"},
                             headers={"Authorization": "Bearer sk-shoal-nope"}) as resp:
            assert resp.status == 401
        async with http.post(gw.url + "/admin/keys", headers=admin, json={
                "name": "team-b", "budget_usd": 5, "models": ["gpt-*"]}) as resp:
            assert resp.status == 201
            secret = (await resp.json())["key"]
        assert await ask(gw, secret)
        async with http.post(gw.url + "/admin/keys/team-b/revoke", headers=admin) as resp:
            assert resp.status == 200
        with pytest.raises(openai.AuthenticationError):  # at once, despite the 60 s cache
            await ask(gw, secret)
        await gw.gateway.settled()
        async with http.get(gw.url + "/admin/keys/team-b", headers=admin) as resp:
            shown = await resp.json()
    assert shown["status"] == "revoked" and shown["spend"]["total"]["requests"] == 1
