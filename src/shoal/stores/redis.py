"""Redis store: the hot tier. Finished runs expire after a TTL (7 days by default).

Layout under a key prefix ``P`` (default ``shoal``)::

    P:schema                 schema version
    P:run:<run_id>           HASH  head, head_sum, state, state_sum, status, flow,
                                   created_at, updated_at, tokens, cost_usd, nseq,
                                   lease_owner, lease_until (the run lease, when held)
    P:steps:<run_id>         HASH  step_id -> "seq\\ntokens\\ncost\\nstatus\\nsha256\\njson"
    P:effect:<key>           HASH  run_id, created_at, payload, checksum
    P:effects:<run_id>       SET   effect keys of the run
    P:runs                   ZSET  run ids by created_at (list_runs)
    P:runs:s:<status>        ZSET  run ids of one status by created_at
    P:runs:u                 ZSET  run ids by updated_at (prune; schema v2)

The run lease lives in the run's hash: fields appear when a lease is first taken, so a
store of any version needs no migration and a shoal that predates leases ignores them.
Every write that spans keys is one Lua script, so it is atomic: a step, the
run's totals and its prune index move together. Scripts touch keys derived
inside them, so this needs a single Redis (not Cluster). Durability is the
server's: run Redis with ``appendonly yes`` for a store that survives restarts.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from shoal.clock import Clock
from shoal.errors import ConfigError
from shoal.stores.base import RetryPolicy, Store
from shoal.stores.codec import EffectRow, RunRow, StepRow
from shoal.stores.leases import LeaseMode
from shoal.stores.records import FINISHED, RUN_STATUSES, StoreError

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript

__all__ = ["SCHEMA_VERSION", "RedisStore"]

SCHEMA_VERSION = 2
DEFAULT_FINISHED_TTL_S = 7 * 86400.0
_RUN_FIELDS = (
    "flow", "status", "created_at", "updated_at", "tokens", "cost_usd", "head", "head_sum",
    "state", "state_sum",
)
_BATCH = 200

_CREATE_RUN = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HMGET', KEYS[1], 'flow', 'status', 'created_at', 'updated_at', 'tokens',
                    'cost_usd', 'head', 'head_sum', 'state', 'state_sum')
end
redis.call('HSET', KEYS[1], 'flow', ARGV[2], 'status', ARGV[3], 'created_at', ARGV[4],
           'updated_at', ARGV[5], 'tokens', ARGV[6], 'cost_usd', ARGV[7], 'head', ARGV[8],
           'head_sum', ARGV[9], 'state', ARGV[10], 'state_sum', ARGV[11], 'nseq', 0)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
if tonumber(ARGV[12]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[12]) end
return false
"""

# KEYS: run, steps, effects-of-run, updated index, then one index per status in
# RUN_STATUSES order. ARGV: run_id, status, state, state_sum, now, ttl_ms, effect prefix,
# writer ('' or a lease owner: refused with -1 while another owner holds the run).
_FENCE = """
if ARGV[{n}] ~= '' then
  local holder = redis.call('HGET', KEYS[1], 'lease_owner')
  if holder and holder ~= ARGV[{n}] then return -1 end
end
"""
_SET_STATE = """
local old = redis.call('HGET', KEYS[1], 'status')
if not old then return 0 end
""" + _FENCE.format(n=8) + """
local slot = {running = 5, succeeded = 6, failed = 7, cancelled = 8}
local created = redis.call('HGET', KEYS[1], 'created_at')
if slot[old] then redis.call('ZREM', KEYS[slot[old]], ARGV[1]) end
redis.call('ZADD', KEYS[slot[ARGV[2]]], created, ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'state', ARGV[3], 'state_sum', ARGV[4],
           'updated_at', ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
local ttl = tonumber(ARGV[6])
local targets = {KEYS[1], KEYS[2], KEYS[3]}
for _, k in ipairs(redis.call('SMEMBERS', KEYS[3])) do table.insert(targets, ARGV[7] .. k) end
for _, k in ipairs(targets) do
  if ttl > 0 then redis.call('PEXPIRE', k, ttl) else redis.call('PERSIST', k) end
end
return 1
"""

# KEYS: run, steps, updated index. ARGV: run_id, step_id, body, tokens, cost, now, writer.
_PUT_STEP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
""" + _FENCE.format(n=7) + """
local old = redis.call('HGET', KEYS[2], ARGV[2])
local seq, ot, oc = nil, 0, 0
if old then
  local s, t, c = string.match(old, '^(%d+)\\n(%-?%d+)\\n([^\\n]*)\\n')
  if s then seq = s; ot = tonumber(t) or 0; oc = tonumber(c) or 0 end
end
if not seq then seq = tostring(redis.call('HINCRBY', KEYS[1], 'nseq', 1)) end
redis.call('HSET', KEYS[2], ARGV[2], seq .. '\\n' .. ARGV[3])
local dt = tonumber(ARGV[4]) - ot
if dt ~= 0 then redis.call('HINCRBY', KEYS[1], 'tokens', string.format('%d', dt)) end
local dc = tonumber(ARGV[5]) - oc
if dc ~= 0 then redis.call('HINCRBYFLOAT', KEYS[1], 'cost_usd', string.format('%.17g', dc)) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then redis.call('PEXPIRE', KEYS[2], pttl) end
return 1
"""

# KEYS: effect, run, effects-of-run. ARGV: key, run_id, created_at, payload, checksum.
_PUT_EFFECT = """
local e = redis.call('HMGET', KEYS[1], 'run_id', 'created_at', 'payload', 'checksum')
if e[1] then return e end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'run_id', ARGV[2], 'created_at', ARGV[3], 'payload', ARGV[4],
           'checksum', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[1])
local pttl = redis.call('PTTL', KEYS[2])
if pttl > 0 then
  redis.call('PEXPIRE', KEYS[1], pttl)
  redis.call('PEXPIRE', KEYS[3], pttl)
end
return false
"""

# KEYS: run, steps, effects-of-run, all index, updated index, status indexes.
# ARGV: run_id, effect prefix.
_DELETE_RUN = """
local existed = redis.call('EXISTS', KEYS[1])
for _, k in ipairs(redis.call('SMEMBERS', KEYS[3])) do redis.call('DEL', ARGV[2] .. k) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
for i = 4, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return existed
"""

# KEYS: run. ARGV: mode, owner, until, now, replacing ('' for none). The rule of
# shoal.stores.leases.allows; returns {holder, until} after ('' when free), or false
# when the run is missing.
_LEASE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local cur = redis.call('HMGET', KEYS[1], 'lease_owner', 'lease_until')
local holder, untils = cur[1], cur[2]
local mode, owner = ARGV[1], ARGV[2]
local ok = false
if mode == 'force' then ok = true
elseif mode == 'renew' or mode == 'release' then ok = (holder == owner)
elseif mode == 'take' then
  ok = (not holder) or holder == owner or (not untils)
       or tonumber(untils) <= tonumber(ARGV[4]) or (ARGV[5] ~= '' and holder == ARGV[5])
end
if not ok then return {holder or '', untils or ''} end
if mode == 'release' then
  redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until')
  return {'', ''}
end
redis.call('HSET', KEYS[1], 'lease_owner', owner, 'lease_until', ARGV[3])
return {owner, ARGV[3]}
"""

_SET_VERSION = """
local v = redis.call('GET', KEYS[1])
if (v or '0') == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]); return 1 end
return 0
"""


class RedisStore(Store):
    """Runs in Redis under a key prefix; finished runs expire after ``finished_ttl_s``."""

    kind = "redis"

    def __init__(
        self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "shoal",
        finished_ttl_s: float | None = DEFAULT_FINISHED_TTL_S, pool_max: int = 32,
        schema_version: int | None = None, clock: Clock | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(clock=clock, retry=retry)
        if not prefix:
            raise ConfigError("RedisStore prefix must not be empty")
        if schema_version is not None and not 1 <= schema_version <= SCHEMA_VERSION:
            raise ConfigError(f"schema_version must be in 1..{SCHEMA_VERSION}")
        if pool_max < 1:
            raise ConfigError(f"pool_max must be >= 1, got {pool_max}")
        self._driver_url = url
        self.pool_max = pool_max
        self.prefix = prefix
        self.finished_ttl_s = finished_ttl_s or 0.0
        self._target = schema_version or SCHEMA_VERSION
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    @property
    def url(self) -> str:
        parts = urlsplit(self._driver_url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            parts = parts._replace(netloc=netloc)
        return f"{urlunsplit(parts)} (prefix {self.prefix!r})"

    # -- keys -------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _status_keys(self) -> list[str]:
        return [self._k("runs", "s", s) for s in RUN_STATUSES]

    @property
    def _c(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreError(f"the store {self.url} is closed")
        return self._client

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._scripts[name](keys=keys, args=args)

    # -- lifecycle --------------------------------------------------------------

    def _is_transient(self, exc: BaseException) -> bool:
        from redis import exceptions as rx

        return isinstance(
            exc, rx.ConnectionError | rx.TimeoutError | rx.ReadOnlyError | rx.TryAgainError
            | OSError | asyncio.TimeoutError,
        )

    async def _raw_open(self) -> None:
        if self._client is None:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # Retries are ours (bounded, through the injected clock), not the driver's.
            # A blocking pool makes a burst of writers (a swarm finishing together)
            # wait for a connection instead of failing with "too many connections".
            pool = aioredis.BlockingConnectionPool.from_url(
                self._driver_url, max_connections=self.pool_max, timeout=30,
                decode_responses=True, retry=Retry(NoBackoff(), 0), socket_timeout=10,
                socket_connect_timeout=5,
            )
            self._client = aioredis.Redis(connection_pool=pool)
            for name, body in (
                ("create_run", _CREATE_RUN), ("set_state", _SET_STATE),
                ("put_step", _PUT_STEP), ("put_effect", _PUT_EFFECT),
                ("delete_run", _DELETE_RUN), ("set_version", _SET_VERSION),
                ("lease", _LEASE),
            ):
                self._scripts[name] = self._client.register_script(body)
        await self._migrate()

    async def _migrate(self) -> None:
        key = self._k("schema")
        raw = await self._c.get(key)
        current = 0 if raw is None else int(raw)
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.url} has schema version {current}, newer than this shoal knows "
                f"({SCHEMA_VERSION}): it was written by a newer shoal. Upgrade shoal, or use "
                "another prefix."
            )
        if current == 0:
            # A fresh prefix: nothing to migrate, claim the target version.
            if await self._c.set(key, self._target, nx=True):
                return
            current = int(await self._c.get(key) or 0)
        for version in range(current, self._target):
            if version == 1:  # 1 -> 2: build the prune index from every run's updated_at
                await self._backfill_updated_index()
            await self._script("set_version", [key], [str(version), str(version + 1)])

    async def _backfill_updated_index(self) -> None:
        async for chunk in _zscan_ids(self._c, self._k("runs")):
            pipe = self._c.pipeline(transaction=False)
            for run_id in chunk:
                pipe.hget(self._k("run", run_id), "updated_at")
            stamps = await pipe.execute()
            found = {r: float(u) for r, u in zip(chunk, stamps, strict=True) if u is not None}
            if found:
                await self._c.zadd(self._k("runs", "u"), found)

    async def _raw_close(self) -> None:
        client, self._client = self._client, None
        self._scripts.clear()
        if client is not None:
            await client.aclose()

    # -- runs -------------------------------------------------------------------

    def _ttl_ms(self, status: str) -> int:
        return int(self.finished_ttl_s * 1000) if status in FINISHED else 0

    async def _raw_create_run(self, row: RunRow) -> RunRow | None:
        existing = await self._script(
            "create_run",
            [self._k("run", row.run_id), self._k("runs"), self._k("runs", "s", row.status),
             self._k("runs", "u")],
            [row.run_id, row.flow, row.status, repr(row.created_at), repr(row.updated_at),
             row.tokens, repr(row.cost_usd), row.head, row.head_sum, row.state, row.state_sum,
             self._ttl_ms(row.status)],
        )
        return None if existing is None else _run_row(row.run_id, existing)

    async def _raw_get_run(self, run_id: str) -> RunRow | None:
        values = await self._c.hmget(self._k("run", run_id), list(_RUN_FIELDS))
        return _run_row(run_id, values) if values[0] is not None else None

    async def _raw_set_state(
        self, run_id: str, status: str, state: str, state_sum: str, now: float, *,
        owner: str | None,
    ) -> bool | None:
        found = await self._script(
            "set_state",
            [self._k("run", run_id), self._k("steps", run_id), self._k("effects", run_id),
             self._k("runs", "u"), *self._status_keys()],
            [run_id, status, state, state_sum, repr(now), self._ttl_ms(status),
             self._k("effect", ""), owner or ""],
        )
        return None if found == -1 else bool(found)

    async def _raw_list_runs(self, limit: int, status: str | None) -> list[RunRow]:
        index = self._k("runs") if status is None else self._k("runs", "s", status)
        out: list[RunRow] = []
        start = 0
        while len(out) < limit:
            ids = cast(list[str], await self._c.zrevrange(index, start, start + _BATCH - 1))
            if not ids:
                break
            start += len(ids)
            pipe = self._c.pipeline(transaction=False)
            for run_id in ids:
                pipe.hmget(self._k("run", run_id), list(_RUN_FIELDS))
            gone: list[str] = []
            for run_id, values in zip(ids, await pipe.execute(), strict=True):
                if values[0] is None:
                    gone.append(run_id)  # expired by TTL: drop it from the index
                elif len(out) < limit:
                    out.append(_run_row(run_id, values))
            if gone:
                await self._c.zrem(index, *gone)
                start -= len(gone)
        return out

    async def _raw_delete_run(self, run_id: str) -> bool:
        existed = await self._script(
            "delete_run",
            [self._k("run", run_id), self._k("steps", run_id), self._k("effects", run_id),
             self._k("runs"), self._k("runs", "u"), *self._status_keys()],
            [run_id, self._k("effect", "")],
        )
        return bool(existed)

    async def _raw_prune(self, cutoff: float, now: float) -> int:
        deleted = kept = 0
        while True:  # deleted runs leave the index; the kept ones are stepped over
            ids = cast(list[str], await self._c.zrangebyscore(
                self._k("runs", "u"), "-inf", f"({cutoff!r}", start=kept, num=_BATCH
            ))
            if not ids:
                return deleted
            for run_id in ids:
                until = await self._c.hget(self._k("run", run_id), "lease_until")
                if until and float(cast(str, until)) > now:  # being executed: kept
                    kept += 1
                else:
                    deleted += await self._raw_delete_run(run_id)

    # -- steps ------------------------------------------------------------------

    async def _raw_put_step(self, run_id: str, row: StepRow, now: float,
                            owner: str | None) -> bool | None:
        body = "\n".join(
            (str(row.tokens), repr(row.cost_usd), row.status, row.checksum, row.payload)
        )
        found = await self._script(
            "put_step",
            [self._k("run", run_id), self._k("steps", run_id), self._k("runs", "u")],
            [run_id, row.step_id, body, row.tokens, repr(row.cost_usd), repr(now),
             owner or ""],
        )
        return None if found == -1 else bool(found)

    async def _raw_get_step(self, run_id: str, step_id: str) -> StepRow | None:
        value = await self._c.hget(self._k("steps", run_id), step_id)
        return None if value is None else _step_row(step_id, cast(str, value))[1]

    async def _raw_get_steps(self, run_id: str, prefix: str) -> list[StepRow]:
        values = cast(dict[str, str], await self._c.hgetall(self._k("steps", run_id)))
        rows = [_step_row(k, v) for k, v in values.items() if k.startswith(prefix)]
        rows.sort(key=lambda pair: pair[0])
        return [row for _, row in rows]

    # -- leases -----------------------------------------------------------------

    async def _raw_lease(
        self, run_id: str, mode: LeaseMode, owner: str, *, until: float, now: float,
        replacing: str | None,
    ) -> tuple[str | None, float | None] | None:
        if mode == "read":
            values = await self._c.hmget(self._k("run", run_id),
                                         ["flow", "lease_owner", "lease_until"])
            if values[0] is None:
                return None
            holder: list[Any] | None = [values[1] or "", values[2] or ""]
        else:
            holder = await self._script("lease", [self._k("run", run_id)],
                                        [mode, owner, repr(until), repr(now), replacing or ""])
        if holder is None:
            return None
        who, at = holder
        return (str(who), float(at)) if who else (None, None)

    # -- effects ----------------------------------------------------------------

    async def _raw_get_effect(self, key: str) -> EffectRow | None:
        values = await self._c.hmget(
            self._k("effect", key), ["run_id", "created_at", "payload", "checksum"]
        )
        return None if values[0] is None else _effect_row(key, values)

    async def _raw_put_effect(self, row: EffectRow) -> EffectRow | bool | None:
        out = await self._script(
            "put_effect",
            [self._k("effect", row.key), self._k("run", row.run_id),
             self._k("effects", row.run_id)],
            [row.key, row.run_id, repr(row.created_at), row.payload, row.checksum],
        )
        if out is None:
            return None
        if out == 0:
            return False
        return _effect_row(row.key, out)


def _run_row(run_id: str, v: list[Any]) -> RunRow:
    return RunRow(
        run_id, v[0], v[1], float(v[2]), float(v[3]), int(v[4]), float(v[5]),
        v[6] or "", v[7] or "", v[8] or "", v[9] or "",
    )


def _step_row(step_id: str, value: str) -> tuple[int, StepRow]:
    parts = value.split("\n", 5)
    try:
        seq, tokens, cost, status, checksum, payload = parts
        return (int(seq), StepRow(step_id, status, int(tokens), float(cost), payload, checksum))
    except ValueError:
        # A value whose header is damaged: the checksum check reports it, by run and step.
        return (0, StepRow(step_id, "", 0, 0.0, value, ""))


def _effect_row(key: str, v: list[Any]) -> EffectRow:
    return EffectRow(key, v[0], float(v[1]), v[2] or "", v[3] or "")


async def _zscan_ids(client: aioredis.Redis, key: str) -> Any:
    cursor = 0
    while True:
        cursor, items = await client.zscan(key, cursor, count=_BATCH)
        if items:
            yield [member for member, _ in items]
        if cursor == 0:
            return
