"""shoal's HTTP/1.1 client (shoal.providers.http1) against a raw TCP server on 127.0.0.1
that answers with scripted bytes: keep-alive, framing, encodings, cuts, timeouts,
cancellation and the pool's limits, each as real servers do them."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from scripted_http import Recorded, read_request

from shoal.providers.http1 import (
    BadEncoding,
    BadHTTP,
    BodyCut,
    ConnectFailed,
    Http1Pool,
    InvalidHeader,
    InvalidURL,
    PoolTimeout,
    ReadTimeout,
    ServerDisconnected,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-test-0123456789"}


class Server(Recorded):
    """Counts connections and requests; each request's head is kept."""


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"%b\r\n%b" % (len(body), extra, body))


@asynccontextmanager
async def serve(answer: Handler) -> AsyncIterator[Server]:
    server = Server()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            await answer(reader, writer, server)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went, or the test ended
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.port = srv.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        srv.close()


def keep_alive(answer: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      server: Server) -> None:
        while await read_request(reader, server):
            writer.write(answer)
            await writer.drain()
    return handler


def once(answer: bytes, *, close: bool = True, then_wait: float = 0.0) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      server: Server) -> None:
        if await read_request(reader, server):
            writer.write(answer)
            await writer.drain()
            if then_wait:
                await asyncio.sleep(then_wait)
            if not close:
                await reader.read()  # until the client closes
                server.closed.set()
    return handler


def pool(**kw: float) -> Http1Pool:
    args = {"limit": 10, "connect_timeout": 5.0, "read_timeout": 5.0, "pool_timeout": 5.0}
    args.update(kw)
    return Http1Pool(limit=int(args["limit"]), connect_timeout=args["connect_timeout"],
                     read_timeout=args["read_timeout"], pool_timeout=args["pool_timeout"])


async def post(p: Http1Pool, server: Server, body: bytes = b'{"q":1}',
               path: str = "/v1/chat/completions") -> tuple[int, bytes]:
    resp = await p.post(f"http://127.0.0.1:{server.port}{path}", data=body, headers=HEADERS)
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


async def test_keep_alive_reuses_one_connection_and_sends_a_well_formed_request() -> None:
    async with serve(keep_alive(ok())) as server:
        p = pool()
        for _ in range(5):
            assert await post(p, server) == (200, b'{"ok":true}')
        await p.aclose()
    assert server.connections == 1
    head = server.heads[0].decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in head
    assert "Content-Length: 7\r\n" in head and "Authorization: Bearer" in head
    assert "Accept-Encoding" not in head  # no compression asked for
    assert server.bodies == [b'{"q":1}'] * 5


async def test_a_connection_the_server_closes_is_not_reused() -> None:
    async with serve(keep_alive(ok(extra=b"Connection: close\r\n"))) as server:
        p = pool()
        for _ in range(3):
            assert (await post(p, server))[0] == 200
        await p.aclose()
    assert server.connections == 3


async def test_chunked_and_read_until_close_bodies_arrive_whole() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4\r\n{\"a\"\r\n6\r\n:\"\xc3\xa9\"}\r\n0\r\n\r\n")
    async with serve(keep_alive(chunked)) as server:
        p = pool()
        assert await post(p, server) == (200, '{"a":"é"}'.encode())
        await p.aclose()
    until_close = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"b\":2}"
    async with serve(once(until_close)) as server:
        p = pool()
        assert await post(p, server) == (200, b'{"b":2}')
        await p.aclose()


async def test_a_body_cut_before_its_length_is_an_error_not_a_short_answer() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":"
    async with serve(once(cut)) as server:
        p = pool()
        resp = await p.post(f"http://127.0.0.1:{server.port}/x", data=b"{}", headers=HEADERS)
        assert resp.status == 200
        with pytest.raises(BodyCut, match="before the body ended"):
            await resp.read()
        resp.release()
        await p.aclose()


async def test_a_server_that_closes_before_answering_is_named() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            server: Server) -> None:
        await read_request(reader, server)

    async with serve(close_at_once) as server:
        p = pool()
        with pytest.raises(ServerDisconnected, match="before answering"):
            await post(p, server)
        await p.aclose()


async def test_gzip_and_deflate_bodies_are_decoded_and_a_corrupt_one_is_named() -> None:
    payload = b'{"text":"' + b"tide " * 200 + b'"}'
    for encoding, data in ((b"gzip", gzip.compress(payload)), (b"deflate", zlib.compress(payload)),
                           (b"deflate", zlib.compress(payload)[2:-4])):  # raw deflate
        async with serve(keep_alive(ok(data, b"Content-Encoding: " + encoding + b"\r\n"))
                         ) as server:
            p = pool()
            assert await post(p, server) == (200, payload)
            await p.aclose()
    corrupt = b"\x1f\x8b\x08\x00" + b"not gzip at all" * 4
    async with serve(keep_alive(ok(corrupt, b"Content-Encoding: gzip\r\n"))) as server:
        p = pool()
        with pytest.raises(BadEncoding, match="gzip"):
            await post(p, server)
        await p.aclose()
    async with serve(keep_alive(ok(b"xx", b"Content-Encoding: br\r\n"))) as server:
        p = pool()
        with pytest.raises(BadEncoding, match="'br'"):
            await post(p, server)
        await p.aclose()


async def test_an_interim_100_continue_is_skipped() -> None:
    async with serve(keep_alive(b"HTTP/1.1 100 Continue\r\n\r\n" + ok())) as server:
        p = pool()
        assert await post(p, server) == (200, b'{"ok":true}')
        assert await post(p, server) == (200, b'{"ok":true}')
        await p.aclose()
    assert server.connections == 1


async def test_not_http_is_bad_http() -> None:
    async with serve(once(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as server:
        p = pool()
        with pytest.raises(BadHTTP, match="not a valid HTTP"):
            await post(p, server)
        await p.aclose()


async def test_silence_after_the_request_is_a_read_timeout_and_closes_the_connection() -> None:
    async with serve(once(b"", close=False)) as server:
        p = pool(read_timeout=0.2)
        with pytest.raises(ReadTimeout, match="read_timeout"):
            await post(p, server)
        await asyncio.wait_for(server.closed.wait(), 5)  # the server saw the client go
        await p.aclose()


async def test_silence_in_the_middle_of_a_stream_is_a_read_timeout() -> None:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    async with serve(once(head + b"7\r\ndata: 1\r\n", close=False)) as server:
        p = pool(read_timeout=0.2)
        got: list[bytes] = []
        resp = await p.post(f"http://127.0.0.1:{server.port}/s", data=b"{}", headers=HEADERS)

        async def read_all() -> None:
            async for chunk in resp.content.iter_any():
                got.append(chunk)

        with pytest.raises(ReadTimeout):
            await read_all()
        resp.release()
        assert got == [b"data: 1"]
        await p.aclose()


async def test_a_cancelled_request_closes_its_connection_at_once() -> None:
    async with serve(once(b"", close=False)) as server:
        p = pool()
        task = asyncio.create_task(post(p, server))
        while not server.heads:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed.wait(), 5)
        assert p._open == 0
        await p.aclose()


async def test_the_pool_holds_at_most_limit_connections_and_times_out_waiting() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   server: Server) -> None:
        while await read_request(reader, server):
            await asyncio.sleep(0.1)
            writer.write(ok())
            await writer.drain()

    async with serve(slow) as server:
        p = pool(limit=2)
        results = await asyncio.gather(*(post(p, server) for _ in range(6)))
        assert all(r == (200, b'{"ok":true}') for r in results)
        assert server.connections == 2
        await p.aclose()
    async with serve(once(b"", close=False)) as server:
        p = pool(limit=1, pool_timeout=0.1)
        first = asyncio.create_task(post(p, server))
        while not server.heads:
            await asyncio.sleep(0.01)
        with pytest.raises(PoolTimeout, match="pool_timeout"):
            await post(p, server)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await p.aclose()


async def test_refused_and_bad_addresses_fail_before_anything_is_sent() -> None:
    async with serve(keep_alive(ok())) as server:
        port = server.port
    p = pool()
    with pytest.raises(ConnectFailed):
        await p.post(f"http://127.0.0.1:{port}/x", data=b"{}", headers=HEADERS)
    for url in ("ftp://127.0.0.1/x", "http:///x", "http://u:pw@127.0.0.1/x"):
        with pytest.raises(InvalidURL):
            await p.post(url, data=b"{}", headers=HEADERS)
    with pytest.raises(InvalidHeader, match="line break"):
        await p.post(f"http://127.0.0.1:{port}/x", data=b"{}",
                     headers={"X-Evil": "a\r\nHost: elsewhere"})
    await p.aclose()


async def test_an_idle_connection_too_old_to_trust_is_not_reused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import shoal.providers.http1 as http1

    async with serve(keep_alive(ok())) as server:
        p = pool()
        await post(p, server)
        monkeypatch.setattr(http1, "KEEP_IDLE_S", 0.0)
        await post(p, server)
        await p.aclose()
    assert server.connections == 2


async def test_headers_are_case_insensitive_and_repeated_ones_joined() -> None:
    answer = ok(extra=b"Retry-After: 3\r\nX-A: 1\r\nx-a: 2\r\n")
    async with serve(keep_alive(answer)) as server:
        p = pool()
        resp = await p.post(f"http://127.0.0.1:{server.port}/x", data=b"{}", headers=HEADERS)
        await resp.read()
        assert resp.headers.get("retry-after") == "3" and resp.headers["RETRY-AFTER"] == "3"
        assert resp.headers.get("X-A") == "1, 2" and "content-type" in resp.headers
        resp.release()
        await p.aclose()


async def test_a_query_and_unsafe_path_characters_go_out_encoded() -> None:
    async with serve(keep_alive(ok())) as server:
        p = pool()
        await post(p, server, path="/openai/deployments/gpt 4o/chat?api-version=2024-10-21")
        await p.aclose()
    assert server.heads[0].startswith(
        b"POST /openai/deployments/gpt%204o/chat?api-version=2024-10-21 HTTP/1.1\r\n")


async def test_an_answer_is_freed_when_released_not_left_to_the_collector() -> None:
    """No reference cycle through a Response (it once held itself as ``content``): every
    answer of a busy gateway became cyclic garbage, found only by the collector."""
    import gc

    from shoal.providers.http1 import Response

    async with serve(keep_alive(ok())) as server:
        p = pool()
        await post(p, server)  # the connection made, the pool warm
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                assert await post(p, server) == (200, b'{"ok":true}')
                resp = await p.post(f"http://127.0.0.1:{server.port}/s", data=b"{}",
                                    headers=HEADERS)
                chunks = [chunk async for chunk in resp.content.iter_any()]
                resp.release()
                del resp
                assert b"".join(chunks) == b'{"ok":true}'
            left = [o for o in gc.get_objects() if type(o) is Response]
        finally:
            gc.enable()
        assert left == []
        await p.aclose()
