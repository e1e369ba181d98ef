"""shoal's own HTTP/1.1 client for the provider POSTs: a keep-alive pool over asyncio
transports, responses parsed by httptools (llhttp, the parser Node.js uses).

Why not aiohttp's client (docs/DECISIONS.md, "Hot-path HTTP client"): the provider
adapters need one thing from HTTP, a POST of a ready body to one host, its answer read
whole or as it arrives, and aiohttp's general client (cookies, redirects, tracing hooks,
URL objects, middlewares, per-request timer contexts) costs ~6× the instructions of that
one thing (callgrind: ~420k against ~70k a call at 50 concurrent). What this client
keeps from aiohttp's behaviour, because the hot path depends on it in bad weather:

- a cancelled request closes its connection at once (a call's deadline, a gateway
  client that left): the provider sees the request end and nothing is left running;
- a read timeout is silence while reading (``read_timeout``: no byte for that long),
  told apart from a connect timeout (``connect_timeout``) and from waiting for a pooled
  connection (``pool_timeout``): the error says whether the request was sent;
- a body cut before its end is an error, never a short answer; a connection the server
  closes (``Connection: close``, HTTP/1.0, an error) is not pooled again;
- redirects are never followed; ``gzip``/``deflate`` bodies are decoded, though none is
  asked for (no ``Accept-Encoding`` is sent: answers are small, streams are not
  compressed, and decoding costs CPU on every call).

Errors are the classes below, each a subclass of the stdlib exception it is a case of;
:func:`shoal.providers.failures.error_from_transport` maps them to shoal's errors.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import zlib
from collections import deque
from collections.abc import AsyncIterator, Generator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httptools

__all__ = ["BadEncoding", "BadHTTP", "BodyCut", "ConnectFailed", "ConnectTimeout",
           "Headers", "Http1Pool", "InvalidHeader", "InvalidURL", "PoolTimeout",
           "ReadTimeout", "Response", "ServerDisconnected", "WireError"]

KEEP_IDLE_S = 15.0  # an idle pooled connection older than this is closed, not reused
# The most header bytes an answer may carry: more is not HTTP a provider sends (the
# official SDKs' httpx stops at 100 KB; aiohttp's default was 8,190 bytes a line).
MAX_HEADER_BYTES = 64 * 1024
_NO_BODY = frozenset((204, 304))
_FRAMING_LENGTHS = frozenset((len(b"content-length"), len(b"transfer-encoding"),
                              len(b"content-encoding")))
_PATH_SAFE = "/?&=%:@!$'()*+,;~-._"


class WireError(Exception):
    """Base of this client's errors."""


class InvalidURL(WireError, ValueError):
    """The URL is not ``http(s)://host[:port]/path``."""


class ConnectTimeout(WireError, TimeoutError):
    """No connection within ``connect_timeout``: nothing was sent."""


class PoolTimeout(WireError, TimeoutError):
    """Every pooled connection stayed busy for ``pool_timeout``: nothing was sent."""


class ReadTimeout(WireError, TimeoutError):
    """The request was sent and the server stayed silent for ``read_timeout``."""


class ConnectFailed(WireError, ConnectionError):
    """Connecting failed (refused, unreachable, TLS): nothing was sent."""

    def __init__(self, message: str, os_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class ServerDisconnected(WireError, ConnectionError):
    """The server closed the connection before its answer's first byte."""


class BodyCut(WireError, ConnectionError):
    """The server closed the connection before the answer's body ended."""


class BadHTTP(WireError, ValueError):
    """The server's bytes are not a valid HTTP/1.1 response."""


class BadEncoding(WireError, ValueError):
    """The body's ``Content-Encoding`` could not be decoded."""

    def __init__(self, message: str, encoding: str) -> None:
        super().__init__(message)
        self.encoding = encoding


class InvalidHeader(WireError, ValueError):
    """A request header HTTP cannot carry (a line break, NUL, a bad name)."""


class Headers(Mapping[str, str]):
    """A response's headers, looked up case-insensitively (repeated ones joined by
    ``", "``)."""

    __slots__ = ("_d",)

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        d: dict[str, str] = {}
        for raw_name, raw_value in pairs:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            d[name] = f"{d[name]}, {value}" if name in d else value
        self._d = d

    def __getitem__(self, key: str) -> str:
        return self._d[key.lower()]

    def get(self, key: str, default: Any = None) -> Any:
        return self._d.get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._d

    def __iter__(self) -> Any:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"Headers({self._d!r})"


class _Decoder:
    """A ``Content-Encoding`` undone as the body arrives."""

    __slots__ = ("_first", "_name", "_started", "_z")

    def __init__(self, name: str) -> None:
        self._name = name
        # gzip: its header; deflate: zlib-wrapped, as RFC 9110 says (raw tried below)
        self._z = self._first = zlib.decompressobj(
            16 + zlib.MAX_WBITS if name == "gzip" else zlib.MAX_WBITS)
        self._started = False  # a first chunk decoded: no second guess at the format

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._z.decompress(data)
        except zlib.error as exc:
            if not self._started and self._z is self._first and self._name == "deflate":
                # what some servers send as "deflate": the stream without zlib's wrapper
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                return self.feed(data)
            raise BadEncoding(f"the body's Content-Encoding {self._name} does not decode "
                              f"({exc})", self._name) from None
        self._started = True
        return out

    def end(self) -> bytes:
        if not self._z.eof:
            raise BadEncoding(f"the body's Content-Encoding {self._name} ended early",
                              self._name)
        return self._z.flush()


def _decoder(encoding: str | None) -> _Decoder | None:
    if not encoding or encoding.strip().lower() == "identity":
        return None
    name = encoding.strip().lower()
    if name in ("gzip", "x-gzip"):
        return _Decoder("gzip")
    if name == "deflate":
        return _Decoder("deflate")
    raise BadEncoding(f"the body's Content-Encoding {encoding!r} is not one shoal decodes "
                      "(gzip, deflate), and none was asked for", encoding.strip())


class Response:
    """One answer: ``status`` and ``headers`` once they arrived, the body read whole
    (:meth:`read`) or as it arrives (``content.iter_any()``). :meth:`release` hands the
    connection back to the pool when the body was read to its end, else closes it."""

    __slots__ = ("_chunks", "_conn", "_decoder", "_done", "_error", "_headers", "_pairs",
                 "_waiter", "status")

    def __init__(self, conn: _Conn) -> None:
        self._conn: _Conn | None = conn
        self.status = 0
        self._pairs: list[tuple[bytes, bytes]] = []
        self._headers: Headers | None = None
        self._chunks: deque[bytes] = deque()
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: _Decoder | None = None

    @property
    def content(self) -> Response:
        """aiohttp's spelling, ``resp.content.iter_any()`` (a property, not an attribute
        holding ``self``: that cycle left every answer to the garbage collector)."""
        return self

    @property
    def headers(self) -> Headers:
        """The answer's headers (decoded on first look: a 200 answer's are never read)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = Headers(self._pairs)
        return headers

    # -- fed by the connection -----------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.feed(data)
            except BadEncoding as exc:
                self._fail(exc)
                return
        if data:
            self._chunks.append(data)
            self._wake()

    def _finish(self) -> None:
        if self._decoder is not None:
            try:
                tail = self._decoder.end()
            except BadEncoding as exc:
                self._fail(exc)
                return
            if tail:
                self._chunks.append(tail)
        self._done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self._done:
            self._error = exc
            conn = self._conn
            if conn is not None:
                conn.abort()
        self._wake()

    # -- read by the caller --------------------------------------------------------------

    async def _more(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        except BaseException:  # cancelled while reading: the connection cannot be reused
            self.close()
            raise

    async def read(self) -> bytes:
        """The whole body (decoded); raises :class:`BodyCut`, :class:`ReadTimeout` or
        :class:`BadEncoding` when it cannot be had."""
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._more()
        if self._error is not None:
            raise self._error
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return body

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive."""
        chunks = self._chunks
        while True:
            while chunks:
                yield chunks.popleft()
            if self._error is not None:
                raise self._error
            if self._done:
                return
            await self._more()

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release(self._done and self._error is None)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release(False)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()




class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one exchange at a time."""

    def __init__(self, pool: Http1Pool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.head: asyncio.Future[None] | None = None  # set once the headers arrived
        self.lost = False
        self.counted = False  # holds one of the pool's ``limit`` (set once connected)
        self.reusable = False
        self.idle_since = 0.0
        self._pairs: list[tuple[bytes, bytes]] = []
        self._framed = False  # Content-Length or chunked: the body's end is in the bytes
        self._encoding: bytes | None = None  # Content-Encoding
        self._header_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._read_timeout = pool.read_timeout
        self._loop = pool.loop

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for: the connection is unusable
            self.abort()
            return
        self._last = self._loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error(BadHTTP("the server switched protocols (HTTP 101) on a plain POST"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # a callback's own error (too many header bytes)
            self._error(cause if isinstance(cause, BadHTTP)
                        else BadHTTP(f"not a valid HTTP/1.1 response ({exc})"))

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        self.pool._lost(self)
        response = self.response
        if response is None:
            return
        if self.head is not None:  # no status line yet
            self._error(ServerDisconnected(
                "the server closed the connection before answering"
                + (f" ({exc})" if exc else "")))
        elif not response._done:
            if not self._framed and response.status not in _NO_BODY:
                response._finish()  # a body read until the connection closes
            else:
                self._error(BodyCut("the server closed the connection before the body "
                                    "ended" + (f" ({exc})" if exc else "")))
        self._stop_timer()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        response = self.response
        if response is None or response._done:
            raise BadHTTP("the server sent an answer nobody asked for (a second answer "
                          "after the first, on a connection that is not pipelined)")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._pairs.append((name, value))
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise BadHTTP(f"the answer's headers are larger than {MAX_HEADER_BYTES:,} bytes")
        if len(name) in _FRAMING_LENGTHS:  # the three headers that say how to read the body
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding"
                                              and b"chunked" in value.lower()):
                self._framed = True
            elif lower == b"content-encoding":
                self._encoding = value

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        pairs, self._pairs = self._pairs, []
        self._header_bytes = 0
        encoding, self._encoding = self._encoding, None
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self._framed = False
            return
        response = self.response
        if response is None:
            return
        response.status = status
        response._pairs = pairs
        if encoding is not None:
            try:
                response._decoder = _decoder(encoding.decode("latin-1"))
            except BadEncoding as exc:
                response._error = exc
        head, self.head = self.head, None
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None and response._error is None:
            response._feed(body)

    def on_message_complete(self) -> None:
        if self.head is not None:  # the interim answer's end
            return
        response = self.response
        if response is None:
            return
        self.reusable = self.parser.should_keep_alive()
        self._framed = False
        self._pairs, self._header_bytes, self._encoding = [], 0, None  # a chunked trailer's
        if response._error is None:
            response._finish()
        else:
            response._wake()

    # -- the exchange --------------------------------------------------------------------

    def send(self, data: bytes) -> Response:
        response = self.response = Response(self)
        self.head = self._loop.create_future()
        self.reusable = False
        self._last = now = self._loop.time()
        if self._timer is None:  # one timer per connection, moved on only when it fires
            self._timer = self._loop.call_at(now + self._read_timeout, self._check_read)
        assert self.transport is not None
        self.transport.write(data)
        return response

    def _check_read(self) -> None:
        """``read_timeout`` after the last byte (or the request): silence is an error.
        The timer is not cancelled when an answer ends, only not armed again while the
        connection is idle: a call pays no timer of its own."""
        self._timer = None
        response = self.response
        if response is None or response._done:
            return
        due = self._last + self._read_timeout
        if self._loop.time() >= due:
            self._error(ReadTimeout(f"no data within read_timeout "
                                    f"({self._read_timeout:g}s)"))
        else:
            self._timer = self._loop.call_at(due, self._check_read)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _error(self, exc: BaseException) -> None:
        self._stop_timer()
        head, self.head = self.head, None
        if head is not None and not head.done():
            head.set_exception(exc)
        response = self.response
        if response is not None:
            response._fail(exc)
        self.abort()

    def abort(self) -> None:
        self.reusable = False
        transport = self.transport
        if transport is not None and not self.lost:
            transport.abort()

    def release(self, complete: bool) -> None:
        """The caller is done with the exchange."""
        self.response = None
        if self.head is not None:
            self.head.cancel()
            self.head = None
        if not (complete and self.reusable and not self.lost):
            self.abort()
        self.pool._release(self, complete and self.reusable and not self.lost)


class _Target:
    """A URL, split once: where to connect and the request's first lines."""

    __slots__ = ("head", "key", "tls")

    def __init__(self, url: str) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise InvalidURL(f"{url!r}: {exc}") from None
        scheme, host = parts.scheme.lower(), parts.hostname
        if scheme not in ("http", "https") or not host:
            raise InvalidURL(f"{url!r} is not an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise InvalidURL(f"{url!r} holds a user name or password")
        self.tls = scheme == "https"
        port = port or (443 if self.tls else 80)
        self.key = (scheme, host, port)
        # what is not URL-safe in the path is percent-encoded, as browsers and aiohttp do
        path = quote(parts.path or "/", safe=_PATH_SAFE) + (
            f"?{quote(parts.query, safe=_PATH_SAFE)}" if parts.query else "")
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidURL(f"{url!r}: its host does not encode ({exc})") from None
        default = port == (443 if self.tls else 80)
        host_header = (f"[{ascii_host}]" if ":" in ascii_host else ascii_host) + (
            "" if default else f":{port}")
        self.head = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode("ascii")


def _header_block(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if not name or any(c in name for c in " \t\r\n:") or any(
                c in str(value) for c in "\r\n\0"):
            raise InvalidHeader(f"header {name!r} has a character HTTP forbids in it "
                             "(a line break, NUL, or a space or colon in its name)")
        if name.lower() in ("content-length", "host", "transfer-encoding", "connection"):
            continue  # the client's own
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("utf-8")


class Http1Pool:
    """Keep-alive connections to the hosts a channel posts to, at most ``limit`` open."""

    def __init__(self, *, limit: int, connect_timeout: float, read_timeout: float,
                 pool_timeout: float) -> None:
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self.loop = asyncio.get_running_loop()
        self._open = 0
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._targets: dict[str, _Target] = {}
        self._blocks: dict[int, tuple[Mapping[str, str], bytes]] = {}
        self._ssl: ssl_module.SSLContext | None = None
        self.closed = False

    # -- what the adapters call ----------------------------------------------------------

    def post(self, url: str, *, data: bytes, headers: Mapping[str, str],
             allow_redirects: bool = False) -> _Posting:
        """POST ``data``; awaitable (a :class:`Response` once its headers arrived) or an
        ``async with`` that releases it. Redirects are never followed."""
        return _Posting(self._post(url, data, headers))

    async def _post(self, url: str, data: bytes, headers: Mapping[str, str]) -> Response:
        target = self._targets.get(url)
        if target is None:
            target = _Target(url)
            if len(self._targets) < 64:
                self._targets[url] = target
        # the adapters' header mappings are built once and never changed: their block is
        # cached by identity (the mapping kept, so its id cannot be reused meanwhile)
        cached = self._blocks.get(id(headers))
        if cached is not None and cached[0] is headers:
            block = cached[1]
        else:
            block = _header_block(headers)
            if len(self._blocks) > 256:  # a tagged call's headers are its own: keep few
                self._blocks.clear()
            self._blocks[id(headers)] = (headers, block)
        conn = await self._acquire(target)
        response = conn.send(b"%b%bContent-Length: %d\r\n\r\n%b" % (
            target.head, block, len(data), data))
        head = conn.head
        if head is not None:
            try:
                await head
            except BaseException:
                response.close()
                raise
        return response

    async def aclose(self) -> None:
        self.closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectFailed("the channel's HTTP pool was closed"))
        await asyncio.sleep(0)  # let the transports' connection_lost run

    # -- the pool ------------------------------------------------------------------------

    async def _acquire(self, target: _Target) -> _Conn:
        if self.closed:
            raise ConnectFailed("the channel's HTTP pool is closed")
        idle = self._idle.get(target.key)
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < KEEP_IDLE_S:
                return conn
            conn.abort()  # too old to trust: the server may be closing it right now
        while self._open >= self.limit and not self._evict_idle():
            waiter: asyncio.Future[_Conn | None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(self.pool_timeout):
                    handed = await waiter
            except TimeoutError:
                if not (waiter.done() and not waiter.cancelled()
                        and waiter.exception() is None):
                    raise PoolTimeout(f"all {self.limit} pooled connections stayed busy for "
                                      f"pool_timeout ({self.pool_timeout:g}s)") from None
                handed = waiter.result()  # handed over as the timeout fired: take it
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    got = waiter.result()
                    if got is not None:
                        self._release(got, True)
                    else:
                        self._wake_one()
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if handed is not None and handed.key == target.key and not handed.lost:
                return handed
            if handed is not None:
                handed.abort()
        self._open += 1  # reserved for this connection (``_connect`` hands it over)
        try:
            return await self._connect(target)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, target: _Target) -> _Conn:
        _, host, port = target.key
        ssl_context: ssl_module.SSLContext | None = None
        if target.tls:
            if self._ssl is None:
                self._ssl = ssl_module.create_default_context()
            ssl_context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Conn(self, target.key), host, port, ssl=ssl_context,
                    server_hostname=host if ssl_context is not None else None)
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {host}:{port} within connect_timeout "
                                 f"({self.connect_timeout:g}s)") from None
        except OSError as exc:
            raise ConnectFailed(f"{host}:{port}: {exc}", exc) from None
        if conn.lost:  # closed before it could be used: the caller's reservation is undone
            raise ServerDisconnected(f"{host}:{port} closed the connection at once")
        conn.counted = True  # from here its connection_lost gives the slot back
        return conn

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if reusable and not self.closed:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            conn.idle_since = self.loop.time()
            self._idle.setdefault(conn.key, []).append(conn)
            return
        if not conn.lost:
            conn.abort()  # its connection_lost lowers the count

    def _evict_idle(self) -> bool:
        """The pool is full: close the longest-idle connection (to any host) to make room;
        False when none is idle. A pool shared by several hosts is not starved by the
        idle connections of one."""
        oldest: _Conn | None = None
        for conns in self._idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is None:
            return False
        self._idle[oldest.key].remove(oldest)
        if oldest.counted:
            oldest.counted = False
            self._open -= 1
        oldest.abort()
        return True

    def _lost(self, conn: _Conn) -> None:
        if conn.counted:  # a connection made while its caller was cancelled never was
            conn.counted = False
            self._open -= 1
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # a slot is free: connect
                return


class _Posting:
    """``await pool.post(...)`` or ``async with pool.post(...) as response``."""

    __slots__ = ("_coro", "_response")

    def __init__(self, coro: Any) -> None:
        self._coro = coro
        self._response: Response | None = None

    def __await__(self) -> Generator[Any, None, Response]:
        return self._coro.__await__()  # type: ignore[no-any-return]

    async def __aenter__(self) -> Response:
        self._response = await self._coro
        return self._response

    async def __aexit__(self, *exc: object) -> None:
        if self._response is not None:
            self._response.release()
