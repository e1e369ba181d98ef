"""The run lease at the Store seam, against real SQLite, Redis and PostgreSQL.

Time is virtual: the stores stamp leases from a VirtualClock, so "not before expiry,
and at expiry" is exact. Concurrent takers are separate store objects (their own
connection, thread or pool) on one database, so the compare-and-set is raced for real.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.clock import VirtualClock
from shoal.errors import ConfigError, LeaseLost, RunBusy, RunNotFound, StoreError
from shoal.stores import RunRecord, StepRecord, Store, open_store

LEASE_S = 30.0
A = "aaaaaaaa@host-a:101:0a0a0a0a"
B = "bbbbbbbb@host-b:202:0b0b0b0b"


@pytest.fixture
async def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def store(journal_url: str, clock: VirtualClock) -> AsyncIterator[Store]:
    async with open_store(journal_url, clock=clock) as s:
        yield s


async def test_a_lease_is_refused_while_live_and_taken_at_expiry(
    store: Store, clock: VirtualClock
) -> None:
    await store.create_run(RunRecord("r1", "flow"))
    assert await store.get_lease("r1") is None
    mine = await store.take_lease("r1", A, LEASE_S)
    assert (mine.owner, mine.expires_at) == (A, clock.wall() + LEASE_S)

    refused = await store.take_lease("r1", B, LEASE_S)  # the holder, unchanged
    assert refused == mine
    await clock.advance(LEASE_S - 0.001)  # A stopped renewing (killed): still not B's
    assert await store.take_lease("r1", B, LEASE_S) == mine
    await clock.advance(0.001)  # the lease lapses at its expiry exactly
    taken = await store.take_lease("r1", B, LEASE_S)
    assert (taken.owner, taken.expires_at) == (B, clock.wall() + LEASE_S)
    assert await store.get_lease("r1") == taken

    # A, back from its stall, cannot renew or release what B holds
    assert await store.renew_lease("r1", A, LEASE_S) == taken
    assert await store.release_lease("r1", A) is False
    assert await store.get_lease("r1") == taken


async def test_renew_release_force_and_replacing(store: Store, clock: VirtualClock) -> None:
    await store.create_run(RunRecord("r1", "flow"))
    await store.take_lease("r1", A, LEASE_S)
    await clock.advance(LEASE_S + 5)  # expired, but nobody took it: A may still renew
    renewed = await store.renew_lease("r1", A, LEASE_S)
    assert renewed is not None and renewed.owner == A
    assert renewed.expires_at == clock.wall() + LEASE_S
    assert await store.take_lease("r1", A, LEASE_S) == renewed  # re-entrant for its owner

    # replacing: only the named holder (a dead one) is replaced
    assert (await store.take_lease("r1", B, LEASE_S, replacing="someone-else")).owner == A
    assert (await store.take_lease("r1", B, LEASE_S, replacing=A)).owner == B
    # force: whoever holds it
    assert (await store.take_lease("r1", A, LEASE_S, force=True)).owner == A

    assert await store.release_lease("r1", A) is True
    assert await store.get_lease("r1") is None
    assert await store.renew_lease("r1", A, LEASE_S) is None  # released: no renewal back
    assert await store.get_lease("r1") is None
    assert (await store.take_lease("r1", B, LEASE_S)).owner == B  # free: anyone takes it


async def test_a_missing_run_and_a_bad_lease_length(store: Store) -> None:
    with pytest.raises(RunNotFound):
        await store.take_lease("nope", A, LEASE_S)
    with pytest.raises(RunNotFound):
        await store.get_lease("nope")
    assert await store.release_lease("nope", A) is False
    await store.create_run(RunRecord("r1", "flow"))
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="lease_s must be a positive number"):
            await store.take_lease("r1", A, bad)


async def test_racing_takers_exactly_one_wins(journal_url: str, clock: VirtualClock) -> None:
    """Eight executors, each on its own connection, take eight runs' leases at once."""
    takers = [await open_store(journal_url, clock=clock).open() for _ in range(8)]
    try:
        for n in range(8):
            await takers[0].create_run(RunRecord(f"r{n}", "flow"))
            owners = [f"{i:08x}@host-{i}:{i}:feedface" for i in range(8)]
            results = await asyncio.gather(*(t.take_lease(f"r{n}", o, LEASE_S)
                                             for t, o in zip(takers, owners, strict=True)))
            winners = {r.owner for r in results}
            assert len(winners) == 1, results  # everyone agrees on one holder
            assert (await takers[0].get_lease(f"r{n}")).owner in owners  # type: ignore[union-attr]
    finally:
        for t in takers:
            await t.aclose()


async def test_writes_of_an_executor_that_lost_the_run_are_refused(store: Store) -> None:
    await store.create_run(RunRecord("r1", "flow"))
    await store.take_lease("r1", A, LEASE_S)
    await store.complete_step("r1", StepRecord("a", "succeeded", {"v": 1}, tokens=5), owner=A)
    await store.update_run("r1", status="running", owner=A)
    await store.take_lease("r1", B, LEASE_S, force=True)  # B took the run over

    with pytest.raises(LeaseLost) as lost:
        await store.complete_step("r1", StepRecord("b", "succeeded", {"v": 2}, tokens=7),
                                  owner=A)
    assert lost.value.owner == B and lost.value.run_id == "r1"
    assert "was taken over by bbbbbbbb@host-b (pid 202)" in str(lost.value)
    assert isinstance(lost.value, RunBusy) and isinstance(lost.value, StoreError)
    with pytest.raises(LeaseLost):
        await store.put_step("r1", StepRecord("a", "failed", error="stale"), owner=A)
    with pytest.raises(LeaseLost):
        await store.update_run("r1", status="failed", error="stale", owner=A)
    # nothing of A's landed: no step b, step a intact, totals and status unchanged
    assert await store.get_step("r1", "b") is None
    step_a = await store.get_step("r1", "a")
    assert step_a is not None and step_a.status == "succeeded"
    run = await store.require_run("r1")
    assert (run.status, run.tokens, run.error) == ("running", 5, None)

    # the holder writes; so does a writer naming no executor (a shoal without leases)
    await store.complete_step("r1", StepRecord("b", "succeeded", {"v": 2}, tokens=7), owner=B)
    await store.update_run("r1", status="succeeded", owner=B)
    await store.put_step("r1", StepRecord("c", "skipped"))
    assert (await store.require_run("r1")).tokens == 12
    # a free lease fences no one (a run's writes after its executor released it)
    assert await store.release_lease("r1", B)
    await store.put_step("r1", StepRecord("d", "failed", error="late note"), owner=A)
    await store.update_run("r1", status="failed", owner=A)
    with pytest.raises(RunNotFound):
        await store.put_step("gone", StepRecord("x", "running"), owner=A)
    with pytest.raises(RunNotFound):
        await store.update_run("gone", status="failed", owner=A)


async def _forget_leases(url: str, store: Store) -> None:
    """Make the store what a shoal without leases left: no lease columns, no fenced
    step function (Redis keeps leases in fields that simply are not there yet)."""
    kind = type(store).__name__
    if kind == "SQLiteStore":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("ALTER TABLE runs DROP COLUMN lease_owner")
            conn.execute("ALTER TABLE runs DROP COLUMN lease_until")
        finally:
            conn.close()
    elif kind == "PostgresStore":
        import asyncpg

        schema: str = store.schema  # type: ignore[attr-defined]
        conn2: Any = await asyncpg.connect(url.split("?", 1)[0])
        try:
            await conn2.execute(f'ALTER TABLE "{schema}".runs DROP COLUMN lease_owner, '
                                "DROP COLUMN lease_until")
            await conn2.execute(f'DROP FUNCTION "{schema}".put_step_leased')
        finally:
            await conn2.close()


async def test_a_store_from_before_leases_keeps_its_runs_and_gains_leases(
    journal_url: str, clock: VirtualClock
) -> None:
    old = await open_store(journal_url, clock=clock).open()
    await old.create_run(RunRecord("old", "flow", input={"topic": "x"}))
    await old.complete_step("old", StepRecord("a", "succeeded", {"v": 1}, tokens=3))
    await old.aclose()
    await _forget_leases(journal_url, old)

    async with open_store(journal_url, clock=clock) as store:
        run = await store.require_run("old")
        assert (run.tokens, run.input) == (3, {"topic": "x"})
        assert [s.result for s in await store.get_steps("old")] == [{"v": 1}]
        assert await store.get_lease("old") is None
        assert (await store.take_lease("old", A, LEASE_S)).owner == A
        await store.complete_step("old", StepRecord("b", "succeeded", {"v": 2}), owner=A)
        with pytest.raises(LeaseLost):
            await store.complete_step("old", StepRecord("c", "succeeded"), owner=B)
    async with open_store(journal_url, clock=clock) as again:  # opening twice is a no-op
        assert (await again.get_lease("old")).owner == A  # type: ignore[union-attr]
        assert [s.step_id for s in await again.get_steps("old")] == ["a", "b"]


async def test_prune_and_delete_keep_a_run_being_executed(
    store: Store, clock: VirtualClock
) -> None:
    """A run whose executor holds a live lease is running now: prune keeps it and delete
    refuses it (RunBusy) unless forced. Deleting it under its executor lost the run's
    result, and the executor died with "no run …; create it first" (a newcomer's
    finding: `shoal prune --older-than 0s` beside a running `shoal run`)."""
    for run_id in ("live", "done", "lapsed"):
        await store.create_run(RunRecord(run_id, "flow"))
    await store.take_lease("live", A, LEASE_S)
    await store.take_lease("lapsed", B, 1.0)
    await clock.advance(2.0)  # "lapsed": its holder stopped renewing; "live" still runs
    assert await store.prune(0.0) == 2
    assert await store.get_run("live") is not None
    assert await store.get_run("done") is None and await store.get_run("lapsed") is None

    with pytest.raises(RunBusy) as busy:
        await store.delete_run("live")
    assert busy.value.owner == A and "shoal delete live --force" in str(busy.value)
    assert await store.get_run("live") is not None
    assert await store.delete_run("live", force=True) is True
    assert await store.delete_run("live") is False  # gone: nothing to refuse
    await clock.advance(LEASE_S)
    assert await store.prune(0.0) == 0
