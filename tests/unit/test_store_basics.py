"""Store pieces that need no server: URL parsing, records and checksums, the retry
policy, the in-memory SQLite store and import hygiene."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.clock import VirtualClock
from shoal.errors import ConfigError, RunError
from shoal.stores import (
    CorruptRecord,
    RetryPolicy,
    RunRecord,
    StepRecord,
    StoreError,
    StoreUnavailable,
    codec,
    open_store,
)
from shoal.stores.postgres import PostgresStore
from shoal.stores.redis import RedisStore
from shoal.stores.sqlite import DEFAULT_PATH, SQLiteStore


@pytest.mark.parametrize(
    ("url", "path"),
    [
        (None, DEFAULT_PATH),
        ("sqlite://", DEFAULT_PATH),
        ("sqlite:///runs/x.db", "runs/x.db"),
        ("sqlite:////var/lib/shoal/x.db", "/var/lib/shoal/x.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("memory://", ":memory:"),
        ("plain/file.db", "plain/file.db"),
    ],
)
def test_sqlite_urls(url: str | None, path: str) -> None:
    store = open_store(url)
    assert isinstance(store, SQLiteStore) and store.path == path


def test_url_options_reach_the_backends() -> None:
    sq = open_store("sqlite:///a.db?synchronous=NORMAL&busy_timeout_ms=10&retry_attempts=7")
    assert isinstance(sq, SQLiteStore)
    assert (sq.synchronous, sq.busy_timeout_ms, sq._retry.attempts) == ("normal", 10, 7)

    rd = open_store("redis://:pw-secret-1@localhost:6380/2?prefix=tenant1&finished_ttl_s=60")
    assert isinstance(rd, RedisStore)
    assert (rd.prefix, rd.finished_ttl_s) == ("tenant1", 60.0)
    assert "pw-secret-1" not in rd.url and "localhost:6380/2" in rd.url
    default = open_store("redis://localhost")
    assert isinstance(default, RedisStore)
    assert (default.finished_ttl_s, default.pool_max) == (7 * 86400, 32)
    kept = open_store("redis://localhost?finished_ttl_s=0&pool_max=5")
    assert isinstance(kept, RedisStore) and (kept.finished_ttl_s, kept.pool_max) == (0, 5)

    pg = open_store("postgresql://u:pg-secret-2@db/app?schema=runs_eu&pool_max=3&sslmode=disable")
    assert isinstance(pg, PostgresStore)
    assert (pg.schema, pg.pool_max) == ("runs_eu", 3)
    assert "pg-secret-2" not in pg.url and "sslmode=disable" in pg.url
    assert "schema=" not in pg._dsn  # shoal's options are not passed to the driver


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mongodb://x", "unknown store URL scheme 'mongodb'"),
        ("sqlite:///a.db?journal=off", "unknown option"),
        ("sqlite:///a.db?synchronous=off", "'full' or 'normal'"),
        ("sqlite:///a.db?busy_timeout_ms=soon", "must be an integer"),
        ("postgresql://db/app?schema=bad-name;drop", "schema name"),
        ("redis://x?finished_ttl_s=week", "must be a number"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_store(url)


def test_store_errors_sit_in_the_run_error_tree() -> None:
    for cls in (StoreError, StoreUnavailable, CorruptRecord):
        assert issubclass(cls, RunError)
    assert StoreUnavailable.retryable and not CorruptRecord.retryable


def test_retry_policy() -> None:
    policy = RetryPolicy(attempts=5, base_delay_s=0.1, max_delay_s=0.3)
    for failures, cap in ((1, 0.1), (2, 0.2), (3, 0.3), (9, 0.3)):
        for _ in range(20):
            assert cap / 2 <= policy.delay(failures) <= cap
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)


def test_checksums_guard_the_exact_bytes() -> None:
    row = codec.encode_step("r1", StepRecord("s", "succeeded", {"a": [1, "é"]}, tokens=3))
    assert codec.decode_step("r1", row, "here").result == {"a": [1, "é"]}
    assert row.payload.isascii()
    flipped = row.payload.replace('"a"', '"b"')
    with pytest.raises(CorruptRecord, match="step 's' of run 'r1' in here is corrupt"):
        codec.decode_step("r1", codec.StepRow("s", "succeeded", 3, 0.0, flipped, row.checksum),
                          "here")
    # The right bytes under the wrong key are caught too (a record moved between runs).
    with pytest.raises(CorruptRecord, match="disagree"):
        codec.decode_step("r2", row, "here")


def test_ids_and_results_are_validated() -> None:
    with pytest.raises(ConfigError, match="run_id"):
        codec.encode_run(RunRecord("", "f"), created_at=0, updated_at=0)
    with pytest.raises(ConfigError, match="step_id"):
        codec.encode_step("r", StepRecord("a\x00b", "running"))
    with pytest.raises(ConfigError, match="model_dump"):
        codec.encode_step("r", StepRecord("a", "succeeded", {1, 2}))


async def test_memory_store_runs_the_contract_basics() -> None:
    clock = VirtualClock()
    async with open_store("memory://", clock=clock) as store:
        await store.create_run(RunRecord("r1", "flow", input="q"))
        await clock.advance(2)
        await store.complete_step("r1", StepRecord("a", "succeeded", {"ok": True}, tokens=4))
        run = await store.require_run("r1")
        assert (run.tokens, run.updated_at - run.created_at) == (4, 2)
        assert [s.result for s in await store.get_steps("r1")] == [{"ok": True}]


async def test_sqlite_file_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "runs.db"
    async with SQLiteStore(path) as store:
        await store.create_run(RunRecord("r1", "flow"))
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == 2
    finally:
        conn.close()
    assert store.synchronous == "full"


async def test_a_refused_open_leaves_nothing_open(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match="schema version 99"):
        await store.open()
    assert store._executor is None and store._conn is None


async def test_sqlite_store_closes_its_thread(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    async with store:
        await store.get_run("x")
    await asyncio.sleep(0)
    assert store._executor is None and store._conn is None


def test_importing_stores_loads_no_driver() -> None:
    code = (
        "import sys, shoal, shoal.stores; shoal.stores.open_store('redis://x');"
        "shoal.stores.open_store('postgresql://x/y');"
        "print(sorted(m for m in ('redis', 'asyncpg', 'aiosqlite') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
