"""A limiter shared by every process and host that uses the same Redis and key.

Same contract as :class:`~shoal.traffic.limits.LocalLimiter`, with the state in
Redis so that four replicas of a service share one provider's cap instead of
multiplying it by four:

* acquire, release, settle and lease renewal are each ONE Lua script, so they are
  atomic; scripts read Redis server time (``TIME``), never a client clock;
* a configured ``max_concurrency`` is a hard ceiling: a learned (adaptive) cap found
  under the key never lifts it, so the provider never sees more than it;
* each held slot is a member of a sorted set scored by its lease expiry; a
  heartbeat renews the leases of the slots this process holds every ``lease_s/3``
  (a call slower than the lease keeps its slot; a lease that lapsed while the loop
  stalled is taken back when the cap has room); a holder that dies (``kill -9``)
  stops renewing and its slots lapse within ``lease_s``, taken again by a waiter at
  most ``poll_s`` later;
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

The Redis plumbing (client, Lua calls, notifications) and the lease machinery (holder
ids, heartbeat, releasing and settling a slot) live in the base class,
:class:`~shoal.traffic.redis_link.RedisLink`; this module holds the queue, the
hand-over of slots and the capacity.

``redis`` is imported only when this module is used.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from shoal.clock import Clock, RealClock
from shoal.errors import ConfigError, DeadlineExceeded, RunError
from shoal.observe.events import SETTLE, WAIT, EventBus
from shoal.traffic import redis_scripts as lua
from shoal.traffic.limiter import WINDOW_S, Permit, check_tokens
from shoal.traffic.redis_link import RedisAway, RedisLink

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisLimiter"]

_log = logging.getLogger("shoal.traffic.redis")
# A process hands a freed slot straight to its own next waiter at most this many times
# in a row; then the slot is offered to every process (fairness across replicas).
_MAX_LOCAL_STREAK = 8


class _Waiter:
    """A call queued in this process. ``turn`` resolves when it is the head (the one
    that asks Redis); ``grant`` when a releasing call handed it a slot directly."""

    __slots__ = ("gone", "grant", "taken", "tokens", "transferring", "turn")

    def __init__(self, loop: asyncio.AbstractEventLoop, tokens: int) -> None:
        self.tokens = tokens
        self.turn: asyncio.Future[None] = loop.create_future()
        self.grant: asyncio.Future[Permit] = loop.create_future()
        self.transferring = False
        self.gone = False
        self.taken: Permit | None = None


class RedisLimiter(RedisLink):
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
        try:  # import now (~0.2 s): not on the first call's latency
            importlib.import_module("redis.asyncio")
        except ImportError as exc:
            raise ConfigError(
                "shared limits need the redis client: pip install 'shoal[redis]'"
            ) from exc
        self.name = name or key
        super().__init__(
            redis, key=key, max_concurrency=max_concurrency, lease_s=lease_s, poll_s=poll_s,
            clock=clock if clock is not None else RealClock(),
        )
        self._rpm = rpm
        self._tpm = tpm
        self._window_ms = int(window_s * 1000)
        self._events = events
        self._waiter_ttl_ms = max(500, int(2000 * poll_s))
        self._queue: deque[_Waiter] = deque()
        self._streak = 0
        self._cap_seen: int | None = max_concurrency
        self._ceiling_seen: int | None = None
        self._cap_write: asyncio.Task[Any] | None = None
        self._cap_pending: tuple[int, bool, int | None] | None = None
        self._hint_until = 0.0
        self._hint_reason = 0

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

    @property
    def ceiling(self) -> int | None:
        return self._ceiling_seen

    @property
    def counts_tokens(self) -> bool:
        return self._tpm is not None

    def _check_tokens(self, tokens: int) -> None:
        check_tokens(self.name, tokens, self._tpm)

    # -- acquiring -------------------------------------------------------------------

    def try_acquire(self, tokens: int = 0) -> Permit | None:
        self._check_tokens(tokens)
        return None  # a shared limiter needs a round trip: use atry_acquire

    async def atry_acquire(self, tokens: int = 0) -> Permit | None:
        self._check_tokens(tokens)
        if self._queue or self._closed:
            return None
        return await self._attempt(tokens)

    def _args(self, holder: str, tokens: int) -> list[object]:
        more = int(len(self._queue) > 1)  # calls of this process still queued after this one
        return [holder, self._lease_ms, self._max or 0, self._rpm or 0, self._tpm or 0,
                tokens, self._window_ms, self._token, more, self._waiter_ttl_ms]

    def _granted(self, result: Any, holder: str, tokens: int) -> Permit | None:
        """Record a script's answer; the permit when it granted the slot."""
        granted, wait_ms, cap, held, reason, ceiling = (int(x) for x in result)
        if self._cap_write is None or self._cap_write.done():
            self._cap_seen = cap or None
            self._ceiling_seen = ceiling or None
        if not granted:
            self._hint_until = self._clock.now() + max(wait_ms, 0) / 1000
            self._hint_reason = reason
            return None
        permit = Permit(self, tokens, held, holder)
        self._held[holder] = permit
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._renew_loop())
        return permit

    async def _attempt(
        self, tokens: int, grant: asyncio.Future[Permit] | None = None,
        until: float | None = None,
    ) -> Permit | None:
        """Ask Redis for a slot; stop waiting for the answer early when ``grant`` (a local
        hand-over) comes first. Raises :class:`RedisAway` when Redis refused or cut the
        ask, or did not answer by ``until`` (the call's deadline)."""
        if self._cap_pending is not None:
            n, only_if_absent, ceiling = self._cap_pending
            self._cap_pending = None
            self._write_cap(n, only_if_absent=only_if_absent, ceiling=ceiling)
        if self._cap_write is not None and not self._cap_write.done() \
                and not await self._wait((self._cap_write,), until):
            raise RedisAway(f"shared limiter {self.key!r}: Redis did not answer in time")
        holder = self._holder()
        call = asyncio.ensure_future(
            self._run("acquire", lua.ACQUIRE, self._keys, self._args(holder, tokens))
        )
        try:
            await self._wait((call,) if grant is None else (call, grant), until)
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: self._undo(done, holder))
            raise
        if not call.done():
            # The script may still grant the slot: give it back when it does.
            call.add_done_callback(lambda done: self._undo(done, holder))
            if grant is not None and grant.done():
                return None
            raise RedisAway(f"shared limiter {self.key!r}: Redis did not answer in time")
        try:
            result = call.result()
        except RedisAway:
            self._orphan(holder)  # the script may have run before the link broke
            raise
        return self._granted(result, holder, tokens)

    def _undo(self, call: asyncio.Future[Any], holder: str) -> None:
        if call.cancelled():
            return
        if isinstance(call.exception(), RedisAway):
            self._orphan(holder)
        elif call.exception() is None and int(call.result()[0]):
            self._spawn(self._release_holder(holder))

    async def acquire(self, tokens: int = 0, *, timeout: float | None = None) -> Permit:  # noqa: ASYNC109
        self._check_tokens(tokens)
        if self._closed:
            raise RunError(f"limiter {self.key!r} is closed")
        deadline = None if timeout is None else self._clock.now() + timeout
        waiter = _Waiter(asyncio.get_running_loop(), tokens)
        self._queue.append(waiter)
        if len(self._queue) == 1:
            waiter.turn.set_result(None)
        try:
            permit = await self._acquire_queued(waiter, deadline, timeout)
            waiter.taken = permit
            return permit
        finally:
            self._leave(waiter)

    def _leave(self, waiter: _Waiter) -> None:
        waiter.gone = True
        was_head = self._queue[0] is waiter
        self._queue.remove(waiter)
        grant = waiter.grant
        if grant.done() and not grant.cancelled() and grant.result() is not waiter.taken:
            grant.result().release()  # handed over as the call left: return it
        grant.cancel()
        if was_head and self._queue and not self._queue[0].turn.done():
            self._queue[0].turn.set_result(None)

    async def _acquire_queued(
        self, waiter: _Waiter, deadline: float | None, budget_s: float | None
    ) -> Permit:
        announced = len(self._queue) > 1
        if announced:
            self._emit_wait(waiter.tokens)  # queued behind calls of this process
        while True:
            if waiter.grant.done():
                return waiter.grant.result()
            if self._closed:
                raise RunError(f"limiter {self.key!r} was closed while this call waited")
            if not waiter.turn.done():
                if not await self._wait((waiter.turn, waiter.grant), deadline):
                    raise self._deadline(budget_s)
                continue
            change = self._change_future()
            try:
                permit = await self._attempt(waiter.tokens, waiter.grant, deadline)
            except RedisAway as exc:
                # Redis away: capacity unknown, so nothing is admitted; wait it out with a
                # backoff up to the call's deadline (the shared cap is never guessed).
                await self._away_wait(exc, (waiter.grant,), deadline)
                if deadline is not None and self._clock.now() >= deadline:
                    raise self._redis_deadline(budget_s, exc) from exc
                continue
            if permit is not None:
                return permit
            if not announced:
                announced = True
                self._emit_wait(waiter.tokens)
            if self._listener is None and self._clock.now() >= self._listen_retry_at:
                await self._start_listener()
                continue  # a release may have slipped in before we subscribed: ask again
            now = self._clock.now()
            if deadline is not None and now >= deadline:
                raise self._deadline(budget_s)
            until = now + min(self._poll_s, max(self._hint_until - now, 0.001))
            if deadline is not None:
                until = min(until, deadline)
            await self._wait((change, waiter.grant), until)

    def _emit_wait(self, tokens: int) -> None:
        events = self._events
        if events is not None and events.active:
            events.emit(WAIT, channel=self.name, tokens=tokens, in_flight=len(self._held),
                        queued=len(self._queue))

    def _redis_deadline(self, timeout: float | None, exc: RedisAway) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"waited {timeout:g}s for capacity on shared channel {self.name} while Redis did "
            f"not answer ({exc}); nothing was sent. Check Redis, or make the channel's "
            "limits local (shared = false)")

    def _deadline(self, timeout: float | None) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"waited {timeout:g}s for capacity on shared channel {self.name} (cap "
            f"{self._cap_seen}, rpm {self._rpm}, tpm {self._tpm}); raise the deadline or "
            "the channel's limits"
        )

    # -- releasing, settling --------------------------------------------------------

    def _release(self, permit: Permit) -> None:
        holder = str(permit._handle)
        self._held.pop(holder, None)
        target = None
        if self._streak < _MAX_LOCAL_STREAK and not self._closed:
            target = next(
                (w for w in self._queue if not w.transferring and not w.grant.done()), None
            )
        if target is None:
            # With calls still queued here (the streak is spent), stand back so that
            # another process's waiter gets this slot.
            yielding = not self._closed and any(not w.grant.done() for w in self._queue)
            self._streak = 0
            self._spawn(self._release_holder(holder, yielding=yielding))
            return
        self._streak += 1
        if self._rpm is None and self._tpm is None:
            # Only concurrency is limited: the slot (and its lease) passes to the next
            # call of this process as it is, with no round trip.
            handed = Permit(self, target.tokens, permit.in_flight, holder)
            self._held[holder] = handed
            target.grant.set_result(handed)
            return
        target.transferring = True
        self._spawn(self._transfer(holder, target))

    async def _transfer(self, old: str, waiter: _Waiter) -> None:
        """Release ``old`` and admit ``waiter`` in one round trip."""
        holder = self._holder()
        args = [*self._args(holder, waiter.tokens), old, self._notify_channel]
        try:
            result = await self._run("transfer", lua.TRANSFER, self._keys, args)
        except RunError as exc:
            if isinstance(exc, RedisAway):  # either may have happened: undo both later
                self._orphan(old)
                self._orphan(holder)
            else:
                _log.warning("%s (the slot frees when its lease expires)", exc)
            waiter.transferring = False
            self._notify()
            return
        waiter.transferring = False
        permit = self._granted(result, holder, waiter.tokens)
        if permit is None:
            self._notify()  # the slot went to the pool: let the head ask again
        elif waiter.gone or waiter.grant.done():
            permit.release()  # the waiter left meanwhile: pass it on
        else:
            waiter.grant.set_result(permit)

    def _settle(self, permit: Permit, actual_tokens: int) -> None:
        reserved = permit.tokens
        permit.tokens = actual_tokens
        if self._tpm is not None:  # without a TPM window there is no reservation to correct
            self._spawn(self._settle_holder(str(permit._handle), actual_tokens))
            events = self._events
            if events is not None and events.active:
                events.emit(SETTLE, channel=self.name, reserved=reserved,
                            actual=actual_tokens)

    # -- capacity --------------------------------------------------------------------

    def set_capacity(self, n: int, *, ceiling: int | None = None) -> None:
        if n < 1:
            raise ConfigError(f"capacity must be >= 1, got {n}")
        self._cap_seen = n
        self._ceiling_seen = ceiling
        if self._max is not None and n > self._max:
            # The configured cap is a ceiling over caps read from Redis (a stale learned
            # one), not over this process's own explicit choice.
            self._max = n
        self._write_cap(n, only_if_absent=False, ceiling=ceiling)

    def seed_capacity(self, n: int) -> None:
        if n < 1:
            raise ConfigError(f"capacity must be >= 1, got {n}")
        self._write_cap(n, only_if_absent=True, ceiling=None)

    def _write_cap(self, n: int, *, only_if_absent: bool, ceiling: int | None) -> None:
        previous = self._cap_write

        async def write() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait((previous,))
            try:
                cap, ceil = await self._run(
                    "set_cap", lua.SET_CAP, [self._keys[5], self._keys[8]],
                    [n, int(only_if_absent), lua.CAP_TTL_MS, self._notify_channel,
                     "" if ceiling is None else ceiling])
            except RunError as exc:
                _log.warning("%s (capacity %d not shared)", exc, n)
                return
            self._cap_seen = int(cap)
            self._ceiling_seen = int(ceil) or None
            self._notify()

        try:
            self._cap_write = asyncio.get_running_loop().create_task(write())
        except RuntimeError:  # called outside a loop: the first acquire writes it
            write().close()
            self._cap_pending = (n, only_if_absent, ceiling)

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
        await self._wait((self._change_future(),), self._clock.now() + delay)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._close_link(self._cap_write)
