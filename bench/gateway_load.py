"""Load tools for the gateway benches: wrk runs, a stream client, server processes.

- :func:`wrk` drives one URL with ``wrk`` (Debian's package; ``scripts/bench_tools.sh``
  installs it) and parses req/s and the p50/p99 latency. Without ``wrk`` the same figures
  come from this module's own ``load`` subcommand in a separate process (aiohttp, one
  connection per worker), and the result says so.
- ``python bench/gateway_load.py streams --url U --n 256`` opens N concurrent SSE streams
  and prints JSON: completed streams, events, the largest inter-chunk gap and
  time-to-first-chunk percentiles. It runs in its own process so its CPU is not the
  gateway's.
- :class:`Server` starts a process (optionally pinned with ``taskset``), waits until its
  port answers, and stops it by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

BODY = {"model": "gpt-4o-mini", "max_tokens": 64,
        "messages": [{"role": "system", "content": "You are a concise assistant."},
                     {"role": "user", "content": "Summarise open-weight LLM economics."}]}
HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cmd: list[str], cpu: str | None) -> list[str]:
    """``cmd`` under ``taskset -c cpu`` when taskset exists and a cpu list is given."""
    if cpu and shutil.which("taskset"):
        return ["taskset", "-c", cpu, *cmd]
    return cmd


class Server:
    """A server process: started, waited for, stopped by its PID."""

    def __init__(self, cmd: list[str], port: int, *, cpu: str | None = None,
                 env: dict[str, str] | None = None, ready_path: str | None = None,
                 log: str | None = None) -> None:
        self.port = port
        self.ready_path = ready_path
        self.headers: dict[str, str] = {}  # what a client must send (a virtual key)
        self.log = open(log or os.devnull, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            pinned(cmd, cpu), stdin=subprocess.PIPE, stdout=self.log, stderr=self.log,
            env={**os.environ, **(env or {})})

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = f"server exited with {self.proc.returncode}: {self.proc.args!r}"
                raise RuntimeError(msg)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if self.ready_path is None:
                        return
                    s.sendall(f"GET {self.ready_path} HTTP/1.1\r\nhost: x\r\n"
                              "connection: close\r\n\r\n".encode())
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout_s:.0f} s: {self.proc.args!r}")

    def rss_mb(self) -> float:
        """Resident memory of the process and its children (workers), in MiB."""
        import psutil
        proc = psutil.Process(self.proc.pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return float(total) / 2**20

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the process and its children."""
        import psutil
        proc = psutil.Process(self.proc.pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def cpu_wait_s(self) -> float:
        """Seconds the process's threads (and its children's) spent runnable but waiting
        for a CPU (Linux schedstat): how much other load on the machine held it back."""
        import psutil
        total = 0
        try:
            procs = [self.proc.pid, *(c.pid for c in psutil.Process(self.proc.pid).children(
                recursive=True))]
        except psutil.Error:
            return 0.0
        for pid in procs:
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        total += int(f.read().split()[1])
        return total / 1e9

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@dataclass
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    tool: str


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"unparsed wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


# Paced load: each wrk thread draws an arrival schedule of exponential gaps (a Poisson
# stream of rate/threads, on the monotonic clock through LuaJIT's FFI), and a connection
# that is free claims the next arrival and waits for it (wrk's ``delay()`` hook, whole
# milliseconds). So requests arrive at the offered rate whatever the latency (open loop,
# while a thread has a free connection), not in lock-step bursts (hey's ``-q`` ticks
# every worker at the same instant). A schedule more than 50 ms behind (every connection
# busy) is not caught up in one burst. wrk times a request from its first byte written.
_PACE_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} shoal_timespec;
int clock_gettime(int clk_id, shoal_timespec *tp);
]]
local ts = ffi.new("shoal_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local gap_ms = {gap_ms}
local threads = 0
local due = nil
function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end
function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0) * 7919)
end
function delay()
  local now = now_ms()
  due = math.max(due or now, now - 50) - math.log(1 - math.random()) * gap_ms
  return math.max(0, math.floor(due - now + 0.5))
end
"""


def wrk(url: str, *, connections: int, duration_s: float, body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None, cpu: str | None = None,
        rate: float | None = None) -> LoadResult:
    """POST ``body`` to ``url`` for ``duration_s`` over ``connections`` keep-alive
    connections; wrk when installed, else this module's Python load generator.
    ``rate``: paced at that many requests per second in all (Poisson arrivals, see
    ``_PACE_LUA``; wrk only) instead of as fast as the server answers."""
    body = body or BODY
    headers = {"content-type": "application/json", **(headers or {})}
    if shutil.which("wrk") is None:
        if rate is not None:
            raise RuntimeError("paced load needs wrk (bash scripts/bench_tools.sh)")
        return _python_load(url, connections, duration_s, body, headers, cpu)
    lua = "wrk.method = 'POST'\nwrk.body = [[" + json.dumps(body) + "]]\n" + "".join(
        f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in headers.items())
    if rate is not None:
        threads = 1 if connections < 4 else 2  # as below
        lua += _PACE_LUA.format(gap_ms=f"{1000.0 * threads / rate:.4f}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    try:
        threads = 1 if connections < 4 else 2
        cmd = pinned(["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
                      "--timeout", "30s", "--latency", "-s", f.name, url], cpu)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             timeout=duration_s + 30).stdout
    finally:
        os.unlink(f.name)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out):
        errors += sum(int(g) for g in m.groups())
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return LoadResult(rps, _ms(lat["50"]), _ms(lat["99"]), requests, errors, "wrk")


def _python_load(url: str, connections: int, duration_s: float, body: dict[str, Any],
                 headers: dict[str, str], cpu: str | None) -> LoadResult:
    cmd = pinned([sys.executable, os.path.join(HERE, "gateway_load.py"), "load", "--url", url,
                  "--connections", str(connections), "--duration", str(duration_s),
                  "--body", json.dumps(body), "--headers", json.dumps(headers)], cpu)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         timeout=duration_s + 60).stdout
    return LoadResult(**json.loads(out.strip().splitlines()[-1]))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _load(url: str, connections: int, duration_s: float, body: bytes,
                headers: dict[str, str]) -> dict[str, Any]:
    import aiohttp
    lat: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration_s
    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker() -> None:
            nonlocal errors
            while (t0 := time.perf_counter()) < stop_at:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status >= 300:
                        errors += 1
                lat.append((time.perf_counter() - t0) * 1000)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        took = time.perf_counter() - started
    return {"rps": len(lat) / took, "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99),
            "requests": len(lat), "errors": errors, "tool": "python-aiohttp"}


async def _one_stream(session: Any, url: str, body: bytes, headers: dict[str, str],
                      start: float) -> tuple[float, float, int, bool]:
    """(time to first chunk ms, largest gap ms, data events, completed)."""
    ttft = float("nan")
    gap = 0.0
    events = 0
    done = False
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            await resp.read()
            return ttft, gap, 0, False
        last = 0.0
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            now = time.perf_counter()
            if events == 0:
                ttft = (now - t0) * 1000
            else:
                gap = max(gap, (now - last) * 1000)
            last = now
            events += 1
            if line.startswith(b"data: [DONE]"):
                done = True
    return ttft, gap, events, done


async def _streams(url: str, n: int, body: bytes, headers: dict[str, str],
                   ramp_s: float) -> dict[str, Any]:
    import aiohttp
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        start = time.perf_counter()

        async def one(i: int) -> tuple[float, float, int, bool]:
            await asyncio.sleep(ramp_s * i / max(n, 1))  # spread the opens a little
            try:
                return await _one_stream(session, url, body, headers, start)
            except (TimeoutError, aiohttp.ClientError):
                return float("nan"), 0.0, 0, False
        results = await asyncio.gather(*(one(i) for i in range(n)))
    ttfts = [r[0] for r in results if r[0] == r[0]]
    gaps = [r[1] for r in results]
    failed = sum(1 for r in results if r[2] == 0)
    # The client's own CPU share of the run: near 1.0, the client (not the server) is
    # what bounds the figures.
    busy = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return {"n": n, "client_cpu": round(busy, 2), "failed": failed,
            "completed": sum(r[3] for r in results),
            "events": sum(r[2] for r in results), "max_gap_ms": max(gaps, default=0.0),
            "p99_gap_ms": _pct(gaps, 0.99), "ttft_p50_ms": _pct(ttfts, 0.5),
            "ttft_p99_ms": _pct(ttfts, 0.99)}


def streams(url: str, n: int, *, body: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None, cpu: str | None = None,
            ramp_s: float = 0.2) -> dict[str, Any]:
    """Run the stream client in its own process; its JSON result."""
    body = {**(body or BODY), "stream": True}
    cmd = pinned([sys.executable, os.path.join(HERE, "gateway_load.py"), "streams", "--url", url,
                  "--n", str(n), "--body", json.dumps(body), "--ramp", str(ramp_s),
                  "--headers", json.dumps({"content-type": "application/json",
                                           **(headers or {})})], cpu)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         timeout=180).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="gateway bench load tools")
    parser.add_argument("mode", choices=["load", "streams"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--ramp", type=float, default=0.2)
    parser.add_argument("--body", default=json.dumps(BODY))
    parser.add_argument("--headers", default="{}")
    args = parser.parse_args()
    headers = json.loads(args.headers)
    import uvloop
    run = uvloop.run
    if args.mode == "load":
        result = run(_load(args.url, args.connections, args.duration, args.body.encode(),
                           headers))
    else:
        result = run(_streams(args.url, args.n, args.body.encode(), headers, args.ramp))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
