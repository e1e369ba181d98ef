"""The Limiter contract, for LocalLimiter and RedisLimiter alike, against a real Redis;
then what only the shared limiter does (leases, cancellation during a round trip,
a shared adaptive cap)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from shoal.errors import ConfigError, DeadlineExceeded
from shoal.observe.events import Event, EventBus
from shoal.traffic.adaptive import AdaptiveConcurrency
from shoal.traffic.limits import Limiter, LocalLimiter, Permit
from shoal.traffic.redis_limits import RedisLimiter

pytestmark = pytest.mark.redis

Factory = Callable[..., Limiter]


@pytest.fixture(params=["local", "redis"])
async def make_limiter(
    request: pytest.FixtureRequest, unique_prefix: str
) -> AsyncIterator[Factory]:
    made: list[Limiter] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def factory(**kw: Any) -> Limiter:
        lim: Limiter
        if request.param == "local":
            lim = LocalLimiter(**kw)
        else:
            lim = RedisLimiter(url, key=f"{unique_prefix}:{len(made)}", poll_s=0.2, **kw)
        made.append(lim)
        return lim

    yield factory
    for lim in made:
        await lim.aclose()


async def take(lim: Limiter, tokens: int = 0) -> Permit:
    permit = await lim.atry_acquire(tokens)
    assert permit is not None
    return permit


async def test_cap_is_enforced_and_released(make_limiter: Factory) -> None:
    lim = make_limiter(max_concurrency=2)
    a = await take(lim)
    b = await take(lim)
    assert await lim.atry_acquire() is None
    assert lim.in_flight == 2
    assert (a.in_flight, b.in_flight) == (1, 2)
    a.release()
    a.release()
    c = await lim.acquire(timeout=5.0)
    assert await lim.atry_acquire() is None
    b.release()
    c.release()
    d = await lim.acquire(timeout=5.0)
    e = await lim.acquire(timeout=5.0)
    d.release()
    e.release()


async def test_waiters_are_admitted_in_fifo_order(make_limiter: Factory) -> None:
    lim = make_limiter(max_concurrency=1)
    first = await take(lim)
    order: list[int] = []

    async def call(i: int) -> None:
        permit = await lim.acquire(timeout=10.0)
        order.append(i)
        await asyncio.sleep(0.01)
        permit.release()

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(call(i)))
        await asyncio.sleep(0.01)  # queue them in a known order
    first.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_timeout_raises_and_leaks_nothing(make_limiter: Factory) -> None:
    lim = make_limiter(max_concurrency=1)
    first = await take(lim)
    with pytest.raises(DeadlineExceeded):
        await lim.acquire(timeout=0.2)
    with pytest.raises(DeadlineExceeded):
        await lim.acquire(timeout=0)
    first.release()
    again = await lim.acquire(timeout=5.0)
    assert lim.in_flight == 1
    again.release()


async def test_cancelled_waiters_leak_nothing(make_limiter: Factory) -> None:
    lim = make_limiter(max_concurrency=1)
    first = await take(lim)
    waiters = [asyncio.create_task(lim.acquire(timeout=10.0)) for _ in range(3)]
    await asyncio.sleep(0.05)
    waiters[0].cancel()
    waiters[1].cancel()
    first.release()
    survivor = await waiters[2]
    assert lim.in_flight == 1
    survivor.release()
    final = await lim.acquire(timeout=5.0)
    final.release()


async def test_settlement_frees_tokens(make_limiter: Factory) -> None:
    lim = make_limiter(tpm=100)
    big = await take(lim, 80)
    assert await lim.atry_acquire(50) is None
    big.settle(10)
    big.release()
    permit = await lim.acquire(50, timeout=5.0)  # 10 + 50 fits now
    assert permit.tokens == 50
    with pytest.raises(ConfigError, match="tpm=100"):
        await lim.acquire(101)


async def test_rpm_window_is_never_overshot(make_limiter: Factory) -> None:
    lim = make_limiter(rpm=2, window_s=0.5)
    started = time.monotonic()
    admitted = []
    for _ in range(3):
        permit = await lim.acquire(timeout=5.0)
        admitted.append(time.monotonic() - started)
        permit.release()
    # A safety bound, not a speed one: the third waits for the first to leave the window.
    assert admitted[2] - admitted[0] >= 0.5 - 0.02
    assert lim.retry_in() is not None


async def test_raising_capacity_admits_waiters(make_limiter: Factory) -> None:
    lim = make_limiter(max_concurrency=1)
    first = await take(lim)
    waiter = asyncio.create_task(lim.acquire(timeout=5.0))
    await asyncio.sleep(0.05)
    lim.set_capacity(2)
    second = await waiter
    assert lim.capacity == 2
    first.release()
    second.release()


async def test_a_queued_call_emits_wait(make_limiter: Factory) -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append)
    lim = make_limiter(max_concurrency=1, events=bus, name="ch")
    first = await take(lim)
    waiter = asyncio.create_task(lim.acquire(timeout=5.0))
    await asyncio.sleep(0.05)
    first.release()
    (await waiter).release()
    waits = [e for e in seen if e.kind == "wait"]
    assert len(waits) == 1
    assert waits[0].channel == "ch"


# -- only the shared limiter ----------------------------------------------------------


async def holders(redis_client: Any, key: str) -> int:
    return int(await redis_client.zcard("{" + key + "}:holders"))


async def test_two_limiters_on_one_key_share_the_cap(
    redis_url: str, unique_prefix: str, redis_client: Any
) -> None:
    a = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=2)
    b = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=2)
    try:
        pa = await take(a)
        pb = await take(b)
        assert await a.atry_acquire() is None
        assert await b.atry_acquire() is None
        assert pb.in_flight == 2  # the global count, not b's own
        waiter = asyncio.create_task(b.acquire(timeout=5.0))
        await asyncio.sleep(0.05)
        pa.release()  # a release in one process wakes a waiter in another
        pc = await waiter
        assert await holders(redis_client, unique_prefix) == 2
        pb.release()
        pc.release()
        await asyncio.sleep(0.05)
        assert await holders(redis_client, unique_prefix) == 0
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_dead_holders_slot_frees_within_its_lease(
    redis_url: str, unique_prefix: str, redis_client: Any
) -> None:
    dead = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=1, lease_s=0.6)
    alive = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=1, lease_s=0.6,
                         poll_s=0.1)
    try:
        await take(dead)
        assert dead._heartbeat is not None
        dead._heartbeat.cancel()  # the holder dies: no release, no more renewals
        dead._held.clear()
        assert await alive.atry_acquire() is None
        permit = await alive.acquire(timeout=5.0)  # reclaimed once the lease expired
        assert await holders(redis_client, unique_prefix) == 1
        permit.release()
    finally:
        await dead.aclose()
        await alive.aclose()


async def test_heartbeat_keeps_a_long_call_slot(
    redis_url: str, unique_prefix: str
) -> None:
    lim = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=1, lease_s=0.3)
    other = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=1, lease_s=0.3)
    try:
        permit = await take(lim)
        with pytest.raises(DeadlineExceeded):
            await other.acquire(timeout=1.0)  # > 3 leases: renewals kept the slot
        permit.release()
        (await other.acquire(timeout=5.0)).release()
    finally:
        await lim.aclose()
        await other.aclose()


async def test_cancelling_during_the_round_trip_leaks_nothing(
    redis_url: str, unique_prefix: str, redis_client: Any
) -> None:
    lim = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=3)
    try:
        for i in range(40):
            task = asyncio.create_task(lim.acquire(timeout=5.0))
            for _ in range(i % 4):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                (await task).release()
        await asyncio.sleep(0.2)  # let undo releases land
        assert await holders(redis_client, unique_prefix) == 0
        assert lim.in_flight == 0
    finally:
        await lim.aclose()


async def test_aclose_returns_held_slots(
    redis_url: str, unique_prefix: str, redis_client: Any
) -> None:
    lim = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=3)
    await take(lim)
    await take(lim)
    await lim.aclose()
    assert await holders(redis_client, unique_prefix) == 0


async def test_adaptive_cap_is_shared_between_processes(
    redis_url: str, unique_prefix: str
) -> None:
    a = RedisLimiter(redis_url, key=unique_prefix)
    b = RedisLimiter(redis_url, key=unique_prefix)
    try:
        ada_a = AdaptiveConcurrency(a, initial=4)
        (await a.acquire(timeout=5.0)).release()  # a's cap is written by now
        ada_b = AdaptiveConcurrency(b, initial=1)  # joins later: keeps the cap in force
        assert (await b.acquire(timeout=5.0)) is not None
        assert b.capacity == 4
        ada_a.on_rate_limited(3)  # a saw a 429 at 3 in flight
        await asyncio.sleep(0.05)
        permit = await b.acquire(timeout=5.0)  # b's next round trip learns the new cap
        assert b.capacity == 2
        ada_b.on_success(0.1, permit.in_flight)
        assert (ada_b.limit, ada_b.ceiling) == (2, 2)
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_down_is_a_clear_error_at_the_deadline(unique_prefix: str) -> None:
    """Nothing listens: the acquire waits for Redis up to its timeout (an outage may be
    short), then says what happened and what to do."""
    from shoal.errors import DeadlineExceeded

    lim = RedisLimiter("redis://127.0.0.1:1/0", key=unique_prefix, max_concurrency=1)
    try:
        with pytest.raises(DeadlineExceeded, match=r"Redis did not answer.*Check Redis"):
            await lim.acquire(timeout=1.0)
    finally:
        await lim.aclose()


async def test_release_hands_over_in_one_round_trip_with_windows(
    redis_url: str, unique_prefix: str, redis_client: Any
) -> None:
    lim = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=1, rpm=1000, tpm=10_000)
    try:
        first = await take(lim, 100)
        waiter = asyncio.create_task(lim.acquire(200, timeout=5.0))
        await asyncio.sleep(0.05)
        first.release()  # release + admit the waiter in one script
        second = await waiter
        assert second.tokens == 200
        assert await holders(redis_client, unique_prefix) == 1
        tag = "{" + unique_prefix + "}"
        assert int(await redis_client.get(f"{tag}:tpm_used")) == 300
        assert int(await redis_client.zcard(f"{tag}:rpm")) == 2
        second.release()
    finally:
        await lim.aclose()


async def test_local_hand_overs_are_bounded_so_other_processes_get_a_turn(
    redis_url: str, unique_prefix: str
) -> None:
    busy = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=1, poll_s=0.05)
    other = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=1, poll_s=0.05)
    order: list[str] = []

    async def call(lim: RedisLimiter, tag: str) -> None:
        permit = await lim.acquire(timeout=10.0)
        order.append(tag)
        await asyncio.sleep(0.005)
        permit.release()

    try:
        first = await take(busy)
        busy_calls = [asyncio.create_task(call(busy, f"busy{i}")) for i in range(20)]
        await asyncio.sleep(0.05)
        other_call = asyncio.create_task(call(other, "other"))
        await asyncio.sleep(0.05)
        first.release()
        await asyncio.gather(*busy_calls, other_call)
        assert order.index("other") <= 10  # not after all twenty local calls
    finally:
        await busy.aclose()
        await other.aclose()


async def test_a_stale_shared_cap_never_lifts_the_configured_one(
    redis_url: str, unique_prefix: str, redis_client: Any
) -> None:
    # An adaptive run under the same key learned 6 and left it (a day's TTL).
    await redis_client.set("{" + unique_prefix + "}:cap", 6, px=60_000)
    lim = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=2)
    try:
        a, b = await take(lim), await take(lim)
        assert await lim.atry_acquire() is None
        assert lim.capacity == 2
        lim.set_capacity(3)  # this process's own explicit choice does count
        c = await lim.acquire(timeout=5.0)
        for p in (a, b, c):
            p.release()
    finally:
        await lim.aclose()


async def test_a_slot_lost_to_a_stalled_heartbeat_is_held_again_when_free(
    redis_url: str, unique_prefix: str, redis_client: Any
) -> None:
    stalled = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=2, lease_s=0.3)
    other = RedisLimiter(redis_url, key=unique_prefix, max_concurrency=2, lease_s=0.3)
    try:
        permit = await take(stalled)
        assert stalled._heartbeat is not None
        stalled._heartbeat.cancel()  # the loop stalls past the lease
        await asyncio.sleep(0.4)
        theirs = await take(other)  # prunes the lapsed lease
        assert await holders(redis_client, unique_prefix) == 1
        # The loop runs again, its call still in flight: the next renewal holds it anew.
        stalled._heartbeat = asyncio.create_task(stalled._renew_loop())
        await asyncio.sleep(0.2)
        assert await holders(redis_client, unique_prefix) == 2
        assert await other.atry_acquire() is None  # counted again: the cap is full
        permit.release()
        theirs.release()
        await asyncio.sleep(0.05)
        assert await holders(redis_client, unique_prefix) == 0
    finally:
        await stalled.aclose()
        await other.aclose()


async def test_an_overload_halving_keeps_the_ceiling_in_every_process(
    redis_url: str, unique_prefix: str
) -> None:
    a = RedisLimiter(redis_url, key=unique_prefix)
    b = RedisLimiter(redis_url, key=unique_prefix)
    try:
        ada_a = AdaptiveConcurrency(a, initial=12)
        (await a.acquire(timeout=5.0)).release()
        ada_a.on_rate_limited(11)  # a learns the cap: 10, ceiling 10
        ada_b = AdaptiveConcurrency(b, initial=1)
        (await b.acquire(timeout=5.0)).release()
        ada_b.on_success(0.1, 10)
        assert (ada_b.limit, ada_b.ceiling) == (10, 10)
        await asyncio.sleep(2.0)  # past a's rtt (1 s until measured): a new incident
        ada_a.on_overload()  # a sees a 529: halves, keeps its ceiling
        assert (ada_a.limit, ada_a.ceiling) == (5, 10)
        await asyncio.sleep(0.05)
        permit = await b.acquire(timeout=5.0)  # b's next round trip sees cap and ceiling
        ada_b.on_success(0.1, permit.in_flight)
        assert (ada_b.limit, ada_b.ceiling) == (5, 10)  # not a ceiling of 5
        permit.release()
    finally:
        await a.aclose()
        await b.aclose()
