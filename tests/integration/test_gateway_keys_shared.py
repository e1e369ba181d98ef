"""Virtual keys on real PostgreSQL and Redis: the store contract on both SQL backends;
limits and budgets shared by several StoreKeys over one Redis (as replicas would); a
dead replica's reservations lapse with their lease."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import drop_pg_schema
from shoal.gateway.key_limits import RedisKeyLimits
from shoal.gateway.key_store import open_key_store
from shoal.gateway.keys import StoreKeys
from shoal.gateway.keys_api import KeyBudgetExceeded, KeyLimited, VirtualKey
from shoal.types import Usage


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs.db'}"
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    schema = f"keys_{uuid.uuid4().hex[:12]}"
    yield f"{dsn}?schema={schema}&pool_max=8"
    await drop_pg_schema(dsn, schema)


async def test_store_contract(store_url: str) -> None:
    async with open_key_store(store_url) as store:
        record, secret = await store.create("team-a", models=("gpt-4o", "deepseek-*"),
                                            budget_usd=50, period="month", rpm=100, tpm=200000,
                                            max_concurrency=10)
        keys = StoreKeys(store, cache_s=0)
        key = await keys.authenticate(secret)
        assert key == VirtualKey(record.id, "team-a", ("gpt-4o", "deepseek-*"), 50.0, "month",
                                 100, 200000, 10)
        grant = await keys.admit(key, model="gpt-4o", tokens=500, max_cost_usd=0.01)
        await keys.settle(grant, usage=Usage(300, 50, 100), cost_usd=0.004)
        spend = await store.spend(record.id, "total")
        assert spend.usd == pytest.approx(0.004)
        assert (spend.input_tokens, spend.output_tokens, spend.cached_tokens,
                spend.requests) == (300, 50, 100, 1)
        new = await store.rotate(record.id)
        assert new is not None and (await keys.authenticate(new)).id == record.id
        assert await store.revoke(record.id)
        found = await store.find("team-a")
        assert found is not None and not found.active
        assert await store.count_active() == 0
        await keys.aclose()
    async with open_key_store(store_url) as again:  # tables exist: opening twice is fine
        assert len(await again.list(include_revoked=True)) == 1


async def _replicas(pg_url: str, redis_url: str, prefix: str, n: int,
                    lease_s: float = 30.0) -> list[StoreKeys]:
    return [await StoreKeys(pg_url, redis=redis_url, prefix=prefix, lease_s=lease_s,
                            cache_s=0).open() for _ in range(n)]


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_dollar_raced_by_four_replicas_is_never_overspent(
    pg_url: str, redis_url: str, unique_prefix: str
) -> None:
    replicas = await _replicas(pg_url, redis_url, unique_prefix, 4)
    try:
        _, secret = await replicas[0].store.create("race", budget_usd=1.0)
        worst = 0.03
        rng = random.Random(7)
        admitted = refused = 0

        async def worker(keys: StoreKeys) -> None:
            nonlocal admitted, refused
            key = await keys.authenticate(secret)
            for _ in range(60):  # keep hammering after refusals: others may free room
                try:
                    grant = await keys.admit(key, model="m", tokens=100, max_cost_usd=worst)
                except KeyBudgetExceeded:
                    refused += 1
                    await asyncio.sleep(0.005)
                    continue
                admitted += 1
                await asyncio.sleep(rng.random() * 0.01)
                await keys.settle(grant, usage=Usage(80, 20), cost_usd=rng.uniform(0.01, worst))

        await asyncio.gather(*(worker(replicas[i % 4]) for i in range(32)))
        record = await replicas[0].store.find("race")
        assert record is not None
        spent = (await replicas[0].store.spend(record.id, "total")).usd
        assert 1.0 - 2 * worst < spent <= 1.0  # real costs never exceed the worst case here
        assert refused > 0 and admitted > 1.0 / worst
    finally:
        for keys in replicas:
            await keys.aclose()


@pytest.mark.redis
@pytest.mark.postgres
async def test_rpm_tpm_and_concurrency_are_one_limit_across_replicas(
    pg_url: str, redis_url: str, unique_prefix: str
) -> None:
    a, b = await _replicas(pg_url, redis_url, unique_prefix, 2)
    try:
        _, conc = await a.store.create("conc", max_concurrency=3)
        _, rpm = await a.store.create("rpm", rpm=4)
        _, tpm = await a.store.create("tpm", tpm=1000)
        kc, kr, kt = [await a.authenticate(s) for s in (conc, rpm, tpm)]
        held = [await (a, b, a)[i].admit(kc, model="m", tokens=0, max_cost_usd=0)
                for i in range(3)]
        with pytest.raises(KeyLimited, match="3 concurrent"):
            await b.admit(kc, model="m", tokens=0, max_cost_usd=0)
        await a.settle(held[0], usage=Usage(), cost_usd=0)
        await b.admit(kc, model="m", tokens=0, max_cost_usd=0)

        for i in range(4):
            await (a, b)[i % 2].admit(kr, model="m", tokens=0, max_cost_usd=0)
        with pytest.raises(KeyLimited, match="4 requests per minute") as err:
            await a.admit(kr, model="m", tokens=0, max_cost_usd=0)
        assert err.value.retry_after_s is not None and 0 < err.value.retry_after_s <= 60

        g = await a.admit(kt, model="m", tokens=700, max_cost_usd=0)
        with pytest.raises(KeyLimited, match="1000 tokens per minute"):
            await b.admit(kt, model="m", tokens=400, max_cost_usd=0)
        await a.settle(g, usage=Usage(100, 50), cost_usd=0)  # 150 real tokens
        await b.admit(kt, model="m", tokens=800, max_cost_usd=0)
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.redis
@pytest.mark.postgres
async def test_spend_recorded_before_redis_knew_it_is_seeded_from_the_store(
    pg_url: str, redis_url: str, unique_prefix: str
) -> None:
    async with open_key_store(pg_url) as store:
        record, secret = await store.create("seeded", budget_usd=1.0, period="day")
        import time

        await store.add_spend(record.id, wall=time.time(), usd=0.95, usage=Usage(1, 1))
    (keys,) = await _replicas(pg_url, redis_url, unique_prefix, 1)
    try:
        key = await keys.authenticate(secret)
        with pytest.raises(KeyBudgetExceeded, match=r"\$0.9500 spent .* this day"):
            await keys.admit(key, model="m", tokens=1, max_cost_usd=0.1)
        await keys.settle(await keys.admit(key, model="m", tokens=1, max_cost_usd=0.05),
                          usage=Usage(1, 1), cost_usd=0.05)
        with pytest.raises(KeyBudgetExceeded):
            await keys.admit(key, model="m", tokens=1, max_cost_usd=0.001)
    finally:
        await keys.aclose()


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_dead_replicas_reservation_lapses_with_its_lease(
    pg_url: str, redis_url: str, unique_prefix: str
) -> None:
    (alive,) = await _replicas(pg_url, redis_url, unique_prefix, 1)
    _, secret = await alive.store.create("lease", budget_usd=1.0, max_concurrency=1)
    key = await alive.authenticate(secret)
    dead = RedisKeyLimits(redis_url, prefix=unique_prefix, lease_s=0.3)
    dead_keys = StoreKeys(alive.store, limits=dead, cache_s=0)
    try:
        await dead_keys.admit(key, model="m", tokens=1, max_cost_usd=0.9)
        assert dead._heartbeat is not None
        dead._heartbeat.cancel()  # the replica dies: nothing renews its lease any more
        with pytest.raises(KeyLimited, match="1 concurrent"):
            await alive.admit(key, model="m", tokens=1, max_cost_usd=0.5)
        for _ in range(100):  # bounded: the lease is 0.3 s
            await asyncio.sleep(0.05)
            try:
                grant = await alive.admit(key, model="m", tokens=1, max_cost_usd=0.9)
                break
            except KeyLimited:
                continue
        else:
            pytest.fail("the dead replica's slot never came back")
        await alive.settle(grant, usage=Usage(), cost_usd=0.0)
    finally:
        await dead.aclose()
        await alive.aclose()


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_long_call_keeps_its_reservation_past_the_lease(
    pg_url: str, redis_url: str, unique_prefix: str
) -> None:
    a, b = await _replicas(pg_url, redis_url, unique_prefix, 2, lease_s=0.3)
    try:
        _, secret = await a.store.create("long", budget_usd=1.0)
        key = await a.authenticate(secret)
        grant = await a.admit(key, model="m", tokens=1, max_cost_usd=0.8)
        await asyncio.sleep(0.9)  # three leases: the heartbeat renews it
        with pytest.raises(KeyBudgetExceeded):
            await b.admit(key, model="m", tokens=1, max_cost_usd=0.5)
        await a.settle(grant, usage=Usage(), cost_usd=0.1)
        await b.admit(key, model="m", tokens=1, max_cost_usd=0.5)
    finally:
        await a.aclose()
        await b.aclose()



@pytest.mark.redis
@pytest.mark.postgres
async def test_an_admission_cancelled_in_flight_gives_its_slot_back_at_once(
    pg_url: str, redis_url: str, unique_prefix: str
) -> None:
    (keys,) = await _replicas(pg_url, redis_url, unique_prefix, 1, lease_s=60.0)
    try:
        _, secret = await keys.store.create("cancel", budget_usd=1.0, max_concurrency=1)
        key = await keys.authenticate(secret)
        for _ in range(20):  # cancelled at different points of the round trip
            task = asyncio.ensure_future(
                keys.admit(key, model="m", tokens=1, max_cost_usd=0.9))
            await asyncio.sleep(random.random() * 0.002)
            task.cancel()
            results = await asyncio.gather(task, return_exceptions=True)
            if not isinstance(results[0], BaseException):  # admitted before the cancel
                await keys.settle(results[0], usage=Usage(), cost_usd=0.0)
            for _ in range(100):  # well under the 60 s lease
                try:
                    grant = await keys.admit(key, model="m", tokens=1, max_cost_usd=0.9)
                    break
                except (KeyLimited, KeyBudgetExceeded):
                    await asyncio.sleep(0.01)
            else:
                pytest.fail("a cancelled admission kept its slot")
            await keys.settle(grant, usage=Usage(), cost_usd=0.0)
    finally:
        await keys.aclose()


async def test_keys_live_beside_the_runs_in_the_same_database(store_url: str) -> None:
    from shoal.stores import RunRecord, open_store

    async with open_store(store_url) as runs, open_key_store(store_url) as keys:
        record, _ = await keys.create("beside")
        await runs.create_run(RunRecord("run-1", "f", input="x"))
        run = await runs.get_run("run-1")
        assert run is not None and run.flow == "f"
        found = await keys.find("beside")
        assert found is not None and found.id == record.id
    async with open_key_store(store_url) as keys, open_store(store_url) as runs:
        assert [r.run_id for r in await runs.list_runs()] == ["run-1"]
        assert await keys.count_active() == 1


async def test_an_unreachable_store_is_a_clear_store_error() -> None:
    from shoal.errors import StoreUnavailable

    keys = StoreKeys("postgresql://shoal:hunter2-secret@127.0.0.1:1/none", cache_s=0)
    with pytest.raises(StoreUnavailable, match=r"the key store postgresql://shoal:\*\*\*@") as err:
        await keys.authenticate("sk-shoal-anything")
    assert "hunter2" not in str(err.value)
    await keys.aclose()
