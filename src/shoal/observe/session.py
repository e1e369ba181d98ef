"""Metrics and alerts around one piece of work, in one ``async with``.

::

    async with Router(config) as router, observing(router, metrics_port=9464,
                                                   alerts=config.alerts):
        await flow.run(...)

What ``shoal run --metrics-port PORT`` does: serve ``/metrics`` (a
:class:`~shoal.observe.prometheus.PrometheusExporter` with the Router's channel gauges)
while the block runs, evaluate the ``[alerts]`` of shoal.toml, and push the metrics to
a Pushgateway at the end when ``push_url`` is given (a short job). When the environment
asks for OpenTelemetry traces (``OTEL_EXPORTER_OTLP_ENDPOINT``, or
``OTEL_TRACES_EXPORTER`` other than none), :func:`shoal.observe.tracing` runs too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.observe.alert_config import AlertsConfig
    from shoal.observe.alerts import AlertEngine
    from shoal.observe.prometheus import PrometheusExporter
    from shoal.observe.tracing_setup import Tracing
    from shoal.traffic.router import Router

__all__ = ["Observing", "observing"]

_log = logging.getLogger("shoal.observe")


@dataclass
class Observing:
    """What :func:`observing` started (None: not asked for)."""

    exporter: PrometheusExporter | None = None
    port: int | None = None
    alerts: AlertEngine | None = None
    tracing: Tracing | None = None


@contextlib.asynccontextmanager
async def observing(router: Router, *, metrics_port: int | None = None,
                    push_url: str | None = None, job: str = "shoal",
                    alerts: AlertsConfig | None = None,
                    announce: Callable[[str], object] | None = None
                    ) -> AsyncIterator[Observing]:
    """Serve metrics on ``metrics_port`` (0: any free port), push them to ``push_url`` at
    the end, and evaluate ``alerts``, for the events of ``router``'s bus. ``announce``
    receives one line saying where the metrics are served."""
    state = Observing()
    try:
        if metrics_port is not None or push_url is not None:
            from shoal.observe.prometheus import PrometheusExporter

            state.exporter = PrometheusExporter(router.events, router=router)
            state.exporter.subscribe()
            if metrics_port is not None:
                state.port = state.exporter.serve(metrics_port)
                if announce is not None:
                    announce(f"metrics on http://127.0.0.1:{state.port}/metrics "
                             f"(shoal top --url http://127.0.0.1:{state.port}/metrics)")
        if _otel_asked():  # traces as the standard OTEL_* variables say
            from shoal.observe.tracing_setup import tracing

            state.tracing = tracing(bus=router)
        if alerts is not None:
            from shoal.observe.alerts import AlertEngine

            state.alerts = AlertEngine.from_config(router.events, alerts, clock=router.clock)
            state.alerts.start()
        yield state
    finally:
        if state.alerts is not None:
            await state.alerts.tick()  # what the last interval saw
            await state.alerts.aclose()
        if state.exporter is not None:
            if push_url is not None:
                try:
                    await asyncio.to_thread(state.exporter.push, push_url, job)
                except Exception as exc:  # the run's result matters more than its metrics
                    _log.error("metrics push failed: %s", exc)
            state.exporter.close()
        if state.tracing is not None:
            state.tracing.close()


def _otel_asked() -> bool:
    """Whether the environment asks for traces (an OTLP endpoint, or an exporter named)."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return (named not in ("", "none")) or any(
        env.get(k) for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
