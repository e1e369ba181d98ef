"""What only the Redis store promises: finished runs expire, and expired runs leave no
ghosts in the listings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.clock import VirtualClock
from shoal.stores import EffectRecord, RunRecord, StepRecord
from shoal.stores.redis import RedisStore

pytestmark = pytest.mark.redis

TTL_S = 3600.0


@pytest.fixture
async def raw(redis_url: str, unique_prefix: str) -> AsyncIterator[Any]:
    import redis.asyncio as aioredis

    client: Any = aioredis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{unique_prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def _keys(prefix: str, run_id: str, effect: str) -> list[str]:
    return [f"{prefix}:run:{run_id}", f"{prefix}:steps:{run_id}", f"{prefix}:effects:{run_id}",
            f"{prefix}:effect:{effect}"]


async def test_finished_runs_expire_and_resumed_ones_do_not(
    redis_url: str, unique_prefix: str, raw: Any
) -> None:
    async with RedisStore(redis_url, prefix=unique_prefix, finished_ttl_s=TTL_S,
                          clock=VirtualClock()) as store:
        await store.create_run(RunRecord("r1", "flow"))
        await store.complete_step("r1", StepRecord("a", "succeeded", 1))
        await store.put_effect(EffectRecord("mail", "r1", "sent"))
        keys = _keys(unique_prefix, "r1", "mail")
        assert [await raw.pttl(k) for k in keys] == [-1] * 4  # running: kept

        await store.update_run("r1", status="failed", error="boom")
        ttls = [await raw.pttl(k) for k in keys]
        assert all(0 < t <= TTL_S * 1000 for t in ttls), ttls

        await store.update_run("r1", status="running")  # resumed: no longer expiring
        assert [await raw.pttl(k) for k in keys] == [-1] * 4


async def test_a_zero_ttl_keeps_finished_runs(
    redis_url: str, unique_prefix: str, raw: Any
) -> None:
    async with RedisStore(redis_url, prefix=unique_prefix, finished_ttl_s=0,
                          clock=VirtualClock()) as store:
        await store.create_run(RunRecord("r1", "flow"))
        await store.update_run("r1", status="succeeded")
        assert await raw.pttl(f"{unique_prefix}:run:r1") == -1


async def test_expired_runs_vanish_from_listings(
    redis_url: str, unique_prefix: str, raw: Any
) -> None:
    clock = VirtualClock()
    async with RedisStore(redis_url, prefix=unique_prefix, clock=clock) as store:
        for run_id in ("a", "b", "c"):
            await store.create_run(RunRecord(run_id, "flow"))
            await clock.advance(1)
        await store.update_run("b", status="succeeded")
        await raw.delete(f"{unique_prefix}:run:b")  # what the TTL does when it fires

        assert [r.run_id for r in await store.list_runs()] == ["c", "a"]
        assert await store.list_runs(status="succeeded") == []
        assert await raw.zscore(f"{unique_prefix}:runs", "b") is None  # index cleaned
        assert await store.prune(older_than_s=0) == 2


async def test_the_url_never_shows_the_password(unique_prefix: str) -> None:
    store = RedisStore("redis://:hunter2secret@127.0.0.1:6379/0", prefix=unique_prefix)
    assert "hunter2secret" not in store.url
    assert "***" in store.url and unique_prefix in store.url
