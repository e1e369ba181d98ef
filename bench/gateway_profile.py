"""The gateway's CPU per request, peers side by side in one run (and a py-spy profile).

Each peer is ``shoal gateway`` run from a source tree (``--peer name=path/to/src``: e.g.
an older commit unpacked with ``git archive``), with no keys and with one SQLite virtual
key. The fast upstream mock (``bench/gateway_mock.py``) and ``wrk`` share CPU 0, the
gateway is pinned to CPU 1. Per peer and round: ``wrk`` for ``--seconds`` at
``--connections``, the gateway's CPU seconds (user + system, from ``/proc``) over the
requests wrk counted = CPU µs per request. Rounds alternate the peers (the machine may be
loaded by others: compare peers within a round, take medians; the ratio is the figure).

    python bench/gateway_profile.py                                # this tree only
    git archive HEAD~5 src | tar -x -C /tmp/base
    python bench/gateway_profile.py --peer base=/tmp/base/src --peer now=src
    python bench/gateway_profile.py --pyspy /tmp/prof   # py-spy record per peer (raw)
    python bench/gateway_profile.py --stream 64         # 64 concurrent SSE streams too
    python bench/gateway_profile.py --connections 1,64  # c=1 too (with added latency)

With several ``--connections``, each round also runs wrk straight at the mock and the
summary has each peer's added latency (p50/p99 minus direct's, medians over rounds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gateway_load as gl

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UPSTREAM_KEY = "sk-upstream-bench-0123456789"
_MAIN = "import sys; from shoal.cli.main import main; sys.exit(main())"


def start_gateway(src: str, mock_port: int, tmp: str, *, keyed: bool) -> gl.Server:
    port = gl.free_port()
    env = {"PYTHONPATH": os.path.abspath(src)}
    store = f"sqlite:///{tmp}/keys-{port}.db"
    key = None
    if keyed:
        key = subprocess.run(
            [sys.executable, "-c", _MAIN, "keys", "create", "--name", "p", "--store", store],
            capture_output=True, text=True, check=True, timeout=60,
            env={**os.environ, **env}).stdout.strip()
        if not key.startswith("sk-"):
            raise RuntimeError(f"shoal keys create printed no key: {key!r}")
    cfg = os.path.join(tmp, f"gw-{port}.toml")
    with open(cfg, "w") as f:
        f.write(f'[channels.openai]\nbase_url = "http://127.0.0.1:{mock_port}/v1"\n'
                f'api_key = "{UPSTREAM_KEY}"\nmax_concurrency = 4096\npool_size = 1024\n'
                '\n[gateway]\naccess_log = false\n')
    cmd = [sys.executable, "-c", _MAIN, "gateway", "--config", cfg, "--port", str(port)]
    srv = gl.Server(cmd, port, cpu="1", ready_path="/health",
                    env={**env, "SHOAL_STORE": store}, log=os.path.join(tmp, f"gw-{port}.log"))
    srv.wait_ready()
    if key:
        srv.headers = {"authorization": f"Bearer {key}"}
    return srv


def measure(srv: gl.Server, url: str, connections: int,
            seconds: float) -> tuple[float, gl.LoadResult]:
    """(CPU µs per request, wrk's result) over one wrk run."""
    cpu0 = srv.cpu_s()
    res = gl.wrk(url, connections=connections, duration_s=seconds, headers=srv.headers,
                 cpu="0")
    cpu = srv.cpu_s() - cpu0
    if res.errors:
        print(f"    ({res.errors} errors)", file=sys.stderr)
    return cpu / max(res.requests, 1) * 1e6, res


def stream_cpu(srv: gl.Server, url: str, n: int) -> tuple[float, float, float]:
    """(CPU µs per streamed chunk, largest inter-chunk gap ms, TTFT p99 ms) for ``n``
    streams."""
    cpu0 = srv.cpu_s()
    res = gl.streams(url, n, headers=srv.headers, cpu="0")
    cpu = srv.cpu_s() - cpu0
    return (cpu / max(res["events"], 1) * 1e6, float(res["max_gap_ms"]),
            float(res["ttft_p99_ms"]))


def spy_on(where: str, srv: gl.Server, name: str, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``srv`` for ``seconds`` into ``where/name.txt`` (folded stacks)."""
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not where or not os.path.exists(pyspy):
        return None
    os.makedirs(where, exist_ok=True)
    spy = subprocess.Popen([pyspy, "record", "--pid", str(srv.proc.pid), "-f", "raw", "-o",
                            os.path.join(where, f"{name}.txt"), "-d", str(int(seconds)),
                            "-r", "250", "--nonblocking"],  # not paused per sample
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return spy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", action="append", default=[],
                    help="name=src_dir (default: now=./src)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", default="64", help="comma list, e.g. 1,64")
    ap.add_argument("--no-keyed", action="store_true", help="skip the SQLite-key runs")
    ap.add_argument("--stream", type=int, default=0, help="also N concurrent streams")
    ap.add_argument("--pyspy", default="", help="dir: py-spy record each peer (raw format)")
    args = ap.parse_args()
    peers = dict(p.split("=", 1) for p in args.peer) or {"now": os.path.join(ROOT, "src")}
    modes = ["open"] if args.no_keyed else ["open", "key"]
    tmp = tempfile.mkdtemp(prefix="gwprof-")
    mock = gl.Server([sys.executable, os.path.join(HERE, "gateway_mock.py"), "--port",
                      str(mock_port := gl.free_port())], mock_port, cpu="0")
    smock = gl.Server([sys.executable, os.path.join(HERE, "gateway_mock.py"), "--port",
                       str(smock_port := gl.free_port()), "--chunks", "64", "--chunk-ms",
                       "20"], smock_port, cpu="0")
    mock.wait_ready()
    smock.wait_ready()
    conns = [int(c) for c in args.connections.split(",")]
    cpu: dict[tuple[str, str, int], list[float]] = {}
    rps: dict[tuple[str, str, int], list[float]] = {}
    added: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    chunk: dict[str, list[tuple[float, float]]] = {}
    direct_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
    try:
        for r in range(args.rounds):
            for name, src in peers.items():
                for mode in modes:
                    srv = start_gateway(src, mock_port, tmp, keyed=mode == "key")
                    try:
                        url = f"http://127.0.0.1:{srv.port}/v1/chat/completions"
                        measure(srv, url, max(conns), 1)  # warm-up
                        for conc in conns:
                            d = gl.wrk(direct_url, connections=conc, duration_s=args.seconds,
                                       cpu="0") if len(conns) > 1 else None
                            spy = spy_on(args.pyspy if r == 0 else "", srv,
                                         f"{name}-{mode}-c{conc}", args.seconds + 1)
                            us, res = measure(srv, url, conc, args.seconds)
                            if spy is not None:
                                spy.wait(timeout=60)
                            k = (name, mode, conc)
                            cpu.setdefault(k, []).append(us)
                            rps.setdefault(k, []).append(res.rps)
                            lat = f"p50 {res.p50_ms:.3f} / p99 {res.p99_ms:.3f} ms"
                            if d is not None:
                                added.setdefault(k, []).append(
                                    (res.p50_ms - d.p50_ms, res.p99_ms - d.p99_ms))
                                lat += f" (direct {d.p50_ms:.3f} / {d.p99_ms:.3f})"
                            print(f"round {r} {name:>8} {mode:>4} c={conc:<3}: {us:6.0f} µs "
                                  f"CPU/request, {res.rps:7.0f} req/s, {lat}",
                                  file=sys.stderr, flush=True)
                    finally:
                        srv.stop()
                if args.stream:
                    srv = start_gateway(src, smock_port, tmp, keyed=False)
                    try:
                        url = f"http://127.0.0.1:{srv.port}/v1/chat/completions"
                        spy = spy_on(args.pyspy if r == 0 else "", srv, f"{name}-stream", 12)
                        us, gap, ttft = stream_cpu(srv, url, args.stream)
                        if spy is not None:
                            spy.wait(timeout=60)
                        chunk.setdefault(name, []).append((us, gap))
                        print(f"round {r} {name:>8} stream: {us:6.1f} µs CPU/chunk, max gap "
                              f"{gap:.0f} ms, TTFT p99 {ttft:.0f} ms", file=sys.stderr,
                              flush=True)
                    finally:
                        srv.stop()
    finally:
        mock.stop()
        smock.stop()
    first = next(iter(peers))
    print(f"\nmedians over {args.rounds} rounds, wrk -c{args.connections}, "
          f"{args.seconds:g} s each (ratios to {first!r}):")
    for (name, mode, conc), values in sorted(cpu.items(), key=lambda kv: kv[0][::-1]):
        base = statistics.median(cpu[(first, mode, conc)])
        med = statistics.median(values)
        line = (f"  {name:>8} {mode:>4} c={conc:<3}: {med:6.0f} µs CPU/request "
                f"({med / base:.2f}×), {statistics.median(rps[(name, mode, conc)]):7.0f} req/s")
        if (name, mode, conc) in added:
            vals = added[(name, mode, conc)]
            line += (f", added p50 {statistics.median(v[0] for v in vals):.3f} ms, "
                     f"p99 {statistics.median(v[1] for v in vals):.3f} ms")
        print(line)
    for name, runs in chunk.items():
        base = statistics.median(u for u, _ in chunk[first])
        med = statistics.median(u for u, _ in runs)
        print(f"  {name:>8} stream {args.stream}: {med:6.1f} µs CPU/chunk ({med / base:.2f}×),"
              f" max gap {max(g for _, g in runs):.0f} ms")


if __name__ == "__main__":
    main()
