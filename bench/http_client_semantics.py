"""What a hot-path HTTP client must do besides being fast, checked per candidate.

bench/http_clients.py measures CPU per call; a client that wins there still has to keep
shoal's promises in bad weather. Against a local aiohttp.web server, each client (in
this process, on uvloop) is asked to:

- **abort on cancel**: a request whose task is cancelled (a deadline, a gateway client
  that went away) must close its connection at once, so the server's handler is
  cancelled too: checked 0.3 s after the cancel, with the client's read timeout at 10 s;
- **say which timeout**: a server that accepts and never answers must end in a *read*
  timeout, not a connect timeout: shoal's errors say whether the request was sent (and
  may be billed), and retries are judged on it;
- **cut body**: a 200 whose body stops before its Content-Length must raise, not return
  the part;
- **status and headers**: a 429's status and ``retry-after`` read as sent.

    python bench/http_client_semantics.py [--clients aiohttp,pyreqwest]

A client whose package is missing is reported as skipped (``bash scripts/bench_tools.sh``
installs the candidates).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

CLIENTS = ("aiohttp", "shoal", "pyreqwest")
READ_TIMEOUT_S = 1.0


class _Server:
    def __init__(self) -> None:
        self.cancelled = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hang(request: web.Request) -> web.StreamResponse:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return web.json_response({})

        async def limited(request: web.Request) -> web.StreamResponse:
            return web.Response(body=b'{"error":{"type":"rate_limit"}}', status=429,
                                content_type="application/json", headers={"retry-after": "3"})

        async def cut(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"content-length": "100"})
            await resp.prepare(request)
            await resp.write(b'{"id": "chatcmpl-cut", "choi')
            assert request.transport is not None
            request.transport.close()
            return resp

        app = web.Application(handler_args={"handler_cancellation": True})
        app.router.add_post("/hang", hang)
        app.router.add_post("/limited", limited)
        app.router.add_post("/cut", cut)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


Post = Callable[[str], Awaitable[tuple[int, dict[str, str], bytes]]]


async def _client(name: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    if name == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=5.0, sock_read=READ_TIMEOUT_S))

        async def post_aiohttp(url: str) -> tuple[int, dict[str, str], bytes]:
            async with session.post(url, data=b"{}") as resp:
                return resp.status, dict(resp.headers), await resp.read()

        return post_aiohttp, session.close
    if name == "shoal":
        from shoal.providers.http1 import Http1Pool

        pool = Http1Pool(limit=10, connect_timeout=5.0, read_timeout=READ_TIMEOUT_S,
                         pool_timeout=5.0)

        async def post_shoal(url: str) -> tuple[int, dict[str, str], bytes]:
            resp = await pool.post(url, data=b"{}", headers={})
            try:
                return resp.status, dict(resp.headers), await resp.read()
            finally:
                resp.release()

        return post_shoal, pool.aclose
    if name == "pyreqwest":
        from pyreqwest.client import ClientBuilder

        client = (ClientBuilder().connect_timeout(datetime.timedelta(seconds=5))
                  .read_timeout(datetime.timedelta(seconds=READ_TIMEOUT_S)).build())
        await client.__aenter__()

        async def post_pyreqwest(url: str) -> tuple[int, dict[str, str], bytes]:
            resp = await client.post(url).body_bytes(b"{}").build().send()
            body = bytes(await resp.bytes())
            return resp.status, dict(resp.headers.items()), body

        async def close() -> None:
            await client.__aexit__(None, None, None)

        return post_pyreqwest, close
    raise SystemExit(f"unknown client {name!r}; choose from {', '.join(CLIENTS)}")


def _kind(exc: BaseException) -> str:
    names = " ".join(t.__name__ for t in type(exc).__mro__)
    return f"{type(exc).__module__}.{type(exc).__name__} ({str(exc)[:80]!r}; mro: {names})"


async def check(name: str) -> dict[str, Any]:
    server = _Server()
    await server.start()
    out: dict[str, Any] = {}
    try:
        post, close = await _client(name)
        try:
            task = asyncio.ensure_future(post(server.url + "/hang"))
            await asyncio.sleep(0.2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0.3)
            out["abort on cancel"] = ("yes" if server.cancelled else
                                      "NO: the server's handler still runs 0.3 s later")
            try:
                await post(server.url + "/hang")
                out["read timeout"] = "NO: returned"
            except Exception as exc:  # what the client calls it
                connect = "onnect" in type(exc).__name__ or "connection timeout" in str(exc)
                out["read timeout"] = (("NO: called a connect timeout: " if connect else "")
                                       + _kind(exc))
            try:
                status, _, body = await post(server.url + "/cut")
                out["cut body"] = f"NO: returned {status} with {len(body)} bytes"
            except Exception as exc:
                out["cut body"] = "raised " + _kind(exc)
            status, headers, _ = await post(server.url + "/limited")
            retry = {k.lower(): v for k, v in headers.items()}.get("retry-after")
            out["status and headers"] = f"{status}, retry-after {retry}"
        finally:
            await close()
    except ImportError as exc:
        out["skipped"] = str(exc)
    finally:
        await server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default=",".join(CLIENTS))
    args = parser.parse_args()
    import uvloop

    for name in args.clients.split(","):
        result = uvloop.run(check(name))
        print(name)
        for what, said in result.items():
            print(f"  {what}: {said}")


if __name__ == "__main__":
    main()
