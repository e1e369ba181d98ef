"""The gateway's Prometheus metrics, in a registry the app owns (``GET /metrics``).

Labels: ``route``, ``model`` (a model the config knows, else ``unknown``: a caller
cannot grow the label set by inventing names), ``key`` (the virtual key's id, never
its secret) and ``status``. prometheus_client is imported here, not by ``import shoal``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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

    def observe(self, *, route: str, model: str, key: str, status: int, duration_s: float,
                error_kind: str | None, input_tokens: int, output_tokens: int,
                cost_usd: float) -> None:
        model = model or "unknown"
        self.requests.labels(route, model, key, str(status)).inc()
        self.latency.labels(route, model, key).observe(duration_s)
        if error_kind is not None:
            self.errors.labels(route, model, key, error_kind).inc()
        if input_tokens:
            self.tokens.labels(model, key, "input").inc(input_tokens)
        if output_tokens:
            self.tokens.labels(model, key, "output").inc(output_tokens)
        if cost_usd:
            self.cost.labels(model, key).inc(cost_usd)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
