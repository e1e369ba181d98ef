"""A TCP proxy a test controls, to make a real service (Redis, PostgreSQL) go away,
come back, or stop answering, without touching the service itself.

``TcpProxy(host, port)`` picks its own free port at once (so a URL can name it before
``start()``) and forwards every connection to the target:

* ``stop()`` closes the port and cuts every link: new connections are refused by the
  OS (the service "went away"); ``start()`` listens again (it "came back");
* ``down()`` keeps listening but accepts-and-drops new connections (counted in
  ``refused``) and cuts the links; ``up = True`` lets connections through again;
* ``cut()`` cuts the links only: pooled connections die, the service stays reachable;
* ``stall()`` stops forwarding bytes on every link, old and new, without closing any
  (a service that accepts and never answers); ``unstall()`` forwards again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``host``:``target_port`` (see the module docstring)."""

    def __init__(self, host: str, target_port: int) -> None:
        self.target = (host, target_port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self.up = True
        self.refused = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    def url_for(self, url: str) -> str:
        """``url`` with the target's ``host:port`` replaced by the proxy's."""
        host, port = self.target
        return url.replace(f"{host}:{port}", f"127.0.0.1:{self.port}")

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()

    def down(self) -> None:
        self.up = False
        self.cut()

    def cut(self) -> None:
        for writer in self._links:
            writer.transport.abort()
        self._links.clear()

    def stall(self) -> None:
        self._flowing.clear()

    def unstall(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        self.unstall()
        self.down()
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    await self._flowing.wait()  # a stall holds the bytes, closes nothing
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links -= {writer, up_writer}
