"""The chat span's attributes are call_end's fields under the names the tables of
shoal.observe.tracing_attrs give (CHAT_END, TOKENS_GEN_AI): every field there when it
has a value, the optional ones (time to first token, waste, cache and reasoning tokens)
left out when they have none; spans reach a processor added after tracing began."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import shoal.observe
from shoal.clock import VirtualClock
from shoal.observe import tracing_attrs as A
from shoal.observe.events import EventBus

FULL: dict[str, Any] = {
    "provider": "anthropic", "served_model": "m-2026-01", "attempts": 3, "queue_s": 0.25,
    "ttft_s": 0.5, "cost_usd": 0.01, "wasted_cost_usd": 0.002, "input_tokens": 100,
    "output_tokens": 20, "cached_input_tokens": 40, "cache_write_tokens": 10,
    "reasoning_tokens": 7}
EMPTY: dict[str, Any] = {
    "provider": "", "served_model": "", "attempts": 1, "queue_s": 0.0, "ttft_s": None,
    "cost_usd": 0.0, "wasted_cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0,
    "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0}


def _chat_span(fields: dict[str, Any], *, error: str = "", stream: bool = False,
               turn: int | None = None, channel: str = "ch",
               duration: float = 1.5) -> dict[str, Any]:
    exporter = InMemorySpanExporter()
    bus = EventBus(VirtualClock())
    with shoal.observe.tracing(exporter, bus=bus):
        bus.publish_clean("call_end", {
            **fields, "status": "error" if error else "ok", "error_type": error,
            "run_id": "", "step": "", "agent": "", "call_id": "c9", "turn": turn,
            "stream": stream, "request_model": "asked", "duration_s": duration},
            channel=channel, model="served-by")
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat asked"
    return dict(span.attributes or {})


def test_every_field_with_a_value_is_its_tables_attribute() -> None:
    got = _chat_span(FULL, error="ProviderTimeout", stream=True, turn=2)
    want = {A.OPERATION: "chat", A.REQUEST_MODEL: "asked", "shoal.call_id": "c9",
            "shoal.stream": True, "shoal.turn": 2, "shoal.channel": "ch",
            A.ERROR_TYPE: "ProviderTimeout"}
    want.update({attr: FULL[key] for key, attr in A.CHAT_END.items()})
    want.update({attr: FULL[key] for key, attr in A.TOKENS_GEN_AI.items()})
    assert got == want


def test_fields_without_a_value_are_left_out() -> None:
    got = _chat_span(EMPTY, channel="")
    assert got == {A.OPERATION: "chat", A.REQUEST_MODEL: "asked", "shoal.call_id": "c9",
                   "shoal.attempts": 1, "shoal.queue_s": 0.0, "shoal.cost_usd": 0.0,
                   "gen_ai.usage.input_tokens": 0, "gen_ai.usage.output_tokens": 0}


def test_any_call_end_gives_the_attributes_shoals_own_gives() -> None:
    """A call_end whose fields are not all of shoal's own types (here an int duration)
    is read field by field (traces.py, _any_call_end), not a tuple at a time: the same
    attributes either way."""
    for fields in (FULL, EMPTY):
        assert _chat_span(fields, duration=2) == _chat_span(fields)
        assert _chat_span(fields, error="ProviderTimeout", stream=True, turn=2, duration=2) \
            == _chat_span(fields, error="ProviderTimeout", stream=True, turn=2)


def test_a_processor_added_after_tracing_began_gets_the_chat_spans_too() -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    bus = EventBus(VirtualClock())
    with shoal.observe.tracing(first, bus=bus) as on:
        assert on.provider is not None
        on.provider.add_span_processor(SimpleSpanProcessor(second))
        for call_id in ("c1", "c2"):
            bus.publish_clean("call_end", {**EMPTY, "call_id": call_id, "duration_s": 0.1,
                                           "request_model": "m", "status": "ok"})
    assert [s.attributes["shoal.call_id"] for s in second.get_finished_spans()
            if s.attributes] == ["c1", "c2"]
    assert len(first.get_finished_spans()) == 2


def test_a_leaf_spans_context_is_the_one_the_sdk_would_build() -> None:
    """The chat span's SpanContext is made without the SDK's constructor (a hot-path
    saving, observe/leaf_spans.py): it must equal what SpanContext(...) builds from the
    same fields, valid included, so an SDK that changes its layout fails here first."""
    from opentelemetry.trace import SpanContext

    exporter = InMemorySpanExporter()
    bus = EventBus(VirtualClock())
    with shoal.observe.tracing(exporter, bus=bus):
        for _ in range(3):
            bus.publish_clean("call_end", {
                **FULL, "status": "ok", "error_type": "", "run_id": "", "step": "",
                "agent": "", "call_id": "c1", "turn": None, "stream": False,
                "request_model": "asked", "duration_s": 0.5}, channel="ch", model="m")
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    ids = set()
    for span in spans:
        ctx = span.get_span_context()
        assert ctx is not None and ctx.is_valid
        built = SpanContext(ctx.trace_id, ctx.span_id, ctx.is_remote, ctx.trace_flags,
                            ctx.trace_state)
        assert tuple(built) == tuple(ctx)
        ids.add(ctx.span_id)
    assert len(ids) == 3

