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

from collections.abc import Callable, Mapping, Sequence
from random import getrandbits
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["LeafWriter"]

_TRACE_ID_MAX = 2**128 - 1
_SPAN_ID_MAX = 2**64 - 1
_new_context: Callable[..., Any] = tuple.__new__

_DEFAULT_SAMPLER = (
    "ParentBased{root:AlwaysOnSampler,remoteParentSampled:AlwaysOnSampler,"
    "remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,"
    "localParentNotSampled:AlwaysOffSampler}"
)


class LeafWriter:
    """Writes finished leaf spans for one SDK tracer (see the module's docstring)."""

    __slots__ = ("_emit", "_error", "_event", "_flags_root", "_ids", "_kind", "_limits",
                 "_ok", "_processor", "_processors", "_random", "_readable", "_resource",
                 "_scope", "_span_context", "_state", "_tracer", "on_end")

    def __init__(self, tracer: Any) -> None:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
        from opentelemetry.trace.span import DEFAULT_TRACE_STATE
        from opentelemetry.trace.status import Status, StatusCode

        self._tracer = tracer
        self._ids = tracer.id_generator
        # the SDK's default generator draws from the random module: drawn here directly
        self._random = type(self._ids) is RandomIdGenerator
        self._resource = tracer.resource
        self._scope = tracer._instrumentation_scope
        self._processor = tracer.span_processor
        self.on_end = self._processor.on_end
        # The provider's processors when the writer was made and, when that is the one
        # batch processor tracing() made, its queue's emit: the spans go straight there
        # while the processors stay the same (their on_end only checks the span is
        # sampled, which every span this writer hands over is).
        self._processors = getattr(self._processor, "_span_processors", None)
        self._emit = _batch_emit(self._processors)
        self._readable = ReadableSpan
        self._span_context = SpanContext
        self._kind = SpanKind.INTERNAL
        self._state = DEFAULT_TRACE_STATE  # what SpanContext puts for a state of None
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
            trace_id = (getrandbits(128) if self._random else 0) or self._ids.generate_trace_id()
            flags, state = self._flags_root, self._state
        span_id = (getrandbits(64) if self._random else 0) or self._ids.generate_span_id()
        # SpanContext(trace_id, span_id, False, flags, state) without its Python __new__;
        # ids the random module drew (never 0, never over their width), in a sampled
        # trace of shoal's, are valid (the last item)
        context = _new_context(self._span_context, (
            trace_id, span_id, False, flags, state,
            self._random or (0 < trace_id <= _TRACE_ID_MAX and 0 < span_id <= _SPAN_ID_MAX)))
        if error:
            status_type, code = self._error
            status = status_type(code, error)
        else:
            status = self._ok
        span = self._readable(  # ReadableSpan's arguments, all by position
            name, context, up, self._resource, attributes,
            tuple([self._event(n, a, t) for n, a, t in events]) if events else (),
            (), self._kind, None, status, start_ns, end_ns, self._scope)
        emit = self._emit
        if emit is not None and self._processor._span_processors is self._processors:
            emit(span)  # what the one batch processor's on_end does with a sampled span
        else:
            self.on_end(span)
        return True


def _batch_emit(processors: object) -> Callable[[Any], None] | None:
    """The queue's ``emit`` of the SDK's ``BatchSpanProcessor`` when ``processors`` is
    that one processor alone, else None (spans then go through the processors' on_end)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if not isinstance(processors, tuple) or len(processors) != 1:
        return None
    (processor,) = processors
    if type(processor) is not BatchSpanProcessor:
        return None
    emit = getattr(getattr(processor, "_batch_processor", None), "emit", None)
    return emit if callable(emit) else None
