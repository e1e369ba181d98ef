"""PostgreSQL store: durable, queryable history (asyncpg, a connection pool).

Tables live in their own schema (``shoal`` by default; one per tenant or test).
A step write is one call of the ``put_step`` SQL function, so it is one round
trip and one transaction: the run row is locked, the step upserted and the
run's totals moved by the step's delta together.

Records are kept as their exact JSON text (the checksum covers those bytes; JSONB
would renormalise numbers and reject ``\\u0000``). Query them as JSON through the
``runs_doc`` and ``steps_doc`` views, e.g.
``SELECT doc->'result' FROM shoal.steps_doc WHERE run_id = 'rep-001'``.
"""

# SQL text is built only from module constants and a validated, quoted schema name;
# every value is a bind parameter.
# ruff: noqa: S608
from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from shoal.clock import Clock
from shoal.errors import ConfigError
from shoal.secrets import redact
from shoal.stores.base import RetryPolicy, Store
from shoal.stores.codec import EffectRow, RunRow, StepRow
from shoal.stores.leases import LeaseMode
from shoal.stores.records import StoreError

if TYPE_CHECKING:
    import asyncpg

__all__ = ["SCHEMA_VERSION", "PostgresStore", "migrations"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_RUN_COLS = (
    "run_id, flow, status, created_at, updated_at, tokens, cost_usd, head, head_sum, state, "
    "state_sum"
)
_STEP_COLS = "step_id, status, tokens, cost_usd, payload, checksum"
_EFFECT_COLS = "key, run_id, created_at, payload, checksum"
_PRUNE_BATCH = 500


def migrations(s: str) -> tuple[tuple[str, ...], ...]:
    """DDL per schema version for schema ``s`` (already quoted); never edit a shipped one."""
    return (
        (  # 1: runs, steps and the atomic step write
            f"""CREATE TABLE {s}.runs (
                run_id text PRIMARY KEY, flow text NOT NULL, status text NOT NULL,
                created_at double precision NOT NULL, updated_at double precision NOT NULL,
                tokens bigint NOT NULL DEFAULT 0, cost_usd double precision NOT NULL DEFAULT 0,
                head text NOT NULL, head_sum text NOT NULL,
                state text NOT NULL, state_sum text NOT NULL)""",
            f"CREATE INDEX runs_status_created ON {s}.runs (status, created_at)",
            f"CREATE INDEX runs_created ON {s}.runs (created_at)",
            f"""CREATE TABLE {s}.steps (
                run_id text NOT NULL REFERENCES {s}.runs (run_id) ON DELETE CASCADE,
                step_id text NOT NULL, seq bigserial, status text NOT NULL,
                tokens bigint NOT NULL, cost_usd double precision NOT NULL,
                payload text NOT NULL, checksum text NOT NULL,
                PRIMARY KEY (run_id, step_id))""",
            f"""CREATE FUNCTION {s}.put_step(
                p_run text, p_step text, p_status text, p_tokens bigint,
                p_cost double precision, p_payload text, p_checksum text,
                p_now double precision) RETURNS boolean LANGUAGE plpgsql AS $$
            DECLARE
                old_tokens bigint;
                old_cost double precision;
            BEGIN
                PERFORM 1 FROM {s}.runs WHERE run_id = p_run FOR UPDATE;
                IF NOT FOUND THEN RETURN false; END IF;
                SELECT tokens, cost_usd INTO old_tokens, old_cost FROM {s}.steps
                    WHERE run_id = p_run AND step_id = p_step;
                INSERT INTO {s}.steps AS st
                    (run_id, step_id, status, tokens, cost_usd, payload, checksum)
                    VALUES (p_run, p_step, p_status, p_tokens, p_cost, p_payload, p_checksum)
                    ON CONFLICT (run_id, step_id) DO UPDATE SET status = EXCLUDED.status,
                        tokens = EXCLUDED.tokens, cost_usd = EXCLUDED.cost_usd,
                        payload = EXCLUDED.payload, checksum = EXCLUDED.checksum;
                UPDATE {s}.runs SET tokens = tokens + p_tokens - coalesce(old_tokens, 0),
                    cost_usd = cost_usd + p_cost - coalesce(old_cost, 0), updated_at = p_now
                    WHERE run_id = p_run;
                RETURN true;
            END $$""",
        ),
        (  # 2: effects, the prune index, and JSON views for ad-hoc queries
            f"""CREATE TABLE {s}.effects (
                key text PRIMARY KEY,
                run_id text NOT NULL REFERENCES {s}.runs (run_id) ON DELETE CASCADE,
                created_at double precision NOT NULL, payload text NOT NULL,
                checksum text NOT NULL)""",
            f"CREATE INDEX effects_run ON {s}.effects (run_id)",
            f"CREATE INDEX runs_updated ON {s}.runs (updated_at)",
            f"""CREATE FUNCTION {s}.try_jsonb(t text) RETURNS jsonb
                LANGUAGE plpgsql IMMUTABLE AS $$
            BEGIN RETURN t::jsonb; EXCEPTION WHEN others THEN RETURN NULL; END $$""",
            f"""CREATE VIEW {s}.runs_doc AS SELECT run_id, flow, status, created_at,
                updated_at, tokens, cost_usd, {s}.try_jsonb(head) AS head,
                {s}.try_jsonb(state) AS state FROM {s}.runs""",
            f"""CREATE VIEW {s}.steps_doc AS SELECT run_id, step_id, seq, status, tokens,
                cost_usd, {s}.try_jsonb(payload) AS doc FROM {s}.steps""",
        ),
    )


SCHEMA_VERSION = len(migrations('"x"'))


def lease_ddl(s: str) -> tuple[str, ...]:
    """The run lease (shoal.stores.leases) for schema ``s``: two nullable columns and the
    fenced step write, added on open to a schema of any version when missing. Not a
    numbered migration: a shoal that predates leases keeps opening the schema (it names
    its columns and calls ``put_step``, both unchanged) instead of refusing it as newer."""
    return (
        f"""ALTER TABLE {s}.runs ADD COLUMN IF NOT EXISTS lease_owner text,
            ADD COLUMN IF NOT EXISTS lease_until double precision""",
        f"""CREATE OR REPLACE FUNCTION {s}.put_step_leased(
            p_run text, p_step text, p_status text, p_tokens bigint,
            p_cost double precision, p_payload text, p_checksum text,
            p_now double precision, p_owner text) RETURNS integer LANGUAGE plpgsql AS $$
        DECLARE
            holder text;
            old_tokens bigint;
            old_cost double precision;
        BEGIN
            SELECT lease_owner INTO holder FROM {s}.runs WHERE run_id = p_run FOR UPDATE;
            IF NOT FOUND THEN RETURN 0; END IF;
            IF p_owner IS NOT NULL AND holder IS NOT NULL AND holder <> p_owner THEN
                RETURN -1;
            END IF;
            SELECT tokens, cost_usd INTO old_tokens, old_cost FROM {s}.steps
                WHERE run_id = p_run AND step_id = p_step;
            INSERT INTO {s}.steps AS st
                (run_id, step_id, status, tokens, cost_usd, payload, checksum)
                VALUES (p_run, p_step, p_status, p_tokens, p_cost, p_payload, p_checksum)
                ON CONFLICT (run_id, step_id) DO UPDATE SET status = EXCLUDED.status,
                    tokens = EXCLUDED.tokens, cost_usd = EXCLUDED.cost_usd,
                    payload = EXCLUDED.payload, checksum = EXCLUDED.checksum;
            UPDATE {s}.runs SET tokens = tokens + p_tokens - coalesce(old_tokens, 0),
                cost_usd = cost_usd + p_cost - coalesce(old_cost, 0), updated_at = p_now
                WHERE run_id = p_run;
            RETURN 1;
        END $$""",
    )


# How each lease mode sets the lease ($1 run, $2 owner, $3 until, $4 now, $5 replacing)
# and how many of those parameters it takes. One UPDATE computes the new values from
# the row it has locked (re-read if a concurrent writer changed it): a compare-and-set.
_TAKE = ("(lease_owner IS NULL OR lease_owner = $2 OR lease_until IS NULL "
         "OR lease_until <= $4 OR lease_owner = $5)")
_LEASE_SET: dict[str, tuple[str, int]] = {
    "take": (f"lease_owner = CASE WHEN {_TAKE} THEN $2 ELSE lease_owner END, "
             f"lease_until = CASE WHEN {_TAKE} THEN $3 ELSE lease_until END", 5),
    "force": ("lease_owner = $2, lease_until = $3", 3),
    "renew": ("lease_until = CASE WHEN lease_owner = $2 THEN $3 ELSE lease_until END", 3),
    "release": ("lease_until = CASE WHEN lease_owner = $2 THEN NULL ELSE lease_until END, "
                "lease_owner = CASE WHEN lease_owner = $2 THEN NULL ELSE lease_owner END", 2),
}


class PostgresStore(Store):
    """Runs in PostgreSQL tables inside ``schema``, through an asyncpg pool."""

    kind = "postgresql"

    def __init__(
        self, dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres", *,
        schema: str = "shoal", pool_max: int = 10, schema_version: int | None = None,
        clock: Clock | None = None, retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(clock=clock, retry=retry)
        if not _IDENT.match(schema):
            raise ConfigError(
                f"PostgreSQL schema name {schema!r} must be letters, digits and _ "
                "(starting with a letter or _), at most 63 characters"
            )
        if pool_max < 1:
            raise ConfigError(f"pool_max must be >= 1, got {pool_max}")
        if schema_version is not None and not 1 <= schema_version <= SCHEMA_VERSION:
            raise ConfigError(f"schema_version must be in 1..{SCHEMA_VERSION}")
        self._dsn = dsn
        self.schema = schema
        self._s = f'"{schema}"'
        self.pool_max = pool_max
        self._target = schema_version or SCHEMA_VERSION
        self._pool: asyncpg.Pool | None = None

    @property
    def url(self) -> str:
        parts = urlsplit(self._dsn)
        if parts.password:
            parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
        return f"{urlunsplit(parts)} (schema {self.schema!r})"

    @property
    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"the store {self.url} is closed")
        return self._pool

    def _is_transient(self, exc: BaseException) -> bool:
        import asyncpg.exceptions as px

        if isinstance(exc, px.InterfaceError):  # most are misuse; a closed connection is not
            return "closed" in str(exc)
        return isinstance(
            exc, OSError | asyncio.TimeoutError | px.PostgresConnectionError
            | px.OperatorInterventionError | px.TransactionRollbackError
            | px.TooManyConnectionsError,
        )

    # -- lifecycle --------------------------------------------------------------

    async def _raw_open(self) -> None:
        if self._pool is None:
            import asyncpg

            _one_line_pool_warnings()
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self.pool_max, timeout=5, command_timeout=30,
            )
        await self._migrate()

    async def _migrate(self) -> None:
        s = self._s
        async with self._p.acquire() as conn, conn.transaction():
            # One migrator per schema at a time, across processes.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"shoal:{s}")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.schema_version (version int NOT NULL)"
            )
            current = await conn.fetchval(f"SELECT version FROM {s}.schema_version")
            if current is not None and current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.url} has schema version {current}, newer than this shoal knows "
                    f"({SCHEMA_VERSION}): it was written by a newer shoal. Upgrade shoal, or "
                    "use another schema."
                )
            start = current or 0
            for version in range(start, self._target):
                for statement in migrations(s)[version]:
                    await conn.execute(statement)
            if current is None:
                await conn.execute(
                    f"INSERT INTO {s}.schema_version VALUES ($1)", max(start, self._target)
                )
            elif self._target > current:
                await conn.execute(f"UPDATE {s}.schema_version SET version = $1", self._target)
            # Checked first: ALTER TABLE would lock the runs table on every open.
            if await conn.fetchval("SELECT to_regprocedure($1) IS NULL",
                                   f"{s}.put_step_leased(text, text, text, bigint, double "
                                   "precision, text, text, double precision, text)"):
                for statement in lease_ddl(s):
                    await conn.execute(statement)

    async def _raw_close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -- runs -------------------------------------------------------------------

    async def _raw_create_run(self, row: RunRow) -> RunRow | None:
        inserted = await self._p.fetchval(
            f"INSERT INTO {self._s}.runs ({_RUN_COLS}) "
            "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) "
            "ON CONFLICT (run_id) DO NOTHING RETURNING true",
            row.run_id, row.flow, row.status, row.created_at, row.updated_at, row.tokens,
            row.cost_usd, row.head, row.head_sum, row.state, row.state_sum,
        )
        return None if inserted else await self._raw_get_run(row.run_id)

    async def _raw_get_run(self, run_id: str) -> RunRow | None:
        r = await self._p.fetchrow(
            f"SELECT {_RUN_COLS} FROM {self._s}.runs WHERE run_id = $1", run_id
        )
        return None if r is None else RunRow(*r)

    async def _raw_set_state(
        self, run_id: str, status: str, state: str, state_sum: str, now: float, *,
        owner: str | None,
    ) -> bool | None:
        found = await self._p.fetchval(
            f"UPDATE {self._s}.runs SET status = $2, state = $3, state_sum = $4, "
            "updated_at = $5 WHERE run_id = $1 AND ($6::text IS NULL OR lease_owner IS NULL "
            "OR lease_owner = $6) RETURNING true",
            run_id, status, state, state_sum, now, owner,
        )
        if found:
            return True
        exists = await self._p.fetchval(
            f"SELECT true FROM {self._s}.runs WHERE run_id = $1", run_id)
        return None if exists else False

    async def _raw_list_runs(self, limit: int, status: str | None) -> list[RunRow]:
        where = "" if status is None else "WHERE status = $2 "
        args: list[Any] = [limit] if status is None else [limit, status]
        rows = await self._p.fetch(
            f"SELECT {_RUN_COLS} FROM {self._s}.runs {where}"
            "ORDER BY created_at DESC, run_id DESC LIMIT $1", *args,
        )
        return [RunRow(*r) for r in rows]

    async def _raw_delete_run(self, run_id: str) -> bool:
        done = await self._p.fetchval(
            f"DELETE FROM {self._s}.runs WHERE run_id = $1 RETURNING true", run_id
        )
        return bool(done)

    async def _raw_prune(self, cutoff: float, now: float) -> int:
        deleted = 0
        while True:  # in batches, so no transaction holds the table for long
            status = await self._p.execute(
                f"DELETE FROM {self._s}.runs WHERE run_id IN (SELECT run_id FROM "
                f"{self._s}.runs WHERE updated_at < $1 AND (lease_until IS NULL OR "
                f"lease_until <= $2) LIMIT {_PRUNE_BATCH})", cutoff, now,
            )
            count = int(status.split()[-1])
            deleted += count
            if count < _PRUNE_BATCH:
                return deleted

    # -- steps ------------------------------------------------------------------

    async def _raw_put_step(self, run_id: str, row: StepRow, now: float,
                            owner: str | None) -> bool | None:
        found = await self._p.fetchval(
            f"SELECT {self._s}.put_step_leased($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            run_id, row.step_id, row.status, row.tokens, row.cost_usd, row.payload,
            row.checksum, now, owner,
        )
        return None if found == -1 else found == 1

    async def _raw_get_step(self, run_id: str, step_id: str) -> StepRow | None:
        r = await self._p.fetchrow(
            f"SELECT {_STEP_COLS} FROM {self._s}.steps WHERE run_id = $1 AND step_id = $2",
            run_id, step_id,
        )
        return None if r is None else StepRow(*r)

    async def _raw_get_steps(self, run_id: str, prefix: str) -> list[StepRow]:
        rows = await self._p.fetch(
            f"SELECT {_STEP_COLS} FROM {self._s}.steps WHERE run_id = $1 "
            "AND starts_with(step_id, $2) ORDER BY seq", run_id, prefix,
        )
        return [StepRow(*r) for r in rows]

    # -- leases -----------------------------------------------------------------

    async def _raw_lease(
        self, run_id: str, mode: LeaseMode, owner: str, *, until: float, now: float,
        replacing: str | None,
    ) -> tuple[str | None, float | None] | None:
        if mode == "read":
            r = await self._p.fetchrow(
                f"SELECT lease_owner, lease_until FROM {self._s}.runs WHERE run_id = $1",
                run_id)
            return None if r is None else (r[0], r[1])
        assignments, count = _LEASE_SET[mode]
        args = (run_id, owner, until, now, replacing)[:count]
        r = await self._p.fetchrow(
            f"UPDATE {self._s}.runs SET {assignments} WHERE run_id = $1 "
            "RETURNING lease_owner, lease_until", *args)
        return None if r is None else (r[0], r[1])

    # -- effects ----------------------------------------------------------------

    async def _raw_get_effect(self, key: str) -> EffectRow | None:
        r = await self._p.fetchrow(
            f"SELECT {_EFFECT_COLS} FROM {self._s}.effects WHERE key = $1", key
        )
        return None if r is None else EffectRow(*r)

    async def _raw_put_effect(self, row: EffectRow) -> EffectRow | bool | None:
        import asyncpg.exceptions as px

        try:
            inserted = await self._p.fetchval(
                f"INSERT INTO {self._s}.effects ({_EFFECT_COLS}) VALUES ($1,$2,$3,$4,$5) "
                "ON CONFLICT (key) DO NOTHING RETURNING true",
                row.key, row.run_id, row.created_at, row.payload, row.checksum,
            )
        except px.ForeignKeyViolationError:
            return False
        if inserted:
            return None
        existing = await self._raw_get_effect(row.key)
        # Deleted between the two statements (its run was pruned): report the run gone.
        return False if existing is None else existing


class _OneLine(logging.Filter):
    """asyncpg's pool warns with a whole traceback each time it fails to reconnect its
    floor connection while the database is down ("Failed to restore the pool connection
    floor; retrying"): with no logging configured, Python's last-resort handler printed
    them over shoal's own message. Kept as one line, the exception named, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {redact(str(exc))})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _one_line_pool_warnings() -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _OneLine) for f in pool_log.filters):
        pool_log.addFilter(_OneLine())
