"""Prometheus metrics from shoal's events: scrape them, serve them, or push them.

::

    exporter = PrometheusExporter(router.events, router=router)
    exporter.subscribe()                 # events → counters and histograms
    port = exporter.serve(9464)          # GET http://127.0.0.1:9464/metrics
    ...
    exporter.push("http://pushgateway:9091", job="nightly")   # a short job, at its end

Counters and histograms follow the events (:mod:`shoal.observe.prom_metrics` says which
event updates which series). Channel gauges (in flight, limit, queue depth, breaker
state) are read at scrape time from the attached :class:`~shoal.traffic.router.Router`,
so they are exact; without a Router they come from the events (breaker and
``limit_change``; ``queued`` from limiter waits). The full list is in docs/observe.md.

``registry``: a ``prometheus_client.CollectorRegistry`` of your own (the gateway passes
its registry so one ``/metrics`` serves both); by default a fresh one, not the global
``REGISTRY``, so two exporters in one process never collide.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shoal.errors import ConfigError
from shoal.observe.events import EventBus
from shoal.observe.prom_metrics import BREAKER_STATES, Metrics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from shoal.traffic.router import Router

__all__ = ["PrometheusExporter"]


class _ChannelGauges(Collector):
    """Per-channel gauges computed at scrape time (from a Router when one is attached)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.router: Router | None = None

    def _router_stats(self) -> list[dict[str, Any]]:
        router = self.router
        if router is None:
            return []
        for _ in range(5):  # scrapes run on the server's thread; lanes may be added meanwhile
            try:
                return router.stats()
            except RuntimeError:
                continue
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        in_flight = GaugeMetricFamily("shoal_channel_in_flight",
                                      "Calls holding a slot at the provider.", labels=["channel"])
        limit = GaugeMetricFamily("shoal_channel_limit", "Concurrency cap (adaptive: the "
                                  "learned cap); absent when unlimited.", labels=["channel"])
        queue = GaugeMetricFamily("shoal_channel_queue_depth", "Calls waiting for a slot.",
                                  labels=["channel"])
        breaker = GaugeMetricFamily("shoal_channel_breaker_state", "Circuit breaker: "
                                    "0 closed, 1 half-open, 2 open.", labels=["channel"])
        seen: set[str] = set()
        for s in self._router_stats():
            name = str(s["channel"])
            seen.add(name)
            held, pending = int(s.get("in_flight") or 0), int(s.get("pending") or 0)
            in_flight.add_metric([name], held)
            queue.add_metric([name], max(pending - held, 0))
            if s.get("capacity") is not None:
                limit.add_metric([name], float(s["capacity"]))
            breaker.add_metric([name], BREAKER_STATES.get(str(s.get("breaker")), 0.0))
        for name, cap in m.limits.copy().items():
            if name not in seen:
                limit.add_metric([name], cap)
        for name, n in m.queued.copy().items():
            if name not in seen:
                queue.add_metric([name], n)
        for name, state in m.breaker_state.copy().items():
            if name not in seen:
                breaker.add_metric([name], BREAKER_STATES.get(state, 0.0))
        yield from (in_flight, limit, queue, breaker)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed at scrape time: no duplicate-name check needed


class PrometheusExporter:
    """shoal's events as Prometheus metrics on ``registry`` (see the module docstring)."""

    def __init__(self, bus: EventBus, registry: CollectorRegistry | None = None, *,
                 router: Router | None = None, keep_runs: int = 50) -> None:
        self.bus = bus
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(keep_runs=keep_runs)
        self.registry.register(self.metrics)
        self._gauges = _ChannelGauges(self.metrics)
        self.registry.register(self._gauges)
        self._unsubscribe: Callable[[], None] | None = None
        self._servers: list[tuple[Any, threading.Thread]] = []
        if router is not None:
            self.attach(router)

    def attach(self, router: Router) -> None:
        """Read the channel gauges from ``router`` at scrape time."""
        self._gauges.router = router

    def subscribe(self) -> Callable[[], None]:
        """Start counting the bus's events (idempotent); returns the unsubscribe."""
        if self._unsubscribe is None:
            self._unsubscribe = self.bus.subscribe(kinds=self.metrics.routes())
        return self.unsubscribe

    def unsubscribe(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def text(self) -> str:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry).decode("utf-8")

    def serve(self, port: int = 9464, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread (port 0: any free
        port); returns the bound port. Scrapes are answered even while the event loop is
        busy. :meth:`close` stops it."""
        from prometheus_client import start_http_server

        try:
            server, thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}; "
                              "choose another --metrics-port (0 picks a free one)") from None
        self._servers.append((server, thread))
        return int(server.server_port)

    def push(self, gateway_url: str, job: str, *,
             grouping_key: dict[str, str] | None = None, timeout_s: float = 10.0) -> None:
        """Push every metric to a Prometheus Pushgateway (a short job, at its end). Blocks:
        from async code, ``await asyncio.to_thread(exporter.push, url, job)``."""
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(gateway_url, job=job, registry=self.registry,
                            grouping_key=grouping_key, timeout=timeout_s)
        except OSError as exc:
            raise ConfigError(f"cannot push metrics to the Pushgateway at {gateway_url}: "
                              f"{exc}") from None

    def close(self) -> None:
        """Unsubscribe and stop the servers :meth:`serve` started."""
        self.unsubscribe()
        servers, self._servers = self._servers, []
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def __enter__(self) -> PrometheusExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
