"""What an observed Router call emits and keeps: ``admit`` only for a slot waited for
(or a retry's), the chat span named for the model asked even when a fallback answered,
and nothing of the call (its note, request, answer) kept alive after it ends, by the
deadline's timer or by the HTTP client's (a cancelled timer stays in the loop's heap)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import shoal.observe
from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import AuthError, ProviderUnavailable
from shoal.observe.context import CallNote
from shoal.observe.events import Event, EventBus
from shoal.providers.base import Provider
from shoal.sim import SimConfig, SimServer
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEvent, Usage


class Gate(Provider):
    """Answers once ``open`` is set; fails its first ``failures`` calls with a 503."""

    def __init__(self, failures: int = 0, *, refuse: bool = False) -> None:
        self.name, self.failures, self.calls, self.refuse = "gate", failures, 0, refuse
        self.open = asyncio.Event()
        self.open.set()

    async def complete(self, request: ChatRequest, *, model: str) -> ChatResponse:
        self.calls += 1
        if self.refuse:
            raise AuthError("401 bad key", provider="gate", status=401)
        if self.calls <= self.failures:
            raise ProviderUnavailable("503", provider="gate", status=503)
        await self.open.wait()
        return ChatResponse(text="ok", tool_calls=[], finish_reason="stop",
                            usage=Usage(10, 5), provider="openai", model=model)

    def stream(self, request: ChatRequest, *, model: str) -> AsyncIterator[StreamEvent]:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def config(cap: int = 1) -> Config:
    return Config.from_dict({
        "channels": {"a": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                           "api_key": "sk-test", "max_concurrency": cap},
                     "b": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                           "api_key": "sk-test", "max_concurrency": cap}},
        "models": {"m": {"channels": ["a"], "fallbacks": ["n"], "input": 1.0, "output": 2.0},
                   "n": {"channels": ["b"], "input": 1.0, "output": 2.0}}})


def ask() -> ChatRequest:
    return ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=8)


async def test_admit_is_emitted_for_a_queued_slot_and_a_retry_not_for_a_free_slot() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    seen: list[Event] = []
    bus.subscribe(seen.append)
    gate = Gate()
    gate.open.clear()
    async with Router(config(cap=1), clock=clock, events=bus,
                      providers={"a": gate, "b": Gate()}) as router:
        first = asyncio.create_task(router.complete(ask()))
        second = asyncio.create_task(router.complete(ask()))
        await clock.settle()
        await clock.advance(2.0)  # the second call queues behind the first for 2 s
        gate.open.set()
        await clock.run(asyncio.gather(first, second))
    starts = [e for e in seen if e.kind == "call_start"]
    admits = [e for e in seen if e.kind == "admit"]
    assert len(starts) == 2
    (queued,) = admits  # the first call found its slot free: no admit
    assert queued.data["call_id"] == starts[1].data["call_id"]
    assert queued.data["waited_s"] == 2.0
    assert queued.data["attempt"] == 0
    ends = [e for e in seen if e.kind == "call_end"]
    assert [e.data["queue_s"] for e in ends] == [0.0, 2.0]
    assert [e.data["attempts"] for e in ends] == [1, 1]

    seen.clear()
    async with Router(config(cap=4), clock=clock, events=bus,
                      providers={"a": Gate(failures=1), "b": Gate()},
                      retry=RetryPolicy(backoff=Backoff(base=0.1, cap=0.1))) as router:
        await clock.run(router.complete(ask()))
    (retry_admit,) = [e for e in seen if e.kind == "admit"]
    assert retry_admit.data["attempt"] == 1  # the retry's slot, not the first attempt's
    (end,) = [e for e in seen if e.kind == "call_end"]
    assert end.data["attempts"] == 2


async def test_the_chat_span_is_named_for_the_model_asked_when_a_fallback_answers() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    ends: list[Event] = []
    bus.subscribe(lambda e: ends.append(e) if e.kind == "call_end" else None)
    exporter = InMemorySpanExporter()
    async with Router(config(cap=4), clock=clock, events=bus,
                      providers={"a": Gate(refuse=True), "b": Gate()}) as router:
        with shoal.observe.tracing(exporter, bus=router):
            response = await clock.run(router.complete(ask()))
    assert response.model == "n"  # the fallback answered
    (end,) = ends
    assert end.model == "n" and end.data["request_model"] == "m"
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat m"
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.request.model"] == "m"
    # the auth failure's breaker change and failover, on the span of the call
    assert [e.name for e in span.events] == ["breaker", "failover"]
    assert span.start_time is not None and span.end_time is not None
    assert span.end_time >= span.start_time


def alive_notes() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, CallNote))


async def test_an_ended_call_leaves_nothing_of_itself_in_the_loops_timers() -> None:
    """Real clock and real HTTP (the simulator): every call arms a deadline timer and
    aiohttp a connect timer; cancelled, both stay in the loop's heap. Neither may hold
    the call's scope, or each call's note (request, answer) would live on there."""
    async with SimServer(SimConfig()) as sim:
        cfg = Config.from_dict({
            "channels": {"sim": {"protocol": "openai", "base_url": sim.url + "/v1",
                                 "api_key": "sk-test", "provider": "openai"}},
            "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}}})
        async with Router(cfg) as router:
            router.events.subscribe(lambda e: None)  # events on: calls are observed
            await router.complete(ask())  # warm: the connection and its reader
            gc.collect()
            before = alive_notes()
            for _ in range(20):
                await router.complete(ask())
            gc.collect()
            assert alive_notes() == before
            loop = asyncio.get_running_loop()
            timers = [h for h in loop._scheduled if h.cancelled()]  # type: ignore[attr-defined]
            assert timers, "the calls' cancelled timers are still in the heap"
