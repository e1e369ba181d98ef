"""The gateway's own dependencies for virtual keys — the key store, and Redis for the
keys' shared limits — do not answer: each caller gets 503 with retry-after in its
protocol's envelope (the SDKs' InternalServerError, retried), saying which dependency,
and nothing about where it is: no store URL, host or credential, which go to the
gateway's log (masked) for its operator. No call goes upstream unadmitted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from gateway_fixtures import (
    OPENAI_MODEL,
    anthropic_client,
    gateway,
    openai_client,
    sim_config,
)

from shoal.gateway.key_store import open_key_store
from shoal.gateway.keys import StoreKeys
from shoal.sim import SimConfig, SimServer

ASK: list[Any] = [{"role": "user", "content": "hi"}]
PASSWORD = "pg-pass-3f9a7c1e5b"  # a test credential, never a real one


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig()) as server:
        yield server


async def _refused(gw: Any, sdk: Any, key: str) -> Any:
    if sdk is openai:
        async with openai_client(gw, key) as oa:
            with pytest.raises(openai.InternalServerError) as oinfo:
                await oa.chat.completions.create(model=OPENAI_MODEL, messages=ASK)
        return oinfo.value
    async with anthropic_client(gw, key) as an:
        with pytest.raises(anthropic.InternalServerError) as ainfo:
            await an.messages.create(model=OPENAI_MODEL, max_tokens=10, messages=ASK)
    return ainfo.value


@pytest.mark.parametrize("sdk", [openai, anthropic], ids=["openai", "anthropic"])
@pytest.mark.parametrize("url", [
    f"postgresql://shoal:{PASSWORD}@127.0.0.1:1/none?schema=keys",
    f"postgresql://shoal@127.0.0.1:1/none?password={PASSWORD}&schema=keys",
], ids=["password-in-user-part", "password-parameter"])
async def test_an_unreachable_key_store_is_a_503_that_shows_no_url(
        sim: SimServer, sdk: Any, url: str, caplog: pytest.LogCaptureFixture) -> None:
    keys = StoreKeys(url, cache_s=0)
    with caplog.at_level(logging.ERROR, logger="shoal.gateway"):
        async with gateway(sim_config(sim), keys=keys) as gw:
            err = await _refused(gw, sdk, "sk-shoal-anything")
    assert err.status_code == 503
    assert float(err.response.headers["retry-after"]) >= 1
    assert "key store did not answer" in err.message
    body = err.response.text
    for leak in (PASSWORD, "postgresql", "127.0.0.1:1", "shoal@"):
        assert leak not in body, body
    assert sim.stats().total_requests == 0
    logged = caplog.text  # the operator's side: what failed, the password masked
    assert "postgresql://shoal" in logged and PASSWORD not in logged


@pytest.mark.parametrize("sdk", [openai, anthropic], ids=["openai", "anthropic"])
async def test_an_unreachable_redis_is_a_503_naming_redis(
        sim: SimServer, sdk: Any, tmp_path: Path) -> None:
    """The keys' limits live in Redis (several replicas) and Redis is down: the call is
    not admitted (a 503 to retry, as for the key store, not the 502 of an upstream
    failure), and the caller is not told Redis's address."""
    async with open_key_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        _, secret = await store.create("team-a", rpm=100)
        keys = StoreKeys(store, redis=f"redis://:{PASSWORD}@127.0.0.1:1/0", cache_s=0)
        async with gateway(sim_config(sim), keys=keys) as gw:
            err = await _refused(gw, sdk, secret)
    assert err.status_code == 503
    assert float(err.response.headers["retry-after"]) >= 1
    assert "Redis" in err.message
    for leak in (PASSWORD, "127.0.0.1:1", "redis://"):
        assert leak not in err.response.text, err.response.text
    assert sim.stats().total_requests == 0
