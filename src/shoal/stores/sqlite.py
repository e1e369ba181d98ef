"""SQLite store: the zero-config default, one file (``.shoal/runs.db``).

One connection lives on one dedicated worker thread; each store operation is
one hop to that thread running a whole transaction (measured 3× faster than
aiosqlite's hop per statement, and no dependency: see docs/stores.md). WAL mode
lets other processes read while we write. ``synchronous=FULL`` by default: a
committed step survives power loss, for ~0.25 ms of fsync per write here —
nothing next to the model call that produced the step.

A write checks that the file is still the one the store opened: SQLite keeps writing to
a file that was removed or replaced while it is open (its directory deleted, a backup
restored over it), so without the check a run would go on "journaling" into a file that
is gone. Such a write is refused (rolled back) with a :class:`~shoal.errors.StoreError`.
"""

# SQL text is built only from module constants and a validated, quoted schema name;
# every value is a bind parameter.
# ruff: noqa: S608
from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

from shoal.clock import Clock
from shoal.errors import ConfigError
from shoal.stores.base import RetryPolicy, Store
from shoal.stores.codec import EffectRow, RunRow, StepRow
from shoal.stores.leases import LeaseMode, allows
from shoal.stores.records import StoreError

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")

DEFAULT_PATH = ".shoal/runs.db"

# Each entry upgrades the schema from version i to i+1; never edit a shipped one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: runs and steps
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY, flow TEXT NOT NULL, status TEXT NOT NULL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL,
            tokens INTEGER NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0,
            head TEXT NOT NULL, head_sum TEXT NOT NULL,
            state TEXT NOT NULL, state_sum TEXT NOT NULL)""",
        "CREATE INDEX runs_status_created ON runs (status, created_at)",
        "CREATE INDEX runs_created ON runs (created_at)",
        """CREATE TABLE steps (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            step_id TEXT NOT NULL, status TEXT NOT NULL,
            tokens INTEGER NOT NULL, cost_usd REAL NOT NULL,
            payload TEXT NOT NULL, checksum TEXT NOT NULL,
            PRIMARY KEY (run_id, step_id))""",
    ),
    (  # 2: effects (idempotent side effects) and the prune index
        """CREATE TABLE effects (
            key TEXT PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            created_at REAL NOT NULL, payload TEXT NOT NULL, checksum TEXT NOT NULL)""",
        "CREATE INDEX effects_run ON effects (run_id)",
        "CREATE INDEX runs_updated ON runs (updated_at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
# The run lease (shoal.stores.leases): two nullable columns, added on open to a store of
# any version. Not a numbered migration: a shoal that predates leases keeps opening the
# store (it reads and writes runs by explicit columns) instead of refusing a newer schema.
LEASE_COLUMNS = ("ALTER TABLE runs ADD COLUMN lease_owner TEXT",
                 "ALTER TABLE runs ADD COLUMN lease_until REAL")
# A write naming its executor (?1) lands only if no other executor holds the run.
_FENCE = "(?1 IS NULL OR lease_owner IS NULL OR lease_owner = ?1)"

_RUN_COLS = (
    "run_id, flow, status, created_at, updated_at, tokens, cost_usd, head, head_sum, state, "
    "state_sum"
)
_STEP_COLS = "step_id, status, tokens, cost_usd, payload, checksum"
_PRUNE_BATCH = 500
_TRANSIENT = ("locked", "busy", "disk i/o", "unable to open", "disk is full")


class DatabaseFileGone(Exception):
    """The store's file was removed or replaced since the store opened it."""


class SQLiteStore(Store):
    """Runs in one SQLite file. ``path=":memory:"`` gives a private in-memory store (tests)."""

    kind = "sqlite"

    def __init__(
        self, path: str | Path = DEFAULT_PATH, *,
        synchronous: Literal["full", "normal"] = "full", busy_timeout_ms: int = 5000,
        schema_version: int | None = None, clock: Clock | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(clock=clock, retry=retry)
        if synchronous not in ("full", "normal"):
            raise ConfigError(f"sqlite synchronous must be 'full' or 'normal', not {synchronous!r}")
        self.path = str(path)
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._target = _check_target(schema_version)
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._file: tuple[str, int, int] | None = None  # (absolute path, device, inode)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    # -- plumbing ---------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            raise StoreError(f"the store {self.url} is closed")
        return await asyncio.get_running_loop().run_in_executor(executor, fn, conn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside BEGIN IMMEDIATE … COMMIT (rolled back on any error)."""

        def tx(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
                self._same_file()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return out

        return await self._run(tx)

    def _same_file(self) -> None:
        """Raise :class:`DatabaseFileGone` when the file at the store's path is not the
        one its connection has open (removed, moved, or replaced)."""
        if self._file is None:
            return
        path, device, inode = self._file
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (device, inode):
            raise DatabaseFileGone(
                f"the database file {path} was {'removed' if now is None else 'replaced'} "
                "while the store had it open; this write was NOT saved (SQLite would have "
                "written it to the old file), nor will any after it. Restore the file, or "
                "point --store at the store's new place")

    def _is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and any(
            word in str(exc).lower() for word in _TRANSIENT
        )

    async def _raw_open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="shoal-sqlite")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1e3)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
            if self.path != ":memory:":
                found = os.stat(self.path)
                self._file = (os.path.abspath(self.path), found.st_dev, found.st_ino)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            current = 0 if row is None else int(row[0])
            self._refuse_newer(current)
            for version in range(current, self._target):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (max(current, self._target),))
            elif self._target > current:
                conn.execute("UPDATE schema_version SET version = ?", (self._target,))
            columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
            if "lease_owner" not in columns:
                for statement in LEASE_COLUMNS:
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _refuse_newer(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.url} has schema version {current}, newer than this shoal knows "
                f"({SCHEMA_VERSION}): it was written by a newer shoal. Upgrade shoal, or "
                "point it at another store."
            )

    async def _raw_close(self) -> None:
        conn, executor = self._conn, self._executor
        self._conn = self._executor = None
        if conn is not None and executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        if executor is not None:
            executor.shutdown(wait=True)

    # -- runs -------------------------------------------------------------------

    async def _raw_create_run(self, row: RunRow) -> RunRow | None:
        def op(conn: sqlite3.Connection) -> RunRow | None:
            cur = conn.execute(
                f"INSERT INTO runs ({_RUN_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (run_id) DO NOTHING",
                (row.run_id, row.flow, row.status, row.created_at, row.updated_at, row.tokens,
                 row.cost_usd, row.head, row.head_sum, row.state, row.state_sum),
            )
            return None if cur.rowcount == 1 else _get_run(conn, row.run_id)

        return await self._write(op)

    async def _raw_get_run(self, run_id: str) -> RunRow | None:
        return await self._run(lambda conn: _get_run(conn, run_id))

    async def _raw_set_state(
        self, run_id: str, status: str, state: str, state_sum: str, now: float, *,
        owner: str | None,
    ) -> bool | None:
        def op(conn: sqlite3.Connection) -> bool | None:
            cur = conn.execute(
                "UPDATE runs SET status = ?2, state = ?3, state_sum = ?4, updated_at = ?5 "
                f"WHERE run_id = ?6 AND {_FENCE}", (owner, status, state, state_sum, now, run_id),
            )
            return True if cur.rowcount == 1 else _fenced_or_missing(conn, run_id)

        return await self._write(op)

    async def _raw_list_runs(self, limit: int, status: str | None) -> list[RunRow]:
        def op(conn: sqlite3.Connection) -> list[RunRow]:
            if status is None:
                rows = conn.execute(
                    f"SELECT {_RUN_COLS} FROM runs "
                    "ORDER BY created_at DESC, run_id DESC LIMIT ?", (limit,),
                )
            else:
                rows = conn.execute(
                    f"SELECT {_RUN_COLS} FROM runs WHERE status = ? "
                    "ORDER BY created_at DESC, run_id DESC LIMIT ?", (status, limit),
                )
            return [RunRow(*r) for r in rows]

        return await self._run(op)

    async def _raw_delete_run(self, run_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount == 1

        return await self._write(op)

    async def _raw_prune(self, cutoff: float, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM runs WHERE run_id IN (SELECT run_id FROM runs "
                "WHERE updated_at < ? AND (lease_until IS NULL OR lease_until <= ?) "
                f"LIMIT {_PRUNE_BATCH})", (cutoff, now),
            ).rowcount

        deleted = 0
        while True:  # in batches, so other writers are not locked out for long
            count = await self._write(op)
            deleted += count
            if count < _PRUNE_BATCH:
                return deleted

    # -- steps ------------------------------------------------------------------

    async def _raw_put_step(self, run_id: str, row: StepRow, now: float,
                            owner: str | None) -> bool | None:
        def op(conn: sqlite3.Connection) -> bool | None:
            old = conn.execute(
                "SELECT tokens, cost_usd FROM steps WHERE run_id = ? AND step_id = ?",
                (run_id, row.step_id),
            ).fetchone()
            old_tokens, old_cost = old if old is not None else (0, 0.0)
            cur = conn.execute(
                "UPDATE runs SET tokens = tokens + ?2, cost_usd = cost_usd + ?3, "
                f"updated_at = ?4 WHERE run_id = ?5 AND {_FENCE}",
                (owner, row.tokens - old_tokens, row.cost_usd - old_cost, now, run_id),
            )
            if cur.rowcount != 1:
                return _fenced_or_missing(conn, run_id)
            conn.execute(
                f"INSERT INTO steps (run_id, {_STEP_COLS}) VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, "
                "tokens = excluded.tokens, cost_usd = excluded.cost_usd, "
                "payload = excluded.payload, checksum = excluded.checksum",
                (run_id, row.step_id, row.status, row.tokens, row.cost_usd, row.payload,
                 row.checksum),
            )
            return True

        return await self._write(op)

    async def _raw_get_step(self, run_id: str, step_id: str) -> StepRow | None:
        def op(conn: sqlite3.Connection) -> StepRow | None:
            r = conn.execute(
                f"SELECT {_STEP_COLS} FROM steps WHERE run_id = ? AND step_id = ?",
                (run_id, step_id),
            ).fetchone()
            return None if r is None else StepRow(*r)

        return await self._run(op)

    async def _raw_get_steps(self, run_id: str, prefix: str) -> list[StepRow]:
        def op(conn: sqlite3.Connection) -> list[StepRow]:
            rows = conn.execute(
                f"SELECT {_STEP_COLS} FROM steps WHERE run_id = ? "
                "AND substr(step_id, 1, ?) = ? ORDER BY rowid",
                (run_id, len(prefix), prefix),
            )
            return [StepRow(*r) for r in rows]

        return await self._run(op)

    # -- leases -----------------------------------------------------------------

    async def _raw_lease(
        self, run_id: str, mode: LeaseMode, owner: str, *, until: float, now: float,
        replacing: str | None,
    ) -> tuple[str | None, float | None] | None:
        def op(conn: sqlite3.Connection) -> tuple[str | None, float | None] | None:
            row = conn.execute("SELECT lease_owner, lease_until FROM runs WHERE run_id = ?",
                               (run_id,)).fetchone()
            if row is None:
                return None
            if not allows(mode, row[0], row[1], owner=owner, now=now, replacing=replacing):
                return row[0], row[1]
            new = (None, None) if mode == "release" else (owner, until)
            conn.execute("UPDATE runs SET lease_owner = ?, lease_until = ? WHERE run_id = ?",
                         (*new, run_id))
            return new

        # Inside BEGIN IMMEDIATE: the read and the write are one compare-and-set.
        return await (self._run(op) if mode == "read" else self._write(op))

    # -- effects ----------------------------------------------------------------

    async def _raw_get_effect(self, key: str) -> EffectRow | None:
        return await self._run(lambda conn: _get_effect(conn, key))

    async def _raw_put_effect(self, row: EffectRow) -> EffectRow | bool | None:
        def op(conn: sqlite3.Connection) -> EffectRow | bool | None:
            existing = _get_effect(conn, row.key)
            if existing is not None:
                return existing
            run = conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (row.run_id,)).fetchone()
            if run is None:
                return False
            conn.execute(
                "INSERT INTO effects (key, run_id, created_at, payload, checksum) "
                "VALUES (?,?,?,?,?)",
                (row.key, row.run_id, row.created_at, row.payload, row.checksum),
            )
            return None

        return await self._write(op)


def _get_run(conn: sqlite3.Connection, run_id: str) -> RunRow | None:
    r = conn.execute(f"SELECT {_RUN_COLS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if r is None else RunRow(*r)


def _fenced_or_missing(conn: sqlite3.Connection, run_id: str) -> bool | None:
    """After a fenced UPDATE changed no row: None if the run exists (another executor
    holds its lease), False if it does not."""
    found = conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if found is not None else False


def _get_effect(conn: sqlite3.Connection, key: str) -> EffectRow | None:
    r = conn.execute(
        "SELECT key, run_id, created_at, payload, checksum FROM effects WHERE key = ?", (key,)
    ).fetchone()
    return None if r is None else EffectRow(*r)


def _check_target(schema_version: int | None) -> int:
    if schema_version is None:
        return SCHEMA_VERSION
    if not 1 <= schema_version <= SCHEMA_VERSION:
        raise ConfigError(f"schema_version must be in 1..{SCHEMA_VERSION}, got {schema_version}")
    return schema_version
