"""Observability: events from every layer (:mod:`shoal.observe.events`) and exporters.

:func:`tracing` turns them into OpenTelemetry spans (``pip install 'shoal[otel]'``);
nothing here imports OpenTelemetry until it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from shoal.observe.tracing_setup import Tracing

__all__ = ["tracing"]


def tracing(exporter: SpanExporter | None = None, *,
            tracer_provider: TracerProvider | None = None, capture_content: bool = False,
            bus: Any = None) -> Tracing:
    """OpenTelemetry traces of every run, step, agent, model call and tool call: see
    :func:`shoal.observe.tracing_setup.tracing`."""
    from shoal.observe.tracing_setup import tracing as start

    return start(exporter, tracer_provider=tracer_provider, capture_content=capture_content,
                 bus=bus)
