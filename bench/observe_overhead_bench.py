"""What observing costs the Router: calls/s with events off, on with nobody listening, and
with metrics + traces + an event stream subscribed; same process, one run.

A zero-latency server (bench/http_clients.py --serve, its own process) answers every
POST with the same chat.completion. In THIS process, in alternating rounds, 50
concurrent workers make N calls through ``Router.complete`` (cap 100, so all 50 are
admitted), each peer with its own Router and bus:

- ``all off``: a bus that can never be active (``_Off``): no event is ever built, no
  call is observed;
- ``nothing subscribed``: the stock bus with nobody listening, the calls inside a
  run/step/agent scope as in a flow (what every user pays for the instrumentation);
- ``events``: the same with one event-stream subscriber (a bounded deque): what building
  and delivering the events costs, whoever listens;
- ``metrics+events``: that, plus a :class:`PrometheusExporter` (the Router's channel
  gauges attached);
- ``metrics+traces+events``: that, plus ``shoal.observe.tracing()`` (OpenTelemetry
  SDK, batch span processor, spans discarded by the exporter).

Printed per peer: calls/s (best and median round), client CPU per call (median; process
time, the span processor's thread included) and what it adds to ``all off``, and the
calls/s ratios to ``all off``: best round to best round, median to median, and
"paired": the median over rounds of each round's ratio to the same round's ``all off``
(the peers of a round run back to back, so load that drifts between rounds cancels).
Targets (issue 11, on the paired ratio): nothing subscribed >= 0.98, everything on >= 0.90.

The process's garbage collector is set up as every ``shoal`` command and the gateway set
theirs (``shoal.gc_tune.tune_gc``: what start-up built frozen, the young generation
collected every 7,000 allocations instead of 700); ``--gc default`` keeps CPython's
defaults, where observing pays a second time in young collections that re-scan the 50
calls in flight (docs/DECISIONS.md, "Observing a call: counted in batches").

    python bench/observe_overhead_bench.py [--calls 1000] [--rounds 15] [--gc tuned|default]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_clients import _drive
from overhead_bench import request
from shoal.config import Config
from shoal.gc_tune import tune_gc
from shoal.observe.context import enter, leave
from shoal.observe.events import Event, EventBus, Routes
from shoal.observe.prometheus import PrometheusExporter
from shoal.traffic.router import Router

PEERS = ("all off", "nothing subscribed", "events", "metrics+events", "metrics+traces+events")
TARGETS = {"nothing subscribed": 0.98, "metrics+traces+events": 0.90}


class _Off(EventBus):
    """A bus that is never active: the Router builds and observes nothing."""

    __slots__ = ()

    @property
    def active(self) -> bool:
        return False

    def subscribe(self, callback: Callable[[Event], None] | None = None, *,
                  kinds: Routes | None = None) -> Callable[[], None]:
        raise RuntimeError("the 'all off' bus takes no subscribers")


def _tracing(router: Router) -> tuple[str, Callable[[], None]]:
    """shoal.observe.tracing on ``router``'s bus with spans discarded, or why not."""
    try:
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

        from shoal.observe import tracing
    except ImportError as exc:
        return f"traces OFF ({exc})", lambda: None

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    handle = tracing(exporter=Discard(), bus=router)
    return "traces via shoal.observe.tracing (OTel SDK, batch processor)", handle.close


def config(url: str) -> Config:
    return Config.from_dict({
        "channels": {"bench": {"protocol": "openai", "base_url": url + "/v1",
                               "api_key": "sk-bench", "provider": "generic",
                               "max_concurrency": 100}},
        "models": {"bench-model": {"channels": ["bench"], "input": 1.0, "output": 1.0}},
    })


async def measure(url: str, calls: int, concurrency: int, rounds: int
                  ) -> tuple[dict[str, list[dict[str, float]]], str]:
    cfg = config(url)
    routers = {name: Router(cfg, events=_Off() if name == "all off" else None)
               for name in PEERS}
    exporters, stream = [], deque[Event](maxlen=10_000)
    for name in ("events", "metrics+events", "metrics+traces+events"):
        routers[name].events.subscribe(stream.append)
    for name in ("metrics+events", "metrics+traces+events"):
        on = routers[name]
        exporters.append(PrometheusExporter(on.events, router=on))
        exporters[-1].subscribe()
    traces, stop_tracing = _tracing(routers["metrics+traces+events"])
    req = request()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in PEERS}
    try:
        for r in range(rounds):
            order = PEERS[r % len(PEERS):] + PEERS[:r % len(PEERS)]  # rotate who goes first
            for name in order:
                router = routers[name]

                async def post(router: Router = router) -> None:
                    await router.complete(req)

                token = enter(run_id="bench", step="step", agent="agent") \
                    if name != "all off" else None
                try:
                    results[name].append(await _drive(post, calls, concurrency, warmup=200))
                finally:
                    if token is not None:
                        leave(token)
    finally:
        stop_tracing()
        for exporter in exporters:
            exporter.close()
        for router in routers.values():
            await router.aclose()
    assert len(stream) > 0, "the event stream saw nothing: events are not on"
    return results, traces


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--gc", choices=("tuned", "default"), default="tuned",
                   help="the collector as shoal's commands set it (tuned) or CPython's own")
    args = p.parse_args()
    if args.gc == "tuned":
        tune_gc()
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "http_clients.py"),
                               "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}"
        results, traces = asyncio.run(measure(url, args.calls, args.concurrency, args.rounds))
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=10)
    cps = {name: [r["calls"] / r["wall_s"] for r in rs] for name, rs in results.items()}
    cpu = {name: [1e6 * r["cpu_s"] / r["calls"] for r in rs] for name, rs in results.items()}
    print(f"{args.calls} calls x {args.rounds} alternating rounds, {args.concurrency} "
          f"concurrent, zero-latency server in its own process; {traces}; "
          f"garbage collector: {args.gc} {gc.get_threshold()}")
    print(f"{'peer':24} {'best c/s':>9} {'median':>9} {'CPU/call':>9} {'+CPU':>7} "
          f"{'best':>6} {'median':>7} {'paired':>7} {'target':>7}")
    base_best, base_med = max(cps["all off"]), statistics.median(cps["all off"])
    base_cpu = statistics.median(cpu["all off"])
    ok = True
    for name in PEERS:
        best, med = max(cps[name]), statistics.median(cps[name])
        r_best, r_med = best / base_best, med / base_med
        med_cpu = statistics.median(cpu[name])
        # each round against the same round's "all off": load that drifts between rounds
        # cancels out
        paired = statistics.median(c / off for c, off in zip(cps[name], cps["all off"],
                                                               strict=True))
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = "PASS" if paired >= target else "FAIL"
            ok &= paired >= target
        print(f"{name:24} {best:9.0f} {med:9.0f} {med_cpu:7.0f}us {med_cpu - base_cpu:+5.0f}us "
              f"{r_best:6.3f} {r_med:7.3f} {paired:7.3f} "
              f"{'' if target is None else f'>={target}':>7} {verdict}")
    print("per-round calls/s: " + "; ".join(
        f"{name}: {', '.join(f'{c:.0f}' for c in cps[name])}" for name in PEERS))
    print("targets met (paired ratio)" if ok else "targets MISSED (paired ratio)")


if __name__ == "__main__":
    main()
