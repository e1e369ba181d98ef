"""Which server stack should carry ``shoal gateway``? Measured, side by side, one run.

The same minimal OpenAI-shaped proxy (read the body, decode the JSON, re-encode it, POST
it upstream over one shared ``aiohttp.ClientSession``, decode + re-encode the answer; a
``"stream": true`` body is passed through chunk by chunk) on each candidate:

- ``aiohttp``: aiohttp.web on uvloop;
- ``uvicorn``: a raw ASGI app on uvicorn + uvloop + httptools;
- ``granian-asgi`` / ``granian-rsgi``: granian (Rust HTTP) with the ASGI app / an RSGI app;
- ``blacksheep``: a blacksheep app on uvicorn + uvloop + httptools;
- ``<stack>-json=orjson`` / ``-json=msgspec``: the same with that JSON codec (default stdlib).

The upstream is ``bench/gateway_mock.py`` (zero latency) pinned to CPU 0, each proxy to
CPU 1, ``wrk`` to CPU 0. Rounds alternate over the targets; per target and concurrency
(1 and 64) we keep the median round: req/s, p50/p99 latency added over direct-to-mock
(same round), and the proxy's CPU per request (process CPU time / requests: the figure
that shared-machine noise disturbs least). Then 256 concurrent SSE streams (64 chunks,
one every 20 ms) through each proxy: completed, largest inter-chunk gap, added TTFT p99.
Last, an in-process micro-bench of the JSON codecs on the request and the answer.

    python bench/gateway_stack_bench.py                    # ~8 minutes
    python bench/gateway_stack_bench.py --rounds 1 --duration 2 \
        --targets aiohttp,granian-rsgi-json=orjson

Install the candidates first (they are not shoal dependencies):
``pip install granian blacksheep uvicorn httptools orjson msgspec psutil``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gateway_load as gl

UPSTREAM = os.environ.get("STACK_UPSTREAM", "http://127.0.0.1:9100") + "/v1/chat/completions"
PATH = "/v1/chat/completions"
JSON_CT = "application/json"

# -- the proxy core, shared by every stack -------------------------------------------------


def codec(name: str) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    if name == "orjson":
        import orjson
        return orjson.loads, orjson.dumps
    if name == "msgspec":
        import msgspec
        return msgspec.json.decode, msgspec.json.encode
    return json.loads, lambda v: json.dumps(v, separators=(",", ":")).encode()


loads, dumps = codec(os.environ.get("STACK_JSON", "stdlib"))
_session: Any = None
_UP_HEADERS = {"content-type": JSON_CT, "authorization": "Bearer sk-upstream"}


def session() -> Any:
    global _session  # noqa: PLW0603 - one session per server process, made in its loop
    if _session is None:
        import aiohttp
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    return _session


async def proxy_json(body: bytes) -> tuple[bytes, bool, Any]:
    """(upstream answer re-encoded, or b"" when streaming, stream flag, upstream response)."""
    req = loads(body)
    stream = bool(req.get("stream"))
    up = await session().post(UPSTREAM, data=dumps(req), headers=_UP_HEADERS)
    if stream:
        return b"", True, up
    async with up:
        return dumps(loads(await up.read())), False, None


async def chunks(up: Any) -> AsyncIterator[bytes]:
    async with up:
        async for chunk in up.content.iter_any():
            yield chunk


# -- aiohttp.web -----------------------------------------------------------------------------


async def aiohttp_main(port: int) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        out, stream, up = await proxy_json(await request.read())
        if not stream:
            return web.Response(body=out, content_type=JSON_CT)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        async for chunk in chunks(up):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post(PATH, handle)
    app.router.add_get("/health", lambda _r: _ok())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.Event().wait()


async def _ok() -> Any:
    from aiohttp import web
    return web.Response(text="ok")


# -- raw ASGI (uvicorn, granian) ---------------------------------------------------------------

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


async def asgi_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (msg := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] == "GET":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    out, stream, up = await proxy_json(body)
    if not stream:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    async for chunk in chunks(up):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


# -- RSGI (granian) ------------------------------------------------------------------------------


async def rsgi_app(scope: Any, proto: Any) -> None:
    if scope.method == "GET":
        proto.response_bytes(200, [], b"ok")
        return
    out, stream, up = await proxy_json(await proto())
    if not stream:
        proto.response_bytes(200, [("content-type", JSON_CT)], out)
        return
    transport = proto.response_stream(200, [("content-type", "text/event-stream")])
    async for chunk in chunks(up):
        await transport.send_bytes(chunk)


# -- blacksheep ------------------------------------------------------------------------------------


def _blacksheep() -> Any:
    from blacksheep import Application, Content, Response, Router, StreamedContent

    app = Application(router=Router())

    # No annotations: blacksheep resolves them at runtime in this module's globals.
    @app.router.post(PATH)
    async def handle(request):  # type: ignore[no-untyped-def]
        out, stream, up = await proxy_json(await request.read() or b"")
        if not stream:
            return Response(200, None, Content(JSON_CT.encode(), out))
        async def provider():  # type: ignore[no-untyped-def]
            async for chunk in chunks(up):
                yield chunk

        return Response(200, None, StreamedContent(b"text/event-stream", provider))

    @app.router.get("/health")
    async def health():  # type: ignore[no-untyped-def]
        return Response(200, None, Content(b"text/plain", b"ok"))

    return app


_apps: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name == "blacksheep_app":  # built on first use: importing blacksheep is not free
        if name not in _apps:
            _apps[name] = _blacksheep()
        return _apps[name]
    raise AttributeError(name)


# -- the driver ------------------------------------------------------------------------------------

TARGETS = ("aiohttp", "aiohttp-json=orjson", "aiohttp-json=msgspec", "uvicorn",
           "granian-asgi", "granian-rsgi", "granian-rsgi-json=orjson", "blacksheep")


def command(target: str, port: int) -> tuple[list[str], dict[str, str]]:
    """How to serve ``target`` (``stack`` or ``stack-codec``) on ``port``."""
    here = os.path.dirname(os.path.abspath(__file__))
    py = sys.executable
    bindir = os.path.dirname(py)
    stack, _, json_codec = target.partition("-json=")
    env = {"STACK_JSON": json_codec or "stdlib"}
    uvicorn = [py, "-m", "uvicorn", "--app-dir", here, "--host", "127.0.0.1", "--port",
               str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
               "--log-level", "warning", "--backlog", "4096"]
    granian = [os.path.join(bindir, "granian"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--loop", "uvloop", "--no-ws", "--log-level", "warning",
               "--backlog", "4096", "--working-dir", here]
    if stack == "aiohttp":
        return [py, os.path.abspath(__file__), "serve", "--port", str(port)], env
    if stack == "uvicorn":
        return [*uvicorn, "gateway_stack_bench:asgi_app"], env
    if stack == "blacksheep":
        return [*uvicorn, "gateway_stack_bench:blacksheep_app"], env
    if stack == "granian-asgi":
        return [*granian, "--interface", "asgi", "gateway_stack_bench:asgi_app"], env
    if stack == "granian-rsgi":
        return [*granian, "--interface", "rsgi", "gateway_stack_bench:rsgi_app"], env
    raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")


def codec_micro(n: int = 20000) -> dict[str, float]:
    """µs to decode + encode one request and one answer, per codec."""
    import gateway_mock
    req = json.dumps(gl.BODY).encode()
    ans = json.dumps(gateway_mock._COMPLETION).encode()
    out: dict[str, float] = {}
    for name in ("stdlib", "orjson", "msgspec"):
        try:
            dec, enc = codec(name)
        except ImportError:
            continue
        t0 = time.perf_counter()
        for _ in range(n):
            enc(dec(req))
            enc(dec(ans))
        out[name] = (time.perf_counter() - t0) / n * 1e6
    return out


def run(args: argparse.Namespace) -> None:
    targets = [t for t in args.targets.split(",") if t]
    mock_port, smock_port = gl.free_port(), gl.free_port()
    here = os.path.dirname(os.path.abspath(__file__))
    mock = gl.Server([sys.executable, os.path.join(here, "gateway_mock.py"), "--port",
                      str(mock_port)], mock_port, cpu=args.mock_cpu)
    smock = gl.Server([sys.executable, os.path.join(here, "gateway_mock.py"), "--port",
                       str(smock_port), "--chunks", "64", "--chunk-ms", "20"], smock_port,
                      cpu=args.mock_cpu)
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    streams: dict[str, dict[str, Any]] = {}
    try:
        mock.wait_ready()
        smock.wait_ready()
        direct = f"http://127.0.0.1:{mock_port}{PATH}"
        for rnd in range(args.rounds):
            for target in targets:
                port = gl.free_port()
                cmd, env = command(target, port)
                env["STACK_UPSTREAM"] = f"http://127.0.0.1:{mock_port}"
                srv = gl.Server(cmd, port, cpu=args.server_cpu, env=env, ready_path="/health")
                try:
                    srv.wait_ready()
                    url = f"http://127.0.0.1:{port}{PATH}"
                    gl.wrk(url, connections=8, duration_s=0.5, cpu=args.load_cpu)  # warm
                    for conc in (1, 64):
                        base = gl.wrk(direct, connections=conc, duration_s=args.duration,
                                      cpu=args.load_cpu)
                        c0 = srv.cpu_s()
                        res = gl.wrk(url, connections=conc, duration_s=args.duration,
                                     cpu=args.load_cpu)
                        cpu_us = (srv.cpu_s() - c0) / max(res.requests, 1) * 1e6
                        results.setdefault((target, conc), []).append({
                            "rps": res.rps, "add_p50": res.p50_ms - base.p50_ms,
                            "add_p99": res.p99_ms - base.p99_ms, "cpu_us": cpu_us,
                            "errors": res.errors, "direct_rps": base.rps})
                    if rnd == 0 and args.streams:
                        srv.stop()
                        env["STACK_UPSTREAM"] = f"http://127.0.0.1:{smock_port}"
                        srv = gl.Server(cmd, port, cpu=args.server_cpu, env=env,
                                        ready_path="/health")
                        srv.wait_ready()
                        gl.streams(url, 16, cpu=args.load_cpu)  # warm: upstream connections
                        d = gl.streams(f"http://127.0.0.1:{smock_port}{PATH}", args.streams,
                                       cpu=args.load_cpu)
                        s = gl.streams(url, args.streams, cpu=args.load_cpu)
                        s["add_ttft_p99"] = s["ttft_p99_ms"] - d["ttft_p99_ms"]
                        s["direct_max_gap_ms"] = d["max_gap_ms"]
                        streams[target] = s
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    print(f"{target} failed: {exc}", file=sys.stderr, flush=True)
                finally:
                    srv.stop()
                print(f"round {rnd + 1} {target} done", file=sys.stderr, flush=True)
    finally:
        mock.stop()
        smock.stop()
    report(targets, results, streams, args)


def report(targets: list[str], results: dict[tuple[str, int], list[dict[str, float]]],
           streams: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    def med(target: str, conc: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(target, conc)])

    print(f"\nStack bench: {args.rounds} alternating round(s) x {args.duration}s per point, "
          f"load generator {'wrk' if shutil.which('wrk') else 'python (wrk missing)'}"
          f", medians; added = proxy - direct-to-mock in the same round\n")
    print("| stack | c | req/s | ÷ aiohttp | added p50 | added p99 | proxy CPU/req "
          "| CPU ÷ aiohttp | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for conc in (1, 64):
        have = ("aiohttp", conc) in results
        ref = med("aiohttp", conc, "rps") if have else None
        ref_cpu = med("aiohttp", conc, "cpu_us") if have else None
        direct = statistics.median(r["direct_rps"] for t in targets
                                   for r in results.get((t, conc), []))
        print(f"| direct-to-mock | {conc} | {direct:,.0f} | | | | | | |")
        for t in targets:
            if (t, conc) not in results:
                print(f"| {t} | {conc} | failed | | | | | | |")
                continue
            rps = med(t, conc, "rps")
            ratio = f"{rps / ref:.2f}" if ref else "-"
            cpu = med(t, conc, "cpu_us")
            cpu_ratio = f"{cpu / ref_cpu:.2f}" if ref_cpu else "-"
            print(f"| {t} | {conc} | {rps:,.0f} | {ratio} | {med(t, conc, 'add_p50'):.2f} ms "
                  f"| {med(t, conc, 'add_p99'):.2f} ms | {cpu:.0f} µs | {cpu_ratio} "
                  f"| {int(sum(r['errors'] for r in results[(t, conc)]))} |")
    if streams:
        print(f"\n{args.streams} concurrent streams, 64 chunks every 20 ms:\n")
        print("| stack | completed | max gap | direct max gap | added TTFT p99 |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for t, s in streams.items():
            print(f"| {t} | {s['completed']}/{s['n']} | {s['max_gap_ms']:.0f} ms "
                  f"| {s['direct_max_gap_ms']:.0f} ms | {s['add_ttft_p99']:.1f} ms |")
    micro = codec_micro()
    print("\nJSON decode+encode of one request and one answer: " + ", ".join(
        f"{k} {v:.1f} µs" for k, v in micro.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description="gateway server stack bench")
    sub = parser.add_subparsers(dest="mode")
    serve = sub.add_parser("serve")
    serve.add_argument("--port", type=int, required=True)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--streams", type=int, default=256, help="0 skips the stream test")
    parser.add_argument("--mock-cpu", default="0")
    parser.add_argument("--server-cpu", default="1")
    parser.add_argument("--load-cpu", default="0")
    args = parser.parse_args()
    if args.mode == "serve":
        import uvloop
        uvloop.run(aiohttp_main(args.port))
        return
    run(args)


if __name__ == "__main__":
    main()
