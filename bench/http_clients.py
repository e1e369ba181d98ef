"""HTTP client spike: which async client should carry shoal's hot path?

A zero-latency aiohttp.web server runs in its own process and answers every POST
with the same OpenAI ``chat.completion`` JSON. Each client then runs in a fresh
process: 50 concurrent workers post the same JSON body N times (after a warm-up),
read and JSON-decode each answer. We print calls/second and the client's CPU per
call (``time.process_time`` delta / calls, so the server's CPU is not counted),
and both as a ratio to raw aiohttp.

    python bench/http_clients.py                 # 3,000 calls per client, 50 workers
    python bench/http_clients.py --calls 1000 --clients aiohttp,httpx

    python bench/http_clients.py --loop uvloop   # the loop shoal's commands run

Clients: raw aiohttp (one ClientSession, TCPConnector(limit=100)); shoal's own
(``shoal.providers.http1``, what the provider adapters post through); aiosonic (pure
Python, pool of 100); pyreqwest (Rust's reqwest/hyper on its own tokio runtime: its
threads' CPU counts, ``process_time`` covers every thread); curl_cffi (libcurl's multi
interface); httpx 0.28 AsyncClient; httpx2 AsyncClient (the transport of the official
openai SDK since v3); the official openai SDK itself (AsyncOpenAI, max_retries=0). A
client whose package is missing is reported as skipped (``bash scripts/bench_tools.sh``
installs the candidates). Speed is half of the choice: bench/http_client_semantics.py
checks what the hot path also needs (abort on cancel, which timeout, cut bodies).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

PATH = "/v1/chat/completions"
REQUEST_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Summarise the economics of open-weight LLMs in one line."},
    ],
    "max_tokens": 64,
    "temperature": 0.2,
}
RESPONSE_BODY: dict[str, Any] = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Open weights trade per-token fees for hardware and utilisation risk.",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 31,
        "completion_tokens": 14,
        "total_tokens": 45,
        "prompt_tokens_details": {"cached_tokens": 0},
    },
    "system_fingerprint": "fp_bench",
}
CLIENTS = ("aiohttp", "shoal", "aiosonic", "pyreqwest", "curl_cffi", "httpx", "httpx2", "openai")
Poster = Callable[[], Awaitable[None]]


# -- server (its own process) -----------------------------------------------------------


def serve() -> None:
    """Serve the fixed answer on a free port; print the port; stop when stdin closes."""
    from aiohttp import web

    payload = json.dumps(RESPONSE_BODY).encode()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=payload, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post(PATH, handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        print(port, flush=True)
        # The parent closes our stdin to stop us (and we die with it if it dies).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


# -- clients (each in its own process) ---------------------------------------------------


async def _drive(post: Poster, calls: int, concurrency: int, warmup: int) -> dict[str, float]:
    async def run(total: int) -> None:
        remaining = total

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await post()

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())

    await run(warmup)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await run(calls)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"calls": calls, "wall_s": wall, "cpu_s": cpu}


async def run_client(name: str, url: str, calls: int, concurrency: int, warmup: int) -> dict[
    str, float
]:
    body = json.dumps(REQUEST_BODY).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}

    if name == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def post_aiohttp() -> None:
                async with session.post(url, data=body, headers=headers) as resp:
                    resp.raise_for_status()
                    json.loads(await resp.read())

            return await _drive(post_aiohttp, calls, concurrency, warmup)

    if name == "shoal":  # shoal.providers.http1: the client the adapters use
        from shoal.providers.http1 import Http1Pool

        pool = Http1Pool(limit=100, connect_timeout=10.0, read_timeout=60.0,
                         pool_timeout=30.0)

        async def post_shoal() -> None:
            resp = await pool.post(url, data=body, headers=headers)
            try:
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
                json.loads(await resp.read())
            finally:
                resp.release()

        try:
            return await _drive(post_shoal, calls, concurrency, warmup)
        finally:
            await pool.aclose()

    if name == "aiosonic":
        import aiosonic
        from aiosonic.pools import PoolConfig

        sonic = aiosonic.HTTPClient(connector=aiosonic.TCPConnector(
            pool_configs={":default": PoolConfig(size=100)}))

        async def post_aiosonic() -> None:
            resp = await sonic.post(url, data=body, headers=headers)
            if resp.status_code != 200:
                raise RuntimeError(f"status {resp.status_code}")
            json.loads(await resp.content())

        try:
            return await _drive(post_aiosonic, calls, concurrency, warmup)
        finally:
            await sonic.connector.cleanup()

    if name == "pyreqwest":
        from pyreqwest.client import ClientBuilder

        async with ClientBuilder().max_connections(100).error_for_status(True).build() as rq:

            async def post_pyreqwest() -> None:
                resp = await rq.post(url).body_bytes(body).headers(headers).build().send()
                json.loads(bytes(await resp.bytes()))

            return await _drive(post_pyreqwest, calls, concurrency, warmup)

    if name == "curl_cffi":
        from curl_cffi.requests import AsyncSession

        async with AsyncSession(max_clients=100) as curl:

            async def post_curl() -> None:
                resp = await curl.post(url, data=body, headers=headers)
                resp.raise_for_status()
                json.loads(resp.content)

            return await _drive(post_curl, calls, concurrency, warmup)

    if name in ("httpx", "httpx2"):
        module: Any = __import__(name)
        limits = module.Limits(max_connections=100, max_keepalive_connections=100)
        async with module.AsyncClient(limits=limits, timeout=60.0) as client:

            async def post_httpx() -> None:
                resp = await client.post(url, content=body, headers=headers)
                resp.raise_for_status()
                json.loads(resp.content)

            return await _drive(post_httpx, calls, concurrency, warmup)

    if name == "openai":
        from openai import AsyncOpenAI

        base_url = url.removesuffix("/chat/completions")
        async with AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0) as sdk:

            async def post_openai() -> None:
                await sdk.chat.completions.create(**REQUEST_BODY)

            return await _drive(post_openai, calls, concurrency, warmup)

    raise SystemExit(f"unknown client {name!r}; choose from {', '.join(CLIENTS)}")


# -- orchestration ---------------------------------------------------------------------------


def _measure(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "--client", name, "--url", url,
        "--calls", str(args.calls), "--concurrency", str(args.concurrency),
        "--warmup", str(args.warmup), "--loop", args.loop,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"client": name, "error": tail[0]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["client"] = name
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1, help="runs per client; best kept")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the clients' event loop (shoal's own commands run uvloop)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        serve()
        return
    if args.client:
        if args.loop == "uvloop":
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        result = asyncio.run(
            run_client(args.client, args.url, args.calls, args.concurrency, args.warmup)
        )
        print(json.dumps(result))
        return

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}{PATH}"
        print(
            f"{args.calls} calls per client, {args.concurrency} concurrent workers, "
            f"zero-latency server in pid {server.pid}; python {sys.version.split()[0]}"
        )
        rows: list[dict[str, Any]] = []
        for name in [c.strip() for c in args.clients.split(",") if c.strip()]:
            runs = [_measure(name, url, args) for _ in range(args.repeat)]
            good = [r for r in runs if "error" not in r]
            if not good:
                rows.append(runs[-1])
                continue
            best = min(good, key=lambda r: r["cpu_s"])
            best["cpu_us_per_call_all"] = [
                round(r["cpu_s"] / r["calls"] * 1e6) for r in good
            ]
            rows.append(best)
        _report(rows)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _report(rows: list[dict[str, Any]]) -> None:
    base = next((r for r in rows if r.get("client") == "aiohttp" and "error" not in r), None)
    print(f"{'client':10} {'calls/s':>9} {'CPU µs/call':>12} {'calls/s ÷ aiohttp':>18} "
          f"{'CPU ÷ aiohttp':>14}")
    for row in rows:
        if "error" in row:
            print(f"{row['client']:10} skipped: {row['error']}")
            continue
        rate = row["calls"] / row["wall_s"]
        cpu_us = row["cpu_s"] / row["calls"] * 1e6
        if base is not None:
            base_rate = base["calls"] / base["wall_s"]
            base_cpu = base["cpu_s"] / base["calls"] * 1e6
            ratios = f"{rate / base_rate:>18.2f} {cpu_us / base_cpu:>14.2f}"
        else:
            ratios = f"{'-':>18} {'-':>14}"
        print(f"{row['client']:10} {rate:>9.0f} {cpu_us:>12.0f} {ratios}")
        if len(row.get("cpu_us_per_call_all", [])) > 1:
            spread = row["cpu_us_per_call_all"]
            print(f"{'':10} CPU µs/call over runs: {spread} (median "
                  f"{statistics.median(spread):.0f})")


if __name__ == "__main__":
    main()
