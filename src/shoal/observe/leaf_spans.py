"""Chat and tool spans written straight to the span processor (OpenTelemetry SDK).

A chat or tool span has no children and is whole at its end event, so it never has to
be a live SDK span: :class:`LeafWriter` builds the finished ``ReadableSpan`` (ids, the
parent's trace, attributes, span events, status) and hands it to the tracer's span
processor, the SDK's ``on_end``. That skips what ``Tracer.start_span`` + ``end`` spend
on a span nobody will touch again (context objects, the sampler call, attribute
validation and copies, locks, the SDK's own span metrics): about 25 µs → 4 µs a span.

It is used only where it gives the same spans as the SDK: a tracer of the SDK, enabled,
whose sampler is the default (parent-based, always on), no attribute length limit, and
a provider :func:`shoal.observe.tracing` made itself (its processors need no
``on_start``). Otherwise :meth:`LeafWriter.make` returns None and spans take the SDK's
path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["LeafWriter"]

_DEFAULT_SAMPLER = (
    "ParentBased{root:AlwaysOnSampler,remoteParentSampled:AlwaysOnSampler,"
    "remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,"
    "localParentNotSampled:AlwaysOffSampler}"
)


class LeafWriter:
    """Writes finished leaf spans for one SDK tracer (see the module's docstring)."""

    __slots__ = ("_error", "_event", "_flags_root", "_ids", "_limits", "_ok", "_readable",
                 "_resource", "_scope", "_span_context", "_tracer", "on_end")

    def __init__(self, tracer: Any) -> None:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import SpanContext, TraceFlags
        from opentelemetry.trace.status import Status, StatusCode

        self._tracer = tracer
        self._ids = tracer.id_generator
        self._resource = tracer.resource
        self._scope = tracer._instrumentation_scope
        self.on_end = tracer.span_processor.on_end
        self._readable = ReadableSpan
        self._span_context = SpanContext
        self._event = Event
        self._ok = Status(StatusCode.UNSET)
        self._error = (Status, StatusCode.ERROR)
        limits = tracer._span_limits  # checked in make()
        self._limits = (limits.max_span_attributes or 128, limits.max_events or 128)
        flags = TraceFlags.SAMPLED
        if self._ids.is_trace_id_random():
            flags |= TraceFlags.RANDOM_TRACE_ID
        self._flags_root = TraceFlags(flags)

    @classmethod
    def make(cls, tracer: Tracer, own_provider: bool) -> LeafWriter | None:
        """A writer for ``tracer``, or None when its spans must take the SDK's path."""
        try:
            from opentelemetry.sdk.trace import Tracer as SdkTracer
        except ImportError:  # pragma: no cover - the SDK is what tracing() needs
            return None
        if not own_provider or type(tracer) is not SdkTracer:
            return None
        limits = getattr(tracer, "_span_limits", None)
        enabled = getattr(tracer, "_is_enabled", None)
        sampler = getattr(tracer, "sampler", None)
        if (limits is None or enabled is None or not enabled()
                or getattr(limits, "max_span_attribute_length", 0) is not None
                or getattr(limits, "max_event_attributes", None) is None
                or sampler is None or sampler.get_description() != _DEFAULT_SAMPLER):
            return None
        try:
            return cls(tracer)
        except (AttributeError, TypeError):  # an SDK whose internals moved: the slow path
            return None

    def write(self, name: str, parent: Span | None, start_ns: int, end_ns: int, *,
              attributes: dict[str, Any],
              events: Sequence[tuple[str, Mapping[str, Any], int]] = (),
              error: str = "") -> bool:
        """Hand the finished span to the processor; False when it must take the SDK's
        path instead (over a limit, or a parent that is not sampled)."""
        max_attrs, max_events = self._limits
        if len(attributes) > max_attrs or len(events) > max_events:
            return False
        if parent is not None:
            up = parent.get_span_context()
            if not up.trace_flags.sampled:
                return False
            trace_id, flags, state = up.trace_id, up.trace_flags, up.trace_state
        else:
            up = None
            trace_id, flags, state = self._ids.generate_trace_id(), self._flags_root, None
        context = self._span_context(trace_id, self._ids.generate_span_id(), False,
                                     flags, state)
        if error:
            status_type, code = self._error
            status = status_type(code, error)
        else:
            status = self._ok
        self.on_end(self._readable(
            name, context, up, self._resource, attributes,
            tuple(self._event(n, a, t) for n, a, t in events) if events else (),
            (), start_time=start_ns, end_time=end_ns, status=status,
            instrumentation_scope=self._scope))
        return True
