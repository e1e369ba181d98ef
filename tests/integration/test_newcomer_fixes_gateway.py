"""Fixes from a newcomer's walk through the gateway docs (findings 13, 18 and 19):

- ``POST``/``PATCH /admin/keys`` refuse a model name no model has, or a glob that matches
  none, as ``shoal keys create --models`` does (400 in the OpenAI envelope, with close
  matches), instead of making a key that gets 403 on every call;
- a budget refusal only suggests what can help: a ``total`` budget never resets, so it
  does not say "wait for the period to end";
- a gateway whose key store refuses spend records even at shutdown exits 1, saying so,
  not 0 after a line in its log.

Real HTTP against a real gateway (in-process, or ``shoal gateway`` as a process) over
shoal's simulator; keys in a SQLite store under tmp_path.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_fixtures import OPENAI_MODEL, gateway, sim_config
from gateway_procs import SHOAL, _config, _wait_health, free_port

from shoal.gateway.key_store import KeyStore, open_key_store
from shoal.gateway.keys import StoreKeys
from shoal.sim import SimConfig, SimProcess, SimServer
from shoal.types import Usage

ADMIN = "admin-5f1e9c3a7b2d4e6f"
ASK: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig()) as server:
        yield server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[KeyStore]:
    async with open_key_store(f"sqlite:///{tmp_path / 'keys.db'}") as opened:
        yield opened


# -- finding 13: the admin route checks models as the CLI does ---------------------------


async def test_admin_routes_refuse_models_that_do_not_exist(
        sim: SimServer, store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_ADMIN_KEY", ADMIN)
    await store.create("first")  # keys on: the admin routes are mounted
    auth = {"Authorization": f"Bearer {ADMIN}"}
    keys = StoreKeys(store, cache_s=0)
    async with gateway(sim_config(sim), keys=keys) as gw, httpx.AsyncClient(
            base_url=gw.url, headers=auth, timeout=30) as http:
        resp = await http.post("/admin/keys", json={"name": "typo", "budget_usd": 1,
                                                    "models": ["gpt-tset"]})
        body = resp.json()
        assert resp.status_code == 400, body
        error = body["error"]
        assert error["type"] == "invalid_request_error"
        assert "unknown model 'gpt-tset'" in error["message"]
        assert f"Did you mean: {OPENAI_MODEL}" in error["message"]  # the close match

        resp = await http.post("/admin/keys", json={"name": "glob", "models": "gpt-4o,zzz-*"})
        assert resp.status_code == 400
        assert "'zzz-*' matches no model" in resp.json()["error"]["message"]

        listed = (await http.get("/admin/keys")).json()["keys"]
        assert [k["name"] for k in listed] == ["first"]  # neither key was made

        resp = await http.post("/admin/keys", json={"name": "team-a",
                                                    "models": [OPENAI_MODEL, "claude-*"]})
        assert resp.status_code == 201, resp.text

        resp = await http.patch("/admin/keys/team-a", json={"models": ["claude-tset"]})
        assert resp.status_code == 400
        assert "unknown model 'claude-tset'" in resp.json()["error"]["message"]
        shown = (await http.get("/admin/keys/team-a")).json()
        assert shown["models"] == [OPENAI_MODEL, "claude-*"]  # unchanged


# -- finding 18: what a budget refusal suggests --------------------------------------------


async def _refusal(gw: Any, secret: str, max_tokens: int) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(gw.url + "/v1/chat/completions",
                               headers={"Authorization": f"Bearer {secret}"},
                               json={"model": OPENAI_MODEL, "max_tokens": max_tokens,
                                     "messages": ASK})
    body = resp.json()
    assert resp.status_code == 429, body
    assert body["error"]["code"] == "insufficient_quota"
    message: str = body["error"]["message"]
    return message


async def test_a_total_budget_refusal_does_not_say_wait_for_the_period_to_end(
        sim: SimServer, store: KeyStore) -> None:
    # gpt-test: $2 per million output tokens, so max_tokens=1000 may cost $0.002 and more.
    _, tiny = await store.create("tiny", budget_usd=0.001)  # period total, the default
    low_rec, low = await store.create("low", budget_usd=0.01)
    await store.add_spend(low_rec.id, wall=0.0, usd=0.0095, usage=Usage(100, 100))
    spent_rec, spent = await store.create("spent", budget_usd=0.01)
    await store.add_spend(spent_rec.id, wall=0.0, usd=0.01, usage=Usage(100, 100))
    daily_rec, daily = await store.create("daily", budget_usd=0.01, period="day")
    await store.add_spend(daily_rec.id, wall=time.time(), usd=0.01, usage=Usage(100, 100))
    async with gateway(sim_config(sim), keys=StoreKeys(store, cache_s=0)) as gw:
        alone = await _refusal(gw, tiny, 1000)
        left = await _refusal(gw, low, 1000)
        none_left = await _refusal(gw, spent, 1000)
        day = await _refusal(gw, daily, 1000)

    for message in (alone, left, none_left):
        assert "out of budget" in message
        assert "wait for" not in message, message
        assert "admin for a larger budget" in message
    # The call alone costs more than the whole budget: only a smaller call or budget helps.
    assert "alone may cost up to $0.0020" in alone and "of $0.0010 in total" in alone
    # $0.0005 is left: a smaller max_tokens can fit; the spend never comes back.
    assert "never resets" in left and "Lower max_tokens" in left and "$0.0005 left" in left
    # Nothing left: a smaller call does not help either.
    assert "never resets" in none_left and "max_tokens" not in none_left
    # A daily budget restarts: waiting is the way out there, and said so.
    assert "$0.0100 spent" in day and "this day (UTC)" in day
    assert "Wait for the day to end (the budget restarts at 00:00 UTC)" in day
    assert "never resets" not in day


# -- finding 19: spend records lost at shutdown are exit status 1 ---------------------------


def test_the_gateway_exits_1_when_spend_records_are_lost_at_shutdown(tmp_path: Path) -> None:
    """The key store refuses every write (another connection holds SQLite's write lock),
    so the call's spend record is kept, retried at shutdown, refused again and lost: the
    gateway says so and exits 1 (it exited 0)."""
    db = tmp_path / "keys.db"
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_CONFIG", "SHOAL_STORE")}
    store = f"sqlite:///{db}?busy_timeout_ms=100"
    key = subprocess.run([*SHOAL, "keys", "create", "--name", "team-a", "--store", store],
                         capture_output=True, text=True, check=True, timeout=60,
                         env=env).stdout.strip()
    log = tmp_path / "gateway.log"
    with SimProcess() as sim:
        (tmp_path / "shoal.toml").write_text(_config(int(sim.url.rsplit(":", 1)[1])))
        port = free_port()
        with log.open("wb") as sink:
            gw = subprocess.Popen(
                [*SHOAL, "gateway", "--config", str(tmp_path / "shoal.toml"), "--port",
                 str(port), "--store", store], stdout=sink, stderr=sink, env=env)
        lock = sqlite3.connect(db, isolation_level=None)
        try:
            _wait_health(f"http://127.0.0.1:{port}/health", gw)
            lock.execute("BEGIN IMMEDIATE")  # readers go on (WAL); every write is refused
            resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                              headers={"Authorization": f"Bearer {key}"}, timeout=30,
                              json={"model": "gpt-test", "max_tokens": 10, "messages": ASK})
            assert resp.status_code == 200, resp.text  # answered; its spend is not saved
            gw.send_signal(signal.SIGTERM)
            code = gw.wait(timeout=60)
        finally:
            if gw.poll() is None:
                gw.kill()
                gw.wait(timeout=10)
            if lock.in_transaction:
                lock.execute("ROLLBACK")
            lock.close()
    out = log.read_text()
    assert code == 1, out
    assert "virtual keys)" in out and "shoal gateway stopped" in out
    assert "error: virtual keys: 1 spend record(s) lost" in out
    assert "missing from their keys' spend" in out
    assert key not in out


async def test_a_store_url_with_options_still_serves_its_virtual_keys(
        tmp_path: Path) -> None:
    """``--store sqlite:///keys.db?busy_timeout_ms=100`` (options docs/stores.md lists):
    the gateway took the query for part of the file name, found no such file, and served
    without keys (anyone on loopback spent through every channel, no key's budget held)."""
    from shoal.config import Config
    from shoal.gateway.server import open_keys

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    async with open_key_store(url) as opened:
        await opened.create("team-a", budget_usd=1.0)
    keys = await open_keys(Config.from_dict({}), url + "?busy_timeout_ms=100")
    try:
        assert keys.required
    finally:
        await keys.aclose()
