"""The Store contract, run against real SQLite, real Redis and real PostgreSQL.

Each test gets its own SQLite file, Redis key prefix or PostgreSQL schema, so runs
of this module can overlap. Time is virtual: stores stamp records from a
VirtualClock, so ages and prune cut-offs are exact.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from shoal.clock import VirtualClock
from shoal.errors import ConfigError
from shoal.stores import (
    CorruptRecord,
    EffectRecord,
    RetryPolicy,
    RunExists,
    RunNotFound,
    RunRecord,
    StepRecord,
    Store,
    StoreError,
)
from shoal.stores.postgres import PostgresStore
from shoal.stores.redis import RedisStore
from shoal.stores.sqlite import SQLiteStore

DAY = 86400.0


class Raw(Protocol):
    """Access to a backend behind the store's back, to damage or age what it holds."""

    async def tamper_step(self, run_id: str, step_id: str, old: str, new: str) -> None: ...
    async def tamper_run_head(self, run_id: str, old: str, new: str) -> None: ...
    async def tamper_effect(self, key: str, old: str, new: str) -> None: ...
    async def set_step_status_column(self, run_id: str, step_id: str, status: str) -> None: ...
    async def schema_version(self) -> int: ...
    async def set_schema_version(self, version: int) -> None: ...
    async def forget_v2(self) -> None:
        """Remove what schema v2 adds to data written at v1 (only Redis needs it)."""


@dataclass
class Backend:
    kind: str
    raw: Raw
    factory: Callable[..., Store]
    opened: list[Store] = field(default_factory=list)

    async def store(
        self, *, clock: VirtualClock | None = None, retry: RetryPolicy | None = None,
        schema_version: int | None = None,
    ) -> Store:
        store = self.factory(
            clock=clock or VirtualClock(), retry=retry or RetryPolicy(attempts=2, base_delay_s=0),
            schema_version=schema_version,
        )
        self.opened.append(store)
        return await store.open()


class SQLiteRaw:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _exec(self, sql: str, *args: Any) -> list[Any]:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    async def tamper_step(self, run_id: str, step_id: str, old: str, new: str) -> None:
        self._exec("UPDATE steps SET payload = replace(payload, ?, ?) WHERE run_id = ? "
                   "AND step_id = ?", old, new, run_id, step_id)

    async def tamper_run_head(self, run_id: str, old: str, new: str) -> None:
        self._exec("UPDATE runs SET head = replace(head, ?, ?) WHERE run_id = ?", old, new, run_id)

    async def tamper_effect(self, key: str, old: str, new: str) -> None:
        self._exec("UPDATE effects SET payload = replace(payload, ?, ?) WHERE key = ?",
                   old, new, key)

    async def set_step_status_column(self, run_id: str, step_id: str, status: str) -> None:
        self._exec("UPDATE steps SET status = ? WHERE run_id = ? AND step_id = ?",
                   status, run_id, step_id)

    async def schema_version(self) -> int:
        return int(self._exec("SELECT version FROM schema_version")[0][0])

    async def set_schema_version(self, version: int) -> None:
        self._exec("UPDATE schema_version SET version = ?", version)

    async def forget_v2(self) -> None:
        return None


class RedisRaw:
    def __init__(self, client: Any, prefix: str) -> None:
        self.r = client
        self.p = prefix

    async def _replace_field(self, key: str, fld: str, old: str, new: str) -> None:
        value = (await self.r.hget(key, fld)).decode()
        assert old in value
        await self.r.hset(key, fld, value.replace(old, new))

    async def tamper_step(self, run_id: str, step_id: str, old: str, new: str) -> None:
        await self._replace_field(f"{self.p}:steps:{run_id}", step_id, old, new)

    async def tamper_run_head(self, run_id: str, old: str, new: str) -> None:
        await self._replace_field(f"{self.p}:run:{run_id}", "head", old, new)

    async def tamper_effect(self, key: str, old: str, new: str) -> None:
        await self._replace_field(f"{self.p}:effect:{key}", "payload", old, new)

    async def set_step_status_column(self, run_id: str, step_id: str, status: str) -> None:
        key = f"{self.p}:steps:{run_id}"
        seq, tokens, cost, _, rest = (await self.r.hget(key, step_id)).decode().split("\n", 4)
        await self.r.hset(key, step_id, "\n".join((seq, tokens, cost, status, rest)))

    async def schema_version(self) -> int:
        return int(await self.r.get(f"{self.p}:schema"))

    async def set_schema_version(self, version: int) -> None:
        await self.r.set(f"{self.p}:schema", version)

    async def forget_v2(self) -> None:
        await self.r.delete(f"{self.p}:runs:u")


class PgRaw:
    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.s = f'"{schema}"'

    async def _exec(self, sql: str, *args: Any) -> Any:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def tamper_step(self, run_id: str, step_id: str, old: str, new: str) -> None:
        await self._exec(f"UPDATE {self.s}.steps SET payload = replace(payload, $1, $2) "
                         "WHERE run_id = $3 AND step_id = $4", old, new, run_id, step_id)

    async def tamper_run_head(self, run_id: str, old: str, new: str) -> None:
        await self._exec(f"UPDATE {self.s}.runs SET head = replace(head, $1, $2) "
                         "WHERE run_id = $3", old, new, run_id)

    async def tamper_effect(self, key: str, old: str, new: str) -> None:
        await self._exec(f"UPDATE {self.s}.effects SET payload = replace(payload, $1, $2) "
                         "WHERE key = $3", old, new, key)

    async def set_step_status_column(self, run_id: str, step_id: str, status: str) -> None:
        await self._exec(f"UPDATE {self.s}.steps SET status = $1 WHERE run_id = $2 "
                         "AND step_id = $3", status, run_id, step_id)

    async def schema_version(self) -> int:
        return int(await self._exec(f"SELECT version FROM {self.s}.schema_version"))

    async def set_schema_version(self, version: int) -> None:
        await self._exec(f"UPDATE {self.s}.schema_version SET version = $1", version)

    async def forget_v2(self) -> None:
        return None


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, unique_prefix: str
) -> AsyncIterator[Backend]:
    kind: str = request.param
    cleanup: Callable[[], Any] | None = None
    if kind == "sqlite":
        path = tmp_path / "runs.db"
        b = Backend(kind, SQLiteRaw(path), lambda **kw: SQLiteStore(path, **kw))
    elif kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        import redis.asyncio as aioredis

        client: Any = aioredis.from_url(url)
        b = Backend(kind, RedisRaw(client, unique_prefix),
                    lambda **kw: RedisStore(url, prefix=unique_prefix, **kw))

        async def drop_keys() -> None:
            keys = [k async for k in client.scan_iter(match=f"{unique_prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()

        cleanup = drop_keys
    else:
        dsn: str = request.getfixturevalue("pg_dsn")
        schema = unique_prefix.replace(":", "_")
        b = Backend(kind, PgRaw(dsn, schema),
                    lambda **kw: PostgresStore(dsn, schema=schema, pool_max=4, **kw))

        async def drop_schema() -> None:
            await PgRaw(dsn, schema)._exec(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

        cleanup = drop_schema
    try:
        yield b
    finally:
        for store in b.opened:
            await store.aclose()
        if cleanup is not None:
            await cleanup()


def run(run_id: str = "r1", **kw: Any) -> RunRecord:
    return RunRecord(run_id, flow="report", flow_hash="fh1", input={"topic": "llm"}, **kw)


def done(step_id: str, result: Any = None, **kw: Any) -> StepRecord:
    return StepRecord(step_id, "succeeded", result, **kw)


# -- runs ---------------------------------------------------------------------------


async def test_create_get_and_list_runs(backend: Backend) -> None:
    clock = VirtualClock()
    store = await backend.store(clock=clock)
    created = await store.create_run(run("a", meta={"owner": "ops"}))
    assert created.created_at == clock.wall() and created.status == "running"
    await clock.advance(10)
    await store.create_run(run("b"))
    await clock.advance(10)
    await store.create_run(run("c"))
    await store.update_run("b", status="succeeded")

    got = await store.get_run("a")
    assert got == created
    assert await store.get_run("missing") is None
    assert [r.run_id for r in await store.list_runs()] == ["c", "b", "a"]
    assert [r.run_id for r in await store.list_runs(limit=2)] == ["c", "b"]
    assert [r.run_id for r in await store.list_runs(status="succeeded")] == ["b"]
    assert [r.run_id for r in await store.list_runs(status="running")] == ["c", "a"]
    assert await store.list_runs(status="cancelled") == []
    with pytest.raises(ConfigError, match="unknown run status"):
        await store.list_runs(status="done")  # type: ignore[arg-type]


async def test_runs_created_together_list_in_one_order(backend: Backend) -> None:
    store = await backend.store()  # the clock stands still: equal creation times
    for run_id in ("b", "c", "a"):
        await store.create_run(run(run_id))
    assert [r.run_id for r in await store.list_runs()] == ["c", "b", "a"]


async def test_create_run_is_idempotent_but_refuses_a_different_run(backend: Backend) -> None:
    store = await backend.store()
    first = await store.create_run(run("a"))
    assert await store.create_run(run("a")) == first
    with pytest.raises(RunExists, match="'a' already exists"):
        await store.create_run(RunRecord("a", flow="other"))
    assert (await store.require_run("a")).flow == "report"


async def test_update_run_status_and_error(backend: Backend) -> None:
    clock = VirtualClock()
    store = await backend.store(clock=clock)
    await store.create_run(run())
    await clock.advance(5)
    await store.update_run("r1", status="failed", error="step 'writer': RateLimited")
    got = await store.require_run("r1")
    assert (got.status, got.error) == ("failed", "step 'writer': RateLimited")
    assert got.updated_at == got.created_at + 5
    await store.update_run("r1", status="running")
    assert (await store.require_run("r1")).error is None
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        await store.update_run("nope", status="failed")
    with pytest.raises(ConfigError, match="unknown run status"):
        await store.update_run("r1", status="paused")  # type: ignore[arg-type]


# -- steps --------------------------------------------------------------------------


async def test_step_lifecycle(backend: Backend) -> None:
    clock = VirtualClock()
    store = await backend.store(clock=clock)
    await store.create_run(run())
    await store.put_step("r1", StepRecord("analyzer", "running", started_at=clock.wall()))
    await store.put_step("r1", StepRecord("map/1", "running"))
    running = await store.get_step("r1", "analyzer")
    assert running is not None and (running.status, running.result) == ("running", None)

    await clock.advance(3)
    stored = await store.complete_step(
        "r1", done("analyzer", {"trends": ["a"]}, started_at=running.started_at, tokens=120,
                   cost_usd=0.002, meta={"model": "m"}),
    )
    assert stored.finished_at == clock.wall()
    await store.put_step("r1", StepRecord("map/1", "failed", attempt=2, error="timeout"))
    await store.complete_step("r1", done("map/2", [1]))

    steps = await store.get_steps("r1")
    assert [s.step_id for s in steps] == ["analyzer", "map/1", "map/2"]  # first-write order
    assert steps[0] == stored
    assert (steps[1].status, steps[1].attempt, steps[1].error) == ("failed", 2, "timeout")
    assert [s.step_id for s in await store.get_steps("r1", prefix="map/")] == ["map/1", "map/2"]
    assert await store.get_step("r1", "nope") is None
    assert await store.get_steps("other-run") == []


async def test_step_writes_are_refused_cleanly(backend: Backend) -> None:
    store = await backend.store()
    await store.create_run(run())
    with pytest.raises(RunNotFound):
        await store.complete_step("ghost", done("a", 1))
    with pytest.raises(ConfigError, match="needs status 'succeeded'"):
        await store.complete_step("r1", StepRecord("a", "failed"))
    with pytest.raises(ConfigError, match="not JSON-serializable"):
        await store.complete_step("r1", done("a", {"when": object()}, tokens=5))
    with pytest.raises(ConfigError, match="not JSON-serializable"):
        await store.complete_step("r1", done("a", float("nan")))
    with pytest.raises(ConfigError, match="unknown step status"):
        await store.put_step("r1", StepRecord("a", "weird"))  # type: ignore[arg-type]
    # Nothing of the refused writes landed.
    assert await store.get_steps("r1") == []
    assert await store.get_steps("ghost") == []
    assert (await store.require_run("r1")).tokens == 0


async def test_run_totals_follow_step_rewrites(backend: Backend) -> None:
    store = await backend.store()
    await store.create_run(run())
    await store.put_step("r1", StepRecord("a", "failed", tokens=100, cost_usd=0.25))
    await store.complete_step("r1", done("a", "ok", tokens=250, cost_usd=0.5, attempt=2))
    await store.complete_step("r1", done("b", "ok", tokens=10, cost_usd=0.125))
    await store.complete_step("r1", done("b", "ok", tokens=10, cost_usd=0.125))  # replayed write
    got = await store.require_run("r1")
    assert (got.tokens, got.cost_usd) == (260, 0.625)


async def test_parallel_completes_keep_totals_exact(backend: Backend) -> None:
    store = await backend.store()
    await store.create_run(run())
    await asyncio.gather(
        *(store.complete_step("r1", done(f"map/{i}", i, tokens=i, cost_usd=0.5))
          for i in range(40))
    )
    steps = await store.get_steps("r1")
    assert sorted(s.result for s in steps) == list(range(40))
    got = await store.require_run("r1")
    assert (got.tokens, got.cost_usd) == (sum(range(40)), 20.0)


async def test_racing_writes_of_one_step_keep_totals_consistent(backend: Backend) -> None:
    store = await backend.store()
    await store.create_run(run())
    await asyncio.gather(
        *(store.put_step("r1", StepRecord("s", "running", tokens=t, cost_usd=t / 4))
          for t in range(1, 21))
    )
    step = await store.get_step("r1", "s")
    got = await store.require_run("r1")
    assert step is not None
    assert (got.tokens, got.cost_usd) == (step.tokens, step.cost_usd)


async def test_a_reader_never_sees_a_half_written_step(backend: Backend) -> None:
    store = await backend.store()
    await store.create_run(run())
    results = {f"s{i}": {"n": i, "text": "x" * 4000} for i in range(30)}
    writing = True

    async def writer() -> None:
        nonlocal writing
        for step_id, result in results.items():
            await store.put_step("r1", StepRecord(step_id, "running"))
            await store.complete_step("r1", done(step_id, result, tokens=1))
        writing = False

    seen_done = 0

    async def reader() -> None:
        nonlocal seen_done
        while writing:
            for step in await store.get_steps("r1"):
                if step.status == "succeeded":
                    assert step.result == results[step.step_id]
                    seen_done += 1
                else:
                    assert (step.status, step.result) == ("running", None)
            await asyncio.sleep(0)

    await asyncio.gather(writer(), reader())
    assert seen_done > 0
    assert (await store.require_run("r1")).tokens == 30


# -- JSON ---------------------------------------------------------------------------


async def test_json_round_trip(backend: Backend) -> None:
    store = await backend.store()
    result: dict[str, Any] = {
        "zeta": 1, "alpha": 2,  # key order is kept
        "unicode": "héllo — 世界 — مرحبا — 🧪🚀 — e\u0301",
        "control": "nul\u0000 tab\t newline\n quote\" backslash\\",
        "surrogate": "\ud800",
        "numbers": [0, -1, 2**63 - 1, 10**30, 0.1, 1e16, 1e-7, -0.0, 3.141592653589793],
        "nested": {"a": [{"b": [[], {}, None, True, False]}]},
        "big": "ü" * 100_000 + "a" * 900_000,  # ~1 MB of text
    }
    await store.create_run(RunRecord("r1", "flow", input=["list", "input", {"k": None}]))
    await store.complete_step("r1", done("big", result))
    step = await store.get_step("r1", "big")
    assert step is not None and step.result == result
    assert list(step.result) == list(result)
    assert [type(x) for x in step.result["numbers"]] == [type(x) for x in result["numbers"]]
    assert (await store.require_run("r1")).input == ["list", "input", {"k": None}]
    assert await store.get_steps("r1") == [step]


# -- checksums ----------------------------------------------------------------------


async def test_corrupt_step_is_reported_with_run_and_step(backend: Backend) -> None:
    store = await backend.store()
    await store.create_run(run())
    await store.complete_step("r1", done("analyzer", {"verdict": "pristine"}, tokens=7))
    await store.complete_step("r1", done("writer", {"text": "fine"}))
    await backend.raw.tamper_step("r1", "analyzer", "pristine", "tampered")

    with pytest.raises(CorruptRecord, match="step 'analyzer' of run 'r1'") as info:
        await store.get_step("r1", "analyzer")
    assert (info.value.run_id, info.value.step_id) == ("r1", "analyzer")
    assert "checksum" in str(info.value)
    with pytest.raises(CorruptRecord, match="step 'analyzer'"):
        await store.get_steps("r1")
    assert (await store.get_step("r1", "writer")) is not None  # others stay readable


async def test_tampered_index_column_is_reported(backend: Backend) -> None:
    store = await backend.store()
    await store.create_run(run())
    await store.put_step("r1", StepRecord("a", "failed", error="boom"))
    await backend.raw.set_step_status_column("r1", "a", "succeeded")
    with pytest.raises(CorruptRecord, match="disagree") as info:
        await store.get_step("r1", "a")
    assert info.value.step_id == "a"


async def test_corrupt_run_and_effect_are_reported(backend: Backend) -> None:
    store = await backend.store()
    await store.create_run(run())
    await store.put_effect(EffectRecord("email:42", "r1", {"sent_to": "ops@example.com"}))
    await backend.raw.tamper_run_head("r1", '"llm"', '"abc"')
    await backend.raw.tamper_effect("email:42", "ops@", "evil@")
    with pytest.raises(CorruptRecord, match="run 'r1'") as run_info:
        await store.get_run("r1")
    assert (run_info.value.run_id, run_info.value.step_id) == ("r1", None)
    with pytest.raises(CorruptRecord, match="effect 'email:42' of run 'r1'") as eff_info:
        await store.get_effect("email:42")
    assert eff_info.value.key == "email:42"


# -- migrations ---------------------------------------------------------------------


async def test_old_schema_is_upgraded_on_open(backend: Backend) -> None:
    clock = VirtualClock()
    old = await backend.store(clock=clock, schema_version=1)
    await old.create_run(run("old"))
    await old.complete_step("old", done("a", {"v": 1}, tokens=3))
    await old.aclose()
    await backend.raw.forget_v2()
    assert await backend.raw.schema_version() == 1

    await clock.advance(40 * DAY)
    store = await backend.store(clock=clock)
    assert await backend.raw.schema_version() == 2
    assert (await store.require_run("old")).tokens == 3
    assert [s.result for s in await store.get_steps("old")] == [{"v": 1}]
    await store.create_run(run("new"))
    await store.put_effect(EffectRecord("k", "new", "v2 feature"))  # added by v2
    assert await store.prune(older_than_s=30 * DAY) == 1  # v2's prune index covers old runs
    assert [r.run_id for r in await store.list_runs()] == ["new"]


async def test_newer_schema_is_refused(backend: Backend) -> None:
    store = await backend.store()
    await store.create_run(run())
    await store.aclose()
    await backend.raw.set_schema_version(99)
    with pytest.raises(StoreError, match="schema version 99, newer than this shoal knows"):
        await backend.store()
    assert await backend.raw.schema_version() == 99  # left untouched


# -- prune, delete, effects ---------------------------------------------------------


async def test_prune_by_age(backend: Backend) -> None:
    clock = VirtualClock()
    store = await backend.store(clock=clock)
    await store.create_run(run("old"))
    await store.complete_step("old", done("a", 1))
    await store.put_effect(EffectRecord("old-effect", "old", 1))
    await store.create_run(run("touched"))
    await clock.advance(20 * DAY)
    await store.complete_step("touched", done("a", 1))  # activity keeps a run young
    await clock.advance(15 * DAY)
    await store.create_run(run("new"))

    assert await store.prune(older_than_s=30 * DAY) == 1
    assert await store.get_run("old") is None
    assert await store.get_steps("old") == []
    assert await store.get_effect("old-effect") is None
    assert sorted(r.run_id for r in await store.list_runs()) == ["new", "touched"]
    assert await store.prune(older_than_s=30 * DAY) == 0
    assert await store.prune(older_than_s=0) == 1  # "touched"; "new" is exactly 0 s old
    await clock.advance(1)
    assert await store.prune(older_than_s=0) == 1
    assert await store.list_runs() == []
    with pytest.raises(ConfigError):
        await store.prune(older_than_s=-1)


async def test_prune_removes_more_runs_than_one_batch(backend: Backend) -> None:
    clock = VirtualClock()
    store = await backend.store(clock=clock)
    await asyncio.gather(*(store.create_run(run(f"r{i}")) for i in range(520)))
    await clock.advance(2 * DAY)
    await store.create_run(run("keep"))
    assert await store.prune(older_than_s=DAY) == 520
    assert [r.run_id for r in await store.list_runs(limit=1000)] == ["keep"]


async def test_delete_run_takes_steps_and_effects(backend: Backend) -> None:
    store = await backend.store()
    await store.create_run(run("a"))
    await store.create_run(run("b"))
    await store.complete_step("a", done("s", 1))
    await store.put_effect(EffectRecord("ka", "a", 1))
    await store.put_effect(EffectRecord("kb", "b", 2))
    assert await store.delete_run("a") is True
    assert await store.delete_run("a") is False
    assert await store.get_run("a") is None and await store.get_steps("a") == []
    assert await store.get_effect("ka") is None
    assert (await store.get_effect("kb")) is not None
    assert [r.run_id for r in await store.list_runs()] == ["b"]


async def test_effects_are_recorded_once(backend: Backend) -> None:
    store = await backend.store()
    await store.create_run(run())
    assert await store.get_effect("charge:inv-7") is None
    winners = await asyncio.gather(
        *(store.put_effect(EffectRecord("charge:inv-7", "r1", {"attempt": i}, step_id="pay"))
          for i in range(8))
    )
    assert len({w.result["attempt"] for w in winners}) == 1
    stored = await store.get_effect("charge:inv-7")
    assert stored == winners[0] and stored.step_id == "pay"
    again = await store.put_effect(EffectRecord("charge:inv-7", "r1", {"attempt": 99}))
    assert again == stored
    with pytest.raises(RunNotFound):
        await store.put_effect(EffectRecord("other", "ghost", 1))
    assert await store.get_effect("other") is None


async def test_a_closed_store_refuses_use(backend: Backend) -> None:
    store = await backend.store()
    await store.aclose()
    with pytest.raises(ConfigError, match="not open"):
        await store.get_run("r1")
    async with store:
        assert await store.get_run("r1") is None
