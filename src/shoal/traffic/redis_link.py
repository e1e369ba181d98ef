"""The Redis side of a shared limiter: connection, Lua calls, notifications, leases.

:class:`RedisLink` is the base of :class:`~shoal.traffic.redis_limits.RedisLimiter`
(the queue, the hand-over of slots and the capacity live there). It holds:

* the client (made from a URL on first use) and the registered Lua scripts; every
  call goes through :meth:`RedisLink._run`, which turns a Redis failure into a
  ``RunError`` saying what to check;
* the subscription to the key's release channel: a message wakes this process's
  waiters (``_notify``); Redis pub/sub is at-most-once, so waiters also poll;
* this process's holder ids (renewed after a fork) and the heartbeat that renews the
  leases of the slots it holds every ``lease_s/3``; releasing and settling a slot;
* the background tasks those spawn, awaited on close;
* bad weather at Redis: a command that Redis refused, cut or did not answer (within
  ``socket_timeout``, 5 s unless the URL sets one) raises :class:`RedisAway`, which
  waiters ride out with a backoff (:meth:`RedisLink._away_wait`) until their deadline;
  a slot released (or granted to a call that is gone) while Redis was away is an
  *orphan*, released again as soon as Redis answers rather than left to its lease.

``redis`` is imported only when this module is used.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from shoal.clock import Clock
from shoal.errors import RunError
from shoal.traffic import redis_scripts as lua
from shoal.traffic.limiter import Limiter, Permit

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

__all__ = ["RedisLink"]

_log = logging.getLogger("shoal.traffic.redis")
# A Redis that stops answering (not refusing: a black-holed route, a frozen node): its
# command fails after this, not never. Calls are bounded by their own deadline sooner.
SOCKET_TIMEOUT_S = 5.0
# Backoff between asks while Redis is away: from the first, doubling, to the most.
AWAY_FIRST_S = 0.05
AWAY_MAX_S = 1.0


class RedisAway(RunError):
    """Redis refused, cut or did not answer a limiter's command: the shared state is out
    of reach for now (a waiter waits it out until its deadline; see the module docstring)."""


def _as_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLink(Limiter):
    """Plumbing shared by Redis-backed limiters (see the module docstring); abstract."""

    def __init__(
        self,
        redis: Redis | str,
        *,
        key: str,
        max_concurrency: int | None,
        lease_s: float,
        poll_s: float,
        clock: Clock,
    ) -> None:
        self.key = key
        self._url = redis if isinstance(redis, str) else None
        self._client: Redis | None = None if isinstance(redis, str) else redis
        self._max = max_concurrency
        self._lease_ms = int(lease_s * 1000)
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._clock = clock
        tag = "{" + key + "}"  # one hash slot for every key: scripts work on a cluster too
        self._keys = [f"{tag}:holders", f"{tag}:rpm", f"{tag}:tpm", f"{tag}:tpm_tokens",
                      f"{tag}:tpm_used", f"{tag}:cap", f"{tag}:waiters", f"{tag}:yield",
                      f"{tag}:ceiling"]
        self._notify_channel = f"{tag}:free"
        self._token = uuid.uuid4().hex[:12]
        self._pid = os.getpid()
        self._seq = itertools.count()
        self._scripts: dict[str, AsyncScript] = {}
        self._held: dict[str, Permit] = {}
        self._change: asyncio.Future[None] | None = None
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        # Bad weather: since when Redis has not answered (None: it answers), the next
        # backoff, slots to release again once it does (holder -> when its lease lapses
        # anyway), the task that does that, and when subscribing may be tried again.
        self._away_since: float | None = None
        self._away_delay = AWAY_FIRST_S
        self._orphans: dict[str, float] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._listen_retry_at = 0.0

    # -- connection and Lua calls ----------------------------------------------------

    def _redis(self) -> Redis:
        if self._client is None:
            import redis.asyncio as aioredis

            assert self._url is not None
            # Options in the URL (?socket_timeout=…) win over these defaults.
            self._client = aioredis.from_url(self._url, socket_timeout=SOCKET_TIMEOUT_S,
                                             socket_connect_timeout=SOCKET_TIMEOUT_S)
        return self._client

    async def connect(self) -> None:
        """Connect, load the scripts and subscribe to release notifications now, rather
        than on the first acquire (optional: a warm-up for latency-sensitive starts)."""
        from redis.exceptions import RedisError

        client = self._redis()
        try:
            for text in (lua.ACQUIRE, lua.TRANSFER, lua.RELEASE, lua.SETTLE, lua.RENEW):
                await client.script_load(text)
        except RedisError as exc:
            raise self._failed(exc) from exc
        await self._start_listener()

    def _failed(self, exc: Exception) -> RunError:
        return RunError(
            f"shared limiter {self.key!r}: Redis failed ({type(exc).__name__}: {exc}); "
            "check that Redis is reachable, or make the channel's limits local "
            "(shared = false)"
        )

    def _script(self, name: str, text: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._redis().register_script(text)
        return script

    async def _run(self, name: str, text: str, keys: list[str], args: list[object]) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            result = await self._script(name, text)(keys=keys, args=args)  # type: ignore[arg-type]
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._away(exc) from exc
        except RedisError as exc:
            raise self._failed(exc) from exc
        if self._away_since is not None:
            self._back()
        return result

    # -- bad weather: Redis away ------------------------------------------------------

    def _away(self, exc: Exception) -> RedisAway:
        if self._away_since is None:
            self._away_since = self._clock.now()
            _log.warning(
                "shared limiter %s: Redis did not answer (%s: %s); calls wait for it up to "
                "their deadline, and slots released meanwhile are handed back when it "
                "answers", self.key, type(exc).__name__, exc)
        return RedisAway(
            f"shared limiter {self.key!r}: Redis did not answer ({type(exc).__name__}: {exc}); "
            "check that Redis is reachable, or make the channel's limits local "
            "(shared = false)")

    def _back(self) -> None:
        """Redis answered again: log how long it was away, flush the orphans."""
        since, self._away_since = self._away_since, None
        self._away_delay = AWAY_FIRST_S
        if since is not None:
            _log.warning("shared limiter %s: Redis answers again after %.1fs", self.key,
                         self._clock.now() - since)
        if self._orphans:
            self._flush_soon()

    async def _away_wait(self, exc: RedisAway, futs: tuple[asyncio.Future[Any], ...],
                         deadline: float | None) -> None:
        """Wait one backoff step while Redis is away (or until one of ``futs`` is done);
        past ``deadline`` (without one: ``lease_s`` after Redis went away, as long as
        slots held elsewhere last) raise instead: ``exc``, or with a deadline
        :class:`DeadlineExceeded` naming Redis, raised by the caller."""
        now = self._clock.now()
        since = self._away_since if self._away_since is not None else now
        limit = deadline if deadline is not None else since + self._lease_s
        if now >= limit:
            if deadline is None:
                raise RedisAway(f"{exc} (for {now - since:.1f}s)") from exc
            return
        await self._wait(futs, min(now + self._away_delay, limit))
        self._away_delay = min(self._away_delay * 2, AWAY_MAX_S)

    def _orphan(self, holder: str) -> None:
        """A slot Redis may still count (its release failed, or it was granted to a call
        that is gone): release it again once Redis answers (releasing is idempotent),
        unless its lease lapses first."""
        self._orphans[holder] = self._clock.now() + self._lease_s
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Keep one task releasing the orphans, backing off while Redis is away (on close,
        :meth:`_close_link` makes the last pass itself)."""
        if not self._closed and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(self._flush_orphans())

    async def _flush_orphans(self) -> None:
        delay = AWAY_FIRST_S
        while self._orphans and not self._closed:
            if await self._release_orphans():
                return
            await self._clock.sleep(delay)
            delay = min(delay * 2, AWAY_MAX_S)

    async def _release_orphans(self) -> bool:
        """One pass over the orphans; True when none is left to try."""
        for holder, lapses in list(self._orphans.items()):
            if self._clock.now() < lapses:
                try:
                    await self._run("release", lua.RELEASE,
                                    [self._keys[0], self._keys[6], self._keys[7]],
                                    [holder, self._notify_channel, "", lua.YIELD_MS])
                except RedisAway:
                    return False
                except RunError as exc:
                    _log.warning("%s (the slot frees when its lease expires)", exc)
            self._orphans.pop(holder, None)
        self._notify()
        return True

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            _log.warning("limiter %s: no running loop; the lease will expire instead", self.key)
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _holder(self) -> str:
        if os.getpid() != self._pid:
            # A forked child must not reuse its parent's holder ids: two processes on one
            # sorted-set member would count as one slot.
            self._pid = os.getpid()
            self._token = uuid.uuid4().hex[:12]
        return f"{self._token}:{next(self._seq)}"

    # -- notifications ---------------------------------------------------------------

    async def _wait(self, futs: tuple[asyncio.Future[Any], ...], until: float | None) -> bool:
        """Wait until one of ``futs`` is done (never cancelling them: others may share
        them) or the clock reaches ``until``; True when one is done."""
        if any(f.done() for f in futs):
            return True
        waiting: set[asyncio.Future[Any]] = set(futs)
        sleeper = None
        if until is not None:
            sleeper = asyncio.ensure_future(self._clock.sleep(until - self._clock.now()))
            waiting.add(sleeper)
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if sleeper is not None:
                sleeper.cancel()
        return any(f.done() for f in futs)

    def _change_future(self) -> asyncio.Future[None]:
        if self._change is None or self._change.done():
            self._change = asyncio.get_running_loop().create_future()
        return self._change

    def _notify(self) -> None:
        fut, self._change = self._change, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _start_listener(self) -> None:
        if self._listener is not None or self._clock.now() < self._listen_retry_at:
            return
        from redis.exceptions import RedisError

        pubsub = self._redis().pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._notify_channel)
        except (RedisError, OSError) as exc:
            # Polled meanwhile; asked again no sooner than a poll later (not once a loop).
            self._listen_retry_at = self._clock.now() + self._poll_s
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

    # -- leases: the heartbeat, releasing, settling ----------------------------------

    async def _renew_loop(self) -> None:
        """The heartbeat: while this process holds slots, renew their leases every
        ``lease_s/3``, so a call slower than the lease keeps its slot."""
        while self._held and not self._closed:
            await self._clock.sleep(self._lease_s / 3)
            holders = list(self._held)
            if not holders:
                break
            try:
                back, lost = await self._run(
                    "renew", lua.RENEW, [self._keys[0], self._keys[5]],
                    [self._lease_ms, self._max or 0, *holders])
            except Exception as exc:  # the heartbeat must outlive any failure
                _log.warning("limiter %s: lease renewal failed (%s); retrying", self.key, exc)
                continue
            for holder in map(_as_str, back):
                if holder not in self._held:  # released while the renewal ran: undo
                    self._spawn(self._release_holder(holder))
                else:
                    _log.warning(
                        "limiter %s: the lease of slot %s expired before renewal (event loop "
                        "blocked > %.1fs?); it was free again and is held anew", self.key,
                        holder, self._lease_s)
            for holder in map(_as_str, lost):
                if holder in self._held:
                    _log.warning(
                        "limiter %s: the lease of slot %s expired before renewal (event loop "
                        "blocked > %.1fs?) and was reused: one call more than the cap is in "
                        "flight until it ends; raise lease_s", self.key, holder,
                        self._lease_s)

    async def _release_holder(self, holder: str, *, yielding: bool = False) -> None:
        keys = [self._keys[0], self._keys[6], self._keys[7]]
        args = [holder, self._notify_channel, self._token if yielding else "", lua.YIELD_MS]
        try:
            await self._run("release", lua.RELEASE, keys, args)
        except RedisAway:
            self._orphan(holder)  # handed back when Redis answers again
        except RunError as exc:
            _log.warning("%s (the slot frees when its lease expires)", exc)
        self._notify()

    async def _settle_holder(self, holder: str, actual_tokens: int) -> None:
        try:
            await self._run("settle", lua.SETTLE, self._keys[3:5],
                            [holder, actual_tokens, self._notify_channel])
        except RunError as exc:
            _log.warning("%s (settlement of %s lost)", exc, holder)

    async def _close_link(self, *also: asyncio.Task[Any] | None) -> None:
        """Stop the heartbeat and the listener, release the slots still held, await the
        background tasks (and ``also``), then close the subscription and an owned client."""
        for task in (self._heartbeat, self._listener, self._flusher):
            if task is not None:
                task.cancel()
        for holder in list(self._held):
            self._held.pop(holder, None)
            self._spawn(self._release_holder(holder))
        pending = [t for t in (*self._background, *also) if t is not None]
        await asyncio.gather(*pending, return_exceptions=True)
        if self._orphans:  # one last try; what Redis does not take lapses with its lease
            await self._release_orphans()
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        if self._url is not None and self._client is not None:
            await self._client.aclose()
