"""Virtual keys on the in-memory store and in-process limits: secrets, globs, periods,
reservation math, rotate and revoke, settlement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shoal.clock import VirtualClock
from shoal.errors import ConfigError
from shoal.gateway.key_store import (
    KeyStore,
    hash_secret,
    mint_secret,
    open_key_store,
    period_end,
    period_id,
    period_ids,
)
from shoal.gateway.keys import StoreKeys, check_admin
from shoal.gateway.keys_api import (
    KeyBudgetExceeded,
    KeyLimited,
    KeyModelDenied,
    KeyRejected,
    VirtualKey,
)
from shoal.types import Usage

NOV_27 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture
async def store() -> AsyncIterator[KeyStore]:
    async with open_key_store("memory://") as s:
        yield s


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(wall_start=NOV_27)


@pytest.fixture
async def keys(store: KeyStore, clock: VirtualClock) -> AsyncIterator[StoreKeys]:
    service = StoreKeys(store, clock=clock, cache_s=0)
    yield service
    await service.aclose()


# -- secrets -------------------------------------------------------------------------------


def test_a_minted_secret_is_random_urlsafe_and_stored_only_as_its_hash() -> None:
    a, b = mint_secret(), mint_secret()
    assert a.secret != b.secret
    assert a.secret.startswith("sk-shoal-") and len(a.secret) >= len("sk-shoal-") + 43
    assert a.digest == hash_secret(a.secret) and len(a.digest) == 64
    assert a.secret not in a.digest and a.secret not in repr(a)
    assert a.prefix.startswith(a.secret[:12]) and len(a.prefix) < 20


async def test_the_store_holds_no_secret(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    async with open_key_store(f"sqlite:///{db}") as store:
        _, secret = await store.create("team-a")
    for file in tmp_path.iterdir():  # the database and any WAL left
        assert secret[12:].encode() not in file.read_bytes()


# -- periods -------------------------------------------------------------------------------


def test_periods_are_utc_days_and_months() -> None:
    late = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC).timestamp()
    assert period_ids(late) == ("total", "d2026-11-30", "m2026-11")
    assert period_id("day", late + 1) == "d2026-12-01"
    assert period_id("month", late + 1) == "m2026-12"
    assert period_end("day", late) == late + 1
    assert period_end("month", late) == late + 1
    dec = datetime(2026, 12, 5, tzinfo=UTC).timestamp()
    assert period_end("month", dec) == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert period_end("total", dec) is None


# -- create, find, rotate, revoke ---------------------------------------------------------


async def test_create_validates_its_limits(store: KeyStore) -> None:
    with pytest.raises(ConfigError, match="period"):
        await store.create("a", period="week")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rpm"):
        await store.create("a", rpm=0)
    with pytest.raises(ConfigError, match="budget"):
        await store.create("a", budget_usd=-1)
    with pytest.raises(ConfigError, match="key name"):
        await store.create("has space")
    await store.create("a")
    with pytest.raises(ConfigError, match="active key named 'a'"):
        await store.create("a")


async def test_rotate_keeps_id_limits_and_spend_and_kills_the_old_secret(
    store: KeyStore, keys: StoreKeys
) -> None:
    record, old = await store.create("team-a", budget_usd=5, rpm=10)
    key = await keys.authenticate(old)
    grant = await keys.admit(key, model="m", tokens=10, max_cost_usd=0.5)
    await keys.settle(grant, usage=Usage(7, 3, 2), cost_usd=0.25)
    new = await store.rotate(record.id)
    assert new is not None and new != old
    with pytest.raises(KeyRejected) as err:
        await keys.authenticate(old)
    assert err.value.reason == "invalid" and old not in str(err.value)
    again = await keys.authenticate(new)
    assert again == key  # same id, name, limits
    spend = await store.spend(record.id, "total")
    assert (spend.usd, spend.input_tokens, spend.output_tokens, spend.cached_tokens,
            spend.requests) == (0.25, 7, 3, 2, 1)
    found = await store.find("team-a")
    assert found is not None and found.rotated_at is not None and found.prefix != record.prefix


async def test_revoked_key_is_refused_as_revoked_and_its_name_is_free_again(
    store: KeyStore, keys: StoreKeys
) -> None:
    record, secret = await store.create("team-a")
    assert await store.revoke(record.id)
    assert not await store.revoke(record.id)
    with pytest.raises(KeyRejected) as err:
        await keys.authenticate(f"Bearer {secret}")
    assert err.value.reason == "revoked" and err.value.status == 401
    assert await store.rotate(record.id) is None
    fresh, _ = await store.create("team-a")
    found = await store.find("team-a")
    assert found is not None and found.id == fresh.id
    assert [r.id for r in await store.list()] == [fresh.id]
    assert len(await store.list(include_revoked=True)) == 2
    assert await store.count_active() == 1


async def test_missing_and_unknown_keys(keys: StoreKeys) -> None:
    for presented, reason in ((None, "missing"), ("", "missing"), ("sk-shoal-nope", "invalid")):
        with pytest.raises(KeyRejected) as err:
            await keys.authenticate(presented)
        assert err.value.reason == reason


async def test_the_key_cache_delays_a_revocation_by_at_most_cache_s(
    store: KeyStore, clock: VirtualClock
) -> None:
    record, secret = await store.create("team-a")
    service = StoreKeys(store, clock=clock, cache_s=1.0)
    await service.authenticate(secret)
    await store.revoke(record.id)
    await service.authenticate(secret)  # cached
    await clock.advance(1.0)
    with pytest.raises(KeyRejected):
        await service.authenticate(secret)


# -- models ------------------------------------------------------------------------------


def test_models_match_names_and_globs() -> None:
    service = StoreKeys("memory://")
    key = VirtualKey("k", "team-a", models=("gpt-4o", "deepseek-*"))
    service.check_model(key, "gpt-4o")
    service.check_model(key, "deepseek-chat")
    for denied in ("gpt-4o-mini", "claude-opus-4-6", "DeepSeek-chat"):
        with pytest.raises(KeyModelDenied, match="gpt-4o, deepseek-\\*") as err:
            service.check_model(key, denied)
        assert err.value.status == 403
    service.check_model(VirtualKey("k", "open"), "anything")


# -- reservations --------------------------------------------------------------------------


async def test_budget_counts_spend_and_reservations_before_any_call(
    store: KeyStore, keys: StoreKeys
) -> None:
    _, secret = await store.create("b", budget_usd=1.0)
    key = await keys.authenticate(secret)
    grants = [await keys.admit(key, model="m", tokens=1, max_cost_usd=0.3) for _ in range(3)]
    with pytest.raises(KeyBudgetExceeded, match=r"\$0.9000 reserved") as err:
        await keys.admit(key, model="m", tokens=1, max_cost_usd=0.3)
    assert err.value.status == 429 and err.value.code == "insufficient_quota"
    await keys.settle(grants[0], usage=Usage(1, 1), cost_usd=0.1)
    await keys.settle(grants[0], usage=Usage(1, 1), cost_usd=0.1)  # idempotent
    ok = await keys.admit(key, model="m", tokens=1, max_cost_usd=0.3)  # 0.1 + 0.6 + 0.3
    assert ok.reserved_usd == 0.3
    with pytest.raises(KeyBudgetExceeded):
        await keys.admit(key, model="m", tokens=1, max_cost_usd=0.01)
    for g in (*grants[1:], ok):
        await keys.settle(g, usage=Usage(), cost_usd=0.0)
    assert (await store.spend(key.id, "total")).usd == pytest.approx(0.1)
    with pytest.raises(KeyBudgetExceeded, match="may cost up to"):
        await keys.admit(key, model="m", tokens=1, max_cost_usd=1.5)


async def test_a_monthly_budget_starts_again_next_month(
    store: KeyStore, clock: VirtualClock
) -> None:
    _, secret = await store.create("m", budget_usd=1.0, period="month")
    keys = StoreKeys(store, clock=clock, cache_s=0)
    key = await keys.authenticate(secret)
    grant = await keys.admit(key, model="m", tokens=1, max_cost_usd=1.0)
    await keys.settle(grant, usage=Usage(1, 1), cost_usd=0.9)
    with pytest.raises(KeyBudgetExceeded, match="this month"):
        await keys.admit(key, model="m", tokens=1, max_cost_usd=0.2)
    await clock.advance(4 * 86400)  # December (UTC)
    grant = await keys.admit(key, model="m", tokens=1, max_cost_usd=1.0)
    await keys.settle(grant, usage=Usage(1, 1), cost_usd=0.5)
    assert (await store.spend(key.id, "m2026-11")).usd == pytest.approx(0.9)
    assert (await store.spend(key.id, "m2026-12")).usd == pytest.approx(0.5)
    assert (await store.spend(key.id, "total")).usd == pytest.approx(1.4)
    assert (await store.spend(key.id, "d2026-12-01")).requests == 1


async def test_spend_survives_a_restart_of_the_service(store: KeyStore) -> None:
    _, secret = await store.create("r", budget_usd=1.0)
    first = StoreKeys(store, cache_s=0)
    key = await first.authenticate(secret)
    await first.settle(await first.admit(key, model="m", tokens=1, max_cost_usd=1),
                       usage=Usage(), cost_usd=0.95)
    second = StoreKeys(store, cache_s=0)
    with pytest.raises(KeyBudgetExceeded, match=r"\$0.9500 spent"):
        await second.admit(key, model="m", tokens=1, max_cost_usd=0.1)


async def test_rpm_refuses_with_the_seconds_until_the_window_frees(
    store: KeyStore, keys: StoreKeys, clock: VirtualClock
) -> None:
    _, secret = await store.create("r", rpm=2)
    key = await keys.authenticate(secret)
    await keys.admit(key, model="m", tokens=0, max_cost_usd=0)
    await clock.advance(10)
    await keys.admit(key, model="m", tokens=0, max_cost_usd=0)
    with pytest.raises(KeyLimited, match="2 requests per minute") as err:
        await keys.admit(key, model="m", tokens=0, max_cost_usd=0)
    assert err.value.retry_after_s == pytest.approx(50)
    await clock.advance(50)
    await keys.admit(key, model="m", tokens=0, max_cost_usd=0)


async def test_tpm_counts_worst_case_then_the_real_tokens(
    store: KeyStore, keys: StoreKeys, clock: VirtualClock
) -> None:
    _, secret = await store.create("t", tpm=1000)
    key = await keys.authenticate(secret)
    g = await keys.admit(key, model="m", tokens=800, max_cost_usd=0)
    with pytest.raises(KeyLimited, match="1000 tokens per minute") as err:
        await keys.admit(key, model="m", tokens=300, max_cost_usd=0)
    assert err.value.retry_after_s == pytest.approx(60)
    await keys.settle(g, usage=Usage(100, 100), cost_usd=0)  # 200 real tokens
    await keys.admit(key, model="m", tokens=800, max_cost_usd=0)
    with pytest.raises(KeyLimited, match="alone asks for 1001") as big:
        await keys.admit(key, model="m", tokens=1001, max_cost_usd=0)
    assert big.value.retry_after_s is None


async def test_concurrency_slots_come_back_on_settle_even_when_cancelled(
    store: KeyStore, keys: StoreKeys
) -> None:
    _, secret = await store.create("c", max_concurrency=2)
    key = await keys.authenticate(secret)
    a = await keys.admit(key, model="m", tokens=0, max_cost_usd=0)
    await keys.admit(key, model="m", tokens=0, max_cost_usd=0)
    with pytest.raises(KeyLimited, match="2 concurrent calls") as err:
        await keys.admit(key, model="m", tokens=0, max_cost_usd=0)
    assert err.value.retry_after_s is not None
    task = asyncio.ensure_future(keys.settle(a, usage=Usage(), cost_usd=0))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0.05)  # the shielded settlement finishes on its own
    await keys.admit(key, model="m", tokens=0, max_cost_usd=0)


async def test_concurrent_admissions_never_overshoot_the_budget(
    store: KeyStore, keys: StoreKeys
) -> None:
    _, secret = await store.create("race", budget_usd=1.0)
    key = await keys.authenticate(secret)

    async def call() -> float:
        try:
            grant = await keys.admit(key, model="m", tokens=1, max_cost_usd=0.07)
        except KeyBudgetExceeded:
            return 0.0
        await asyncio.sleep(0)
        await keys.settle(grant, usage=Usage(1, 1), cost_usd=0.07)
        return 0.07

    spent = sum(await asyncio.gather(*(call() for _ in range(100))))
    assert spent <= 1.0 + 1e-9
    assert (await store.spend(key.id, "total")).usd == pytest.approx(spent)


def test_admin_key_comes_from_the_environment() -> None:
    env = {"SHOAL_ADMIN_KEY": "admin-secret-123"}
    check_admin("admin-secret-123", env)
    for presented, reason in ((None, "missing"), ("nope", "invalid")):
        with pytest.raises(KeyRejected) as err:
            check_admin(presented, env)
        assert err.value.reason == reason
    with pytest.raises(KeyRejected, match="SHOAL_ADMIN_KEY"):
        check_admin("anything", {})


def test_a_redis_store_url_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        open_key_store("redis://127.0.0.1:6379/0")


async def test_without_redis_two_services_meet_through_the_store_within_refresh_s(
    store: KeyStore, clock: VirtualClock
) -> None:
    _, secret = await store.create("two", budget_usd=1.0)
    a, b = StoreKeys(store, clock=clock, cache_s=0), StoreKeys(store, clock=clock, cache_s=0)
    key = await a.authenticate(secret)
    await b.settle(await b.admit(key, model="m", tokens=1, max_cost_usd=0.1),
                   usage=Usage(), cost_usd=0.1)  # b has loaded its view of the spend
    await a.settle(await a.admit(key, model="m", tokens=1, max_cost_usd=0.9),
                   usage=Usage(), cost_usd=0.8)
    await b.admit(key, model="m", tokens=1, max_cost_usd=0.5)  # b's view is 5 s old at most
    await clock.advance(5.0)
    with pytest.raises(KeyBudgetExceeded, match=r"\$0.9000 spent"):
        await b.admit(key, model="m", tokens=1, max_cost_usd=0.5)


async def test_spend_is_written_in_group_commits_and_kept_when_the_store_fails(
    tmp_path: Path
) -> None:
    store = await open_key_store(f"sqlite:///{tmp_path / 'runs.db'}").open()
    _, secret = await store.create("g")
    keys = StoreKeys(store, cache_s=0)
    key = await keys.authenticate(secret)

    async def call(cost: float) -> None:
        grant = await keys.admit(key, model="m", tokens=1, max_cost_usd=cost)
        await keys.settle(grant, usage=Usage(10, 5, 1), cost_usd=cost)

    await asyncio.gather(*(call(0.01) for _ in range(200)))
    spend = await store.spend(key.id, "total")
    assert spend.usd == pytest.approx(2.0) and spend.requests == 200
    assert (spend.input_tokens, spend.output_tokens, spend.cached_tokens) == (2000, 1000, 200)

    await store.aclose()  # the database goes away: settlements still return
    await call(0.5)
    await call(0.25)
    await store.open()
    await call(0.125)  # the next write carries the two it could not save
    assert (await store.spend(key.id, "total")).usd == pytest.approx(2.875)
    assert (await store.spend(key.id, "total")).requests == 203
    await keys.aclose()
    await store.aclose()


async def test_a_cost_settled_while_the_spend_is_re_read_is_never_lost() -> None:
    from shoal.gateway.key_limits import Ask, LocalKeyLimits

    clock = VirtualClock()
    limits = LocalKeyLimits(clock=clock, refresh_s=5.0)
    key = VirtualKey("k", "k", budget_usd=1.0)

    async def zero() -> float:
        return 0.0

    first = Ask("a", 1, 0.5, "total")
    await limits.admit(key, first, zero)
    await clock.advance(5.0)
    reading = asyncio.Event()
    release = asyncio.Event()

    async def slow_store() -> float:  # the store's answer predates the settlement below
        reading.set()
        await release.wait()
        return 0.0

    second = asyncio.ensure_future(limits.admit(key, Ask("b", 1, 0.1, "total"), slow_store))
    await reading.wait()
    await limits.settle(key, first, tokens=1, cost_usd=0.5)
    release.set()
    await second
    with pytest.raises(KeyBudgetExceeded, match=r"\$0.5000 spent"):
        await limits.admit(key, Ask("c", 1, 0.45, "total"), zero)


async def test_update_applies_to_the_next_admission(store: KeyStore, keys: StoreKeys) -> None:
    record, secret = await store.create("u", budget_usd=0.1, rpm=1)
    key = await keys.authenticate(secret)
    await keys.admit(key, model="m", tokens=1, max_cost_usd=0.0)
    with pytest.raises(KeyLimited):
        await keys.admit(key, model="m", tokens=1, max_cost_usd=0.0)
    updated = await store.update(record.id, rpm=None, budget_usd=2.0, models=["gpt-*"])
    assert updated is not None and updated.rpm is None and updated.models == ("gpt-*",)
    key = await keys.authenticate(secret)  # cache_s=0: read again
    await keys.admit(key, model="gpt-4o", tokens=1, max_cost_usd=1.5)
    with pytest.raises(ConfigError, match="cannot update"):
        await store.update(record.id, name="other")
    await store.revoke(record.id)
    assert await store.update(record.id, rpm=5) is None
