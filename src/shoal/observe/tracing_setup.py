"""Switching traces on: :func:`tracing` (``shoal.observe.tracing``) makes the provider,
its batch processor and exporter (or takes yours), and subscribes a
:class:`~shoal.observe.traces.SpanBuilder`; :class:`Tracing` switches it off."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.errors import ConfigError
from shoal.observe.events import EventBus, subscribe_all
from shoal.observe.traces import SpanBuilder

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["Tracing", "tracing"]

_BATCH = 64  # spans per export when shoal makes the processor (see tracing())


class Tracing:
    """Tracing switched on: :meth:`close` (or leaving ``with``) stops it, flushing and
    shutting down the provider if :func:`tracing` made it."""

    def __init__(self, builder: SpanBuilder, provider: TracerProvider | None,
                 unsubscribe: Callable[[], None], own: bool) -> None:
        self.builder = builder
        self.provider = provider
        self._unsubscribe = unsubscribe
        self._own = own

    def force_flush(self) -> None:
        """Export the spans ended so far (the batch processor otherwise waits)."""
        if self.provider is not None:
            self.provider.force_flush()

    def close(self) -> None:
        self._unsubscribe()
        if self.provider is not None:
            self.provider.force_flush()
            if self._own:
                self.provider.shutdown()

    def __enter__(self) -> Tracing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _env_exporter() -> SpanExporter | None:
    """The exporter ``OTEL_TRACES_EXPORTER`` names (default otlp; none disables)."""
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip().lower()
    if choice == "none":
        return None
    if choice == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if choice != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER={choice!r} is not supported by "
                          "shoal.observe.tracing(); use otlp, console or none, or pass "
                          "exporter=... yourself")
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                              os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
    if protocol != "http/protobuf":
        raise ConfigError(f"OTLP protocol {protocol!r}: shoal's otel extra exports over "
                          "http/protobuf; set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf or "
                          "pass exporter=... (e.g. a grpc OTLPSpanExporter)")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError("OTLP export needs opentelemetry-exporter-otlp-proto-http: "
                          "pip install 'shoal[otel]'") from exc
    return OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_* variables


def tracing(exporter: SpanExporter | None = None, *,
            tracer_provider: TracerProvider | None = None, capture_content: bool = False,
            bus: EventBus | Any = None) -> Tracing:
    """Turn shoal's events into OpenTelemetry spans; returns a :class:`Tracing` to close.

    ``exporter``: where spans go (batched); None: what the standard ``OTEL_*``
    variables say (OTLP over HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` by default;
    ``OTEL_TRACES_EXPORTER=console|none``; ``OTEL_SERVICE_NAME`` names the service).
    ``tracer_provider``: use yours instead (its processors decide the export).
    ``capture_content``: record prompts and answers (``gen_ai.input.messages`` /
    ``gen_ai.output.messages``, secrets redacted); off by default.
    ``bus``: an :class:`EventBus` or anything with ``.events`` (a Router); default:
    every bus of the process, present and future.
    """
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError("tracing needs the OpenTelemetry SDK: pip install 'shoal[otel]'"
                          ) from exc
    own = tracer_provider is None
    provider = tracer_provider
    if provider is None:
        provider = TracerProvider(resource=Resource.create(
            {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "shoal"}))
        chosen = exporter if exporter is not None else _env_exporter()
        if chosen is not None:
            # Batches of 64, not the SDK's 512, unless OTEL_BSP_MAX_EXPORT_BATCH_SIZE says:
            # docs/DECISIONS.md, "Metrics and alerts" (Python's GC and bulk frees).
            batch = None if os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") else _BATCH
            provider.add_span_processor(BatchSpanProcessor(chosen, max_export_batch_size=batch))
    from importlib.metadata import PackageNotFoundError, version

    try:
        shoal_version = version("shoal")
    except PackageNotFoundError:
        shoal_version = "0"
    builder = SpanBuilder(provider.get_tracer("shoal", shoal_version),
                          capture_content=capture_content, own_provider=own)
    if bus is None:
        unsubscribe = subscribe_all(builder, kinds=builder.routes())
    else:
        target = bus if isinstance(bus, EventBus) else getattr(bus, "events", None)
        if not isinstance(target, EventBus):
            raise ConfigError(f"tracing(bus=...) takes an EventBus or an object with .events "
                              f"(a Router), not {type(bus).__name__}")
        unsubscribe = target.subscribe(builder, kinds=builder.routes())
    return Tracing(builder, provider, unsubscribe, own)
