"""The gateway's Prometheus metrics, in a registry the app owns (``GET /metrics``).

Labels: ``route``, ``model`` (a model the config knows, else ``unknown``: a caller
cannot grow the label set by inventing names), ``key`` (the virtual key's id, never
its secret) and ``status``. prometheus_client is imported here, not by ``import shoal``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["GatewayMetrics"]

# Seconds: the gateway's own overhead is sub-millisecond, model calls take seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0, 120.0, 300.0)


class GatewayMetrics:
    """Requests, errors, in-flight calls, latency, tokens and cost."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("shoal_gateway_requests", "Requests answered.",
                                ["route", "model", "key", "status"], registry=r)
        self.errors = Counter("shoal_gateway_errors", "Requests that failed, by kind "
                              "(invalid_request, authentication, rate_limit, quota, ...).",
                              ["route", "model", "key", "kind"], registry=r)
        self.in_flight = Gauge("shoal_gateway_in_flight", "Requests being served.",
                               ["route"], registry=r)
        self.latency = Histogram("shoal_gateway_request_duration_seconds",
                                 "Time from request to the last byte of the answer.",
                                 ["route", "model", "key"], buckets=_BUCKETS, registry=r)
        self.tokens = Counter("shoal_gateway_tokens", "Tokens through the gateway.",
                              ["model", "key", "kind"], registry=r)
        self.cost = Counter("shoal_gateway_cost_usd", "Spend through the gateway, USD "
                            "(answers discarded on the way included).",
                            ["model", "key"], registry=r)
        self._children: dict[tuple[str, str, str, int], tuple[Any, ...]] = {}
        self._in_flight: dict[str, Any] = {}

    def in_flight_of(self, route: str) -> Any:
        """The in-flight gauge of ``route`` (a fixed set of routes), looked up once."""
        gauge = self._in_flight.get(route)
        if gauge is None:
            gauge = self._in_flight[route] = self.in_flight.labels(route)
        return gauge

    def _series(self, route: str, model: str, key: str, status: int) -> tuple[Any, ...]:
        """The labelled children of one (route, model, key, status), looked up once."""
        label = (route, model, key, status)
        series = self._children.get(label)
        if series is None:
            if len(self._children) > 10_000:  # many keys: stay bounded, look up again
                self._children.clear()
            series = self._children[label] = (
                self.requests.labels(route, model, key, str(status)),
                self.latency.labels(route, model, key),
                self.tokens.labels(model, key, "input"),
                self.tokens.labels(model, key, "output"),
                self.cost.labels(model, key))
        return series

    def observe(self, *, route: str, model: str, key: str, status: int, duration_s: float,
                error_kind: str | None, input_tokens: int, output_tokens: int,
                cost_usd: float) -> None:
        model = model or "unknown"
        requests, latency, tokens_in, tokens_out, cost = self._series(route, model, key,
                                                                      status)
        requests.inc()
        latency.observe(duration_s)
        if error_kind is not None:
            self.errors.labels(route, model, key, error_kind).inc()
        if input_tokens:
            tokens_in.inc(input_tokens)
        if output_tokens:
            tokens_out.inc(output_tokens)
        if cost_usd:
            cost.inc(cost_usd)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
