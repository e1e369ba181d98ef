"""Where alerts go: a log, a webhook, a Python callback.

A sink is anything with ``async send(alert)`` and ``async aclose()``. The
:class:`~shoal.observe.alerts.AlertEngine` already sends one firing per alert key; the
webhook de-duplicates again (a second engine, a retried tick) and rate-limits, because
a pager flooded by a storm is as useless as a silent one.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from shoal.clock import Clock, RealClock
from shoal.secrets import register_secret

if TYPE_CHECKING:
    import aiohttp

    from shoal.observe.alert_config import WebhookConfig
    from shoal.observe.alerts import Alert

__all__ = ["CallbackSink", "LogSink", "Sink", "WebhookSink"]

_log = logging.getLogger("shoal.alerts")


class Sink(Protocol):
    async def send(self, alert: Alert) -> None: ...

    async def aclose(self) -> None: ...


class LogSink:
    """Each alert as one log line (WARNING when firing, INFO when resolved)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or _log

    async def send(self, alert: Alert) -> None:
        level = logging.WARNING if alert.state == "firing" else logging.INFO
        self.logger.log(level, "alert %s [%s]: %s", alert.key, alert.state, alert.message)

    async def aclose(self) -> None:
        return None


class CallbackSink:
    """Calls ``callback(alert)``; a coroutine function is awaited."""

    def __init__(self, callback: Callable[[Alert], Any]) -> None:
        self.callback = callback

    async def send(self, alert: Alert) -> None:
        result = self.callback(alert)
        if inspect.isawaitable(result):
            await result

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"CallbackSink({getattr(self.callback, '__qualname__', self.callback)!r})"


class WebhookSink:
    """POSTs each alert as JSON (:meth:`Alert.to_json`) to ``url``.

    Retried on connection errors, 429 and 5xx (``backoff_s`` doubling, Retry-After
    honoured) up to ``attempts`` tries; another 4xx is logged and dropped. A firing
    alert whose key was already delivered and has not resolved is not sent again; at
    most ``max_per_minute`` alerts are posted per minute, the rest are dropped with a
    log line. The URL is never logged (a webhook URL is often its own credential):
    only its host.
    """

    def __init__(self, url: str, *, clock: Clock | None = None, attempts: int = 4,
                 backoff_s: float = 1.0, timeout_s: float = 10.0, max_per_minute: int = 20,
                 headers: dict[str, str] | None = None) -> None:
        register_secret(url)
        self._url = url
        self.host = urlsplit(url).netloc.rpartition("@")[2] or "(no host)"
        self.clock: Clock = clock if clock is not None else RealClock()
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        self.max_per_minute = max_per_minute
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.delivered: set[str] = set()  # keys firing and delivered
        self.dropped = 0
        self._sent_at: deque[float] = deque()
        self._session: aiohttp.ClientSession | None = None
        self._inflight: set[str] = set()

    @classmethod
    def from_config(cls, config: WebhookConfig, *, clock: Clock | None = None) -> WebhookSink:
        return cls(config.resolved_url(), clock=clock, attempts=config.attempts,
                   backoff_s=config.backoff_s, timeout_s=config.timeout_s,
                   max_per_minute=config.max_per_minute)

    def __repr__(self) -> str:
        return f"WebhookSink(host={self.host!r})"

    def _admit(self, alert: Alert) -> bool:
        key = alert.key
        if alert.state == "firing" and (key in self.delivered or key in self._inflight):
            return False  # de-duplicated while firing
        if alert.state == "resolved" and key not in self.delivered:
            return False  # nobody was told it fired
        now = self.clock.now()
        while self._sent_at and self._sent_at[0] <= now - 60.0:
            self._sent_at.popleft()
        if len(self._sent_at) >= self.max_per_minute:
            self.dropped += 1
            _log.warning("alert webhook to %s: rate limit of %d per minute reached, dropped "
                         "%s (%d dropped so far)", self.host, self.max_per_minute, key,
                         self.dropped)
            return False
        self._sent_at.append(now)
        return True

    async def send(self, alert: Alert) -> None:
        if not self._admit(alert):
            return
        key = alert.key
        self._inflight.add(key)
        try:
            ok = await self._post(json.dumps(alert.to_json()).encode())
        finally:
            self._inflight.discard(key)
        if alert.state == "resolved":
            self.delivered.discard(key)
        elif ok:
            self.delivered.add(key)

    async def _post(self, body: bytes) -> bool:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            why = ""
            try:
                async with self._session.post(self._url, data=body,
                                              headers=self.headers) as resp:
                    if resp.status < 300:
                        return True
                    why = f"HTTP {resp.status}"
                    if resp.status != 429 and resp.status < 500:
                        _log.error("alert webhook to %s refused the alert (%s); not retried",
                                   self.host, why)
                        return False
                    retry_after = resp.headers.get("Retry-After", "")
                    if retry_after.replace(".", "", 1).isdigit():
                        delay = max(delay, float(retry_after))
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = type(exc).__name__
            if attempt < self.attempts:
                _log.warning("alert webhook to %s failed (%s); retry %d in %.1fs", self.host,
                             why, attempt, delay)
                await self.clock.sleep(delay)
                delay *= 2
            else:
                _log.error("alert webhook to %s failed %d times (%s); alert dropped",
                           self.host, self.attempts, why)
        return False

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        await asyncio.sleep(0)
