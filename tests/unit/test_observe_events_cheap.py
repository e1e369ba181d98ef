"""The cheap event path keeps its guarantees: strings in events are redacted even when
remembered from earlier events (a secret registered later masks them from then on), the
scope's run/step/agent are redacted too, and chat/tool spans written straight to the
span processor are the same spans the SDK path makes (parent, trace, status, events)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import shoal.observe
from shoal.clock import VirtualClock
from shoal.observe.context import enter, leave, scope
from shoal.observe.events import Event, EventBus
from shoal.secrets import MASK, forget_secret, register_secret
from shoal.traffic.call_events import observed_complete
from shoal.types import ChatRequest, ChatResponse, Message

SECRET = "sk-live-0123456789abcdefXYZ"


def _bus() -> tuple[EventBus, list[Event]]:
    bus, seen = EventBus(VirtualClock()), list[Event]()
    bus.subscribe(seen.append)
    return bus, seen


def test_a_secret_registered_after_a_text_was_seen_is_masked_from_then_on() -> None:
    bus, seen = _bus()
    plain = "plainvalue-Zq8Lr3Tx9w"  # no key shape: only registration masks it
    text = f"upstream rejected {plain}"
    bus.emit("retry", channel="a", error=text)
    assert seen[-1].data["error"] == text  # not a secret yet (and now remembered)
    register_secret(plain)
    try:
        bus.emit("retry", channel="a", error=text)  # the same text: no stale cached copy
        assert seen[-1].data["error"] == f"upstream rejected {MASK}"
    finally:
        forget_secret(plain)
    bus.emit("retry", channel="a", error=text)
    assert seen[-1].data["error"] == text


async def test_call_events_redact_the_scope_and_the_provider_fields() -> None:
    register_secret(SECRET)
    try:
        bus, seen = _bus()
        request = ChatRequest(model="m", messages=[Message.user("hi")])

        async def call() -> ChatResponse:
            bus.emit("admit", channel="c", model="m", waited_s=0.0, tokens=1, attempt=0)
            raise RuntimeError("boom")

        with (scope(run_id=f"run-{SECRET}", step=f"step-{SECRET}", agent=f"agent-{SECRET}"),
              pytest.raises(RuntimeError)):
            await observed_complete(bus, VirtualClock(), request, call())
        assert [e.kind for e in seen] == ["call_start", "admit", "call_end"]
        for event in seen:
            for key in ("run_id", "step", "agent"):
                value = str(event.data[key])
                assert SECRET not in value and MASK in value, (event.kind, key, value)
        assert seen[1].data["call_id"] == seen[0].data["call_id"] == seen[2].data["call_id"]
        assert seen[2].data["status"] == "error"
        assert seen[2].data["error_type"] == "RuntimeError"
    finally:
        forget_secret(SECRET)


def _emit_call(bus: EventBus, *, error: bool) -> None:
    """A run → step → agent with one chat call (a retry inside) and one tool call."""
    bus.emit("run_start", run_id="r", flow="f")
    bus.emit("step_start", run_id="r", step="s", agent="a")
    bus.emit("agent_start", model="m", run_id="r", step="s", agent="a")
    token = enter(run_id="r", step="s", agent="a")
    try:
        bus.emit("call_start", model="m", run_id="r", step="s", agent="a", turn=1,
                 call_id="c1", stream=False)
        bus.emit("retry", channel="ch", model="m", call_id="c1", attempt=1, delay_s=0.5,
                 error="RateLimited: slow down")
        bus.emit("call_end", channel="ch", model="m", run_id="r", step="s", agent="a",
                 turn=1, call_id="c1", stream=False, provider="openai",
                 served_model="m-1", status="error" if error else "ok",
                 error_type="RateLimited" if error else "", attempts=2, duration_s=1.0,
                 ttft_s=None, queue_s=0.0, cost_usd=0.001, wasted_cost_usd=0.0,
                 input_tokens=10, output_tokens=5, cached_input_tokens=0,
                 cache_write_tokens=0, reasoning_tokens=0)
        bus.emit("tool_start", run_id="r", step="s", agent="a", tool="t", call_id="t1")
        bus.emit("tool_end", run_id="r", step="s", agent="a", tool="t", call_id="t1",
                 status="ok", error="", duration_s=0.1)
    finally:
        leave(token)
    bus.emit("agent_end", model="m", run_id="r", step="s", agent="a", turns=1,
             status="succeeded", error="", duration_s=1.0, cost_usd=0.001)
    bus.emit("step_end", run_id="r", step="s", agent="a", status="succeeded", error="")
    bus.emit("run_end", run_id="r", flow="f", status="succeeded", error="")


def _tree(spans: Sequence[ReadableSpan]) -> list[tuple[Any, ...]]:
    by_id = {s.context.span_id: s for s in spans}
    out = []
    for s in sorted(spans, key=lambda s: s.name):
        parent = by_id[s.parent.span_id].name if s.parent is not None else None
        assert s.context.trace_id == spans[0].context.trace_id, s.name
        out.append((s.name, parent, s.status.status_code, s.start_time, s.end_time,
                    dict(s.attributes or {}),
                    [(e.name, dict(e.attributes or {})) for e in s.events]))
    return out


@pytest.mark.parametrize("error", [False, True])
def test_leaf_spans_written_directly_equal_the_sdk_path(error: bool) -> None:
    direct = InMemorySpanExporter()
    bus = EventBus(VirtualClock())
    with shoal.observe.tracing(direct, bus=bus) as on:
        assert on.builder._writer is not None  # the direct path is the one under test
        _emit_call(bus, error=error)
    sdk = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(sdk))
    bus = EventBus(VirtualClock())
    with shoal.observe.tracing(tracer_provider=provider, bus=bus) as on:
        assert on.builder._writer is None  # a provider of the user's: the SDK's path
        _emit_call(bus, error=error)
    got, want = direct.get_finished_spans(), sdk.get_finished_spans()
    assert {s.name for s in got} == {"run f", "step s", "invoke_agent a", "chat m",
                                     "execute_tool t"}
    shift = (got[0].start_time or 0) - (want[0].start_time or 0)  # one offset per builder
    norm = [(n, p, c, a - shift, b - shift, attrs, evs)
            for n, p, c, a, b, attrs, evs in _tree(got)]
    assert norm == _tree(want)
    chat = next(s for s in got if s.name == "chat m")
    assert chat.status.status_code == (StatusCode.ERROR if error else StatusCode.UNSET)
    assert chat.attributes is not None and chat.attributes["gen_ai.usage.input_tokens"] == 10
    assert [e.name for e in chat.events] == ["retry"]
