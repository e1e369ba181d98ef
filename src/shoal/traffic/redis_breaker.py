"""A circuit breaker shared by every process that uses a channel, through Redis.

Each process keeps its own :class:`~shoal.traffic.breaker.CircuitBreaker` (``allow()``
stays a local, synchronous check on the hot path); :class:`SharedBreaker` carries its
*decisions* across processes:

* a local trip (open) is written to ``shoal:breaker:{channel}`` with the time it ends
  (wall clock, milliseconds; the key expires then) and published on the same name: every
  other process opens its breaker until that time, without sending a call to learn what
  the first one learned (a dead channel costs the fleet one trip, not one per replica);
* a local close (a successful probe, or ``reset()`` after fixing a key) deletes the key
  and is published: the others close too, instead of each probing on its own;
* a process that starts, or whose subscription missed a message (Redis pub/sub is
  at-most-once), reads the key: at start and every ``poll_s``.

What is not shared: the failure counts. Each process decides a trip from what it saw;
once one trips, all are open. Half-open probes are per process (at most
``half_open_max`` each), and the first success closes every breaker.

``redis`` is imported only when this module is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from shoal import errors as shoal_errors
from shoal.secrets import redact
from shoal.traffic.breaker import BreakerState, CircuitBreaker

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["SharedBreaker"]

_log = logging.getLogger("shoal.traffic.redis")


def _error_from(kind: str, message: str) -> BaseException:
    """The remote trip's error, as the same shoal error type (so messages and the
    Router's key refresh behave as for a local one)."""
    cls = getattr(shoal_errors, kind, None)
    text = f"{message} (seen by another process sharing this channel)"
    if isinstance(cls, type) and issubclass(cls, shoal_errors.ProviderError):
        try:
            return cls(text)
        except TypeError:
            pass
    return shoal_errors.ProviderUnavailable(text)


class SharedBreaker:
    """Publishes ``breaker``'s trips and closes on Redis and applies the other
    processes'. Start it with :meth:`start` inside the event loop; :meth:`aclose` ends it."""

    def __init__(self, redis: Redis, breaker: CircuitBreaker, *, poll_s: float = 1.0,
                 prefix: str = "shoal:breaker:") -> None:
        self._redis = redis
        self.breaker = breaker
        self.key = f"{prefix}{breaker.name}"
        self._poll_s = poll_s
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        breaker.on_change = self._local_change

    # -- outgoing: this process decided ------------------------------------------------

    def _local_change(self, before: BreakerState, to: BreakerState) -> None:
        if to is BreakerState.OPEN:
            retry_at = self.breaker.retry_at
            remaining = 0.0 if retry_at is None else retry_at - self.breaker._clock.now()
            if remaining <= 0:
                return
            err = self.breaker.last_error
            body = json.dumps({
                "until_ms": int((time.time() + remaining) * 1000),
                "kind": type(err).__name__ if err is not None else "ProviderUnavailable",
                "message": redact(str(err))[:500] if err is not None else "",
            })
            self._spawn(self._publish_open(body, remaining))
        elif to is BreakerState.CLOSED and before is not BreakerState.CLOSED:
            self._spawn(self._publish_close())

    async def _publish_open(self, body: str, remaining: float) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.set(self.key, body, px=max(1, int(remaining * 1000)))
            await self._redis.publish(self.key, body)
        except RedisError as exc:
            _log.warning("breaker %s: could not share its trip (%s)", self.key, exc)

    async def _publish_close(self) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.delete(self.key)
            await self._redis.publish(self.key, "close")
        except RedisError as exc:
            _log.warning("breaker %s: could not share its close (%s)", self.key, exc)

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- incoming: another process decided ---------------------------------------------

    def apply(self, payload: str | bytes | None) -> None:
        """Apply a published message or the key's value (None: no trip is in force)."""
        if isinstance(payload, bytes):
            payload = payload.decode()
        if payload is None or payload == "close":
            if payload == "close":
                self.breaker.apply_remote_close()
            return
        try:
            data = json.loads(payload)
            remaining = int(data["until_ms"]) / 1000 - time.time()
        except (ValueError, KeyError, TypeError):
            _log.warning("breaker %s: ignoring a malformed shared state %r", self.key,
                         payload[:200])
            return
        if remaining > 0:
            err = _error_from(str(data.get("kind", "")), str(data.get("message", "")))
            self.breaker.apply_remote_open(remaining, err)

    def start_soon(self) -> None:
        """:meth:`start` as a task when an event loop runs (a lane built outside one
        shares its own trips but follows the others' only once started)."""
        self._spawn(self.start())  # (without a loop, _spawn drops it)

    async def start(self) -> None:
        """Read the shared state now and follow it from here on."""
        if self._task is not None or self._closed:
            return
        from redis.exceptions import RedisError

        try:
            self.apply(await self._redis.get(self.key))
        except RedisError as exc:
            _log.warning("breaker %s: cannot read the shared state (%s)", self.key, exc)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        from redis.exceptions import RedisError

        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        subscribed, away = False, False
        try:
            while not self._closed:
                try:
                    if not subscribed:  # inside the loop: Redis may be away at start too
                        await pubsub.subscribe(self.key)
                        subscribed = True
                    message = await pubsub.get_message(timeout=self._poll_s)
                    if message is not None:
                        self.apply(message.get("data"))
                    elif self.breaker._state is BreakerState.CLOSED:
                        # pub/sub is at-most-once: a trip we missed is still in the key
                        self.apply(await self._redis.get(self.key))
                    if away:
                        away = False
                        _log.warning("breaker %s: shared state is back", self.key)
                except RedisError as exc:
                    if not away:  # once per outage, not every poll
                        away = True
                        _log.warning("breaker %s: shared state unavailable (%s); this "
                                     "process's own breaker goes on alone until Redis "
                                     "answers", self.key, exc)
                    await asyncio.sleep(self._poll_s)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        self._closed = True
        if self.breaker.on_change == self._local_change:
            self.breaker.on_change = None
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # never raised over what the caller is closing after
                _log.exception("breaker %s: its follower failed", self.key)
