"""Key management over HTTP: only with the admin key from the environment; create shows
the secret once, revoke takes effect at once on this replica, rotate kills the old one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.gateway.keys import StoreKeys
from shoal.gateway.keys_admin import add_key_admin
from shoal.gateway.keys_api import KeyRejected

ADMIN = "admin-0123456789abcdef"


@pytest.fixture
async def keys() -> AsyncIterator[StoreKeys]:
    service = await StoreKeys("memory://", cache_s=60).open()
    yield service
    await service.aclose()


async def _client(keys: StoreKeys, env: dict[str, str]) -> TestClient[web.Request, web.Application]:
    app = web.Application()
    add_key_admin(app, keys, env=env)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


async def test_without_an_admin_key_in_the_environment_it_is_off(keys: StoreKeys) -> None:
    client = await _client(keys, {})
    try:
        resp = await client.get("/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"})
        assert resp.status == 403
        assert "SHOAL_ADMIN_KEY" in (await resp.json())["error"]["message"]
    finally:
        await client.close()


async def test_admin_routes(keys: StoreKeys) -> None:
    client = await _client(keys, {"SHOAL_ADMIN_KEY": ADMIN})
    auth = {"Authorization": f"Bearer {ADMIN}"}
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
            resp = await client.get("/admin/keys", headers=headers)
            assert resp.status == 401
            assert ADMIN not in await resp.text()

        resp = await client.post("/admin/keys", headers=auth, json={
            "name": "team-a", "budget_usd": 50, "period": "month", "rpm": 100,
            "models": "gpt-4o,deepseek-*"})
        created = await resp.json()
        assert resp.status == 201, created
        secret = created["key"]
        assert secret.startswith("sk-shoal-") and created["models"] == ["gpt-4o", "deepseek-*"]
        assert (await keys.authenticate(secret)).name == "team-a"

        resp = await client.get("/admin/keys/team-a", headers=auth)
        shown = await resp.json()
        assert resp.status == 200 and secret not in await resp.text()
        assert shown["spend"]["this_month"]["requests"] == 0

        resp = await client.post("/admin/keys", headers=auth, json={"name": "x", "rpm": "9"})
        assert resp.status == 400 and "rpm" in (await resp.json())["error"]["message"]
        resp = await client.post("/admin/keys", headers=auth, json={"name": "team-a"})
        assert resp.status == 400 and "exists" in (await resp.json())["error"]["message"]

        resp = await client.patch("/admin/keys/team-a", headers=auth,
                                  json={"budget_usd": 80, "rpm": None, "concurrency": 4})
        patched = await resp.json()
        assert resp.status == 200, patched
        assert (patched["budget_usd"], patched["rpm"], patched["concurrency"],
                patched["period"], patched["models"]) == (80.0, None, 4, "month",
                                                         ["gpt-4o", "deepseek-*"])
        assert (await keys.authenticate(secret)).budget_usd == 80.0  # at once, here
        resp = await client.patch("/admin/keys/team-a", headers=auth, json={"rpm": 0})
        assert resp.status == 400

        resp = await client.post("/admin/keys/team-a/rotate", headers=auth)
        new = (await resp.json())["key"]
        assert resp.status == 200 and new != secret
        with pytest.raises(KeyRejected):
            await keys.authenticate(secret)  # at once, despite cache_s=60
        assert (await keys.authenticate(new)).id == created["id"]

        resp = await client.post(f"/admin/keys/{created['id']}/revoke", headers=auth)
        assert (await resp.json())["revoked"] is True
        with pytest.raises(KeyRejected) as err:
            await keys.authenticate(new)
        assert err.value.reason == "revoked"

        resp = await client.get("/admin/keys", headers=auth)
        assert (await resp.json())["keys"] == []
        resp = await client.get("/admin/keys?all=1", headers=auth)
        assert [k["status"] for k in (await resp.json())["keys"]] == ["revoked"]
        resp = await client.get("/admin/keys/nobody", headers=auth)
        assert resp.status == 404
    finally:
        await client.close()


async def test_a_limit_past_64_bits_is_the_callers_400_not_a_store_outage(
        keys: StoreKeys) -> None:
    """An rpm, tpm or concurrency no BIGINT column holds is refused as bad input (400,
    naming the field), on create and on update; it used to reach the store, whose
    driver's OverflowError came back as a 503 'key store unavailable'."""
    client = await _client(keys, {"SHOAL_ADMIN_KEY": ADMIN})
    auth = {"Authorization": f"Bearer {ADMIN}"}
    try:
        for field in ("rpm", "tpm", "concurrency"):
            resp = await client.post("/admin/keys", headers=auth,
                                     json={"name": f"big-{field}", field: 10**30})
            body = await resp.json()
            assert resp.status == 400, body
            assert body["error"]["message"].startswith(f"{field} must be at most ")
        resp = await client.post("/admin/keys", headers=auth, json={"name": "team-a"})
        assert resp.status == 201
        resp = await client.patch("/admin/keys/team-a", headers=auth, json={"rpm": 2**63})
        assert resp.status == 400, await resp.text()
        resp = await client.patch("/admin/keys/team-a", headers=auth, json={"rpm": 2**63 - 1})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["rpm"] == 2**63 - 1
    finally:
        await client.close()
