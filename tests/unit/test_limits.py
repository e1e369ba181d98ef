"""LocalLimiter in virtual time: cap, FIFO, RPM/TPM windows, settlement, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from shoal.clock import VirtualClock
from shoal.errors import ConfigError, DeadlineExceeded, RunError
from shoal.observe.events import Event, EventBus
from shoal.traffic.limits import LocalLimiter, Permit


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def held(permit: Permit | None) -> Permit:
    assert permit is not None
    return permit


async def test_concurrency_cap_and_release(clock: VirtualClock) -> None:
    lim = LocalLimiter(max_concurrency=2, clock=clock, name="ch")
    a = held(lim.try_acquire())
    b = held(lim.try_acquire())
    assert lim.try_acquire() is None
    assert lim.in_flight == 2
    assert (a.in_flight, b.in_flight) == (1, 2)
    a.release()
    a.release()  # idempotent: must not free a second slot
    assert lim.in_flight == 1
    c = held(lim.try_acquire())
    assert lim.try_acquire() is None
    b.release()
    c.release()
    assert lim.in_flight == 0


async def test_unlimited_limiter_always_admits(clock: VirtualClock) -> None:
    lim = LocalLimiter(clock=clock)
    permits = [held(lim.try_acquire()) for _ in range(100)]
    assert lim.in_flight == 100
    assert lim.capacity is None
    for p in permits:
        p.release()
    assert lim.in_flight == 0


async def test_waiters_are_admitted_in_fifo_order(clock: VirtualClock) -> None:
    lim = LocalLimiter(max_concurrency=1, clock=clock)
    first = held(lim.try_acquire())
    order: list[int] = []

    async def call(i: int) -> None:
        permit = await lim.acquire()
        order.append(i)
        await clock.sleep(1.0)
        permit.release()

    tasks = [asyncio.create_task(call(i)) for i in range(5)]
    await clock.settle()
    assert lim.waiting == 5
    first.release()
    await clock.run(asyncio.gather(*tasks))
    assert order == [0, 1, 2, 3, 4]
    assert clock.now() == pytest.approx(5.0)
    assert lim.in_flight == 0


async def test_try_acquire_does_not_jump_the_queue(clock: VirtualClock) -> None:
    lim = LocalLimiter(tpm=100, clock=clock)
    big = held(lim.try_acquire(80))
    waiter = asyncio.create_task(lim.acquire(50))
    await clock.settle()
    assert lim.waiting == 1
    # 10 tokens would fit, but a call is queued ahead: FIFO says no.
    assert lim.try_acquire(10) is None
    big.settle(10)  # frees room for the head: it is admitted now
    await clock.settle()
    assert waiter.done()
    waiter.result().release()
    big.release()


async def test_large_head_is_not_starved_by_small_requests(clock: VirtualClock) -> None:
    lim = LocalLimiter(tpm=100, clock=clock, window_s=60.0)
    held(lim.try_acquire(60))
    admitted: list[tuple[str, float]] = []

    async def call(tag: str, tokens: int) -> None:
        permit = await lim.acquire(tokens)
        admitted.append((tag, clock.now()))
        permit.release()

    big = asyncio.create_task(call("big", 90))
    await clock.settle()
    small = asyncio.create_task(call("small", 10))
    await clock.run(asyncio.gather(big, small))
    # The 60-token entry leaves the window at t=60; only then the big head goes, and
    # the small one after it (100 - 90 = 10 fits).
    assert [tag for tag, _ in admitted] == ["big", "small"]
    assert admitted[0][1] == pytest.approx(60.0, abs=1e-5)
    assert admitted[1][1] == pytest.approx(60.0, abs=1e-5)


async def test_rpm_window_is_exact_and_never_overshot(clock: VirtualClock) -> None:
    lim = LocalLimiter(rpm=3, clock=clock)
    times: list[float] = []

    async def call(start: float) -> None:
        await clock.sleep(start)
        permit = await lim.acquire()
        times.append(clock.now())
        permit.release()

    starts = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 65.0, 70.0, 71.0]
    await clock.run(asyncio.gather(*(call(s) for s in starts)))
    assert times == pytest.approx(
        [0.0, 10.0, 20.0, 60.0, 70.0, 80.0, 120.0, 130.0, 140.0], abs=1e-5
    )
    # Sliding-window property: no 60 s window holds more than rpm admissions.
    for t in times:
        assert sum(1 for u in times if t <= u < t + 60.0 - 1e-9) <= 3


async def test_rpm_retry_in_reports_the_window_wait(clock: VirtualClock) -> None:
    lim = LocalLimiter(rpm=2, clock=clock)
    held(lim.try_acquire()).release()
    await clock.advance(15.0)
    held(lim.try_acquire()).release()
    assert lim.try_acquire() is None
    assert lim.retry_in() == pytest.approx(45.0)
    await clock.advance(45.0)
    assert lim.retry_in() == 0.0
    assert lim.try_acquire() is not None


async def test_tpm_is_token_weighted_and_exact(clock: VirtualClock) -> None:
    lim = LocalLimiter(tpm=1000, clock=clock)
    held(lim.try_acquire(600)).release()
    await clock.advance(20.0)
    held(lim.try_acquire(300)).release()
    assert lim.try_acquire(400) is None
    # 600 + 300 + 400 > 1000: the 600-token entry must leave first, at t = 60.
    assert lim.retry_in(400) == pytest.approx(40.0)
    assert lim.retry_in(100) == 0.0
    permit = await clock.run(lim.acquire(400))
    assert clock.now() == pytest.approx(60.0, abs=1e-5)
    permit.release()


async def test_settle_down_frees_tokens_and_wakes_waiters(clock: VirtualClock) -> None:
    lim = LocalLimiter(tpm=1000, clock=clock)
    p1 = held(lim.try_acquire(900))
    waiter = asyncio.create_task(lim.acquire(500))
    await clock.advance(5.0)
    assert not waiter.done()
    p1.settle(100)  # the call really used 100 tokens
    await clock.settle()
    assert waiter.done()
    assert clock.now() == pytest.approx(5.0)
    assert p1.tokens == 100
    p1.release()
    waiter.result().release()


async def test_settle_up_counts_the_real_usage(clock: VirtualClock) -> None:
    lim = LocalLimiter(tpm=1000, clock=clock)
    p1 = held(lim.try_acquire(100))
    p1.settle(950)
    p1.release()
    assert lim.try_acquire(100) is None
    assert lim.try_acquire(50) is not None


async def test_settle_after_the_entry_left_the_window_changes_nothing(
    clock: VirtualClock,
) -> None:
    lim = LocalLimiter(tpm=1000, clock=clock)
    p1 = held(lim.try_acquire(500))
    await clock.advance(61.0)
    held(lim.try_acquire(0)).release()  # the 500-token entry is pruned here
    p1.settle(5000)  # a very late settlement of a call that already aged out
    assert lim.try_acquire(1000) is not None


async def test_settle_rejects_negative_usage(clock: VirtualClock) -> None:
    lim = LocalLimiter(tpm=1000, clock=clock)
    with pytest.raises(ConfigError):
        held(lim.try_acquire(10)).settle(-1)


async def test_request_larger_than_tpm_fails_fast(clock: VirtualClock) -> None:
    lim = LocalLimiter(tpm=1000, clock=clock, name="glm")
    with pytest.raises(ConfigError, match=r"2000 tokens.*glm.*tpm=1000"):
        await lim.acquire(2000)
    with pytest.raises(ConfigError):
        lim.try_acquire(1001)
    with pytest.raises(ConfigError):
        lim.try_acquire(-1)


async def test_invalid_limits_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        LocalLimiter(max_concurrency=0)
    with pytest.raises(ConfigError):
        LocalLimiter(rpm=0)
    with pytest.raises(ConfigError):
        LocalLimiter(window_s=0)
    with pytest.raises(ConfigError):
        LocalLimiter().set_capacity(0)


async def test_cancelled_waiter_leaves_the_queue_without_leaking(clock: VirtualClock) -> None:
    lim = LocalLimiter(max_concurrency=1, clock=clock)
    first = held(lim.try_acquire())
    doomed = asyncio.create_task(lim.acquire())
    patient = asyncio.create_task(lim.acquire())
    await clock.settle()
    assert lim.waiting == 2
    doomed.cancel()
    await clock.settle()
    assert doomed.cancelled()
    assert lim.waiting == 1
    first.release()
    await clock.settle()
    assert patient.done()
    assert lim.in_flight == 1
    patient.result().release()
    assert lim.in_flight == 0
    assert lim.waiting == 0


async def test_waiter_cancelled_exactly_when_woken_returns_its_slot(
    clock: VirtualClock,
) -> None:
    lim = LocalLimiter(max_concurrency=1, clock=clock)
    first = held(lim.try_acquire())
    woken = asyncio.create_task(lim.acquire())
    behind = asyncio.create_task(lim.acquire())
    await clock.settle()
    first.release()  # hands the slot to `woken`, which has not run yet
    assert lim.in_flight == 1
    woken.cancel()  # ... and is cancelled before it could take it
    await clock.settle()
    assert woken.cancelled()
    assert behind.done()  # the slot went on to the next waiter
    assert lim.in_flight == 1
    behind.result().release()
    assert lim.in_flight == 0


async def test_timeout_raises_deadline_exceeded_and_leaks_nothing(clock: VirtualClock) -> None:
    lim = LocalLimiter(max_concurrency=1, clock=clock, name="kimi")
    first = held(lim.try_acquire())
    with pytest.raises(DeadlineExceeded, match="kimi"):
        await clock.run(lim.acquire(timeout=2.5))
    assert clock.now() == pytest.approx(2.5)
    assert lim.waiting == 0
    assert lim.in_flight == 1
    first.release()
    assert lim.in_flight == 0
    assert lim.try_acquire() is not None


async def test_zero_timeout_fails_at_once_when_full(clock: VirtualClock) -> None:
    lim = LocalLimiter(max_concurrency=1, clock=clock)
    held(lim.try_acquire())
    with pytest.raises(DeadlineExceeded):
        await lim.acquire(timeout=0)
    assert lim.waiting == 0


async def test_timed_out_head_unblocks_the_queue(clock: VirtualClock) -> None:
    lim = LocalLimiter(tpm=100, clock=clock)
    held(lim.try_acquire(90))
    big = asyncio.create_task(lim.acquire(50, timeout=5.0))
    await clock.settle()
    small = asyncio.create_task(lim.acquire(10))
    await clock.advance(4.0)
    assert not small.done()  # behind the head, FIFO
    await clock.advance(1.0)
    assert isinstance(big.exception(), DeadlineExceeded)
    assert small.done()
    assert clock.now() == pytest.approx(5.0)


async def test_raising_capacity_wakes_waiters_lowering_does_not_preempt(
    clock: VirtualClock,
) -> None:
    lim = LocalLimiter(max_concurrency=1, clock=clock)
    a = held(lim.try_acquire())
    waiters = [asyncio.create_task(lim.acquire()) for _ in range(2)]
    await clock.settle()
    lim.set_capacity(3)
    await clock.settle()
    assert all(w.done() for w in waiters)
    assert lim.in_flight == 3
    lim.set_capacity(1)
    assert lim.in_flight == 3  # held permits are never revoked
    a.release()
    waiters[0].result().release()
    assert lim.try_acquire() is None  # 1 in flight, cap 1
    waiters[1].result().release()
    assert lim.try_acquire() is not None


async def test_wait_for_change_returns_on_release(clock: VirtualClock) -> None:
    lim = LocalLimiter(max_concurrency=1, clock=clock)
    permit = held(lim.try_acquire())
    assert lim.retry_in() is None
    watcher = asyncio.create_task(lim.wait_for_change(30.0))
    await clock.advance(3.0)
    assert not watcher.done()
    permit.release()
    await clock.settle()
    assert watcher.done()
    assert clock.now() == pytest.approx(3.0)


async def test_wait_for_change_returns_at_the_window_edge_or_timeout(
    clock: VirtualClock,
) -> None:
    lim = LocalLimiter(rpm=1, clock=clock)
    held(lim.try_acquire()).release()
    await clock.run(lim.wait_for_change(10.0))
    assert clock.now() == pytest.approx(10.0)  # timeout first
    await clock.run(lim.wait_for_change(100.0))
    assert clock.now() == pytest.approx(60.0)  # then the window edge
    await lim.wait_for_change(100.0)  # free now: returns at once
    assert clock.now() == pytest.approx(60.0)


async def test_slot_context_manager_releases_on_error(clock: VirtualClock) -> None:
    lim = LocalLimiter(max_concurrency=1, clock=clock)

    async def failing_call() -> None:
        async with lim.slot() as permit:
            assert permit.in_flight == 1
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await failing_call()
    assert lim.in_flight == 0
    p = held(lim.try_acquire())
    with p:
        assert lim.in_flight == 1
    assert lim.in_flight == 0
    assert p.released


async def test_aclose_fails_waiters_clearly(clock: VirtualClock) -> None:
    lim = LocalLimiter(max_concurrency=1, clock=clock, name="ds")
    held(lim.try_acquire())
    waiter = asyncio.create_task(lim.acquire())
    await clock.settle()
    await lim.aclose()
    with pytest.raises(RunError, match="closed"):
        await waiter
    assert lim.try_acquire() is None


async def test_wait_and_settle_events(clock: VirtualClock) -> None:
    bus = EventBus(clock)
    seen: list[Event] = []
    bus.subscribe(seen.append)
    lim = LocalLimiter(max_concurrency=1, tpm=1000, clock=clock, name="ch", events=bus)
    first = held(lim.try_acquire(100))
    waiter = asyncio.create_task(lim.acquire(200))
    await clock.settle()
    first.settle(40)
    first.release()
    await clock.settle()
    waiter.result().release()
    kinds = [(e.kind, e.channel) for e in seen]
    assert kinds == [("wait", "ch"), ("settle", "ch")]
    assert seen[0].data["queued"] == 1
    assert dict(seen[1].data) == {"reserved": 100, "actual": 40}
