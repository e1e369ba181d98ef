"""Per-key admission: RPM, TPM, concurrency and budget reservations.

A virtual key's call is admitted or refused *before* any upstream request, never
queued: the caller gets a 429 with ``retry-after`` and decides. Admission reserves
one request (RPM), the call's worst-case tokens (TPM), one concurrency slot and the
call's worst-case cost; settlement replaces the tokens and cost by the real ones and
frees the slot.

* :class:`LocalKeyLimits` keeps the state in this process (one gateway process);
* :class:`RedisKeyLimits` keeps it in Redis, one Lua script per admission and per
  settlement (``key_scripts``), so N replicas enforce one key's limits and budget as
  one process would. A grant holds a lease renewed every ``lease_s/3`` while the call
  runs; a replica that dies stops renewing and its slots and reservations come back
  ``lease_s`` later instead of leaking.

Spend itself is durable in the key store; the limits only read it (``seed``) when a
period starts or Redis lost it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.clock import Clock, RealClock
from shoal.errors import ConfigError, StoreUnavailable
from shoal.gateway import key_scripts as lua
from shoal.gateway.keys_api import KeyBudgetExceeded, KeyLimited, VirtualKey

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["Ask", "KeyLimits", "KeyRedisUnavailable", "LocalKeyLimits", "RedisKeyLimits",
           "refusal"]

_log = logging.getLogger("shoal.gateway.keys")


class KeyRedisUnavailable(StoreUnavailable):
    """Redis, which holds the keys' shared limits, did not answer: no call is admitted
    (none goes upstream unaccounted); the gateway answers 503 with retry-after."""

WINDOW_S = 60.0
_EPS = 1e-9
Seed = Callable[[], Awaitable[float]]


@dataclass(slots=True)
class Ask:
    """One admission: its grant id, worst-case tokens and cost, and the spend period."""

    grant: str
    tokens: int
    cost_usd: float
    period: str  # the spend row: total, d2026-11-27, m2026-11
    spend_ttl_s: int = 86400
    admitted: bool = field(default=False)


def refusal(key: VirtualKey, reason: int, wait_s: float | None, *, ask: Ask,
            spend: float = 0.0, reserved: float = 0.0) -> KeyLimited | KeyBudgetExceeded:
    """The error for a refused admission (``reason`` as in ``key_scripts.ADMIT``)."""
    who = f"virtual key {key.name!r}"
    if reason == 4:
        return KeyBudgetExceeded(_out_of_budget(key, ask, spend, reserved))
    what = {1: f"{key.max_concurrency} concurrent calls", 2: f"{key.rpm} requests per minute",
            3: f"{key.tpm} tokens per minute"}[reason]
    if wait_s is None:
        return KeyLimited(f"{who} allows {what}; this call alone asks for {ask.tokens} tokens "
                          "(prompt + max_tokens): lower max_tokens or shorten the prompt")
    return KeyLimited(f"{who} is at its limit of {what}; retry in {wait_s:.1f}s",
                      retry_after_s=max(wait_s, 0.001))


def _out_of_budget(key: VirtualKey, ask: Ask, spend: float, reserved: float) -> str:
    """Why a call does not fit the key's budget, and only the ways out that can help: a
    ``total`` budget never resets, so waiting frees nothing but the reservations of the
    calls in flight."""
    who, budget = f"virtual key {key.name!r}", key.budget_usd or 0.0
    admin = "ask the gateway's admin for a larger budget"
    if ask.cost_usd > budget + _EPS:  # no wait and no spend makes room for it
        per = "in total" if key.period == "total" else f"a {key.period}"
        return (f"{who} is out of budget for this call: it alone may cost up to "
                f"${ask.cost_usd:.4f} (its prompt and max_tokens at the model's price), more "
                f"than the key's whole budget of ${budget:.4f} {per}. Lower max_tokens or "
                f"shorten the prompt, or {admin}")
    where = "in total" if key.period == "total" else f"this {key.period} (UTC)"
    left = budget - spend - reserved
    ways = []
    if left > _EPS:
        ways.append(f"lower max_tokens (the call's worst case must fit in the ${left:.4f} "
                    "left)")
    if reserved > _EPS:
        ways.append("retry once the calls in flight end (their reservations become what "
                    "they really cost)")
    if key.period == "day":
        ways.append("wait for the day to end (the budget restarts at 00:00 UTC)")
    elif key.period == "month":
        ways.append("wait for the month to end (the budget restarts on the 1st, 00:00 UTC)")
    ways.append(admin)
    never = (" Its period is total: the spend never resets, so waiting alone does not help."
             if key.period == "total" else "")
    ways_text = ways[0] if len(ways) == 1 else ", ".join(ways[:-1]) + ", or " + ways[-1]
    return (f"{who} is out of budget: ${spend:.4f} spent and ${reserved:.4f} reserved by "
            f"calls in flight {where}, of ${budget:.4f}; this call may cost up to "
            f"${ask.cost_usd:.4f}.{never} {ways_text[0].upper()}{ways_text[1:]}")


class KeyLimits(ABC):
    """Admission state of every key (see the module docstring)."""

    @abstractmethod
    async def admit(self, key: VirtualKey, ask: Ask, seed: Seed) -> None:
        """Reserve ``ask`` or raise :class:`KeyLimited` / :class:`KeyBudgetExceeded`.
        ``seed()`` returns the key's spend in ``ask.period`` from the store."""

    @abstractmethod
    async def settle(self, key: VirtualKey, ask: Ask, *, tokens: int, cost_usd: float) -> None:
        """Replace the reservation of an admitted ``ask`` by the real tokens and cost."""

    async def aclose(self) -> None:
        return None


def _too_big(key: VirtualKey, ask: Ask) -> KeyLimited | KeyBudgetExceeded | None:
    if key.tpm is not None and ask.tokens > key.tpm:
        return refusal(key, 3, None, ask=ask)
    if key.budget_usd is not None and ask.cost_usd > key.budget_usd + _EPS:
        return refusal(key, 4, None, ask=ask)
    return None


class _State:
    __slots__ = ("added", "held", "loaded_at", "period", "rpm", "spend", "tpm", "tpm_tokens",
                 "tpm_used")

    def __init__(self) -> None:
        self.period: str | None = None
        self.spend = 0.0
        self.added = 0.0  # every cost this process settled into ``spend``, ever
        self.loaded_at = float("-inf")
        self.held: dict[str, float] = {}  # grant -> USD reserved
        self.rpm: deque[float] = deque()
        self.tpm: deque[tuple[float, str]] = deque()
        self.tpm_tokens: dict[str, int] = {}
        self.tpm_used = 0


class LocalKeyLimits(KeyLimits):
    """Every key's state in this process: exact for one gateway process. Several
    processes without Redis each allow a key's full RPM/TPM/concurrency; their budgets
    meet only through the store, re-read every ``refresh_s``."""

    def __init__(self, *, clock: Clock | None = None, window_s: float = WINDOW_S,
                 refresh_s: float = 5.0) -> None:
        self._clock = clock or RealClock()
        self._window = window_s
        self._refresh = refresh_s
        self._states: dict[str, _State] = {}

    def in_flight(self, key_id: str) -> int:
        state = self._states.get(key_id)
        return 0 if state is None else len(state.held)

    async def admit(self, key: VirtualKey, ask: Ask, seed: Seed) -> None:
        big = _too_big(key, ask)
        if big is not None:
            raise big
        st = self._states.setdefault(key.id, _State())
        if key.budget_usd is not None:
            await self._load(st, ask, seed)
        # From here to the grant nothing awaits: the check and the reservation are one step.
        now = self._clock.now()
        cutoff = now - self._window
        if key.max_concurrency is not None and len(st.held) >= key.max_concurrency:
            raise refusal(key, 1, 1.0, ask=ask)
        while st.rpm and st.rpm[0] <= cutoff:
            st.rpm.popleft()
        if key.rpm is not None and len(st.rpm) >= key.rpm:
            raise refusal(key, 2, st.rpm[len(st.rpm) - key.rpm] + self._window - now, ask=ask)
        while st.tpm and st.tpm[0][0] <= cutoff:
            st.tpm_used -= st.tpm_tokens.pop(st.tpm.popleft()[1], 0)
        if key.tpm is not None and st.tpm_used + ask.tokens > key.tpm:
            freed, wait = 0, self._window
            for at, grant in st.tpm:
                freed += st.tpm_tokens.get(grant, 0)
                if st.tpm_used - freed + ask.tokens <= key.tpm:
                    wait = at + self._window - now
                    break
            raise refusal(key, 3, wait, ask=ask)
        if key.budget_usd is not None:
            reserved = sum(st.held.values())
            if st.spend + reserved + ask.cost_usd > key.budget_usd + _EPS:
                raise refusal(key, 4, None, ask=ask, spend=st.spend, reserved=reserved)
        st.held[ask.grant] = ask.cost_usd if key.budget_usd is not None else 0.0
        if key.rpm is not None:
            st.rpm.append(now)
        if key.tpm is not None:
            st.tpm.append((now, ask.grant))
            st.tpm_tokens[ask.grant] = ask.tokens
            st.tpm_used += ask.tokens
        ask.admitted = True

    async def _load(self, st: _State, ask: Ask, seed: Seed) -> None:
        """Read the key's spend from the store when its period starts and every
        ``refresh_s`` (other processes spend too). One admission reads; the others go on
        with the current view. Costs settled here during the read are added to what it
        returns: they may be in it already (counted twice until the next read, the safe
        side), never lost."""
        now = self._clock.now()
        if st.period == ask.period and now - st.loaded_at < self._refresh:
            return
        st.loaded_at = now
        added = st.added
        try:
            spend = await seed()
        except BaseException:
            st.loaded_at = float("-inf")
            raise
        if st.period == ask.period:  # a refresh (or another admission loaded it meanwhile)
            st.spend = spend + (st.added - added)
        else:  # the period's first read
            st.period, st.spend = ask.period, spend

    async def settle(self, key: VirtualKey, ask: Ask, *, tokens: int, cost_usd: float) -> None:
        st = self._states.get(key.id)
        if st is None or st.held.pop(ask.grant, None) is None:
            return
        if ask.grant in st.tpm_tokens:
            st.tpm_used += tokens - st.tpm_tokens[ask.grant]
            st.tpm_tokens[ask.grant] = tokens
        if st.period == ask.period:
            st.spend += cost_usd
            st.added += cost_usd


class RedisKeyLimits(KeyLimits):
    """Every key's state in Redis (see the module docstring); ``prefix`` namespaces the
    keys (``{prefix:key:<id>}:…``)."""

    def __init__(self, redis: Redis | str, *, prefix: str = "shoal", lease_s: float = 60.0,
                 window_s: float = WINDOW_S, clock: Clock | None = None) -> None:
        if lease_s <= 0 or window_s <= 0:
            raise ConfigError("lease_s and window_s must be > 0")
        try:
            importlib.import_module("redis.asyncio")
        except ImportError as exc:
            raise ConfigError("shared key limits need the redis client: "
                              "pip install 'shoal[redis]'") from exc
        self._url = redis if isinstance(redis, str) else None
        self._client: Redis | None = None if isinstance(redis, str) else redis
        self._prefix = prefix
        self._lease_s = lease_s
        self._lease_ms = int(lease_s * 1000)
        self._window_ms = int(window_s * 1000)
        self._clock = clock or RealClock()
        self._scripts: dict[str, AsyncScript] = {}
        self._held: dict[str, str] = {}  # grant -> the key's held set
        self._heartbeat: asyncio.Task[None] | None = None
        self._undoing: set[asyncio.Task[None]] = set()
        self._closed = False

    def _redis(self) -> Redis:
        if self._client is None:
            import redis.asyncio as aioredis

            from shoal.traffic.redis_link import SOCKET_TIMEOUT_S

            assert self._url is not None
            # A Redis that stops answering fails the admission (a 503 to the caller)
            # after this, not never; options in the URL win.
            self._client = aioredis.from_url(self._url, socket_timeout=SOCKET_TIMEOUT_S,
                                             socket_connect_timeout=SOCKET_TIMEOUT_S)
        return self._client

    def _keys(self, key_id: str, period: str) -> list[str]:
        tag = "{" + f"{self._prefix}:key:{key_id}" + "}"
        return [f"{tag}:{n}" for n in ("held", "res", "rpm", "tpm", "tpm_tok", "tpm_used",
                                       f"spend:{period}")]

    async def _run(self, text: str, keys: list[str], args: list[object]) -> Any:
        from redis.exceptions import RedisError

        script = self._scripts.get(text)
        if script is None:
            script = self._scripts[text] = self._redis().register_script(text)
        try:
            return await script(keys=keys, args=args)  # type: ignore[arg-type]
        except RedisError as exc:
            raise KeyRedisUnavailable(
                f"virtual keys: Redis failed ({type(exc).__name__}: {exc}); check that the "
                "gateway's redis_url is reachable") from exc

    async def admit(self, key: VirtualKey, ask: Ask, seed: Seed) -> None:
        big = _too_big(key, ask)
        if big is not None:
            raise big
        keys = self._keys(key.id, ask.period)
        args: list[object] = [
            ask.grant, self._lease_ms, key.max_concurrency or 0, key.rpm or 0, key.tpm or 0,
            ask.tokens, self._window_ms,
            -1 if key.budget_usd is None else repr(float(key.budget_usd)),
            repr(float(ask.cost_usd)), "", ask.spend_ttl_s]
        granted, reason, wait_ms, spend, reserved = await self._admit(key, ask, keys, args)
        if int(reason) == lua.NEED_SEED:
            args[9] = repr(float(await seed()))
            granted, reason, wait_ms, spend, reserved = await self._admit(key, ask, keys, args)
        if not int(granted):
            reason = int(reason)
            raise refusal(key, reason, None if reason == 4 else int(wait_ms) / 1000, ask=ask,
                          spend=float(spend), reserved=float(reserved))
        ask.admitted = True
        self._held[ask.grant] = keys[0]
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _admit(self, key: VirtualKey, ask: Ask, keys: list[str],
                     args: list[object]) -> Any:
        """One ADMIT round trip; when the caller is cancelled meanwhile (its client went
        away) a grant the script made anyway is released at once, not at lease expiry."""
        call = asyncio.ensure_future(self._run(lua.ADMIT, keys, args))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            def undo(done: asyncio.Future[Any]) -> None:
                if not done.cancelled() and done.exception() is None and int(done.result()[0]):
                    task = asyncio.ensure_future(
                        self.settle(key, ask, tokens=0, cost_usd=0.0))
                    self._undoing.add(task)
                    task.add_done_callback(self._undoing.discard)

            call.add_done_callback(undo)
            raise

    async def settle(self, key: VirtualKey, ask: Ask, *, tokens: int, cost_usd: float) -> None:
        self._held.pop(ask.grant, None)
        keys = self._keys(key.id, ask.period)
        await self._run(lua.SETTLE, [keys[0], keys[1], keys[3], keys[4], keys[5], keys[6]],
                        [ask.grant, tokens, repr(float(cost_usd))])

    async def _renew_loop(self) -> None:
        """While this process holds grants, renew their leases every ``lease_s/3``."""
        while self._held and not self._closed:
            await self._clock.sleep(self._lease_s / 3)
            by_set: dict[str, list[str]] = {}
            for grant, held in list(self._held.items()):
                by_set.setdefault(held, []).append(grant)
            for held, grants in by_set.items():
                try:
                    lost = await self._run(lua.RENEW, [held, held[:-4] + "res"],
                                           [self._lease_ms, *grants])
                except Exception as exc:  # the heartbeat must outlive any failure
                    _log.warning("virtual keys: lease renewal failed (%s); retrying", exc)
                    continue
                for raw in lost:
                    grant = raw.decode() if isinstance(raw, bytes) else str(raw)
                    if self._held.pop(grant, None) is not None:  # warned once
                        _log.warning(
                            "virtual keys: the lease of call %s lapsed before renewal (event "
                            "loop blocked > %.0fs?): its slot and reservation were freed",
                            grant, self._lease_s)

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.gather(*self._undoing, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        if self._url is not None and self._client is not None:
            await self._client.aclose()
            self._client = None
