"""The no-keys mode that notices the first virtual key.

A gateway started before any ``shoal keys create`` serves without keys (loopback only).
It used to stay that way until restarted: a key created afterwards was never asked for,
its budget, limits and allowed models never applied and its spend never recorded, and a
revoked key "kept working" (as the anonymous caller). :class:`WatchedKeys` serves
anonymously while the store holds no active key, looks at the store again at most once
per ``every_s`` (the same second a running gateway takes to see a revocation), and from
the first active key on hands every call to :class:`~shoal.gateway.keys.StoreKeys`:
callers must then present a key, as after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from shoal.clock import Clock, RealClock
from shoal.gateway.keys_api import KeyGrant, OpenKeys, VirtualKey
from shoal.stores import missing_sqlite_file
from shoal.types import Usage

__all__ = ["WatchedKeys"]

_log = logging.getLogger("shoal.gateway")


class WatchedKeys:
    """Anonymous callers until the store at ``url`` holds an active key, then its keys."""

    def __init__(self, url: str, *, redis: str | None = None, every_s: float = 1.0,
                 clock: Clock | None = None) -> None:
        self._url = url
        self._redis = redis
        self._every_s = every_s
        self._clock = clock or RealClock()
        self._open = OpenKeys()
        self._keys: Any = None  # StoreKeys, opened on the first look at an existing store
        self._on = False
        self._next = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"WatchedKeys({self._url!r}, keys={'on' if self._on else 'off'})"

    @property
    def required(self) -> bool:
        return self._on

    async def _look(self) -> None:
        """At most once per ``every_s``: has a key been created since?"""
        if self._on or self._clock.now() < self._next:
            return
        async with self._lock:
            if self._on or self._clock.now() < self._next:
                return
            self._next = self._clock.now() + self._every_s
            if missing_sqlite_file(self._url) is not None:  # whatever ?options follow
                return  # no store yet: no key was created
            if self._keys is None:
                from shoal.gateway.keys import StoreKeys

                self._keys = StoreKeys(self._url, redis=self._redis)
            try:
                active = await self._keys.active_keys()
            except Exception as exc:  # keep serving as started; say why keys are not on
                _log.warning("shoal gateway: cannot read virtual keys from the store (%s: %s)",
                             type(exc).__name__, exc)
                return
            if active:
                self._on = True
                _log.warning("shoal gateway: a virtual key was created since the start: "
                             "every call now needs a virtual key")

    async def authenticate(self, presented: str | None) -> VirtualKey:
        await self._look()
        if self._on:
            key: VirtualKey = await self._keys.authenticate(presented)
            return key
        return await self._open.authenticate(presented)

    def _anonymous(self, key: VirtualKey) -> bool:
        return key == OpenKeys._ANON

    def check_model(self, key: VirtualKey, model: str) -> None:
        if not self._anonymous(key):
            self._keys.check_model(key, model)

    async def admit(self, key: VirtualKey, *, model: str, tokens: int,
                    max_cost_usd: float) -> KeyGrant:
        if self._anonymous(key):
            return await self._open.admit(key, model=model, tokens=tokens,
                                          max_cost_usd=max_cost_usd)
        grant: KeyGrant = await self._keys.admit(key, model=model, tokens=tokens,
                                                 max_cost_usd=max_cost_usd)
        return grant

    def settlement(self, grant: KeyGrant, *, usage: Usage,
                   cost_usd: float) -> Coroutine[Any, Any, None] | None:
        """As :meth:`StoreKeys.settlement`; an anonymous grant is only marked settled."""
        if self._anonymous(grant.key):
            grant.settled = True
            return None
        work: Coroutine[Any, Any, None] | None = self._keys.settlement(
            grant, usage=usage, cost_usd=cost_usd)
        return work

    async def settle(self, grant: KeyGrant, *, usage: Usage, cost_usd: float) -> None:
        work = self.settlement(grant, usage=usage, cost_usd=cost_usd)
        if work is not None:
            await work

    async def ready(self) -> bool:
        """For ``GET /ready``: once keys are on, the store must answer."""
        if self._on:
            await self._keys.active_keys()
        return True

    @property
    def lost_spend(self) -> int:
        return 0 if self._keys is None else int(self._keys.lost_spend)

    async def aclose(self) -> None:
        if self._keys is not None:
            await self._keys.aclose()
