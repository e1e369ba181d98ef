"""A call that queues for a slot builds its request while it waits (``CallState.
prepare_early``), so a freed slot is followed by the wire alone; the built request is
kept for retries on the same lane and rebuilt for another. Against a provider at the
seam that logs when it is asked to build and to send, in virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import BadRequest, ProviderUnavailable
from shoal.providers.base import Prepared, Provider
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEvent, Usage

Log = list[tuple[str, str, float]]


class Logged(Provider):
    """Builds a request as ``Prepared`` with a fresh payload, answers after ``latency``
    virtual seconds, and logs ``(what, who, when)``; ``fail(who, n)`` decides whether
    the n-th send for ``who`` raises."""

    def __init__(self, clock: VirtualClock, name: str, log: list[tuple[str, str, float]],
                 *, latency: float = 1.0,
                 fail: Callable[[str, int], BaseException | None] = lambda who, n: None,
                 ) -> None:
        self.clock, self.name, self.log, self.latency, self.fail = clock, name, log, latency, fail
        self.sent: list[Prepared] = []
        self.built: list[Prepared] = []

    def prepare(self, request: ChatRequest, *, model: str) -> Prepared:
        who = str(request.messages[0].content)
        if who.startswith("bad"):
            raise BadRequest("temperature must be between 0 and 2", param="temperature")
        self.log.append(("prepare", f"{self.name}:{who}", self.clock.now()))
        prepared = Prepared(request, model, {"who": who}, who.encode())
        self.built.append(prepared)
        return prepared

    async def send(self, prepared: Prepared, *,
                   received: Callable[[], object] | None) -> ChatResponse:
        who = str(prepared.request.messages[0].content)
        n = sum(1 for p in self.sent if p.payload == prepared.payload)
        self.sent.append(prepared)
        self.log.append(("send", f"{self.name}:{who}", self.clock.now()))
        await self.clock.sleep(self.latency)
        err = self.fail(who, n)
        if err is not None:
            raise err
        if received is not None:
            received()
        return ChatResponse(text=who, tool_calls=[], finish_reason="stop",
                            usage=Usage(10, 5), provider="p", model=prepared.model)

    async def complete(self, request: ChatRequest, *, model: str) -> ChatResponse:
        return await self.send(self.prepare(request, model=model), received=None)

    def stream(self, request: ChatRequest, *, model: str) -> AsyncIterator[StreamEvent]:
        raise NotImplementedError("these tests make whole calls")

    async def aclose(self) -> None:
        return None


def router(clock: VirtualClock, providers: dict[str, Provider], cap: int = 1) -> Router:
    channels: dict[str, Any] = {
        name: {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
               "api_key": "sk-test", "max_concurrency": cap}
        for name in providers}
    models = {"m": {"channels": list(providers), "input": 1.0, "output": 2.0}}
    return Router(Config.from_dict({"channels": channels, "models": models}), clock=clock,
                  providers=providers, retry=RetryPolicy(backoff=Backoff(base=0.1, cap=0.1)))


def ask(who: str) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message.user(who)], max_tokens=16)


async def test_a_queued_call_is_built_while_it_waits_and_sent_as_built() -> None:
    clock, log = VirtualClock(), Log()
    provider = Logged(clock, "a", log)
    async with router(clock, {"a": provider}) as r:
        async def both() -> list[ChatResponse]:
            return list(await asyncio.gather(r.complete(ask("first")),
                                             r.complete(ask("second"))))
        answers = await clock.run(both())
    assert [a.text for a in answers] == ["first", "second"]
    # "second" was built at t=0, while "first" held the only slot, and sent at t=1.
    assert ("prepare", "a:second", 0.0) in log
    assert ("send", "a:second", 1.0) in log
    built = {p.payload["who"]: p for p in provider.built if p.payload}
    assert provider.sent[1] is built["second"]  # the very request built while queued
    assert len(provider.built) == 2  # nothing built twice


async def test_a_retry_on_the_same_lane_sends_the_request_built_once() -> None:
    clock, log = VirtualClock(), Log()
    flaky = Logged(clock, "a", log, fail=lambda who, n: ProviderUnavailable(
        "upstream 503", status=503, provider="a") if n < 2 else None)
    async with router(clock, {"a": flaky}) as r:
        answer = await clock.run(r.complete(ask("x")))
    assert answer.text == "x"
    assert len(flaky.sent) == 3 and len(flaky.built) == 1
    assert all(p is flaky.built[0] for p in flaky.sent)


async def test_failing_over_builds_the_request_for_the_other_lane() -> None:
    clock, log = VirtualClock(), Log()
    down = Logged(clock, "a", log, fail=lambda who, n: ProviderUnavailable(
        "upstream 503", status=503, provider="a"))
    up = Logged(clock, "b", log)
    async with router(clock, {"a": down, "b": up}) as r:
        answer = await clock.run(r.complete(ask("x")))
    assert answer.text == "x"
    assert [what for what, _, _ in log].count("prepare") == 2
    assert len(up.built) == 1 and up.sent == up.built


async def test_a_request_that_cannot_be_built_while_queued_is_refused_after_admission(
) -> None:
    clock, log = VirtualClock(), Log()
    provider = Logged(clock, "a", log)
    async with router(clock, {"a": provider}) as r:
        async def both() -> list[object]:
            return list(await asyncio.gather(r.complete(ask("first")), r.complete(ask("bad")),
                                             return_exceptions=True))
        first, bad = await clock.run(both())
        lane = r.lane("a")
        assert lane.limiter.in_flight == 0 and lane.pending == 0  # no slot kept
    assert isinstance(first, ChatResponse)
    assert isinstance(bad, BadRequest) and bad.param == "temperature"
    assert [who for what, who, _ in log if what == "send"] == ["a:first"]  # never sent


async def test_a_call_that_gets_a_slot_at_once_is_built_after_admission() -> None:
    clock, log = VirtualClock(), Log()
    provider = Logged(clock, "a", log)
    async with router(clock, {"a": provider}, cap=4) as r:
        await clock.run(r.complete(ask("solo")))
    assert log == [("prepare", "a:solo", 0.0), ("send", "a:solo", 0.0)]


async def test_an_adapter_that_builds_nothing_ahead_still_answers() -> None:
    """The default ``prepare`` (an adapter written before it existed) sends through
    ``complete``: nothing built ahead, nothing lost."""

    class Plain(Provider):
        name = "plain"

        async def complete(self, request: ChatRequest, *, model: str) -> ChatResponse:
            return ChatResponse(text=str(request.messages[0].content), tool_calls=[],
                                finish_reason="stop", usage=Usage(1, 1), provider="p",
                                model=model)

        def stream(self, request: ChatRequest, *, model: str) -> AsyncIterator[StreamEvent]:
            raise NotImplementedError("this test makes whole calls")

        async def aclose(self) -> None:
            return None

    clock = VirtualClock()
    async with router(clock, {"a": Plain()}) as r:
        answers = await clock.run(asyncio.gather(r.complete(ask("x")), r.complete(ask("y"))))
    assert [a.text for a in answers] == ["x", "y"]


class Writing(Logged):
    """Sends as aiohttp does on Python 3.11: the body goes out from a task that first
    runs on the loop's next turn (logged as "write" when it does)."""

    async def send(self, prepared: Prepared, *,
                   received: Callable[[], object] | None) -> ChatResponse:
        who = str(prepared.request.messages[0].content)
        asyncio.get_running_loop().call_soon(
            self.log.append, ("write", f"{self.name}:{who}", self.clock.now()))
        return await super().send(prepared, received=received)


async def test_in_a_burst_the_admitted_calls_are_on_the_wire_before_the_queue_is_built(
) -> None:
    """200 calls started at once: the ones that took a free slot must not wait for the
    other calls' validation and building before their bodies go out."""
    clock, log = VirtualClock(), Log()
    provider = Writing(clock, "a", log)
    async with router(clock, {"a": provider}, cap=2) as r:
        await clock.run(r.complete(ask("warm")))  # the model's lanes are known
        log.clear()
        start = clock.now()
        answers = await clock.run(asyncio.gather(*(r.complete(ask(f"c{i}"))
                                                   for i in range(6))))
    assert [a.text for a in answers] == [f"c{i}" for i in range(6)]
    order = [(what, who) for what, who, _ in log]
    first_queued_build = order.index(("prepare", "a:c2"))
    assert order.index(("write", "a:c0")) < first_queued_build
    assert order.index(("write", "a:c1")) < first_queued_build
    # and the queued calls were still built while they waited, not after admission
    assert ("prepare", "a:c5", start) in log
