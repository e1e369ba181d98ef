"""Flows in virtual time: chains and DAGs, inputs from dependencies, function steps,
failure policies, budgets, shared context, messages, cancellation and resume."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from shoal.agents import Agent, MemoryRecorder, StepFailed
from shoal.agents.testing import ScriptedClient, reply
from shoal.clock import VirtualClock
from shoal.errors import BudgetExceeded, ConfigError, DeadlineExceeded, ProviderUnavailable
from shoal.flows.context import StepContext
from shoal.flows.flow import Flow, render_input
from shoal.types import ChatRequest


def agent(name: str, **kw: object) -> Agent:
    return Agent(name, model="m", instructions=f"You are {name}.", **kw)  # type: ignore[arg-type]


def who(req: ChatRequest) -> str:
    return req.messages[0].content.removeprefix("You are ").rstrip(".")


def echo_handler(req: ChatRequest) -> object:
    return reply(f"<{who(req)}>")


def vclient(clock: VirtualClock, latency: float | Callable[[ChatRequest], float] = 1.0,
            handler: object = echo_handler,
            **kw: object) -> ScriptedClient:
    return ScriptedClient(handler=handler, clock=clock, latency_s=latency, **kw)  # type: ignore[arg-type]


async def test_sequential_pipeline_passes_outputs_along() -> None:
    clock = VirtualClock()
    client = vclient(clock)
    researcher, analyzer, writer = agent("researcher"), agent("analyzer"), agent("writer")
    flow = Flow("report", client=client, clock=clock)
    flow.add(researcher)
    flow.add(analyzer, after=researcher)
    flow.add(writer, after=analyzer)
    result = await clock.run(flow.run("LLM economics", run_id="r1"))
    assert result.status == "succeeded"
    assert result.output == "<writer>"
    assert result.outputs == {"researcher": "<researcher>", "analyzer": "<analyzer>",
                              "writer": "<writer>"}
    inputs = [r.messages[-1].content for r in client.requests]
    assert inputs[0] == "LLM economics"
    assert inputs[1] == "Task: LLM economics\n\n## Output of researcher\n<researcher>"
    assert inputs[2].endswith("## Output of analyzer\n<analyzer>")
    assert result.latency_s == 3.0
    assert result.cost_usd == pytest.approx(sum(r.cost_usd for r in client.responses))
    assert result.usage.total_tokens == sum(r.usage.total_tokens for r in client.responses)
    rows = result.rows()
    assert [r["step"] for r in rows] == ["researcher", "analyzer", "writer"]
    assert rows[0]["model"] == "m"
    assert rows[0]["latency_s"] == 1.0
    assert result["analyzer"] == "<analyzer>"


async def test_dag_respects_order_and_overlaps_independent_steps() -> None:
    clock = VirtualClock()
    client = vclient(clock)
    flow = Flow("swarm", client=client, clock=clock)
    flow.add(agent("split"))
    for name in ("metadata", "entities", "sentiment"):
        flow.add(agent(name), after="split")
    flow.add(agent("summary"), after=["metadata", "entities", "sentiment"])
    result = await clock.run(flow.run("doc"))
    s = result.steps
    assert s["split"].finished_at == 1.0
    for name in ("metadata", "entities", "sentiment"):
        assert s[name].started_at == 1.0
        assert s[name].finished_at == 2.0
    assert s["summary"].started_at == 2.0
    assert result.latency_s == 3.0
    assert client.max_in_flight == 3
    summary_input = client.requests[-1].messages[-1].content
    for name in ("metadata", "entities", "sentiment"):
        assert f"## Output of {name}\n<{name}>" in summary_input


async def test_cap_serves_the_critical_path_first() -> None:
    # four independent short steps added first, then a chain of four: with 2 slots the
    # chain must start at once or the run takes 6 instead of 4 time units.
    clock = VirtualClock()
    client = vclient(clock)
    flow = Flow("cp", client=client, clock=clock, max_concurrency=2)
    for i in range(4):
        flow.add(agent(f"b{i}"))
    prev = None
    for i in range(4):
        flow.add(agent(f"a{i}"), after=[prev] if prev else [])
        prev = f"a{i}"
    result = await clock.run(flow.run("x"))
    assert result.latency_s == 4.0
    assert result.steps["a0"].started_at == 0.0
    assert client.max_in_flight == 2


async def test_function_steps_get_dependencies_by_name() -> None:
    class Facts(BaseModel):
        points: list[str]

    clock = VirtualClock()
    client = vclient(clock, handler=lambda req: reply('{"points": ["p1", "p2"]}'))
    flow = Flow("f", client=client, clock=clock)
    flow.add(agent("research", output_type=Facts))

    def count(research: Facts, input: str) -> dict[str, object]:
        return {"n": len(research.points), "topic": input}

    async def shout(count: dict[str, object], ctx: StepContext) -> str:
        return f"{ctx.step}:{count['topic']}:{count['n']}".upper()

    flow.add(count, after="research")
    flow.add(shout, after=count)
    result = await clock.run(flow.run("topic"))
    assert result.outputs["count"] == {"n": 2, "topic": "topic"}
    assert result.output == "SHOUT:TOPIC:2"


def test_definition_errors_are_config_errors() -> None:
    flow = Flow("f")
    flow.add(agent("a"))
    with pytest.raises(ConfigError, match="already has a step 'a'"):
        flow.add(agent("a"))
    with pytest.raises(ConfigError, match="runs after 'zzz', which is not in flow"):
        flow.add(agent("b"), after="zzz")

    def bad(unknown: str) -> str:
        return unknown

    with pytest.raises(ConfigError, match="parameter 'unknown' names no dependency"):
        flow.add(bad, after="a")
    with pytest.raises(ConfigError, match="has no steps"):
        asyncio.run(Flow("empty").run())


async def test_fail_policy_stops_the_run_and_cancels_running_steps() -> None:
    clock = VirtualClock()

    def handler(req: ChatRequest) -> object:
        if who(req) == "bad":
            return ProviderUnavailable("down", status=503)
        return reply(f"<{who(req)}>")

    client = vclient(clock, handler=handler, latency=lambda req: 1.0 if who(req) == "bad" else 5.0)
    flow = Flow("f", client=client, clock=clock)
    flow.add(agent("slow"))
    flow.add(agent("bad"))
    flow.add(agent("after_bad"), after="bad")
    with pytest.raises(StepFailed) as err:
        await clock.run(flow.run("x", run_id="run-9"))
    failed = err.value
    assert failed.step == "bad"
    assert isinstance(failed.__cause__, ProviderUnavailable)
    assert "run_id='run-9'" in str(failed)
    partial = failed.result
    assert partial.status == "failed"
    assert partial.steps["bad"].status == "failed"
    assert partial.steps["slow"].status == "cancelled"
    assert partial.steps["after_bad"].status == "not_run"
    assert clock.now() == 1.0  # nothing waited for the slow step
    assert client.in_flight == 0


async def test_skip_continue_and_fallback_policies() -> None:
    clock = VirtualClock()

    def handler(req: ChatRequest) -> object:
        if who(req).startswith("bad"):
            return ProviderUnavailable("down")
        return reply(f"<{who(req)}>")

    client = vclient(clock, handler=handler)
    flow = Flow("f", client=client, clock=clock)
    flow.add(agent("bad_skip"), on_failure="skip")
    flow.add(agent("child"), after="bad_skip")
    flow.add(agent("grandchild"), after="child")
    flow.add(agent("bad_cont"), on_failure="continue")
    flow.add(agent("gets_none"), after="bad_cont")
    flow.add(agent("bad_fb"), on_failure="fallback",
             default=lambda exc: f"default({type(exc).__name__})")
    flow.add(agent("gets_default"), after="bad_fb")
    flow.add(agent("independent"))
    result = await clock.run(flow.run("x"))
    s = result.steps
    assert result.status == "partial"
    assert s["bad_skip"].status == "failed"
    assert s["child"].status == "skipped"
    assert s["grandchild"].status == "skipped"
    assert s["gets_none"].status == "succeeded"
    assert s["bad_fb"].status == "fallback"
    assert s["bad_fb"].output == "default(ProviderUnavailable)"
    assert s["independent"].status == "succeeded"
    inputs = {who(r): r.messages[-1].content for r in client.requests}
    assert "## Output of bad_cont\n(no output)" in inputs["gets_none"]
    assert "## Output of bad_fb\ndefault(ProviderUnavailable)" in inputs["gets_default"]
    assert "child" not in inputs


async def test_step_retries_and_timeout() -> None:
    clock = VirtualClock()
    attempts: list[float] = []

    async def flaky() -> str:
        attempts.append(clock.now())
        if len(attempts) < 3:
            raise ProviderUnavailable("blip")
        return "ok"

    async def hang() -> str:
        await clock.sleep(100)
        return "never"

    async def over_budget() -> str:
        raise BudgetExceeded("no money")

    flow = Flow("f", client=ScriptedClient(), clock=clock)
    flow.add(flaky, retries=2)
    flow.add(hang, timeout_s=5, on_failure="continue")
    flow.add(over_budget, retries=3, on_failure="continue")
    result = await clock.run(flow.run())
    assert result.steps["flaky"].output == "ok"
    assert result.steps["flaky"].attempts == 3
    assert result.steps["hang"].status == "failed"
    assert result.steps["hang"].error_type == "DeadlineExceeded"
    assert isinstance(result.steps["hang"].exception, DeadlineExceeded)
    assert result.steps["over_budget"].attempts == 1  # budgets are never retried
    assert clock.now() == 5.0


async def test_one_budget_spans_every_agent_of_the_run() -> None:
    clock = VirtualClock()
    client = vclient(clock)
    # each call reserves ~ (prompt + 1000 max_tokens) x $2/M for output ≈ $0.002
    flow = Flow("f", client=client, clock=clock, budget_usd=0.005)
    for name in ("a", "b", "c", "d"):
        flow.add(agent(name, max_tokens=1000), on_failure="continue")
    result = await clock.run(flow.run("x"))
    statuses = sorted(s.status for s in result.steps.values())
    assert statuses == ["failed", "failed", "succeeded", "succeeded"]
    assert {s.error_type for s in result.steps.values() if s.error} == {"BudgetExceeded"}
    assert client.calls == 2
    assert result.cost_usd <= 0.005


async def test_shared_context_updates_from_parallel_steps_are_not_lost() -> None:
    clock = VirtualClock()
    flow = Flow("counter", client=ScriptedClient(), clock=clock)

    def make(i: int) -> object:
        async def step(ctx: StepContext) -> None:
            async def inc(old: int) -> int:
                await clock.sleep(1)  # a slow read-modify-write, interleaved with others
                return old + 1

            await ctx.shared.update("count", inc, default=0)
            await ctx.shared.update("seen", lambda s: [*s, i], default=[])

        step.__name__ = f"s{i}"
        return step

    for i in range(20):
        flow.add(make(i))  # type: ignore[arg-type]
    result = await clock.run(flow.run())
    assert result.shared["count"] == 20
    assert sorted(result.shared["seen"]) == list(range(20))


async def test_naive_read_modify_write_would_lose_updates() -> None:
    # the control for the test above: without update(), parallel steps overwrite each other
    clock = VirtualClock()
    flow = Flow("counter", client=ScriptedClient(), clock=clock)

    def make(i: int) -> object:
        async def step(ctx: StepContext) -> None:
            old = ctx.shared.get("count", 0)
            await clock.sleep(1)
            ctx.shared.set("count", old + 1)

        step.__name__ = f"s{i}"
        return step

    for i in range(20):
        flow.add(make(i))  # type: ignore[arg-type]
    result = await clock.run(flow.run())
    assert result.shared["count"] < 20


async def test_messages_published_for_later_steps() -> None:
    flow = Flow("board", client=ScriptedClient())

    def scout(ctx: StepContext) -> str:
        ctx.publish("leads", {"url": "a"})
        ctx.publish("leads", {"url": "b"})
        return "scouted"

    def follow(scout: str, ctx: StepContext) -> list[str]:
        return [m["url"] for m in ctx.messages("leads")]

    flow.add(scout)
    flow.add(follow, after=scout)
    result = await flow.run(shared={"seed": 1})
    assert result.output == ["a", "b"]
    assert [(m.sender, m.seq) for m in result.messages] == [("scout", 1), ("scout", 2)]
    assert result.shared == {"seed": 1}


async def test_cancelling_a_run_stops_all_its_work() -> None:
    clock = VirtualClock()
    client = vclient(clock, latency=10.0)
    rec = MemoryRecorder()
    stopped: list[str] = []

    async def watcher(ctx: StepContext) -> str:
        try:
            await clock.sleep(100)
        finally:
            stopped.append(ctx.step)
        return "never"

    flow = Flow("f", client=client, clock=clock, recorder=rec)
    flow.add(agent("a"))
    flow.add(agent("b"))
    flow.add(watcher)
    flow.add(agent("c"), after=["a", "b"])
    task = asyncio.create_task(flow.run("x", run_id="cx"))
    await clock.advance(5)
    assert client.in_flight == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.in_flight == 0
    assert stopped == ["watcher"]
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftovers == []
    assert rec.runs["cx"]["status"] == "cancelled"
    await clock.advance(100)
    assert client.calls == 2  # "c" never started


async def test_resume_replays_finished_steps_without_calling_models() -> None:
    clock = VirtualClock()
    rec = MemoryRecorder()
    broken = {"writer": True}

    def handler(req: ChatRequest) -> object:
        if who(req) == "writer" and broken["writer"]:
            return ProviderUnavailable("down")
        return reply(f"<{who(req)}>")

    client = vclient(clock, handler=handler)
    flow = Flow("report", client=client, clock=clock, recorder=rec)
    flow.add(agent("researcher"))
    flow.add(agent("analyzer"), after="researcher")
    flow.add(agent("writer"), after="analyzer")
    with pytest.raises(StepFailed):
        await clock.run(flow.run("t", run_id="rep-001"))
    assert client.calls == 3
    first_cost = sum(r.cost_usd for r in client.responses)
    broken["writer"] = False
    result = await clock.run(flow.run("t", run_id="rep-001"))
    assert client.calls == 4  # only the writer ran again
    assert result.steps["researcher"].status == "replayed"
    assert result.steps["analyzer"].status == "replayed"
    assert result.steps["writer"].status == "succeeded"
    assert result.output == "<writer>"
    # the writer still received the analyzer's (replayed) output
    assert client.requests[-1].messages[-1].content.endswith("## Output of analyzer\n<analyzer>")
    assert result.cost_usd == pytest.approx(first_cost + client.responses[-1].cost_usd)
    assert rec.runs["rep-001"]["status"] == "succeeded"


async def test_replay_restores_typed_outputs() -> None:
    class Facts(BaseModel):
        points: list[str]

    rec = MemoryRecorder()
    client = ScriptedClient([reply('{"points": ["x"]}')])
    flow = Flow("f", client=client, recorder=rec)
    flow.add(agent("r", output_type=Facts))
    first = await flow.run("t", run_id="typed")
    again = await flow.run("t", run_id="typed")
    assert again.steps["r"].status == "replayed"
    assert again.output == first.output == Facts(points=["x"])


def test_render_input() -> None:
    assert render_input("task", {}) == "task"
    assert render_input({"a": 1}, {}) == '{\n  "a": 1\n}'
    assert render_input(None, {"x": "out"}) == "## Output of x\nout"


def test_flow_from_spec() -> None:
    spec = {
        "flow": {"name": "spec-flow", "budget_usd": 1.0, "max_concurrency": 2},
        "steps": {
            "writer": {"instructions": "Write.", "after": ["analyzer"], "model": "m"},
            "researcher": {"instructions": "Research.", "model": "m", "max_tokens": 300},
            "analyzer": {"instructions": "Analyse.", "after": "researcher",
                         "on_failure": "continue", "model": "m"},
        },
    }
    flow = Flow.from_spec(spec)
    assert flow.name == "spec-flow"
    assert flow.max_concurrency == 2
    assert list(flow.steps) == ["researcher", "analyzer", "writer"]
    assert flow.steps["analyzer"].on_failure == "continue"
    with pytest.raises(ConfigError, match="cycle"):
        Flow.from_spec({"steps": {"a": {"after": "b"}, "b": {"after": "a"}}})
    with pytest.raises(ConfigError, match="colour"):
        Flow.from_spec({"steps": {"a": {"colour": "red"}}})


async def test_a_failed_step_reports_what_its_agent_spent() -> None:
    """An agent that spends its output re-asks and fails still cost those calls: the
    step, the run's totals and the partial result say so (they said 0 tokens, $0)."""

    class Facts(BaseModel):
        points: list[str]

    clock = VirtualClock()
    client = vclient(clock, handler=lambda req: reply("not json"))
    flow = Flow("f", client=client, clock=clock)
    flow.add(agent("picky", output_type=Facts, output_retries=2))
    with pytest.raises(StepFailed) as err:
        await clock.run(flow.run("x", run_id="spent-1"))
    partial = err.value.result
    assert partial is not None
    step = partial.steps["picky"]
    assert step.status == "failed" and client.calls == 3  # the answer and 2 re-asks
    billed = sum(r.usage.total_tokens for r in client.responses)
    cost = sum(r.cost_usd for r in client.responses)
    assert billed > 0 and step.usage.total_tokens == billed
    assert step.cost_usd == pytest.approx(cost) and partial.cost_usd == pytest.approx(cost)
