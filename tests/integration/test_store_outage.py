"""Store outages are faults too: a failed write is retried a bounded number of times,
then raises loudly; it never reports success for a step that was not saved.

Redis and PostgreSQL are reached through a TCP proxy the test can cut (tcp_proxy.py); SQLite is
made unavailable by another connection holding its write lock. Backoff sleeps go
through a VirtualClock, so the retries are counted, not timed.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from tcp_proxy import TcpProxy

from shoal.clock import VirtualClock
from shoal.stores import (
    RetryPolicy,
    RunRecord,
    StepRecord,
    Store,
    StoreUnavailable,
    open_store,
)
from shoal.stores.postgres import PostgresStore
from shoal.stores.redis import RedisStore
from shoal.stores.sqlite import SQLiteStore

ATTEMPTS = 3


class CountingClock(VirtualClock):
    """A VirtualClock that records every sleep (the store's backoffs)."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


@dataclass
class Remote:
    """A store reached through the proxy, and a direct one to check what really landed."""

    proxy: TcpProxy
    via_proxy: Callable[[CountingClock], Store]
    direct: Store


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def remote(request: pytest.FixtureRequest, unique_prefix: str) -> AsyncIterator[Remote]:
    retry = RetryPolicy(attempts=ATTEMPTS, base_delay_s=0.05)
    cleanup: Callable[[], Any]
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        proxy = TcpProxy(*_host_port(url, 6379))
        await proxy.start()
        proxied = url.replace(f"{proxy.target[0]}:{proxy.target[1]}", f"127.0.0.1:{proxy.port}")

        def via_redis(clock: CountingClock) -> Store:
            return RedisStore(proxied, prefix=unique_prefix, clock=clock, retry=retry)

        direct: Store = RedisStore(url, prefix=unique_prefix)
        via: Callable[[CountingClock], Store] = via_redis

        async def drop_keys() -> None:
            import redis.asyncio as aioredis

            client: Any = aioredis.from_url(url)
            keys = [k async for k in client.scan_iter(match=f"{unique_prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()

        cleanup = drop_keys
    else:
        dsn: str = request.getfixturevalue("pg_dsn")
        schema = unique_prefix.replace(":", "_")
        proxy = TcpProxy(*_host_port(dsn, 5432))
        await proxy.start()
        proxied = dsn.replace(f"{proxy.target[0]}:{proxy.target[1]}", f"127.0.0.1:{proxy.port}")

        def via_pg(clock: CountingClock) -> Store:
            return PostgresStore(proxied, schema=schema, pool_max=2, clock=clock, retry=retry)

        direct = PostgresStore(dsn, schema=schema, pool_max=2)
        via = via_pg

        async def drop_schema() -> None:
            import asyncpg

            conn = await asyncpg.connect(dsn)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()

        cleanup = drop_schema
    assert proxied != (url if request.param == "redis" else dsn), "proxy not in the URL"
    await direct.open()
    try:
        yield Remote(proxy, via, direct)
    finally:
        await direct.aclose()
        await proxy.close()
        await cleanup()


async def _backing_off(clock: CountingClock, task: asyncio.Task[Any]) -> None:
    """Wait (on real I/O) until the store has failed once and sleeps on the clock."""
    for _ in range(2000):
        if clock.sleeps or task.done():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the store never retried")


async def test_write_during_outage_raises_and_saves_nothing(remote: Remote) -> None:
    clock = CountingClock()
    async with remote.via_proxy(clock) as store:
        await store.create_run(RunRecord("r1", "flow"))
        remote.proxy.down()
        step = StepRecord("analyzer", "succeeded", {"x": 1}, tokens=50)
        with pytest.raises(StoreUnavailable) as info:
            await clock.run(store.complete_step("r1", step))
        message = str(info.value)
        assert "step 'analyzer' of run 'r1'" in message
        assert f"after {ATTEMPTS} attempts" in message and "NOT confirmed saved" in message
        assert info.value.__cause__ is not None
        assert len(clock.sleeps) == ATTEMPTS - 1  # bounded: tried, backed off, gave up

    assert await remote.direct.get_step("r1", "analyzer") is None
    assert (await remote.direct.require_run("r1")).tokens == 0


async def test_write_survives_a_short_outage(remote: Remote) -> None:
    clock = CountingClock()
    async with remote.via_proxy(clock) as store:
        await store.create_run(RunRecord("r1", "flow"))
        remote.proxy.down()
        task = asyncio.create_task(
            store.complete_step("r1", StepRecord("a", "succeeded", "ok", tokens=50))
        )
        await _backing_off(clock, task)
        remote.proxy.up = True
        await clock.advance(5)
        stored = await task

    assert await remote.direct.get_step("r1", "a") == stored
    assert (await remote.direct.require_run("r1")).tokens == 50  # counted once


async def test_a_killed_connection_is_retried_transparently(remote: Remote) -> None:
    clock = CountingClock()
    async with remote.via_proxy(clock) as store:
        await store.create_run(RunRecord("r1", "flow"))
        await store.complete_step("r1", StepRecord("a", "succeeded", 1, tokens=5))
        remote.proxy.cut()  # the pooled connection dies; the server stays reachable
        await clock.run(store.complete_step("r1", StepRecord("b", "succeeded", 2, tokens=7)))
        assert len(clock.sleeps) <= 1

    assert [s.result for s in await remote.direct.get_steps("r1")] == [1, 2]
    assert (await remote.direct.require_run("r1")).tokens == 12


async def test_opening_a_dead_store_fails_loudly(remote: Remote) -> None:
    remote.proxy.down()
    clock = CountingClock()
    store = remote.via_proxy(clock)
    with pytest.raises(StoreUnavailable, match=f"could not open the store .* after {ATTEMPTS}"):
        await clock.run(store.open())
    assert remote.proxy.refused >= 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("scheme", ["redis", "postgresql"])
async def test_nothing_listening_is_unavailable_not_hung(scheme: str) -> None:
    port = _closed_port()
    clock = CountingClock()
    retry = RetryPolicy(attempts=2, base_delay_s=0.01)
    store: Store
    if scheme == "redis":
        store = RedisStore(f"redis://127.0.0.1:{port}/0", clock=clock, retry=retry)
    else:
        store = PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/test", clock=clock,
                              retry=retry)
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
        await clock.run(store.open())
    assert len(clock.sleeps) == 1


# -- SQLite: another process holds the write lock ------------------------------------


@pytest.fixture
async def locked_sqlite(
    tmp_path: Path,
) -> AsyncIterator[tuple[SQLiteStore, sqlite3.Connection, CountingClock]]:
    path = tmp_path / "runs.db"
    clock = CountingClock()
    store = SQLiteStore(path, busy_timeout_ms=0, clock=clock,
                        retry=RetryPolicy(attempts=ATTEMPTS, base_delay_s=0.05))
    await store.open()
    await store.create_run(RunRecord("r1", "flow"))
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield store, holder, clock
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        await store.aclose()


async def test_sqlite_locked_write_raises_and_saves_nothing(
    locked_sqlite: tuple[SQLiteStore, sqlite3.Connection, CountingClock],
) -> None:
    store, holder, clock = locked_sqlite
    with pytest.raises(StoreUnavailable, match="database is locked") as info:
        await clock.run(store.complete_step("r1", StepRecord("a", "succeeded", 1, tokens=3)))
    assert "NOT confirmed saved" in str(info.value)
    assert len(clock.sleeps) == ATTEMPTS - 1
    holder.execute("ROLLBACK")
    assert await store.get_step("r1", "a") is None
    assert (await store.require_run("r1")).tokens == 0


async def test_sqlite_write_waits_out_a_short_lock(
    locked_sqlite: tuple[SQLiteStore, sqlite3.Connection, CountingClock],
) -> None:
    store, holder, clock = locked_sqlite
    task = asyncio.create_task(
        store.complete_step("r1", StepRecord("a", "succeeded", 1, tokens=3))
    )
    await _backing_off(clock, task)
    holder.execute("ROLLBACK")
    await clock.advance(5)
    stored = await task
    assert await store.get_step("r1", "a") == stored
    assert (await store.require_run("r1")).tokens == 3


async def test_asyncpg_pool_warnings_are_one_line(pg_url: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """While PostgreSQL is down, asyncpg's pool warns with a whole traceback each time it
    fails to restore its floor connection; with no logging configured Python printed
    them over shoal's own message (a newcomer's finding). An opened store keeps each one
    line, the exception named. The warning is emitted as asyncpg's pool emits it."""
    import logging

    async with open_store(pg_url):
        pass
    try:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 15432)")
    except ConnectionRefusedError:
        logging.getLogger("asyncpg.pool").warning(
            "Failed to restore the pool connection floor; retrying", exc_info=True)
    record = caplog.records[-1]
    assert record.exc_info is None
    assert record.getMessage() == (
        "Failed to restore the pool connection floor; retrying (ConnectionRefusedError: "
        "[Errno 111] Connect call failed ('127.0.0.1', 15432))")
