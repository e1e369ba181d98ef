"""A limiter shared by every process and host that uses the same Redis and key.

Same contract as :class:`~shoal.traffic.limits.LocalLimiter`, with the state in
Redis so that four replicas of a service share one provider's cap instead of
multiplying it by four:

* acquire, release, settle and lease renewal are each ONE Lua script, so they are
  atomic; scripts read Redis server time (``TIME``), never a client clock;
* each held slot is a member of a sorted set scored by its lease expiry; a
  heartbeat renews the leases of the slots this process holds every ``lease_s/3``;
  a holder that dies (``kill -9``) stops renewing and its slot is reclaimed by the
  next acquire after at most ``lease_s``;
* RPM and TPM are sliding-window logs (sorted sets scored by admission time), like
  the local limiter's;
* waiters wake promptly: a release publishes on a channel every waiting process
  subscribes to; a failed acquire also returns how long until a lease or window
  entry expires, and waiters re-check no later than that (and every ``poll_s``, in
  case a notification was lost: Redis pub/sub is at-most-once).

Fairness: FIFO within a process (only the head of the local queue asks Redis);
across processes, the first to ask after a release wins.

``try_acquire`` cannot answer without a round trip, so it returns ``None``; use
``await atry_acquire()`` or ``acquire()``. ``retry_in`` reports what the last failed
acquire of this process learned. ``in_flight`` counts the permits this process
holds; ``Permit.in_flight`` is the global count when the permit was granted.

``redis`` is imported only when this module is used.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from shoal.clock import Clock, RealClock
from shoal.errors import ConfigError, DeadlineExceeded, RunError
from shoal.observe.events import SETTLE, WAIT, EventBus
from shoal.traffic.limits import WINDOW_S, Limiter, Permit

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

__all__ = ["RedisLimiter"]

_log = logging.getLogger("shoal.traffic.redis")
_CAP_TTL_MS = 86_400_000  # a learned shared cap is forgotten after a day unused

# KEYS: holders, rpm log, tpm log, tpm tokens, tpm used, cap
# ARGV: holder, lease ms, max concurrency (0 = none), rpm (0), tpm (0), tokens, window ms
# -> {granted, wait ms, cap (0 = none), holders after, reason (1 conc, 2 rpm, 3 tpm)}
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local lease = tonumber(ARGV[2])
local window = tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = tonumber(ARGV[3])
local shared = redis.call('GET', KEYS[6])
if shared then cap = tonumber(shared) end
local held = redis.call('ZCARD', KEYS[1])
if cap > 0 and held >= cap then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, math.ceil(tonumber(first[2]) - now), cap, held, 1}
end
local cutoff = now - window
local rpm = tonumber(ARGV[4])
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  local n = redis.call('ZCARD', KEYS[2])
  if n >= rpm then
    local e = redis.call('ZRANGE', KEYS[2], n - rpm, n - rpm, 'WITHSCORES')
    return {0, math.ceil(tonumber(e[2]) + window - now), cap, held, 2}
  end
end
local tpm = tonumber(ARGV[5])
local tokens = tonumber(ARGV[6])
local used = 0
if tpm > 0 then
  used = tonumber(redis.call('GET', KEYS[5]) or '0')
  local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', cutoff)
  if #old > 0 then
    for _, id in ipairs(old) do
      used = used - tonumber(redis.call('HGET', KEYS[4], id) or '0')
      redis.call('HDEL', KEYS[4], id)
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff)
    redis.call('SET', KEYS[5], used)
  end
  if used + tokens > tpm then
    local excess = used + tokens - tpm
    local entries = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      excess = excess - tonumber(redis.call('HGET', KEYS[4], entries[i]) or '0')
      if excess <= 0 then
        return {0, math.ceil(tonumber(entries[i + 1]) + window - now), cap, held, 3}
      end
    end
    return {0, math.ceil(window), cap, held, 3}
  end
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(2 * lease))
local keep = math.ceil(window) + 1000
if rpm > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], keep)
end
if tpm > 0 then
  redis.call('ZADD', KEYS[3], now, ARGV[1])
  redis.call('HSET', KEYS[4], ARGV[1], tokens)
  redis.call('SET', KEYS[5], used + tokens, 'PX', keep)
  redis.call('PEXPIRE', KEYS[3], keep)
  redis.call('PEXPIRE', KEYS[4], keep)
end
return {1, 0, cap, held + 1, 0}
"""

# KEYS: holders; ARGV: holder, notify channel
_RELEASE = """
local n = redis.call('ZREM', KEYS[1], ARGV[1])
if n > 0 then redis.call('PUBLISH', ARGV[2], '1') end
return n
"""

# KEYS: tpm tokens, tpm used; ARGV: holder, actual tokens, notify channel
_SETTLE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
local delta = tonumber(ARGV[2]) - tonumber(old)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[2], delta)
if delta < 0 then redis.call('PUBLISH', ARGV[3], '1') end
return 1
"""

# KEYS: holders; ARGV: lease ms, holder... -> the holders whose lease was already lost
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local lease = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i])
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
    table.insert(lost, ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], math.ceil(2 * lease))
return lost
"""

# KEYS: cap; ARGV: n, only-if-absent (1/0), ttl ms, notify channel -> the cap in force
_SET_CAP = """
if ARGV[2] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
end
redis.call('PUBLISH', ARGV[4], '1')
return tonumber(redis.call('GET', KEYS[1]))
"""


def _as_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLimiter(Limiter):
    """A limiter whose state lives in Redis under ``key`` (see the module docstring)."""

    def __init__(
        self,
        redis: Redis | str,
        *,
        key: str,
        max_concurrency: int | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        lease_s: float = 30.0,
        clock: Clock | None = None,
        events: EventBus | None = None,
        name: str = "",
        window_s: float = WINDOW_S,
        poll_s: float = 1.0,
    ) -> None:
        for label, value in (("max_concurrency", max_concurrency), ("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 1:
                raise ConfigError(f"{label} must be >= 1 (or None for no limit), got {value}")
        if lease_s <= 0 or window_s <= 0 or poll_s <= 0:
            raise ConfigError("lease_s, window_s and poll_s must be > 0")
        if not key:
            raise ConfigError("a shared limiter needs a non-empty key")
        self.name = name or key
        self.key = key
        self._url = redis if isinstance(redis, str) else None
        self._client: Redis | None = None if isinstance(redis, str) else redis
        self._max = max_concurrency
        self._rpm = rpm
        self._tpm = tpm
        self._lease_ms = int(lease_s * 1000)
        self._lease_s = lease_s
        self._window_ms = int(window_s * 1000)
        self._poll_s = poll_s
        self._clock: Clock = clock if clock is not None else RealClock()
        self._events = events
        tag = "{" + key + "}"  # one hash slot for every key: scripts work on a cluster too
        self._keys = [f"{tag}:holders", f"{tag}:rpm", f"{tag}:tpm", f"{tag}:tpm_tokens",
                      f"{tag}:tpm_used", f"{tag}:cap"]
        self._notify_channel = f"{tag}:free"
        self._token = uuid.uuid4().hex[:12]
        self._seq = itertools.count()
        self._scripts: dict[str, AsyncScript] = {}
        self._held: dict[str, Permit] = {}
        self._queue: deque[asyncio.Future[None]] = deque()
        self._change: asyncio.Future[None] | None = None
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._cap_seen: int | None = max_concurrency
        self._cap_write: asyncio.Task[Any] | None = None
        self._cap_pending: tuple[int, bool] | None = None
        self._hint_until = 0.0
        self._hint_reason = 0
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"RedisLimiter({self.key!r}, held_here={len(self._held)}, cap={self._cap_seen}, "
            f"rpm={self._rpm}, tpm={self._tpm})"
        )

    @property
    def in_flight(self) -> int:
        return len(self._held)

    @property
    def capacity(self) -> int | None:
        return self._cap_seen

    # -- plumbing --------------------------------------------------------------------

    def _redis(self) -> Redis:
        if self._client is None:
            import redis.asyncio as aioredis

            assert self._url is not None
            self._client = aioredis.from_url(self._url)
        return self._client

    def _script(self, name: str, text: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._redis().register_script(text)
        return script

    async def _run(self, name: str, text: str, keys: list[str], args: list[object]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await self._script(name, text)(keys=keys, args=args)  # type: ignore[arg-type]
        except RedisError as exc:
            raise RunError(
                f"shared limiter {self.key!r}: Redis failed ({type(exc).__name__}: {exc}); "
                "check that Redis is reachable, or make the channel's limits local "
                "(shared = false)"
            ) from exc

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            _log.warning("limiter %s: no running loop; the lease will expire instead", self.key)
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _check_tokens(self, tokens: int) -> None:
        if tokens < 0:
            raise ConfigError(f"tokens must be >= 0, got {tokens}")
        if self._tpm is not None and tokens > self._tpm:
            raise ConfigError(
                f"a request estimated at {tokens} tokens can never fit channel "
                f"{self.name}'s tpm={self._tpm}: raise the channel's tpm, lower max_tokens, "
                "or shorten the prompt"
            )

    # -- acquiring -------------------------------------------------------------------

    def try_acquire(self, tokens: int = 0) -> Permit | None:
        self._check_tokens(tokens)
        return None  # a shared limiter needs a round trip: use atry_acquire

    async def atry_acquire(self, tokens: int = 0) -> Permit | None:
        self._check_tokens(tokens)
        if self._queue or self._closed:
            return None
        return await self._attempt(tokens)

    async def _attempt(self, tokens: int) -> Permit | None:
        if self._cap_pending is not None:
            n, only_if_absent = self._cap_pending
            self._cap_pending = None
            self._write_cap(n, only_if_absent=only_if_absent)
        if self._cap_write is not None and not self._cap_write.done():
            await asyncio.wait((self._cap_write,))
        holder = f"{self._token}:{next(self._seq)}"
        args: list[object] = [holder, self._lease_ms, self._max or 0, self._rpm or 0,
                              self._tpm or 0, tokens, self._window_ms]
        call = asyncio.ensure_future(self._run("acquire", _ACQUIRE, self._keys, args))
        try:
            result = await asyncio.shield(call)
        except asyncio.CancelledError:
            # The script may still grant the slot after we stopped waiting: give it back.
            call.add_done_callback(lambda done: self._undo(done, holder))
            raise
        granted, wait_ms, cap, held, reason = (int(x) for x in result)
        if self._cap_write is None or self._cap_write.done():
            self._cap_seen = cap or None
        if granted:
            permit = Permit(self, tokens, held, holder)
            self._held[holder] = permit
            if self._heartbeat is None or self._heartbeat.done():
                self._heartbeat = asyncio.get_running_loop().create_task(self._renew_loop())
            return permit
        self._hint_until = self._clock.now() + max(wait_ms, 0) / 1000
        self._hint_reason = reason
        return None

    def _undo(self, call: asyncio.Future[Any], holder: str) -> None:
        if call.cancelled() or call.exception() is not None:
            return
        if int(call.result()[0]):
            self._spawn(self._release_holder(holder))

    async def acquire(self, tokens: int = 0, *, timeout: float | None = None) -> Permit:  # noqa: ASYNC109
        self._check_tokens(tokens)
        if self._closed:
            raise RunError(f"limiter {self.key!r} is closed")
        deadline = None if timeout is None else self._clock.now() + timeout
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._queue.append(turn)
        if len(self._queue) == 1:
            turn.set_result(None)
        try:
            if not turn.done() and not await self._wait(turn, deadline):
                raise self._deadline(timeout)
            return await self._acquire_as_head(tokens, deadline, timeout)
        finally:
            was_head = bool(self._queue) and self._queue[0] is turn
            self._queue.remove(turn)
            if was_head and self._queue and not self._queue[0].done():
                self._queue[0].set_result(None)

    async def _acquire_as_head(
        self, tokens: int, deadline: float | None, budget_s: float | None
    ) -> Permit:
        announced = False
        while True:
            if self._closed:
                raise RunError(f"limiter {self.key!r} was closed while this call waited")
            change = self._change_future()
            permit = await self._attempt(tokens)
            if permit is not None:
                return permit
            if not announced:
                announced = True
                events = self._events
                if events is not None and events.active:
                    events.emit(WAIT, channel=self.name, tokens=tokens, queued=len(self._queue))
            if self._listener is None:
                await self._start_listener()
                continue  # a release may have slipped in before we subscribed: ask again
            now = self._clock.now()
            if deadline is not None and now >= deadline:
                raise self._deadline(budget_s)
            until = now + min(self._poll_s, max(self._hint_until - now, 0.001))
            if deadline is not None:
                until = min(until, deadline)
            await self._wait(change, until)

    def _deadline(self, timeout: float | None) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"waited {timeout:g}s for capacity on shared channel {self.name} (cap "
            f"{self._cap_seen}, rpm {self._rpm}, tpm {self._tpm}); raise the deadline or "
            "the channel's limits"
        )

    async def _wait(self, fut: asyncio.Future[None], until: float | None) -> bool:
        """Wait for ``fut`` (never cancelling it: others may share it) or ``until``."""
        if fut.done():
            return True
        waiting: set[asyncio.Future[Any]] = {fut}
        sleeper = None
        if until is not None:
            sleeper = asyncio.ensure_future(self._clock.sleep(until - self._clock.now()))
            waiting.add(sleeper)
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if sleeper is not None:
                sleeper.cancel()
        return fut.done()

    def _change_future(self) -> asyncio.Future[None]:
        if self._change is None or self._change.done():
            self._change = asyncio.get_running_loop().create_future()
        return self._change

    def _notify(self) -> None:
        fut, self._change = self._change, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _start_listener(self) -> None:
        if self._listener is not None:
            return
        from redis.exceptions import RedisError

        pubsub = self._redis().pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._notify_channel)
        except RedisError as exc:
            _log.warning("limiter %s: cannot subscribe (%s); polling instead", self.key, exc)
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            return
        self._pubsub = pubsub
        self._listener = asyncio.get_running_loop().create_task(self._listen(pubsub))

    async def _listen(self, pubsub: PubSub) -> None:
        from redis.exceptions import RedisError

        while not self._closed:
            try:
                message = await pubsub.get_message(timeout=self._poll_s)
            except RedisError as exc:
                _log.warning("limiter %s: notifications lost (%s); polling", self.key, exc)
                await self._clock.sleep(self._poll_s)
                continue
            if message is not None:
                self._notify()

    # -- holding, releasing, settling ------------------------------------------------

    async def _renew_loop(self) -> None:
        while self._held and not self._closed:
            await self._clock.sleep(self._lease_s / 3)
            holders = list(self._held)
            if not holders:
                break
            try:
                lost = await self._run("renew", _RENEW, self._keys[:1],
                                       [self._lease_ms, *holders])
            except RunError as exc:
                _log.warning("%s", exc)
                continue
            for holder in lost:
                _log.warning(
                    "limiter %s: the lease of slot %s expired before renewal (event loop "
                    "blocked > %.1fs?); the slot may be reused", self.key, _as_str(holder),
                    self._lease_s,
                )

    def _release(self, permit: Permit) -> None:
        holder = str(permit._handle)
        self._held.pop(holder, None)
        self._spawn(self._release_holder(holder))

    async def _release_holder(self, holder: str) -> None:
        try:
            await self._run("release", _RELEASE, self._keys[:1], [holder, self._notify_channel])
        except RunError as exc:
            _log.warning("%s (the slot frees when its lease expires)", exc)
        self._notify()

    def _settle(self, permit: Permit, actual_tokens: int) -> None:
        reserved = permit.tokens
        permit.tokens = actual_tokens
        if self._tpm is not None:
            self._spawn(self._settle_holder(str(permit._handle), actual_tokens))
        events = self._events
        if events is not None and events.active:
            events.emit(SETTLE, channel=self.name, reserved=reserved, actual=actual_tokens)

    async def _settle_holder(self, holder: str, actual_tokens: int) -> None:
        try:
            await self._run("settle", _SETTLE, self._keys[3:5],
                            [holder, actual_tokens, self._notify_channel])
        except RunError as exc:
            _log.warning("%s (settlement of %s lost)", exc, holder)

    # -- capacity --------------------------------------------------------------------

    def set_capacity(self, n: int) -> None:
        if n < 1:
            raise ConfigError(f"capacity must be >= 1, got {n}")
        self._cap_seen = n
        self._write_cap(n, only_if_absent=False)

    def seed_capacity(self, n: int) -> None:
        if n < 1:
            raise ConfigError(f"capacity must be >= 1, got {n}")
        self._write_cap(n, only_if_absent=True)

    def _write_cap(self, n: int, *, only_if_absent: bool) -> None:
        previous = self._cap_write

        async def write() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait((previous,))
            try:
                value = await self._run("set_cap", _SET_CAP, self._keys[5:6],
                                        [n, int(only_if_absent), _CAP_TTL_MS,
                                         self._notify_channel])
            except RunError as exc:
                _log.warning("%s (capacity %d not shared)", exc, n)
                return
            self._cap_seen = int(value)
            self._notify()

        try:
            self._cap_write = asyncio.get_running_loop().create_task(write())
        except RuntimeError:  # called outside a loop: the first acquire writes it
            write().close()
            self._cap_pending = (n, only_if_absent)

    # -- waiting for change ----------------------------------------------------------

    def retry_in(self, tokens: int = 0) -> float | None:
        self._check_tokens(tokens)
        if self._queue:
            return None
        remaining = self._hint_until - self._clock.now()
        if remaining <= 0:
            return 0.0
        return remaining if self._hint_reason in (2, 3) else None

    async def wait_for_change(self, timeout: float) -> None:  # noqa: ASYNC109
        wait = self.retry_in()
        if wait == 0.0 or timeout <= 0:
            await asyncio.sleep(0)
            return
        await self._start_listener()
        delay = min(timeout, self._poll_s if wait is None else wait)
        await self._wait(self._change_future(), self._clock.now() + delay)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._notify()
        for task in (self._heartbeat, self._listener):
            if task is not None:
                task.cancel()
        for holder in list(self._held):
            self._held.pop(holder, None)
            self._spawn(self._release_holder(holder))
        pending = [t for t in (*self._background, self._cap_write) if t is not None]
        await asyncio.gather(*pending, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        if self._url is not None and self._client is not None:
            await self._client.aclose()
