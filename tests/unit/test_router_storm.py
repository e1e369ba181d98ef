"""The Router's storm rules, in virtual time, against scripted providers at the seam.

Each scripted provider is a function from the attempt number to an outcome: an answer,
an error to raise, or a hang (sleep on the virtual clock), so a test states exactly
what the provider did and checks what the caller got and when.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import (
    AuthError,
    BadRequest,
    CircuitOpen,
    DeadlineExceeded,
    MalformedResponse,
    Overloaded,
    ProviderUnavailable,
    StreamInterrupted,
)
from shoal.providers.base import Provider
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router
from shoal.types import (
    ChatRequest,
    ChatResponse,
    Message,
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)

Outcome = ChatResponse | BaseException | float  # a float: hang that many seconds


def answer(text: str = "ok", served: str = "m-2024-08-06") -> ChatResponse:
    return ChatResponse(text=text, tool_calls=[], finish_reason="stop",
                        usage=Usage(10, 5), provider="p", model=served)


class Scripted(Provider):
    """Answers attempt k with ``script(k)``; counts what it was asked."""

    def __init__(self, clock: VirtualClock, script: Callable[[int], Outcome],
                 events: list[tuple[float, StreamEvent | BaseException]] | None = None,
                 ) -> None:
        self.clock, self.script, self.calls = clock, script, 0
        self.stream_events = events
        self.name = "scripted"

    async def _outcome(self) -> ChatResponse:
        k, self.calls = self.calls, self.calls + 1
        out = self.script(k)
        if isinstance(out, float):
            await self.clock.sleep(out)
            return answer()
        if isinstance(out, BaseException):
            raise out
        return out

    async def complete(self, request: ChatRequest, *, model: str) -> ChatResponse:
        return await self._outcome()

    async def stream(self, request: ChatRequest, *, model: str) -> AsyncIterator[StreamEvent]:
        if self.stream_events is not None:
            self.calls += 1
            start = self.clock.now()
            for at, event in self.stream_events:
                await self.clock.sleep(start + at - self.clock.now())
                if isinstance(event, BaseException):
                    raise event
                yield event
            return
        response = await self._outcome()
        yield TextDelta(response.text)
        yield StreamEnd(response)

    async def aclose(self) -> None:
        return None


def make_router(clock: VirtualClock, providers: dict[str, Provider], *,
                fallback: str | None = None, retry: RetryPolicy | None = None,
                keys: dict[str, str] | None = None, **options: Any) -> Router:
    channels: dict[str, Any] = {}
    for name in providers:
        ch: dict[str, Any] = {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                              "max_concurrency": 8}
        if keys and name in keys:
            ch["api_key_env"] = keys[name]
        else:
            ch["api_key"] = "sk-test"
        channels[name] = ch
    primary = [n for n in providers if n != fallback]
    models: dict[str, Any] = {"m": {"channels": primary, "input": 1.0, "output": 2.0}}
    if fallback is not None:
        models["m"]["fallbacks"] = ["f"]
        models["f"] = {"channels": [fallback], "input": 1.0, "output": 2.0}
    return Router(Config.from_dict({"channels": channels, "models": models}), clock=clock,
                  providers=providers,
                  retry=retry or RetryPolicy(backoff=Backoff(base=0.1, cap=1.0)), **options)


def ask() -> ChatRequest:
    return ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=16)


async def test_deadline_cancels_a_hung_request() -> None:
    clock = VirtualClock()
    hung = Scripted(clock, lambda k: 1000.0)
    async with make_router(clock, {"a": hung}) as router:
        with pytest.raises(DeadlineExceeded, match="in flight"):
            await clock.run(router.complete(ask(), deadline_s=2))
        assert clock.now() == pytest.approx(2.0)
        assert router.lane("a").limiter.in_flight == 0  # the slot came back


async def test_a_deadline_after_failures_names_them_not_max_tokens() -> None:
    """Overloaded twice, then hung until the deadline: the DeadlineExceeded says how
    many attempts failed and with what (an independent provider's finding: after eight
    529s it said only "raise deadline_s or lower max_tokens", which cannot help)."""
    clock = VirtualClock()
    busy = Scripted(clock, lambda k: Overloaded("overloaded_error", status=529) if k < 2
                    else 1000.0)
    breaker = {"failure_threshold": 10_000, "failure_rate": 1.0}
    async with make_router(clock, {"a": busy}, breaker_options=breaker) as router:
        with pytest.raises(DeadlineExceeded) as caught:
            await clock.run(router.complete(ask(), deadline_s=5))
    said = str(caught.value)
    assert "after 2 failed attempts" in said
    assert "Overloaded" in said and "overloaded_error" in said
    assert "max_tokens" not in said
    assert isinstance(caught.value.last_error, Overloaded)


async def test_no_channel_before_the_deadline_says_what_failed_once() -> None:
    """A channel answering 503 to everything opens its breaker for longer than the call
    has left: the CircuitOpen says how many attempts failed, names the provider's error
    once (it used to repeat it as "last error") and no "next probe in 0.0s"."""
    clock = VirtualClock()
    down = Scripted(clock, lambda k: ProviderUnavailable("engine overloaded", status=503))
    breaker = {"failure_threshold": 3, "cooldown_s": 60.0}
    async with make_router(clock, {"a": down}, breaker_options=breaker) as router:
        with pytest.raises(CircuitOpen) as caught:
            await clock.run(router.complete(ask(), deadline_s=10))
    said = str(caught.value)
    assert f"after {down.calls} failed attempts" in said
    assert said.count("engine overloaded") == 1
    assert "next probe in 0.0s" not in said


async def test_a_deadline_with_nothing_failed_says_raise_it() -> None:
    clock = VirtualClock()
    async with make_router(clock, {"a": Scripted(clock, lambda k: 1000.0)}) as router:
        with pytest.raises(DeadlineExceeded, match="raise deadline_s or lower max_tokens"):
            await clock.run(router.complete(ask(), deadline_s=2))


async def test_deadline_bounds_a_hung_stream() -> None:
    clock = VirtualClock()
    hung = Scripted(clock, lambda k: 0.0, events=[(0.5, ReasoningDelta("thinking")),
                                                  (1000.0, TextDelta("late"))])

    async def consume(router: Router) -> list[StreamEvent]:
        got: list[StreamEvent] = []
        async for event in router.stream(ask(), deadline_s=2):
            got.append(event)
        return got

    async with make_router(clock, {"a": hung}) as router:
        with pytest.raises(DeadlineExceeded, match="streaming"):
            await clock.run(consume(router))
        assert clock.now() == pytest.approx(2.0)
        assert router.lane("a").limiter.in_flight == 0


async def test_reasoning_reaches_the_caller_as_it_arrives() -> None:
    clock = VirtualClock()
    end = StreamEnd(answer("done"))
    script: list[tuple[float, StreamEvent | BaseException]] = [
        (0.1, ReasoningDelta("a")), (0.2, ReasoningDelta("b")), (3.0, TextDelta("done")),
        (3.1, end)]
    provider = Scripted(clock, lambda k: 0.0, events=script)
    seen: list[tuple[float, str]] = []

    async def consume(router: Router) -> None:
        async for event in router.stream(ask()):
            seen.append((clock.now(), event.type))

    async with make_router(clock, {"a": provider}) as router:
        await clock.run(consume(router))
    assert [kind for _, kind in seen] == ["reasoning", "reasoning", "text", "end"]
    assert [round(at, 6) for at, _ in seen] == [0.1, 0.2, 3.0, 3.1]  # each as it arrived


async def test_fallback_serves_the_same_call() -> None:
    clock = VirtualClock()
    dead = Scripted(clock, lambda k: ProviderUnavailable("503", status=503))
    good = Scripted(clock, lambda k: answer())
    async with make_router(clock, {"a": dead, "b": good}, fallback="b") as router:
        response = await clock.run(router.complete(ask()))
    assert response.model == "f" and response.channel == "b"
    assert dead.calls == 1 and good.calls == 1


async def test_two_dead_channels_reach_the_fallback() -> None:
    clock = VirtualClock()
    a = Scripted(clock, lambda k: ProviderUnavailable("503", status=503))
    b = Scripted(clock, lambda k: ProviderUnavailable("503", status=503))
    good = Scripted(clock, lambda k: answer())
    async with make_router(clock, {"a": a, "b": b, "c": good}, fallback="c") as router:
        response = await clock.run(router.complete(ask()))
    assert response.channel == "c"
    assert (a.calls, b.calls, good.calls) == (1, 1, 1)


async def test_served_model_is_kept_next_to_the_catalog_name() -> None:
    clock = VirtualClock()
    async with make_router(clock, {"a": Scripted(clock, lambda k: answer())}) as router:
        response = await clock.run(router.complete(ask()))
    assert response.model == "m"
    assert response.served_model == "m-2024-08-06"


async def test_billed_but_discarded_answers_are_charged_as_waste() -> None:
    clock = VirtualClock()
    bad = MalformedResponse("truncated JSON", status=200)
    provider = Scripted(clock, lambda k: bad if k == 0 else answer())
    async with make_router(clock, {"a": provider}) as router:
        response = await clock.run(router.complete(ask()))
    assert response.wasted is not None and response.wasted.input_tokens > 0
    assert response.wasted_cost_usd > 0
    assert response.usage.total_tokens == 15  # the useful answer's usage, unchanged


async def test_waste_rides_on_the_error_when_the_call_fails() -> None:
    clock = VirtualClock()
    cut = StreamInterrupted("cut", status=200)
    cut.partial_output = "half an answer"
    provider = Scripted(clock, lambda k: cut)
    retry = RetryPolicy(attempts=2, backoff=Backoff(base=0.1, cap=0.1))
    async with make_router(clock, {"a": provider}, retry=retry) as router:
        with pytest.raises(StreamInterrupted) as info:
            await clock.run(router.complete(ask()))
    assert info.value.wasted_usage is not None
    assert info.value.wasted_usage.output_tokens > 0  # two cut answers, both billed
    assert info.value.wasted_cost_usd > 0


async def test_overload_lowers_adaptive_but_never_opens_the_breaker() -> None:
    clock = VirtualClock()
    provider = Scripted(clock, lambda k: Overloaded("529", status=529) if k < 12 else answer())
    config_router = make_router(clock, {"a": provider},
                                retry=RetryPolicy(attempts=20,
                                                  backoff=Backoff(base=0.1, cap=0.2)))
    async with config_router as router:
        await clock.run(router.complete(ask()))
        assert str(router.lane("a").breaker.state) == "closed"


async def test_all_breakers_open_waits_for_the_probe_within_the_deadline() -> None:
    clock = VirtualClock()
    provider = Scripted(clock, lambda k: answer())
    async with make_router(clock, {"a": provider}) as router:
        breaker = router.lane("a").breaker
        for _ in range(50):  # a dead spell: the breaker opens
            breaker.record_failure(ProviderUnavailable("503", status=503))
        assert not breaker.available()
        opened_for = (breaker.next_allowed_at(clock.now()) or 0.0) - clock.now()
        assert opened_for > 0
        response = await clock.run(router.complete(ask(), deadline_s=opened_for + 5))
        assert response.text == "ok"
        assert clock.now() >= opened_for  # it waited for the probe instead of failing


async def test_open_breakers_past_the_deadline_fail_fast_with_the_reason() -> None:
    clock = VirtualClock()
    provider = Scripted(clock, lambda k: answer())
    async with make_router(clock, {"a": provider}) as router:
        breaker = router.lane("a").breaker
        for _ in range(50):
            breaker.record_failure(ProviderUnavailable("503", status=503))
        with pytest.raises(CircuitOpen, match="before its deadline"):
            await clock.run(router.complete(ask(), deadline_s=0.5))
        assert clock.now() == 0.0  # no pointless wait: the probe comes after the deadline
        assert provider.calls == 0


async def test_a_fixed_key_brings_the_channel_back(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = VirtualClock()
    monkeypatch.setenv("SHOAL_TEST_KEY", "sk-old")

    def script(k: int) -> Outcome:
        if os.environ["SHOAL_TEST_KEY"] == "sk-old":
            return AuthError("401 invalid key", status=401)
        return answer()

    provider = Scripted(clock, script)
    async with make_router(clock, {"a": provider}, keys={"a": "SHOAL_TEST_KEY"}) as router:
        with pytest.raises(AuthError):
            await clock.run(router.complete(ask()))
        with pytest.raises(CircuitOpen, match="SHOAL_TEST_KEY"):
            await clock.run(router.complete(ask(), deadline_s=5))
        monkeypatch.setenv("SHOAL_TEST_KEY", "sk-new")
        response = await clock.run(router.complete(ask()))
        assert response.text == "ok"


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (ChatRequest(model="m", messages=[], max_tokens=16), "no messages"),
        (ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=0), "max_tokens"),
        (ChatRequest(model="m", messages=[Message.user("hi")], temperature=9), "temperature"),
        (ChatRequest(model="m", messages=[Message.user("hi")], tool_choice="required"),
         "tool"),
        (ChatRequest(model="m", messages=[Message.user("word " * 200_000)]), "context"),
    ],
)
async def test_bad_requests_fail_before_any_request_is_sent(
    request_: ChatRequest, error: str
) -> None:
    clock = VirtualClock()
    provider = Scripted(clock, lambda k: answer())
    async with make_router(clock, {"a": provider}) as router:
        with pytest.raises(BadRequest, match=error):
            await clock.run(router.complete(request_))
        with pytest.raises(BadRequest, match=error):
            await clock.run(anext(router.stream(request_)))
    assert provider.calls == 0


async def test_a_dead_channel_gets_retries_at_its_budget_not_a_storm() -> None:
    clock = VirtualClock()
    dead = Scripted(clock, lambda k: ProviderUnavailable("503", status=503))
    retry = RetryPolicy(attempts=1000, backoff=Backoff(base=0.0, cap=0.0), deadline_s=10)
    router = make_router(clock, {"a": dead}, retry=retry,
                         retry_budget_options={"cap": 5, "min_per_s": 1.0},
                         breaker_options={"failure_threshold": 10_000, "failure_rate": 1.0})
    async with router:
        with pytest.raises((ProviderUnavailable, DeadlineExceeded)):
            await clock.run(router.complete(ask()))
    # 1 first attempt + 5 banked tokens + 1 per second over the 10 s deadline, at most.
    assert dead.calls <= 1 + 5 + 10 + 1
    assert dead.calls >= 10  # but it kept trying at the floor rate until the deadline


async def test_overload_mid_stream_is_interrupted_not_ill_health() -> None:
    clock = VirtualClock()
    cut = StreamInterrupted("overloaded after tokens", status=200)
    cut.__cause__ = Overloaded("overloaded_error", status=200)
    provider = Scripted(clock, lambda k: 0.0, events=[(0.1, TextDelta("par")), (0.2, cut)])

    async def consume(router: Router) -> None:
        async for _ in router.stream(ask()):
            pass

    async with make_router(clock, {"a": provider}) as router:
        for _ in range(30):
            with pytest.raises(StreamInterrupted) as info:
                await clock.run(consume(router))
            assert isinstance(info.value.__cause__, Overloaded)
        assert str(router.lane("a").breaker.state) == "closed"
    assert provider.calls == 30  # after the first token: never retried
