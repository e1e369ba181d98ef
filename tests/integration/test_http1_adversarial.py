"""Adversarial tests of shoal's HTTP/1.1 client (shoal.providers.http1) against raw TCP
(and TLS) servers on 127.0.0.1: pool accounting under cancellation at each await, races
between a hand-off and a cancel or a pool_timeout, odd but legal answers, big bodies,
streams, and a self-signed certificate. The pool's counters are read, never patched."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
from scripted_http import Recorded, read_request

from shoal.providers.http1 import (
    BadHTTP,
    ConnectFailed,
    Http1Pool,
    ReadTimeout,
    Response,
    ServerDisconnected,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]
HEADERS = {"Content-Type": "application/json"}


class Server(Recorded):
    """Counts connections (total, live, most live at once) and keeps each request."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.max_live = 0
        self.writers: list[asyncio.StreamWriter] = []

    def url(self, path: str = "/v1/x") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


@asynccontextmanager
async def serve(answer: Handler, ssl_ctx: ssl.SSLContext | None = None
                ) -> AsyncIterator[Server]:
    server = Server()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        server.live += 1
        server.max_live = max(server.max_live, server.live)
        server.writers.append(writer)
        try:
            await answer(reader, writer, server)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError,
                ssl.SSLError):
            pass
        finally:
            server.live -= 1
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_ctx)
    server.port = srv.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        srv.close()


def keep_alive(answer: bytes, delay: float = 0.0) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      server: Server) -> None:
        while await read_request(reader, server):
            if delay:
                await asyncio.sleep(delay)
            writer.write(answer)
            await writer.drain()
    return handler


def once_then_silent(answer: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      server: Server) -> None:
        await read_request(reader, server)
        writer.write(answer)
        await reader.read()  # until the client goes
    return handler


def script(*answers: bytes) -> Handler:
    """Answers requests with ``answers`` in order, across connections."""
    it = iter(answers)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      server: Server) -> None:
        while await read_request(reader, server):
            writer.write(next(it))
    return handler


def pool(**kw: float) -> Http1Pool:
    args = {"limit": 10, "connect_timeout": 5.0, "read_timeout": 5.0, "pool_timeout": 5.0}
    args.update(kw)
    return Http1Pool(limit=int(args["limit"]), connect_timeout=args["connect_timeout"],
                     read_timeout=args["read_timeout"], pool_timeout=args["pool_timeout"])


async def post(p: Http1Pool, server: Server, body: bytes = b"{}") -> tuple[int, bytes]:
    resp = await p.post(server.url(), data=body, headers=HEADERS)
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll observable state (the server's counters, the pool's) until ``cond`` holds."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def consistent(p: Http1Pool, server: Server, live: int) -> None:
    """Once things settle, ``live`` connections are open, as both ends count them."""
    await until(lambda: server.live == live)
    for _ in range(5):
        await asyncio.sleep(0)
    assert p._open == server.live == live


async def test_cancel_at_every_await_keeps_the_count_and_wakes_the_next() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      server: Server) -> None:
        while await read_request(reader, server):
            if server.bodies[-1] == b"hold":
                await reader.read()  # never answers; ends when the client closes
                return
            if server.bodies[-1] == b"head":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12")
                await writer.drain()
                await reader.read()  # the rest never comes; ends when the client closes
                return
            writer.write(ok())
            await writer.drain()

    async with serve(handler) as server:
        p = pool(limit=2)
        # both slots busy: one awaiting headers, one reading a body
        t_head = asyncio.create_task(post(p, server, b"hold"))
        r_body = await p.post(server.url(), data=b"head", headers=HEADERS)
        await until(lambda: len(server.bodies) == 2)
        t_wait = asyncio.create_task(post(p, server))  # waits for a pooled connection
        await until(lambda: len(p._waiters) == 1)
        t_wait.cancel()
        t_head.cancel()
        for t in (t_wait, t_head):
            with pytest.raises(asyncio.CancelledError):
                await t
        reading = asyncio.create_task(r_body.read())
        await asyncio.sleep(0)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        r_body.release()
        await consistent(p, server, 0)
        results = await asyncio.wait_for(asyncio.gather(*(post(p, server) for _ in range(5))), 5)
        assert results == [(200, b'{"ok":true}')] * 5
        assert server.max_live <= 2
        await p.aclose()


async def test_cancel_while_connecting_at_each_loop_step_keeps_the_count() -> None:
    async with serve(keep_alive(ok(), delay=0.05)) as server:
        p = pool(limit=1)

        async def go() -> Response:
            return await p.post(server.url(), data=b"{}", headers=HEADERS)

        for steps in range(12):  # one of these lands between transport and return
            task = asyncio.create_task(go())
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            with suppress(asyncio.CancelledError):
                (await task).close()
            await until(lambda: server.live == 0)
        await asyncio.sleep(0.1)  # any late accept of a cancelled connect has run
        await until(lambda: server.live == 0)
        server.max_live = 0
        await asyncio.gather(*(post(p, server) for _ in range(3)))
        assert server.max_live <= 1, f"limit 1, {server.max_live} at once; _open={p._open}"
        await p.aclose()


@pytest.mark.parametrize("hand", ["connection", "slot"])
async def test_a_waiter_cancelled_as_it_is_handed_passes_it_on(hand: str) -> None:
    async with serve(keep_alive(ok())) as server:
        p = pool(limit=1)
        resp = await p.post(server.url(), data=b"{}", headers=HEADERS)
        await resp.read()
        first = asyncio.create_task(post(p, server))
        second = asyncio.create_task(post(p, server))
        await until(lambda: len(p._waiters) == 2)
        if hand == "connection":
            resp.release()  # sets ``first``'s waiter to the connection...
            first.cancel()  # ...and its task is cancelled before it runs
        else:
            resp.close()  # connection_lost, next loop step, hands ``first`` a free slot
            asyncio.get_running_loop().call_soon(first.cancel)  # just after that
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await asyncio.wait_for(second, 2) == (200, b'{"ok":true}')
        await consistent(p, server, 1)
        await p.aclose()


# pool_timeout fired in the loop step the waiter was handed a connection (once: never
# pooled nor closed, still counted) or a free slot (once: the next waiter never woken)
@pytest.mark.parametrize("hand", ["connection", "slot"])
async def test_a_pool_timeout_racing_a_hand_off_passes_it_on(hand: str) -> None:
    async with serve(keep_alive(ok())) as server:
        p = pool(limit=1, pool_timeout=0.1)
        resp = await p.post(server.url(), data=b"{}", headers=HEADERS)
        await resp.read()
        first = asyncio.create_task(post(p, server))
        await until(lambda: len(p._waiters) == 1)
        time.sleep(0.15)  # block the loop: ``first``'s pool_timeout timer is due, not run
        second = asyncio.create_task(post(p, server))  # queues with a fresh pool_timeout
        if hand == "connection":  # released in the next step, just before that timer
            asyncio.get_running_loop().call_soon(resp.release)
        else:  # closed: connection_lost hands ``first`` a slot just before that timer
            resp.close()
        await asyncio.gather(first, return_exceptions=True)  # PoolTimeout is fair here
        assert await asyncio.wait_for(second, 2) == (200, b'{"ok":true}')
        await consistent(p, server, 1)
        await p.aclose()


async def test_idle_connections_to_another_host_do_not_starve_a_request() -> None:
    async with serve(keep_alive(ok())) as a, serve(keep_alive(ok())) as b:
        p = pool(limit=1, pool_timeout=0.3)
        assert await post(p, a) == (200, b'{"ok":true}')  # leaves one idle connection to a
        assert await post(p, b) == (200, b'{"ok":true}')
        await p.aclose()


async def test_200_concurrent_requests_through_10_connections() -> None:
    async with serve(keep_alive(ok(), delay=0.001)) as server:
        p = pool(limit=10)
        results = await asyncio.gather(*(post(p, server, b"%d" % i) for i in range(200)))
        assert results == [(200, b'{"ok":true}')] * 200
        assert server.max_live <= 10 and len(server.bodies) == 200
        assert sorted(server.bodies) == sorted(b"%d" % i for i in range(200))
        await consistent(p, server, 10)
        await p.aclose()


async def test_an_idle_connection_the_server_closed_is_noticed_and_not_reused() -> None:
    async with serve(keep_alive(ok())) as server:
        p = pool()
        assert await post(p, server) == (200, b'{"ok":true}')
        server.writers[0].close()  # FIN while idle
        await until(lambda: p._open == 0)
        assert await post(p, server) == (200, b'{"ok":true}')
        assert server.connections == 2
        await p.aclose()


async def test_a_fin_racing_the_request_is_server_disconnected_and_the_pool_recovers() -> None:
    async with serve(keep_alive(ok())) as server:
        p = pool()
        assert await post(p, server) == (200, b'{"ok":true}')
        sock = server.writers[0].get_extra_info("socket")
        sock.shutdown(socket.SHUT_WR)  # the FIN is on its way; the loop has not seen it
        with pytest.raises(ServerDisconnected, match="before answering"):
            await post(p, server)
        await until(lambda: p._open == 0)
        assert await post(p, server) == (200, b'{"ok":true}')
        await consistent(p, server, 1)
        await p.aclose()


async def test_no_body_interim_and_odd_status_lines_keep_the_connection() -> None:
    answers = [b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\n\r\n",
               b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}",  # no reason phrase
               b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n[]",
               b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"()")]
    async with serve(script(*answers)) as server:
        p = pool()
        got = [await post(p, server) for _ in answers]
        assert got == [(204, b""), (304, b""), (200, b"{}"), (200, b"[]"), (200, b"()")]
        assert server.connections == 1
        await p.aclose()


async def test_a_second_answer_in_the_same_segment_is_not_mixed_into_the_first() -> None:
    two = ok(b'{"a":1}') + b"HTTP/1.1 500 Oops\r\nContent-Length: 7\r\n\r\n{\"b\":2}"
    async with serve(keep_alive(two)) as server:
        p = pool()
        assert await post(p, server) == (200, b'{"a":1}')
        await p.aclose()


async def test_bytes_after_an_answer_or_while_idle_close_the_connection() -> None:
    async with serve(script(ok() + b"\x00garbage", ok(), ok())) as server:
        p = pool()
        assert await post(p, server) == (200, b'{"ok":true}')  # garbage after it: closed
        assert await post(p, server) == (200, b'{"ok":true}')
        await consistent(p, server, 1)
        server.writers[1].write(b"HTTP/1.1 200 OK\r\n")  # nobody asked: closed
        await until(lambda: p._open == 0)
        assert await post(p, server) == (200, b'{"ok":true}')
        assert server.connections == 3
        await p.aclose()


async def test_chunk_extensions_are_skipped() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3;ext=1\r\nabc\r\n2;a=\"q\"\r\nde\r\n0\r\n\r\n")
    async with serve(keep_alive(chunked)) as server:
        p = pool()
        assert [await post(p, server) for _ in range(2)] == [(200, b"abcde")] * 2
        assert server.connections == 1
        await p.aclose()


async def test_trailers_do_not_leak_into_the_next_answer() -> None:
    trailers = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\nab\r\n0\r\nX-Trailer: t\r\nContent-Encoding: gzip\r\n\r\n")
    async with serve(script(trailers, ok())) as server:
        p = pool()
        assert await post(p, server) == (200, b"ab")
        resp = await p.post(server.url(), data=b"{}", headers=HEADERS)
        try:
            assert "x-trailer" not in resp.headers
            assert await resp.read() == b'{"ok":true}'  # now BadEncoding (gzip)
        finally:
            resp.release()
        await p.aclose()


async def test_odd_headers_and_framing() -> None:
    both = (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n3\r\nabc\r\n0\r\n\r\n")
    fold = b"HTTP/1.1 200 OK\r\nX-F: a\r\n b\r\nContent-Length: 2\r\n\r\nok"
    async with serve(script(both, ok(b"ok", b"X-N: caf\xc3\xa9\r\n"), fold)) as server:
        p = pool()
        with pytest.raises(BadHTTP):  # request smuggling's favourite: refused
            await post(p, server)
        resp = await p.post(server.url(), data=b"{}", headers=HEADERS)
        assert resp.headers["x-n"].encode("latin-1").decode() == "café"
        resp.release()
        with pytest.raises(BadHTTP, match="whitespace"):  # obs-fold: llhttp refuses it
            await post(p, server)
        await consistent(p, server, 0)
        await p.aclose()


async def test_a_101_switching_protocols_is_bad_http() -> None:
    answer = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\n\r\n")
    async with serve(keep_alive(answer)) as server:
        p = pool()
        with pytest.raises(BadHTTP):
            await post(p, server)
        await p.aclose()


async def test_an_early_413_while_a_5mb_body_is_written_is_read() -> None:
    big = b"x" * (5 * 1024 * 1024)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      server: Server) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Large\r\nConnection: close\r\nContent-Length: 2\r\n"
                     b"\r\n{}")
        await writer.drain()
        while await reader.read(65536):  # drain the rest, then close: no RST
            pass

    async with serve(handler) as server:
        p = pool()
        assert await post(p, server, big) == (413, b"{}")
        await consistent(p, server, 0)
        await p.aclose()
    async with serve(keep_alive(ok())) as server:
        p = pool()
        assert await post(p, server, big) == (200, b'{"ok":true}')
        assert server.bodies == [big]
        await p.aclose()


def stream_handler(pieces: int, every: float) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      server: Server) -> None:
        await read_request(reader, server)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(pieces):
            writer.write(b"%x\r\n%b\r\n" % (len(b"%d," % i), b"%d," % i))
            await writer.drain()
            await asyncio.sleep(every)
        writer.write(b"0\r\n\r\n")
        await reader.read()
    return handler


async def stream(p: Http1Pool, server: Server) -> bytes:
    resp = await p.post(server.url(), data=b"{}", headers=HEADERS)
    try:
        return b"".join([chunk async for chunk in resp.content.iter_any()])
    finally:
        resp.release()


async def test_a_20mb_body_read_whole_and_streamed() -> None:
    body = bytes(range(256)) * (20 * 4096)
    async with serve(keep_alive(ok(body))) as server:
        p = pool()
        assert await post(p, server) == (200, body)
        assert await stream(p, server) == body
        assert server.connections == 1
        await p.aclose()


async def test_10k_small_chunks_arrive_in_order() -> None:
    async with serve(stream_handler(10_000, 0)) as server:
        p = pool()
        assert await stream(p, server) == b"".join(b"%d," % i for i in range(10_000))
        await p.aclose()


async def test_a_slow_but_steady_stream_outlives_read_timeout() -> None:
    async with serve(stream_handler(8, 0.08)) as server:  # 0.64 s, a byte every 0.08 s
        p = pool(read_timeout=0.25)
        assert await stream(p, server) == b"".join(b"%d," % i for i in range(8))
        await p.aclose()


async def test_a_stream_left_early_closes_its_connection() -> None:
    async with serve(stream_handler(1000, 0.01)) as server:
        p = pool()
        async with p.post(server.url(), data=b"{}", headers=HEADERS) as resp:
            async for _ in resp.content.iter_any():
                break
        await consistent(p, server, 0)  # the server saw the client go
        assert not any(p._idle.values())
        await p.aclose()


async def test_async_with_releases_when_the_body_raises() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
    async with serve(once_then_silent(cut)) as server:
        p = pool(read_timeout=0.2)
        with pytest.raises(ReadTimeout):
            async with p.post(server.url(), data=b"{}", headers=HEADERS) as resp:
                await resp.read()
        await consistent(p, server, 0)
        with pytest.raises(KeyError):
            async with p.post(server.url(), data=b"{}", headers=HEADERS) as resp:
                raise KeyError("the caller's own error")
        await consistent(p, server, 0)
        await p.aclose()


def self_signed(tmp: Path) -> ssl.SSLContext:
    from cryptography import x509  # the dev extra's
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key, now, day = ec.generate_private_key(ec.SECP256R1()), datetime.datetime.now(
        datetime.UTC), datetime.timedelta(days=1)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - day).not_valid_after(now + day)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = tmp / "server.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pem)
    return ctx


async def test_a_self_signed_certificate_is_connect_failed(tmp_path: Path) -> None:
    async with serve(keep_alive(ok()), ssl_ctx=self_signed(tmp_path)) as server:
        p = pool(limit=1)
        url = f"https://127.0.0.1:{server.port}/v1/x"
        for _ in range(2):  # the slot comes back after a failed handshake
            with pytest.raises(ConnectFailed, match="certificate verify failed"):
                await asyncio.wait_for(p.post(url, data=b"{}", headers=HEADERS), 5)
        assert p._open == 0 and server.heads == []
        await p.aclose()
