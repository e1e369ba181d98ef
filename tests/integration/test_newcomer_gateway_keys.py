"""A gateway started before the first ``shoal keys create`` must start asking for keys
once one exists, without a restart: before, it stayed keyless for good, so a new key's
budget, models and limits never applied, its spend was never recorded, and a revoked
key went on "working" as the anonymous caller."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from shoal import Config
from shoal.clock import VirtualClock
from shoal.gateway.key_store import open_key_store
from shoal.gateway.keys_api import KeyModelDenied, KeyRejected
from shoal.gateway.keys_watch import WatchedKeys
from shoal.gateway.server import GatewayServer, open_keys
from shoal.gateway.settings import GatewaySettings
from shoal.sim import SimConfig, SimServer, config_for_sim
from shoal.traffic.router import Router
from shoal.types import Usage


async def _create(url: str, name: str, **limits: object) -> str:
    async with open_key_store(url) as store:
        _, secret = await store.create(name, **limits)  # type: ignore[arg-type]
    return secret


def required(keys: WatchedKeys) -> bool:
    return keys.required  # a call, so mypy does not keep a narrowed attribute


async def test_keys_created_after_the_start_are_asked_for(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"  # no store yet
    clock = VirtualClock()
    keys = WatchedKeys(url, every_s=1.0, clock=clock)
    try:
        anon = await keys.authenticate(None)
        assert not required(keys) and anon.id == "anonymous"
        grant = await keys.admit(anon, model="gpt-4o-mini", tokens=10, max_cost_usd=0.1)
        secret = await _create(url, "team-a", models=["gpt-4o-mini"], budget_usd=1.0)
        await keys.authenticate(None)  # within the second: as before
        await clock.advance(1.0)
        with pytest.raises(KeyRejected):
            await keys.authenticate(None)
        assert required(keys)
        key = await keys.authenticate(f"Bearer {secret}")
        assert key.name == "team-a"
        with pytest.raises(KeyModelDenied):
            keys.check_model(key, "gpt-4o")
        await keys.settle(grant, usage=Usage(1, 1), cost_usd=0.0)  # the anonymous one
        assert grant.settled
        keyed = await keys.admit(key, model="gpt-4o-mini", tokens=10, max_cost_usd=0.01)
        await keys.settle(keyed, usage=Usage(5, 5), cost_usd=0.002)
        assert await keys.ready()
    finally:
        await keys.aclose()
    async with open_key_store(url) as store:
        record = await store.find("team-a")
        assert record is not None
        spend = await store.spend(record.id, "total")
    assert spend.usd == pytest.approx(0.002)


async def test_open_keys_watches_an_existing_store_with_no_active_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    await _create(url, "old")
    async with open_key_store(url) as store:
        record = await store.find("old")
        assert record is not None
        await store.revoke(record.id)
    keys = await open_keys(Config.from_dict({}), url)
    try:
        assert isinstance(keys, WatchedKeys) and not keys.required
    finally:
        await keys.aclose()


async def test_a_running_gateway_enforces_the_first_key_over_http(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    body = {"model": "gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]}
    async with SimServer(SimConfig()) as sim, Router(config_for_sim(sim.url)) as router:
        keys = await open_keys(router.config, url)
        assert isinstance(keys, WatchedKeys)
        keys._every_s = 0.0  # look at the store on every call (the test's clock is real)
        async with GatewayServer(router, keys, GatewaySettings(port=0)) as server, \
                aiohttp.ClientSession() as http:
            chat = f"{server.url}/v1/chat/completions"
            async with http.post(chat, json=body) as resp:
                assert resp.status == 200
            secret = await _create(url, "team-a", models=["gpt-4o-mini"])
            async with http.post(chat, json=body) as resp:
                assert resp.status == 401
            async with http.post(chat, json=body,
                                 headers={"Authorization": f"Bearer {secret}"}) as resp:
                assert resp.status == 200
