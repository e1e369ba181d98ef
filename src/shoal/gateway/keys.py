"""Virtual keys over the key store: :class:`StoreKeys`, the gateway's
:class:`~shoal.gateway.keys_api.KeyService`.

* ``authenticate`` hashes the presented secret and looks it up (cached ``cache_s``
  seconds, so a revocation or rotation made elsewhere takes effect within that);
* ``check_model`` matches the model against the key's globs (``gpt-4o``, ``deepseek-*``);
* ``admit`` reserves the call's worst case (one request, its tokens, a concurrency
  slot, its cost) before any upstream request, through :class:`LocalKeyLimits` (one
  process) or :class:`RedisKeyLimits` (several replicas: give ``redis``);
* ``settle`` records the real spend durably in the store (USD, input/output/cached
  tokens, per total/day/month) and then replaces the reservation; it runs to its end
  even when the calling task is cancelled, and runs once per grant.

:func:`check_admin` guards key management with the admin key from ``SHOAL_ADMIN_KEY``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from shoal.clock import Clock, RealClock
from shoal.gateway.key_limits import Ask, KeyLimits, LocalKeyLimits, RedisKeyLimits
from shoal.gateway.key_store import (
    KeyStore,
    hash_secret,
    open_key_store,
    period_end,
    period_id,
)
from shoal.gateway.keys_api import (
    KeyGrant,
    KeyModelDenied,
    KeyRejected,
    VirtualKey,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shoal.types import Usage

__all__ = ["ADMIN_ENV", "StoreKeys", "admin_key", "check_admin"]

_log = logging.getLogger("shoal.gateway.keys")
ADMIN_ENV = "SHOAL_ADMIN_KEY"
SpendRecord = tuple[str, float, float, "Usage"]  # key id, wall time, USD, usage
_NEGATIVE_CACHE = 4096  # unknown secrets remembered (bounded: they are attacker-chosen)


def admin_key(env: Mapping[str, str] | None = None) -> str | None:
    """The admin key from ``SHOAL_ADMIN_KEY`` (``None`` when unset or empty)."""
    value = (os.environ if env is None else env).get(ADMIN_ENV, "")
    if value:
        from shoal.secrets import register_secret

        register_secret(value)  # masked in every error, log line and event from now on
    return value or None


def check_admin(presented: str | None, env: Mapping[str, str] | None = None) -> None:
    """Raise :class:`KeyRejected` unless ``presented`` is the admin key (constant time)."""
    expected = admin_key(env)
    if expected is None:
        raise KeyRejected(f"key management over HTTP is off: set {ADMIN_ENV} on the gateway "
                          "(or use `shoal keys` on the store)", reason="missing")
    if not presented:
        raise KeyRejected("key management needs the admin key as the bearer token",
                          reason="missing")
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise KeyRejected("this is not the gateway's admin key", reason="invalid")


@dataclass(slots=True)
class _Open:
    key: VirtualKey
    ask: Ask
    wall: float


class StoreKeys:
    """Virtual keys from a key store (see the module docstring).

    ``store``: a :class:`KeyStore` (opened by the caller) or a store URL (opened on first
    use, closed by :meth:`aclose`). ``redis``: a Redis URL or client to share limits and
    budgets across replicas; without it they are this process's.
    """

    def __init__(
        self, store: KeyStore | str | None = None, *, redis: Redis | str | None = None,
        prefix: str = "shoal", lease_s: float = 60.0, cache_s: float = 1.0,
        clock: Clock | None = None, limits: KeyLimits | None = None,
    ) -> None:
        self._owned = not isinstance(store, KeyStore)
        self._store = store if isinstance(store, KeyStore) else open_key_store(store)
        self._opened = not self._owned
        self._open_lock = asyncio.Lock()
        self._clock = clock or RealClock()
        if limits is None:
            limits = (LocalKeyLimits(clock=self._clock) if redis is None else
                      RedisKeyLimits(redis, prefix=prefix, lease_s=lease_s, clock=self._clock))
        self.limits = limits
        self.shared = isinstance(limits, RedisKeyLimits)
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, VirtualKey | KeyRejected]] = {}
        self._grants: dict[str, _Open] = {}
        self._unsaved: list[SpendRecord] = []
        self.lost_spend = 0  # spend records the store refused even at close
        self._batch: list[SpendRecord] = []
        self._batch_done: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"StoreKeys({self._store.url!r}, shared={self.shared})"

    @property
    def required(self) -> bool:
        return True

    @property
    def store(self) -> KeyStore:
        return self._store

    async def _ready(self) -> KeyStore:
        if not self._opened:
            async with self._open_lock:
                if not self._opened:
                    await self._store.open()
                    self._opened = True
        return self._store

    async def open(self) -> StoreKeys:
        """Open the store now (optional: the first call does it)."""
        await self._ready()
        return self

    async def active_keys(self) -> int:
        """How many keys are active (the gateway refuses a public address with none)."""
        return await (await self._ready()).count_active()

    # -- authentication ----------------------------------------------------------------

    async def authenticate(self, presented: str | None) -> VirtualKey:
        if presented and presented[:7].lower() == "bearer ":
            presented = presented[7:].strip()
        if not presented:
            raise KeyRejected("no API key: send your shoal virtual key as the bearer token "
                              "(Authorization: Bearer sk-shoal-…) or as x-api-key",
                              reason="missing")
        digest = hash_secret(presented)
        now = self._clock.now()
        hit = self._cache.get(digest)
        if hit is None or hit[0] <= now:
            hit = (now + self._cache_s, await self._lookup(digest))
            if self._cache_s > 0:
                if len(self._cache) >= _NEGATIVE_CACHE:
                    self._cache = {d: v for d, v in self._cache.items() if v[0] > now}
                    if len(self._cache) >= _NEGATIVE_CACHE:
                        self._cache.clear()
                self._cache[digest] = hit
        if isinstance(hit[1], KeyRejected):
            raise KeyRejected(str(hit[1]), reason=hit[1].reason)
        return hit[1]

    async def _lookup(self, digest: str) -> VirtualKey | KeyRejected:
        record = await (await self._ready()).by_hash(digest)
        if record is None:
            return KeyRejected("invalid API key: no active shoal virtual key has this secret "
                               "(it may have been rotated); check the key you configured",
                               reason="invalid")
        if not record.active:
            return KeyRejected(f"the virtual key {record.name!r} ({record.prefix}) was revoked; "
                               "ask the gateway's admin for a new one", reason="revoked")
        return record.virtual()

    def forget(self) -> None:
        """Drop the key cache (a revocation through this process takes effect at once)."""
        self._cache.clear()

    def check_model(self, key: VirtualKey, model: str) -> None:
        if not key.models or any(fnmatchcase(model, p) for p in key.models):
            return
        raise KeyModelDenied(f"the virtual key {key.name!r} may not use model {model!r}; it "
                             f"may use: {', '.join(key.models)}")

    # -- admission and settlement ------------------------------------------------------

    async def admit(self, key: VirtualKey, *, model: str, tokens: int,
                    max_cost_usd: float) -> KeyGrant:
        wall = self._clock.wall()
        pid = period_id(key.period, wall)
        end = period_end(key.period, wall)
        ttl = 86400 if end is None else int(min(86400.0, end - wall + 60))
        # 128 random bits, as a uuid4 has (without building the UUID object).
        ask = Ask("g" + os.urandom(16).hex(), max(0, int(tokens)),
                  max(0.0, float(max_cost_usd)), pid, max(ttl, 60))
        store = await self._ready()

        async def seed() -> float:
            return (await store.spend(key.id, pid)).usd

        await self.limits.admit(key, ask, seed)
        self._grants[ask.grant] = _Open(key, ask, wall)
        return KeyGrant(key, model, ask.cost_usd, ask.tokens, token=ask.grant)

    async def settle(self, grant: KeyGrant, *, usage: Usage, cost_usd: float) -> None:
        work = self.settlement(grant, usage=usage, cost_usd=cost_usd)
        if work is None:
            return
        # Shielded: a cancelled caller (client gone, shutdown) must not lose spend or
        # leave the slot held until its lease lapses.
        await asyncio.shield(work)

    def settlement(self, grant: KeyGrant, *, usage: Usage,
                   cost_usd: float) -> Coroutine[Any, Any, None] | None:
        """What :meth:`settle` runs, for a caller that runs it in a task of its own (a
        task nobody cancels, as the gateway's settlements): the same work without the
        shield's second task. None when the grant is already settled."""
        if grant.settled:
            return None
        grant.settled = True
        held = self._grants.pop(grant.token, None)
        if held is None:
            return None
        return self._settle(held, usage, max(0.0, float(cost_usd)))

    async def _settle(self, held: _Open, usage: Usage, cost: float) -> None:
        await self._save(held.key.id, held.wall, cost, usage)
        tokens = usage.input_tokens + usage.output_tokens
        try:
            await self.limits.settle(held.key, held.ask, tokens=tokens, cost_usd=cost)
        except Exception as exc:
            _log.warning("virtual keys: settling call %s of key %s failed (%s); its slot and "
                         "reservation free when the lease lapses", held.ask.grant, held.key.id,
                         exc)

    async def _save(self, key_id: str, wall: float, cost: float, usage: Usage) -> None:
        """Record spend durably, in group commits: records that arrive while a write is
        in flight go together in the next one (one transaction), and each caller returns
        once its record is committed. A batch the store refused is kept and retried with
        the next one and on close (never dropped while the process lives)."""
        loop = asyncio.get_running_loop()
        if self._batch_done is None:
            self._batch_done = loop.create_future()
        done = self._batch_done
        self._batch.append((key_id, wall, cost, usage))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_batches())
        await done

    async def _write_batches(self) -> None:
        while self._batch:
            batch, done = self._batch, self._batch_done
            self._batch, self._batch_done = [], None
            try:
                await self._flush(batch)
            finally:  # the settlers waiting on this batch return whatever happened
                if done is not None and not done.done():
                    done.set_result(None)

    def _take_unsaved(self) -> list[SpendRecord]:
        pending, self._unsaved = self._unsaved, []
        return pending

    async def _flush(self, records: list[SpendRecord]) -> bool:
        records = [*self._take_unsaved(), *records]
        if not records:
            return True
        try:
            await self._store.add_spends(records)
        except Exception as exc:
            self._unsaved.extend(records)
            _log.error("virtual keys: %d spend record(s) not yet saved to %s (%s); retrying "
                       "with the next settlement and on close", len(self._unsaved),
                       self._store.url, exc)
            return False
        return True

    async def aclose(self) -> None:
        """Release the grants still open (unbilled), flush unsaved spend, close."""
        for held in list(self._grants.values()):
            try:
                await self.limits.settle(held.key, held.ask, tokens=0, cost_usd=0.0)
            except Exception as exc:
                _log.warning("virtual keys: releasing call %s failed (%s)", held.ask.grant, exc)
        self._grants.clear()
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._opened:
            for _ in range(3):
                if await self._flush([]):
                    break
                await asyncio.sleep(0.5)
            if self._unsaved:
                self.lost_spend = len(self._unsaved)
                _log.error("virtual keys: %d spend record(s) lost: the store %s refused them",
                           len(self._unsaved), self._store.url)
        await self.limits.aclose()
        if self._owned and self._opened:
            await self._store.aclose()
            self._opened = False
