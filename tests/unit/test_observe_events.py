"""Events from every layer on one bus: each layer emits start/end pairs carrying the keys
documented in :mod:`shoal.observe.events`, Router events inside a step carry the run,
step, agent and call they belong to, and with nobody subscribed nothing is emitted."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping

import pytest

from shoal.agents import Agent, MemoryRecorder, Runner, tool
from shoal.agents.guardrails import guardrail
from shoal.agents.guards import Budget, LoopPolicy
from shoal.agents.testing import ScriptedClient, call, reply
from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import BudgetExceeded, LoopDetected, ProviderUnavailable, ShoalError
from shoal.flows.batch import Batch
from shoal.flows.flow import Flow
from shoal.observe import events as ev
from shoal.observe.context import current
from shoal.observe.events import Event, EventBus
from shoal.providers.base import Provider
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEnd, StreamEvent, TextDelta, Usage

TOKEN_KEYS = {"input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens",
              "reasoning_tokens"}


def documented_keys() -> dict[str, set[str]]:
    """Each kind's data keys as the events module's docstring lists them."""
    doc = ev.__doc__ or ""
    out: dict[str, set[str]] = {}
    for kind, body in re.findall(r"``(\w+)``\s+\[([^\]]*)\]", doc):
        keys = set()
        for part in body.split(","):
            name = part.strip().split(" ")[0].split("(")[0].strip()
            if name in ("+",) or part.strip().startswith("+"):
                keys |= TOKEN_KEYS
            elif name:
                keys.add(name)
        out[kind] = keys
    return out


DOCUMENTED = documented_keys()


class Recorded:
    def __init__(self, bus: EventBus) -> None:
        self.events: list[Event] = []
        bus.subscribe(self.events.append)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


def assert_documented(events: list[Event]) -> None:
    for e in events:
        assert e.kind in ev.KINDS
        missing = DOCUMENTED.get(e.kind, set()) - set(e.data)
        assert not missing, f"{e.kind} lacks documented keys {missing}"


def test_the_docstring_lists_keys_for_every_new_kind() -> None:
    for kind in ("run_start", "run_end", "step_start", "step_end", "agent_start",
                 "agent_end", "tool_start", "tool_end", "call_start", "call_end", "guard",
                 "budget", "journal"):
        assert DOCUMENTED[kind] >= {"run_id"} or kind.startswith("run")
    assert DOCUMENTED["call_end"] >= TOKEN_KEYS
    assert "call_id" in DOCUMENTED["call_end"]


@tool
def lookup(query: str) -> str:
    """Look something up."""
    return f"found {query}"


async def test_a_flow_emits_run_step_agent_tool_budget_and_journal_pairs() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    seen = Recorded(bus)
    client = ScriptedClient([call("lookup", query="x"), reply("a done"), reply("b done")],
                            clock=clock, events=bus)
    flow = Flow("two", budget_usd=1.0)
    flow.add(Agent("a", model="m", tools=[lookup]))
    flow.add(Agent("b", model="m"), after="a")
    result = await flow.run("task", client=client, recorder=MemoryRecorder(), clock=clock)
    assert result.status == "succeeded"
    assert_documented(seen.events)
    kinds = seen.kinds()
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    for start, end in (("run_start", "run_end"), ("step_start", "step_end"),
                       ("agent_start", "agent_end"), ("tool_start", "tool_end")):
        assert len(seen.of(start)) == len(seen.of(end)) > 0, start
    assert [e.data["step"] for e in seen.of("step_end")] == ["a", "b"]
    run_end = seen.of("run_end")[0].data
    assert run_end["status"] == "succeeded"
    assert run_end["input_tokens"] == result.usage.input_tokens
    assert run_end["cost_usd"] == pytest.approx(result.cost_usd)
    agent_end = seen.of("agent_end")[0].data
    assert (agent_end["agent"], agent_end["turns"], agent_end["status"]) == ("a", 2, "succeeded")
    tool_end = seen.of("tool_end")[0].data
    assert (tool_end["tool"], tool_end["status"], tool_end["step"]) == ("lookup", "ok", "a")
    # every event inside the run carries its run id; inside a step, the step
    assert {e.data["run_id"] for e in seen.events} == {result.run_id}
    assert {e.data["decision"] for e in seen.of("budget")} == {"reserve", "settle"}
    journal = [(e.data["what"], e.data.get("step")) for e in seen.of("journal")]
    assert ("turn", "a") in journal and ("step", "b") in journal and journal[-1][0] == "run"


async def test_failures_are_reported_in_the_end_events() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    seen = Recorded(bus)
    client = ScriptedClient([ProviderUnavailable("down", provider="p")], clock=clock,
                            events=bus)
    flow = Flow("one")
    flow.add(Agent("a", model="m"), on_failure="continue")
    result = await flow.run("task", client=client, clock=clock)
    assert result.status == "partial"
    assert_documented(seen.events)
    agent_end = seen.of("agent_end")[0].data
    assert agent_end["status"] == "failed"
    assert str(agent_end["error"]).startswith("ProviderUnavailable")
    assert seen.of("step_end")[0].data["status"] == "failed"
    assert seen.of("run_end")[0].data["status"] == "partial"


async def test_guards_emit_their_decisions() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    seen = Recorded(bus)

    @guardrail
    def no_shouting(text: str) -> bool:
        """Inputs in capitals are refused."""
        return not text.isupper()

    looping = ScriptedClient(handler=lambda req: call("lookup", query="same"), clock=clock)
    runner = Runner(looping, clock=clock, events=bus)
    agent = Agent("a", model="m", tools=[lookup], input_guardrails=[no_shouting],
                  loop=LoopPolicy(max_repeats=2, on_loop="raise"))
    with pytest.raises(LoopDetected):
        await runner.run(agent, "quiet please")
    assert_documented(seen.events)
    decisions = [(e.data["guard"], e.data["decision"]) for e in seen.of("guard")]
    assert decisions == [("no_shouting", "allow"), ("loop", "trip")]

    refused = Runner(ScriptedClient([reply("x")], clock=clock), clock=clock, events=bus)
    with pytest.raises(BudgetExceeded):
        await refused.run(Agent("b", model="m"), "hi", budget=Budget(max_tokens=10))
    assert seen.of("budget")[-1].data["decision"] == "refuse"


async def test_batch_items_of_an_agent_are_runs() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    seen = Recorded(bus)
    client = ScriptedClient(handler=lambda req: reply("ok"), clock=clock, events=bus)
    result = await Batch(Agent("a", model="m"), client=client, clock=clock,
                         run_id="b").run(["x", "y"])
    assert len(result.succeeded) == 2
    assert sorted(str(e.data["run_id"]) for e in seen.of("run_end")) == ["b-0", "b-1"]
    assert {e.data["status"] for e in seen.of("run_end")} == {"succeeded"}
    assert_documented(seen.events)


# -- the Router: call_start/call_end, attempts, scope --------------------------------------


class Flaky(Provider):
    """Fails its first ``failures`` calls with a 503, then answers."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.calls, self.name = failures, 0, "flaky"

    async def complete(self, request: ChatRequest, *, model: str) -> ChatResponse:
        self.calls += 1
        if self.calls <= self.failures:
            raise ProviderUnavailable("503", provider="flaky", status=503)
        return ChatResponse(text="ok", tool_calls=[], finish_reason="stop",
                            usage=Usage(10, 5, cached_input_tokens=4), provider="openai",
                            model="m-2026")

    async def stream(self, request: ChatRequest, *, model: str) -> AsyncIterator[StreamEvent]:
        response = await self.complete(request, model=model)
        yield TextDelta(response.text)
        yield StreamEnd(response)

    async def aclose(self) -> None:
        return None


def ask() -> ChatRequest:
    return ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=8)


def router(clock: VirtualClock, provider: Provider, bus: EventBus | None = None) -> Router:
    config = Config.from_dict({
        "channels": {"a": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                           "api_key": "sk-test", "max_concurrency": 4}},
        "models": {"m": {"channels": ["a"], "input": 1.0, "output": 2.0}}})
    return Router(config, clock=clock, events=bus, providers={"a": provider},
                  retry=RetryPolicy(backoff=Backoff(base=0.5, cap=1.0)))


async def test_router_calls_emit_call_start_and_end_with_attempts_tokens_and_scope() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    seen = Recorded(bus)
    async with router(clock, Flaky(failures=1), bus) as r:
        flow = Flow("one")
        flow.add(Agent("solo", model="m"))
        result = await clock.run(flow.run("hi", client=r, clock=clock))
        response = await r.complete(ask())
        streamed = [e async for e in r.stream(ask())]
    assert_documented(seen.events)
    ends = seen.of("call_end")
    assert len(seen.of("call_start")) == len(ends) == 3
    first = ends[0]
    assert (first.data["run_id"], first.data["step"], first.data["agent"]) == (
        result.run_id, "solo", "solo")
    assert first.data["attempts"] == 2
    assert first.data["turn"] == 0  # the agent's first turn
    assert first.data["status"] == "ok" and first.data["error_type"] == ""
    assert first.data["served_model"] == "m-2026" and first.data["provider"] == "openai"
    assert first.data["cached_input_tokens"] == 4
    assert first.data["duration_s"] == pytest.approx(0.5, abs=0.51)  # one backoff, virtual
    assert first.channel == "a" and first.model == "m"
    # the retry in between belongs to the same call, run, step and agent
    (retry,) = seen.of("retry")
    assert retry.data["call_id"] == first.data["call_id"]
    assert retry.data["run_id"] == result.run_id and retry.data["agent"] == "solo"
    # outside a run: no run id, a fresh call id each time
    assert (ends[1].data["run_id"], ends[1].data["agent"], ends[1].data["turn"]) == (
        "", "", None)
    assert ends[1].data["call_id"] != first.data["call_id"]
    assert ends[1].data["cost_usd"] == pytest.approx(response.cost_usd)
    assert ends[2].data["stream"] is True and ends[2].data["ttft_s"] is not None
    assert isinstance(streamed[-1], StreamEnd)
    assert current().call is None  # the call's scope does not leak to the caller


async def test_a_failed_call_ends_with_its_error_type() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    seen = Recorded(bus)
    async with router(clock, Flaky(failures=100), bus) as r:
        with pytest.raises(ShoalError) as raised:
            await clock.run(r.complete(ask(), deadline_s=5))
    (end,) = seen.of("call_end")
    assert end.data["status"] == "error"
    assert end.data["error_type"] == type(raised.value).__name__
    assert int(end.data["attempts"]) >= 2  # type: ignore[call-overload]


# -- nothing subscribed: nothing emitted ----------------------------------------------------


class CountingBus(EventBus):
    """A bus that counts every emit/publish call reaching it, subscribed or not."""

    calls = 0

    def emit(self, kind: str, *, channel: str = "", model: str = "", **data: object) -> None:
        CountingBus.calls += 1
        super().emit(kind, channel=channel, model=model, **data)

    def publish(self, kind: str, data: Mapping[str, object], *, channel: str = "",
                model: str = "") -> None:
        CountingBus.calls += 1
        super().publish(kind, data, channel=channel, model=model)


async def test_with_nobody_subscribed_no_layer_emits() -> None:
    clock = VirtualClock()
    bus = CountingBus(clock)
    CountingBus.calls = 0
    async with router(clock, Flaky(), bus) as r:
        flow = Flow("quiet", budget_usd=1.0)
        flow.add(Agent("a", model="m", tools=[lookup]))
        flow.add(Agent("b", model="m"), after="a")
        result = await flow.run("x", client=r, clock=clock, recorder=MemoryRecorder())
        [e async for e in r.stream(ask())]
    assert result.status == "succeeded"
    assert not bus.active
    assert CountingBus.calls == 0


async def test_a_stream_left_early_still_ends_its_call() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    seen = Recorded(bus)
    async with router(clock, Flaky(), bus) as r:
        stream = r.stream(ask())
        async for _event in stream:
            break  # the caller stops reading after the first token
        await stream.aclose()  # type: ignore[attr-defined]
    (end,) = seen.of("call_end")
    assert (end.data["status"], end.data["error_type"]) == ("error", "CancelledError")
    assert r.lane("a").limiter.in_flight == 0  # the Router's own stream was closed too
