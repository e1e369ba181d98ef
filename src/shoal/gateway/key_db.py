"""The SQL under :class:`~shoal.gateway.key_store.KeyStore`: the tables and the two
backends, each running one statement per operation (atomic on its own).

* SQLite: one connection on one worker thread, like
  :class:`~shoal.stores.sqlite.SQLiteStore` (WAL, ``synchronous=FULL`` by default);
* PostgreSQL: an asyncpg pool; the tables live in the run store's schema, created under
  an advisory lock so replicas starting together do not race.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.errors import ConfigError
from shoal.secrets import mask_url
from shoal.stores.records import StoreError

if TYPE_CHECKING:
    import asyncpg

__all__ = ["Backend", "PostgresBackend", "SQLiteBackend"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _ddl(t: str, real: str) -> tuple[str, ...]:
    """The tables (created if absent: version 1; a later change adds a migration)."""
    return (
        f"""CREATE TABLE IF NOT EXISTS {t}gateway_keys (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, prefix TEXT NOT NULL,
            secret_hash TEXT NOT NULL UNIQUE, models TEXT NOT NULL, budget_usd {real},
            period TEXT NOT NULL, rpm BIGINT, tpm BIGINT, max_concurrency BIGINT,
            created_at {real} NOT NULL, revoked_at {real}, rotated_at {real})""",
        # one active key per name; revoked ones keep theirs for the record
        f"""CREATE UNIQUE INDEX IF NOT EXISTS gateway_keys_active_name
            ON {t}gateway_keys (name) WHERE revoked_at IS NULL""",
        f"""CREATE TABLE IF NOT EXISTS {t}gateway_key_spend (
            key_id TEXT NOT NULL, period TEXT NOT NULL, usd {real} NOT NULL,
            input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL,
            cached_tokens BIGINT NOT NULL, requests BIGINT NOT NULL,
            PRIMARY KEY (key_id, period))""",
    )


class Backend(ABC):
    """One database: ``execute`` and ``fetch`` run one statement each."""

    url: str
    t: str  # the table prefix: "" or '"schema".'

    @abstractmethod
    async def open(self) -> None: ...
    @abstractmethod
    async def close(self) -> None: ...
    @abstractmethod
    async def execute(self, sql: str, args: Sequence[object]) -> int:
        """Run one statement; the number of rows it changed."""

    @abstractmethod
    async def fetch(self, sql: str, args: Sequence[object]) -> list[Sequence[Any]]:
        """Run one query; its rows."""

    @abstractmethod
    async def execute_all(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        """Run the statements in one transaction: all or none."""


class SQLiteBackend(Backend):
    """One connection on one worker thread, like :class:`~shoal.stores.sqlite.SQLiteStore`;
    every operation is one statement (atomic on its own)."""

    def __init__(self, path: str, synchronous: str, busy_timeout_ms: int) -> None:
        self.path, self.t = path, ""
        self.url = f"sqlite:///{path}"
        self._sync, self._busy = synchronous, busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def _call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        conn, pool = self._conn, self._pool
        if conn is None or pool is None:
            raise StoreError(f"the key store {self.url} is closed")
        return await asyncio.get_running_loop().run_in_executor(pool, fn, conn)

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shoal-keys")
        self._conn = await asyncio.get_running_loop().run_in_executor(self._pool, self._connect)

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy / 1e3,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy)}")
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._sync.upper()}")
        for statement in _ddl("", "REAL"):
            conn.execute(statement)
        return conn

    async def close(self) -> None:
        conn, pool = self._conn, self._pool
        self._conn = self._pool = None
        if conn is not None and pool is not None:
            await asyncio.get_running_loop().run_in_executor(pool, conn.close)
        if pool is not None:
            pool.shutdown(wait=True)

    async def execute(self, sql: str, args: Sequence[object]) -> int:
        return int(await self._call(lambda c: c.execute(sql, tuple(args)).rowcount))

    async def fetch(self, sql: str, args: Sequence[object]) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = await self._call(
            lambda c: c.execute(sql, tuple(args)).fetchall())
        return rows

    async def execute_all(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    conn.execute(sql, tuple(args))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._call(tx)


class PostgresBackend(Backend):
    """An asyncpg pool; the tables live in the run store's schema."""

    def __init__(self, dsn: str, schema: str, pool_max: int) -> None:
        if not _IDENT.match(schema):
            raise ConfigError(f"PostgreSQL schema name {schema!r} must be letters, digits and _")
        self._dsn, self.schema, self._max = dsn, schema, pool_max
        self.t = f'"{schema}".'
        # For display: every credential masked, the user part's password and a
        # password=... parameter alike (mask_url).
        self.url = f"{mask_url(dsn)} (schema {schema!r})"
        self._pool: asyncpg.Pool | None = None
        self._sql: dict[str, str] = {}

    def _q(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            n = iter(range(1, 1000))
            out = self._sql[sql] = re.sub(r"\?", lambda _: f"${next(n)}", sql)
        return out

    async def open(self) -> None:
        if self._pool is not None:
            return
        import asyncpg

        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._max,
                                               timeout=5, command_timeout=30)
        s = f'"{self.schema}"'
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"shoal-keys:{s}")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            for statement in _ddl(self.t, "double precision"):
                await conn.execute(statement)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"the key store {self.url} is closed")
        return self._pool

    async def execute(self, sql: str, args: Sequence[object]) -> int:
        status = await self._p().execute(self._q(sql), *args)
        return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0

    async def fetch(self, sql: str, args: Sequence[object]) -> list[Sequence[Any]]:
        return list(await self._p().fetch(self._q(sql), *args))

    async def execute_all(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        async with self._p().acquire() as conn, conn.transaction():
            for sql, args in statements:
                await conn.execute(self._q(sql), *args)
