"""Property tests (hypothesis) of the limiter and adaptive-concurrency state machines, on
a VirtualClock: no sequence of acquires, releases, cancellations (queued, or at the
moment a slot is handed over), timeouts, settlements, capacity changes and clock jumps
over-admits, leaks a slot or starves a waiter; adaptive concurrency keeps its limit and
ceiling in bounds, and overload never lowers the ceiling."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shoal.clock import VirtualClock
from shoal.errors import DeadlineExceeded
from shoal.traffic.adaptive import AdaptiveConcurrency
from shoal.traffic.limits import WINDOW_S, LocalLimiter, Permit

TPM = 100
Op = tuple[str, int, int]

# (kind, a, b): acquire(tokens=a, timeout=b/10 or none when b < 0); release / cancel
# the a-th; release_cancel: release the a-th permit and, before the loop runs, cancel
# the oldest waiter (the slot is being handed to it as it is cancelled); settle the a-th
# to b tokens; capacity 1 + a % 6; advance the clock a % 90 seconds.
KINDS = ["acquire"] * 4 + ["release", "release", "cancel", "release_cancel",
                            "release_cancel", "settle", "capacity", "advance"]
ops = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, TPM), st.integers(-1, 30)),
    min_size=4, max_size=60,
)


@dataclass
class Run:
    clock: VirtualClock
    limiter: LocalLimiter
    rpm: int | None
    tasks: list[asyncio.Task[Permit]] = field(default_factory=list)
    held: list[Permit] = field(default_factory=list)
    admitted: list[int] = field(default_factory=list)  # task numbers, in admission order
    admitted_at: list[float] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)

    def start(self, tokens: int, timeout: int) -> None:
        number = len(self.tasks)

        async def one() -> Permit:
            permit = await self.limiter.acquire(
                tokens, timeout=None if timeout < 0 else timeout / 10)
            self.admitted.append(number)
            self.admitted_at.append(self.clock.now())
            return permit

        self.tasks.append(asyncio.ensure_future(one()))

    def waiting(self) -> list[asyncio.Task[Permit]]:
        return [t for t in self.tasks if not t.done()]

    def collect(self) -> int:
        """Take the permits of tasks admitted since the last look; how many."""
        new = 0
        for number, task in enumerate(self.tasks):
            if number in self.seen or not task.done():
                continue
            self.seen.add(number)
            if not task.cancelled() and task.exception() is None:
                self.held.append(task.result())
                new += 1
            elif not task.cancelled():
                assert isinstance(task.exception(), DeadlineExceeded)
        return new

    def check(self, new: int) -> None:
        lim = self.limiter
        assert lim.in_flight == len(self.held)  # every handed-out slot is held by a caller
        if new:
            assert lim.capacity is not None and len(self.held) <= lim.capacity
        assert self.admitted == sorted(self.admitted)  # FIFO: nobody overtakes
        if self.rpm is not None:  # any window_s-long window sees at most rpm admissions
            times = self.admitted_at
            for i, t in enumerate(times):
                assert sum(1 for u in times[i:] if u < t + WINDOW_S) <= self.rpm


async def play(script: list[Op], cap: int, rpm: int | None, tpm: int | None) -> None:
    clock = VirtualClock()
    run = Run(clock, LocalLimiter(max_concurrency=cap, rpm=rpm, tpm=tpm, clock=clock), rpm)
    for kind, a, b in script:
        if kind == "acquire":
            run.start(a if tpm is not None else 0, b)
        elif kind == "release" and run.held:
            run.held.pop(a % len(run.held)).release()
        elif kind == "cancel" and run.waiting():
            waiting = run.waiting()
            waiting[a % len(waiting)].cancel()
        elif kind == "release_cancel" and run.held:
            run.held.pop(a % len(run.held)).release()
            if run.waiting():
                run.waiting()[0].cancel()
        elif kind == "settle" and run.held:
            run.held[a % len(run.held)].settle(max(b, 0) if tpm is not None else 0)
        elif kind == "capacity":
            run.limiter.set_capacity(1 + a % 6)
        elif kind == "advance":
            await clock.advance(a % 90)
        await clock.settle()
        run.check(run.collect())
    # Drain: give everything back; every waiter still queued is admitted in turn.
    for _ in range(200):
        while run.held:
            run.held.pop().release()
        await clock.advance(WINDOW_S + 1)
        run.check(run.collect())
        if not run.waiting() and not run.held:
            break
    assert not run.waiting(), "a waiter was starved"
    assert run.limiter.in_flight == 0
    capacity = run.limiter.capacity
    assert capacity is not None
    fresh = [run.limiter.try_acquire() for _ in range(min(capacity, rpm or capacity))]
    assert all(p is not None for p in fresh), "a slot leaked"
    assert run.limiter.in_flight == len(fresh)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops, cap=st.integers(1, 5), rpm=st.none() | st.integers(1, 8),
       tpm=st.none() | st.integers(TPM, 3 * TPM))
@example(script=[("acquire", 0, -1), ("acquire", 0, -1), ("release_cancel", 0, 0)], cap=1,
         rpm=None, tpm=None)
def test_local_limiter_never_over_admits_leaks_or_starves(
    script: list[Op], cap: int, rpm: int | None, tpm: int | None
) -> None:
    asyncio.run(play(script, cap, rpm, tpm))


signals = st.lists(
    st.one_of(
        st.tuples(st.just("success"), st.floats(0.01, 3.0), st.integers(0, 70)),
        st.tuples(st.just("rate_limited"), st.just(0.0), st.integers(0, 70)),
        st.tuples(st.just("overload"), st.floats(0.0, 5.0), st.integers(0, 1)),
        st.tuples(st.just("advance"), st.floats(0.0, 100.0), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(script=signals, min_limit=st.integers(1, 4), span=st.integers(0, 40),
       initial=st.integers(0, 40))
def test_adaptive_stays_in_bounds_and_overload_keeps_the_ceiling(
    script: list[tuple[str, float, int]], min_limit: int, span: int, initial: int
) -> None:
    max_limit = min_limit + span
    start = min_limit + initial % (span + 1)

    async def main() -> None:
        clock = VirtualClock()
        lim = LocalLimiter(clock=clock)
        ada = AdaptiveConcurrency(lim, initial=start, min_limit=min_limit,
                                  max_limit=max_limit, clock=clock)
        for kind, x, n in script:
            ceiling = ada.ceiling
            if kind == "success":
                ada.on_success(x, n or None)
            elif kind == "rate_limited":
                ada.on_rate_limited(n or None)
            elif kind == "overload":
                ada.on_overload(clock.now() - x if n else None)
                assert ada.ceiling == ceiling  # overload is not a cap signal
            else:
                await clock.advance(x)
            assert min_limit <= ada.limit <= max_limit
            assert ada.ceiling is None or min_limit <= ada.ceiling <= max_limit
            assert lim.capacity == ada.limit

    asyncio.run(main())
