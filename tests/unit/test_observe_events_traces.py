"""Spans built from events, in virtual time, against scripted clients and providers at the
seam: failures become ERROR spans with ``error.type``, map items nest under their step, an
agent run outside a flow is its own trace, and ``tracing()`` without a bus follows every
Router of the process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import shoal.observe
from shoal.agents import Agent, Runner, tool
from shoal.agents.testing import ScriptedClient, call, reply
from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import ConfigError, ProviderUnavailable
from shoal.flows.flow import Flow
from shoal.observe.events import EventBus
from shoal.providers.base import Provider
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEnd, StreamEvent, Usage


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def parent_of(spans: Sequence[ReadableSpan], span: ReadableSpan) -> ReadableSpan | None:
    if span.parent is None:
        return None
    return next(s for s in spans if s.context and s.context.span_id == span.parent.span_id)


@tool
def lookup(query: str) -> str:
    """Look something up."""
    if query == "boom":
        raise ValueError("index offline")
    return "found"


async def test_failures_are_error_spans_with_their_error_type() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    client = ScriptedClient(
        [call("lookup", query="boom"), reply("a done"),
         ProviderUnavailable("down", provider="p")], clock=clock, events=bus)
    flow = Flow("f")
    flow.add(Agent("a", model="m", tools=[lookup]))
    flow.add(Agent("b", model="m"), after="a", on_failure="continue")
    exporter = InMemorySpanExporter()
    with shoal.observe.tracing(exporter, bus=bus):
        result = await flow.run("x", client=client, clock=clock)
    assert result.status == "partial"
    spans = exporter.get_finished_spans()
    named = by_name(spans)
    tool_span = named["execute_tool lookup"]
    assert tool_span.status.status_code is StatusCode.ERROR
    assert (tool_span.attributes or {})["error.type"] == "error"  # the tool outcome's kind
    failed_agent = named["invoke_agent b"]
    assert failed_agent.status.status_code is StatusCode.ERROR
    assert (failed_agent.attributes or {})["error.type"] == "ProviderUnavailable"
    assert named["step b"].status.status_code is StatusCode.ERROR
    assert named["invoke_agent a"].status.status_code is StatusCode.UNSET
    run = named["run f"]
    assert (run.attributes or {})["shoal.status"] == "partial"
    # virtual time: span times follow the events' clock, ends never before starts
    assert all((s.start_time or 0) <= (s.end_time or 0) for s in spans)


async def test_map_items_nest_under_their_step() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    client = ScriptedClient(handler=lambda req: reply("ok"), clock=clock, events=bus)
    flow = Flow("fan")
    flow.map(Agent("item", model="m"), over=lambda ctx: ["x", "y", "z"])
    exporter = InMemorySpanExporter()
    with shoal.observe.tracing(exporter, bus=bus):
        await flow.run("go", client=client, clock=clock)
    spans = exporter.get_finished_spans()
    step = by_name(spans)["step item"]
    items = [s for s in spans if s.name.startswith("step item/")]
    assert len(items) == 3
    assert all(parent_of(spans, s) is step for s in items)
    agents = [s for s in spans if s.name == "invoke_agent item"]
    assert sorted(str(getattr(parent_of(spans, a), "name", "")) for a in agents) == [
        "step item/0", "step item/1", "step item/2"]


class Answering(Provider):
    def __init__(self) -> None:
        self.name = "answering"

    async def complete(self, request: ChatRequest, *, model: str) -> ChatResponse:
        return ChatResponse(text="ok", tool_calls=[], finish_reason="stop",
                            usage=Usage(12, 3, reasoning_tokens=2), provider="anthropic",
                            model="m-served")

    async def stream(self, request: ChatRequest, *, model: str) -> AsyncIterator[StreamEvent]:
        yield StreamEnd(await self.complete(request, model=model))

    async def aclose(self) -> None:
        return None


def router(clock: VirtualClock) -> Router:
    config = Config.from_dict({
        "channels": {"a": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                           "api_key": "sk-test", "max_concurrency": 4}},
        "models": {"m": {"channels": ["a"], "input": 1.0, "output": 2.0}}})
    return Router(config, clock=clock, providers={"a": Answering()})


async def test_without_a_bus_every_router_is_traced_and_an_agent_alone_is_a_trace() -> None:
    exporter = InMemorySpanExporter()
    clock = VirtualClock()
    with shoal.observe.tracing(exporter):
        async with router(clock) as r:  # made after tracing() was called
            result = await Runner(r, clock=clock).run(Agent("solo", model="m"), "hi")
            await r.complete(ChatRequest(model="m", messages=[Message.user("bare")]))
    spans = exporter.get_finished_spans()
    agent = next(s for s in spans if s.name == "invoke_agent solo")
    assert agent.parent is None
    chats = [s for s in spans if s.name == "chat m"]
    assert len(chats) == 2
    inside = next(c for c in chats if c.parent is not None)
    assert parent_of(spans, inside) is agent
    attrs = inside.attributes or {}
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.response.model"] == "m-served"
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 2
    assert attrs["gen_ai.usage.input_tokens"] == result.usage.input_tokens
    assert "gen_ai.usage.cache_read.input_tokens" not in attrs  # zero counts left out
    # once closed, tracing stops everywhere
    async with router(clock) as r:
        await r.complete(ChatRequest(model="m", messages=[Message.user("after")]))
    assert len(exporter.get_finished_spans()) == len(spans)


def test_environment_setup_and_misuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    with shoal.observe.tracing(bus=EventBus()) as traced:
        assert traced.provider is not None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        shoal.observe.tracing(bus=EventBus())
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # never reached
    shoal.observe.tracing(bus=EventBus()).close()  # nothing recorded, nothing sent
    with pytest.raises(ConfigError, match="EventBus"):
        shoal.observe.tracing(InMemorySpanExporter(), bus=object())
