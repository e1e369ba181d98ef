"""One pooled aiohttp session per channel, created inside the running loop.

aiohttp was chosen by measurement (docs/DECISIONS.md: ~240 µs of client CPU per
call vs ~3,200 µs for httpx 0.28). Its timeouts map to shoal's as:
``pool_timeout`` → waiting for a free pooled connection (aiohttp ``connect``,
which also covers connecting), ``connect_timeout`` → TCP/TLS connect
(``sock_connect``), ``read_timeout`` → silence between bytes while reading
(``sock_read``). aiohttp has no separate write timeout; request bodies are small
and land in the kernel's send buffer, so a stuck peer shows up as a read timeout.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from shoal import __version__

if TYPE_CHECKING:
    import aiohttp

__all__ = ["USER_AGENT", "HttpPool"]

USER_AGENT = f"shoal/{__version__}"


class HttpPool:
    """Lazily-created ``aiohttp.ClientSession`` with the channel's limits."""

    def __init__(
        self,
        *,
        pool_size: int = 100,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        pool_timeout: float = 30.0,
    ) -> None:
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is not None and self._loop is asyncio.get_running_loop():
            return session
        if self._closed:
            raise RuntimeError("HttpPool is closed")
        import aiohttp

        loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(
            limit=self.pool_size, limit_per_host=self.pool_size, ttl_dns_cache=300,
            enable_cleanup_closed=False,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.pool_timeout + self.connect_timeout,
            sock_connect=self.connect_timeout,
            sock_read=self.read_timeout,
        )
        # Adapters send their own User-Agent, so aiohttp has no auto header to add
        # (skip_auto_headers took a slower path: measured +5 µs per call).
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        self._loop = loop
        return self._session

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
