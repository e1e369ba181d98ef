"""``shoal gateway`` against direct-to-upstream and LiteLLM's proxy, one run, 127.0.0.1.

Everything is a separate process, started and stopped (by PID) here: the upstream mock
(``bench/gateway_mock.py``, pinned to CPU 0 with ``taskset``), ``wrk`` (CPU 0), the stream
client (``bench/gateway_load.py streams``, CPU 0), and the servers under test pinned to
CPU 1: ``shoal gateway`` and LiteLLM's proxy (``litellm --config``), each with the same
one-channel config pointing at the mock. Phases, each with its goal from issue 10:

1. added latency (server p50/p99 minus direct-to-mock p50/p99, same round) at 1 and 64
   connections, zero-latency mock: p99 ≤ 1 ms at 1, ≤ 10 ms at 64. At 64 connections
   twice: closed loop (wrk as fast as answers come: the server saturated, its latency
   ≈ 64 × its CPU per request, the worst case), and paced below saturation (each server
   at ``--paced-share`` = 50% of its closed-loop req/s, Poisson arrivals scheduled
   through wrk's ``delay()`` hook, the same rate sent direct), as fixed-RPS gateway
   benchmarks run;
2. throughput with a 20 ms mock at 64 and 256 connections, ÷ direct: ≥ 0.5, ≥ 5× LiteLLM;
3. streams: 64 chunks every 20 ms, N concurrent; the largest N with every stream complete
   and no inter-chunk gap over 100 ms (≥ 256 and as many as direct), added TTFT p99; a
   level that fails is tried again up to ``--rounds`` times (one stall of a shared
   machine is enough to fail it);
4. memory: the gateway's RSS after warm-up and after 100,000 requests (no growth).

Each phase also says how much of each server's runnable time went to waiting for a CPU
(Linux schedstat): other load on the machine shows there, not in the server's figures.

    python bench/gateway_bench.py                    # ~6-8 minutes on 2 shared cores
    python bench/gateway_bench.py --quick            # ~2 minutes, shorter points
    python bench/gateway_bench.py --peers shoal      # without LiteLLM

Install wrk and LiteLLM's proxy first: ``bash scripts/bench_tools.sh``. Without wrk the
load comes from ``gateway_load.py``'s Python generator (said in the output).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gateway_load as gl

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
PATH = "/v1/chat/completions"
UPSTREAM_KEY = "sk-upstream-bench-0123456789"


@dataclass
class Ctx:
    args: argparse.Namespace
    tmp: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # what, figure, goal, ok

    def row(self, what: str, figure: str, goal: str = "", ok: bool | None = None) -> None:
        mark = "" if ok is None else ("met" if ok else "MISSED")
        self.rows.append((what, figure, goal, mark))
        print(f"  {what}: {figure} {('(goal ' + goal + ': ' + mark + ')') if goal else ''}",
              file=sys.stderr, flush=True)


def start_mock(ctx: Ctx, *extra: str) -> gl.Server:
    port = gl.free_port()
    mock = gl.Server([sys.executable, os.path.join(HERE, "gateway_mock.py"), "--port",
                      str(port), *extra], port, cpu=ctx.args.mock_cpu)
    mock.wait_ready()
    return mock


def start_shoal(ctx: Ctx, mock_port: int, *, keyed: bool = False) -> gl.Server:
    """``shoal gateway`` over the mock; ``keyed``: with a virtual key store holding one
    key, which every request then presents (authentication, admission, settlement)."""
    port = gl.free_port()
    store = f"sqlite:///{ctx.tmp}/keys-{port}.db"
    key = None
    if keyed:
        key = subprocess.run(
            [os.path.join(BIN, "shoal"), "keys", "create", "--name", "bench", "--store", store],
            capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    cfg = os.path.join(ctx.tmp, f"shoal-{mock_port}.toml")
    # Several workers share per-key limits through Redis (shoal gateway refuses them
    # without it): SHOAL_BENCH_REDIS, else the local one.
    redis = (f'redis_url = "{os.environ.get("SHOAL_BENCH_REDIS", "redis://127.0.0.1:6379/0")}"\n\n'
             if ctx.args.workers > 1 else "")
    with open(cfg, "w") as f:
        f.write(f'{redis}[channels.openai]\nbase_url = "http://127.0.0.1:{mock_port}/v1"\n'
                f'api_key = "{UPSTREAM_KEY}"\nmax_concurrency = 4096\npool_size = 1024\n'
                '\n[gateway]\naccess_log = false\n')
    cmd = [os.path.join(BIN, "shoal"), "gateway", "--config", cfg, "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(ctx.args.workers)]
    srv = gl.Server(cmd, port, cpu=ctx.args.server_cpu, ready_path="/health",
                    log=os.path.join(ctx.tmp, f"shoal-{port}.log"),
                    env={"SHOAL_STORE": store})
    srv.wait_ready()
    if key:
        srv.headers = {"authorization": f"Bearer {key}"}
    return srv


def start_litellm(ctx: Ctx, mock_port: int) -> gl.Server:
    port = gl.free_port()
    cfg = os.path.join(ctx.tmp, f"litellm-{mock_port}.yaml")
    with open(cfg, "w") as f:
        f.write("model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n"
                f"      model: openai/gpt-4o-mini\n      api_base: http://127.0.0.1:{mock_port}/v1\n"
                f"      api_key: {UPSTREAM_KEY}\n")
    cmd = [os.path.join(BIN, "litellm"), "--config", cfg, "--host", "127.0.0.1", "--port",
           str(port), "--num_workers", str(ctx.args.workers)]
    # No master key and no database: LiteLLM's plainest proxy (no key checks, as shoal here).
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    srv = gl.Server(cmd, port, cpu=ctx.args.server_cpu, ready_path="/health/liveliness",
                    env=env, log=os.path.join(ctx.tmp, f"litellm-{port}.log"))
    srv.wait_ready(timeout_s=120)
    return srv


def servers(ctx: Ctx, mock_port: int) -> dict[str, gl.Server]:
    out = {"shoal": start_shoal(ctx, mock_port)}
    if "shoal-key" in ctx.args.peers:
        out["shoal-key"] = start_shoal(ctx, mock_port, keyed=True)
    if "litellm" in ctx.args.peers:
        try:
            out["litellm"] = start_litellm(ctx, mock_port)
        except (RuntimeError, OSError) as exc:
            print(f"LiteLLM's proxy did not start ({exc}); it is left out", file=sys.stderr)
    return out


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}{PATH}"


def stop_all(ctx: Ctx, srvs: dict[str, gl.Server], phase: str) -> None:
    """Stop the servers; first say how much other load held each back in this phase."""
    for name, srv in srvs.items():
        if srv.proc.poll() is None:
            with contextlib.suppress(OSError, ImportError):
                held_back(ctx, name, srv, phase)
        srv.stop()


def held_back(ctx: Ctx, name: str, srv: gl.Server, phase: str) -> None:
    """The share of the server's runnable time spent waiting for a CPU (Linux schedstat):
    near 0 on a quiet machine; high, and the phase's figures are the machine's."""
    wait, cpu = srv.cpu_wait_s(), srv.cpu_s()
    if wait + cpu > 0:
        ctx.row(f"{name} waited for a CPU ({phase})", f"{wait / (wait + cpu):.0%} of its "
                f"runnable time ({wait:.1f} s waiting, {cpu:.1f} s running)")


# -- phases ---------------------------------------------------------------------------------


def phase_latency(ctx: Ctx) -> None:
    a = ctx.args
    mock = start_mock(ctx)
    srvs: dict[str, gl.Server] = {}
    try:
        srvs = servers(ctx, mock.port)
        for s in srvs.values():
            gl.wrk(url(s.port), connections=16, duration_s=2, headers=s.headers,
                   cpu=a.load_cpu)  # warm-up
        added: dict[tuple[str, int], list[tuple[float, float]]] = {}
        cpu: dict[str, list[float]] = {}
        top: dict[str, list[float]] = {}  # req/s at 64 connections, closed loop: the max
        for _ in range(a.rounds):
            for conc in (1, 64):
                d = gl.wrk(url(mock.port), connections=conc, duration_s=a.duration,
                           cpu=a.load_cpu)
                for name, s in srvs.items():
                    c0 = s.cpu_s()
                    r = gl.wrk(url(s.port), connections=conc, duration_s=a.duration,
                               headers=s.headers, cpu=a.load_cpu)
                    if conc == 64:
                        cpu.setdefault(name, []).append(
                            (s.cpu_s() - c0) / max(r.requests, 1) * 1e6)
                        top.setdefault(name, []).append(r.rps)
                    added.setdefault((name, conc), []).append(
                        (r.p50_ms - d.p50_ms, r.p99_ms - d.p99_ms))
        paced = paced_latency(ctx, srvs, mock, {k: statistics.median(v) for k, v in top.items()})
        for (name, conc), vals in sorted(added.items()):
            p50 = statistics.median(v[0] for v in vals)
            p99 = statistics.median(v[1] for v in vals)
            goal = 1.0 if conc == 1 else 10.0
            what = (f"added latency, {name}, c={conc}" if conc == 1 else
                    f"added latency, {name}, c=64 closed loop (saturated: {name} at "
                    f"{statistics.median(top[name]):,.0f} req/s)")
            ctx.row(what, f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                    f"p99 ≤ {goal:g} ms" if name.startswith("shoal") else "",
                    p99 <= goal if name.startswith("shoal") else None)
            if conc == 64 and name in paced:
                rate, got, paced_vals = paced[name]
                p50 = statistics.median(v[0] for v in paced_vals)
                p99 = statistics.median(v[1] for v in paced_vals)
                ctx.row(f"added latency, {name}, c=64 paced at {rate:,.0f} req/s offered "
                        f"({a.paced_share:.0%} of its max; {got:,.0f} req/s sent, "
                        "Poisson arrivals through wrk's delay())",
                        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                        "p99 ≤ 10 ms (below saturation; the closed-loop row above is the "
                        "worst case)" if name.startswith("shoal") else "",
                        p99 <= goal if name.startswith("shoal") else None)
        for name, per_req in cpu.items():
            ctx.row(f"server CPU per request, {name}, c=64",
                    f"{statistics.median(per_req):.0f} µs")
    finally:
        stop_all(ctx, srvs, "latency")
        mock.stop()


def paced_latency(ctx: Ctx, srvs: dict[str, gl.Server], mock: gl.Server,
                  top: dict[str, float]) -> dict[str, tuple[float, float,
                                                            list[tuple[float, float]]]]:
    """Added latency at 64 connections with the load paced below saturation: each server
    at ``--paced-share`` of its own closed-loop maximum, and the same rate sent straight
    to the mock in the same round. Requests arrive as a Poisson stream of that rate
    (gateway_load._PACE_LUA: a schedule per wrk thread that free connections follow
    through wrk's ``delay()`` hook): open loop below saturation, as published gateway
    benchmarks run at a fixed RPS. Per server: (rate, req/s sent, [(added p50, p99)])."""
    a = ctx.args
    out: dict[str, tuple[float, float, list[tuple[float, float]]]] = {}
    sent: dict[str, list[float]] = {}
    if shutil.which("wrk") is None:  # the Python load generator cannot pace
        print("  paced rows left out: they need wrk (bash scripts/bench_tools.sh)")
        return out
    for _ in range(a.rounds):
        for name, s in srvs.items():
            rate = top[name] * a.paced_share
            d = gl.wrk(url(mock.port), connections=64, duration_s=a.duration, cpu=a.load_cpu,
                       rate=rate)
            r = gl.wrk(url(s.port), connections=64, duration_s=a.duration, headers=s.headers,
                       cpu=a.load_cpu, rate=rate)
            print(f"  paced {name} at {rate:,.0f} req/s: sent {r.rps:,.0f}/s, p50 "
                  f"{r.p50_ms:.2f} / p99 {r.p99_ms:.2f} ms; direct sent {d.rps:,.0f}/s, p50 "
                  f"{d.p50_ms:.2f} / p99 {d.p99_ms:.2f} ms", file=sys.stderr, flush=True)
            sent.setdefault(name, []).append(r.rps)
            vals = out.setdefault(name, (rate, 0.0, []))[2]
            vals.append((r.p50_ms - d.p50_ms, r.p99_ms - d.p99_ms))
    return {k: (v[0], statistics.median(sent[k]), v[2]) for k, v in out.items()}


def phase_throughput(ctx: Ctx) -> None:
    a = ctx.args
    mock = start_mock(ctx, "--latency-ms", "20")
    srvs: dict[str, gl.Server] = {}
    try:
        srvs = servers(ctx, mock.port)
        for s in srvs.values():
            gl.wrk(url(s.port), connections=64, duration_s=2, headers=s.headers,
                   cpu=a.load_cpu)
        for conc in (64, 256):
            rps: dict[str, list[float]] = {}
            for _ in range(a.rounds):
                rps.setdefault("direct", []).append(gl.wrk(
                    url(mock.port), connections=conc, duration_s=a.duration,
                    cpu=a.load_cpu).rps)
                for name, s in srvs.items():
                    rps.setdefault(name, []).append(gl.wrk(
                        url(s.port), connections=conc, duration_s=a.duration,
                        headers=s.headers, cpu=a.load_cpu).rps)
            med = {k: statistics.median(v) for k, v in rps.items()}
            ctx.row(f"throughput, 20 ms mock, c={conc}",
                    ", ".join(f"{k} {v:,.0f}/s" for k, v in med.items()))
            for name, got in med.items():
                if not name.startswith("shoal"):
                    continue
                ratio = got / med["direct"]
                ctx.row(f"  {name} ÷ direct, c={conc}", f"{ratio:.2f}", "≥ 0.5", ratio >= 0.5)
                if med.get("litellm"):
                    vs = got / med["litellm"]
                    ctx.row(f"  {name} ÷ litellm, c={conc}", f"{vs:.1f}×", "≥ 5×", vs >= 5)
                elif "litellm" in med:  # it answered nothing in time at this level
                    ctx.row(f"  {name} ÷ litellm, c={conc}", "litellm served 0/s", "≥ 5×",
                            got > 0)
    finally:
        stop_all(ctx, srvs, "throughput")
        mock.stop()


def phase_streams(ctx: Ctx) -> None:
    a = ctx.args
    mock = start_mock(ctx, "--chunks", "64", "--chunk-ms", "20")
    srvs: dict[str, gl.Server] = {}
    try:
        srvs = servers(ctx, mock.port)
        targets = {"direct": (mock.port, {}),
                   **{k: (s.port, s.headers) for k, s in srvs.items()}}
        for port, hdrs in targets.values():
            gl.streams(url(port), 16, headers=hdrs, cpu=a.load_cpu)  # warm-up
        carried: dict[str, int] = {}
        failed: set[str] = set()
        ttft: dict[str, float] = {}
        for n in a.stream_levels:
            for name, (port, hdrs) in targets.items():
                if name in failed:
                    continue  # a lower level already failed
                for _attempt in range(max(1, a.rounds)):  # a stall of the machine's
                    r = gl.streams(url(port), n, headers=hdrs, cpu=a.load_cpu)  # is retried
                    ok = r["completed"] == n and r["max_gap_ms"] <= 100
                    print(f"  streams {name} n={n}: {r['completed']}/{n} complete, max gap "
                          f"{r['max_gap_ms']:.0f} ms, TTFT p99 {r['ttft_p99_ms']:.1f} ms, "
                          f"client CPU {r['client_cpu']:.0%}"
                          + (f", {r['failed']} refused or broken" if r["failed"] else ""),
                          file=sys.stderr, flush=True)
                    if ok:
                        break
                if not ok and name == "direct":
                    ctx.row(f"direct-to-mock stops at {n} streams",
                            f"max gap {r['max_gap_ms']:.0f} ms with the stream client at "
                            f"{r['client_cpu']:.0%} of a core (client and mock share CPU "
                            f"{a.load_cpu}{', saturated' if r['client_cpu'] > 0.85 else ''})")
                if ok:
                    carried[name] = max(carried.get(name, 0), n)
                else:
                    failed.add(name)
                if n == 256:
                    ttft[name] = r["ttft_p99_ms"]
        top = max(a.stream_levels)
        for name in targets:
            got = carried.get(name, 0)
            shown = f"≥ {got}" if got == top else str(got)
            if name.startswith("shoal"):
                goal_ok = got >= 256 and got >= carried.get("direct", 0)
                ctx.row(f"streams carried (no gap > 100 ms, best of {a.rounds}), {name}", shown,
                        "≥ 256 and = direct", goal_ok)
            else:
                ctx.row(f"streams carried (no gap > 100 ms, best of {a.rounds}), {name}", shown)
        for name in srvs:
            if name in ttft and "direct" in ttft:
                ctx.row(f"added TTFT p99 at 256 streams, {name}",
                        f"{ttft[name] - ttft['direct']:.1f} ms")
    finally:
        stop_all(ctx, srvs, "streams")
        mock.stop()


def phase_memory(ctx: Ctx) -> None:
    a = ctx.args
    mock = start_mock(ctx)
    srv = start_shoal(ctx, mock.port)
    try:
        gl.wrk(url(srv.port), connections=64, duration_s=3, cpu=a.load_cpu)
        warm = srv.rss_mb()
        done, t0 = 0, time.monotonic()
        while done < a.memory_requests and time.monotonic() - t0 < 300:
            done += gl.wrk(url(srv.port), connections=64, duration_s=5, cpu=a.load_cpu).requests
        after = srv.rss_mb()
        growth = after - warm
        with contextlib.suppress(OSError, ImportError):
            held_back(ctx, "shoal", srv, "memory")
        ctx.row("gateway RSS after warm-up / after N requests",
                f"{warm:.1f} MiB / {after:.1f} MiB after {done:,} (growth {growth:+.1f} MiB)",
                "no growth beyond noise (≤ 5 MiB)", growth <= 5.0 and done >= a.memory_requests)
    finally:
        srv.stop()
        mock.stop()


PHASES = {"latency": phase_latency, "throughput": phase_throughput, "streams": phase_streams,
          "memory": phase_memory}


def main() -> None:
    parser = argparse.ArgumentParser(description="shoal gateway vs direct vs LiteLLM's proxy")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--peers", default="shoal,shoal-key,litellm",
                        help="shoal: no keys; shoal-key: every request with a virtual key")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk point")
    parser.add_argument("--stream-levels", default="64,128,256,512,1024")
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--paced-share", type=float, default=0.5,
                        help="the paced c=64 row's rate, a share of each server's max")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 2 s points, streams up to 512, 30,000 requests")
    parser.add_argument("--mock-cpu", default="0")
    parser.add_argument("--server-cpu", default="1")
    parser.add_argument("--load-cpu", default="0")
    a = parser.parse_args()
    if a.quick:
        a.rounds, a.duration, a.stream_levels = 1, 2.0, "64,256,512"
        a.memory_requests = 30_000
    a.stream_levels = [int(n) for n in a.stream_levels.split(",")]
    if "litellm" in a.peers and shutil.which(os.path.join(BIN, "litellm")) is None:
        print("LiteLLM's proxy is not installed (bash scripts/bench_tools.sh): left out",
              file=sys.stderr)
        a.peers = "shoal"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        ctx = Ctx(a, tmp)
        for name in a.phases.split(","):
            print(f"phase {name}...", file=sys.stderr, flush=True)
            PHASES[name](ctx)
    load = "wrk" if shutil.which("wrk") else "Python load generator (wrk missing)"
    pin = "taskset" if shutil.which("taskset") else "no taskset: unpinned"
    print(f"\nshoal gateway bench: {a.rounds} round(s) × {a.duration:g} s per point, "
          f"{load}, {pin} (mock+load CPU {a.mock_cpu}, servers CPU {a.server_cpu}), "
          f"{a.workers} worker(s), {time.monotonic() - started:.0f} s\n")
    print("| measure | figure | goal | |")
    print("| --- | --- | --- | --- |")
    for what, figure, goal, ok in ctx.rows:
        print(f"| {what} | {figure} | {goal} | {ok} |")


if __name__ == "__main__":
    main()
