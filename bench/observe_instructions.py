"""What observing costs the Router, in instructions: each peer of
bench/observe_overhead_bench.py under valgrind's callgrind, whatever the machine's load.

For each peer (all off, nothing subscribed, events, metrics + events, metrics + traces +
events), a child process of this script makes N calls through ``Router.complete`` (50
concurrent, after 300 to warm up) against the zero-latency server of
bench/http_clients.py (its own process, not under valgrind); the same child with no
calls is subtracted, so start-up and warm-up cancel. Instructions of every thread of the
client count (the span export thread included). Printed: instructions a call, and over
all off. The collector is set up as shoal's commands set it (``--gc default``: CPython's).

Needs valgrind (``bash scripts/bench_tools.sh`` installs it). ~40 s a child.

    python bench/observe_instructions.py [--calls 1000] [--gc tuned|default]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

PEERS = ("all off", "nothing subscribed", "events", "metrics+events", "metrics+traces+events")


async def _calls(peer: str, calls: int) -> None:
    import observe_overhead_bench as ob
    from overhead_bench import request
    from shoal.observe.context import enter, leave
    from shoal.observe.events import Event
    from shoal.observe.prometheus import PrometheusExporter
    from shoal.traffic.router import Router

    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "http_clients.py"),
                               "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout is not None
    assert server.stdin is not None
    url = f"http://127.0.0.1:{int(server.stdout.readline())}"
    router = Router(ob.config(url), events=ob._Off() if peer == "all off" else None)
    stream: deque[Event] = deque(maxlen=10_000)
    stop: Any = lambda: None  # noqa: E731
    exporter = None
    if peer in ("events", "metrics+events", "metrics+traces+events"):
        router.events.subscribe(stream.append)
    if peer in ("metrics+events", "metrics+traces+events"):
        exporter = PrometheusExporter(router.events, router=router)
        exporter.subscribe()
    if peer == "metrics+traces+events":
        _, stop = ob._tracing(router)
    req = request()
    token = enter(run_id="bench", step="step", agent="agent") if peer != "all off" else None
    try:
        for n in (300, calls):
            for _ in range(n // 50):
                await asyncio.gather(*(router.complete(req) for _ in range(50)))
    finally:
        if token is not None:
            leave(token)
        stop()
        if exporter is not None:
            exporter.close()
        await router.aclose()
        server.stdin.close()
        server.wait(timeout=10)


def _child(peer: str, calls: int, gc_mode: str) -> None:
    if gc_mode == "tuned":
        from shoal.gc_tune import tune_gc

        tune_gc()
    asyncio.run(_calls(peer, calls))


def _instructions(peer: str, calls: int, gc_mode: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, __file__, "--child", peer, "--calls", str(calls),
                        "--gc", gc_mode], check=True, capture_output=True)
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no totals")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--gc", choices=("tuned", "default"), default="tuned")
    p.add_argument("--child", choices=PEERS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child, args.calls, args.gc)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: bash scripts/bench_tools.sh (or apt-get "
                 "install valgrind)")
    calls = args.calls // 50 * 50
    per_call = {}
    for peer in PEERS:
        base = _instructions(peer, 0, args.gc)
        per_call[peer] = (_instructions(peer, calls, args.gc) - base) / calls
        print(f"{peer:24} {per_call[peer]:10,.0f} instructions a call", flush=True)
    off = per_call["all off"]
    print(f"{calls} calls a peer, 50 concurrent, garbage collector {args.gc}; over all off "
          "(and the calls/s ratio that many more instructions would give):")
    for peer in PEERS[1:]:
        extra = per_call[peer] / off - 1
        print(f"  {peer:24} {extra:+7.1%}  ({1 / (1 + extra):.3f})")


if __name__ == "__main__":
    main()
