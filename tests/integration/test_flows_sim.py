"""Flows through the real Router against the simulator over HTTP: the simulator's request
log and in-flight counts prove order, overlap, caps, cancellation and resume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shoal.agents import Agent, MemoryRecorder, RunContext, StepFailed, tool
from shoal.config import Config
from shoal.flows.context import StepContext
from shoal.flows.flow import Flow
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.sim.stats import RequestRecord
from shoal.traffic.router import Router


def sim_config(sim: SimServer, **channel: object) -> Config:
    """A channel to the simulator with a known cap (an unknown cap is learned from 1 up)."""
    channel.setdefault("max_concurrency", 16)
    return Config.from_dict({
        "channels": {"sim": {"protocol": "openai", "base_url": sim.url + "/v1",
                             "api_key": "sk-test", "provider": "openai", **channel}},
        "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}},
    })


@pytest.fixture
async def slow_sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(models={"*": ModelProfile(latency_s=0.2)})) as sim:
        yield sim


def by_tag(log: tuple[RequestRecord, ...]) -> dict[str, RequestRecord]:
    out: dict[str, RequestRecord] = {}
    for r in log:
        assert r.tag is not None
        assert r.tag not in out, "one request per step here"
        out[r.tag] = r
    return out


async def test_dag_order_is_respected_while_independent_steps_overlap(
    slow_sim: SimServer,
) -> None:
    flow = Flow("swarm")
    flow.add(Agent("split", model="m", instructions="Split the document."))
    for name in ("metadata", "entities", "sentiment"):
        flow.add(Agent(name, model="m", instructions=f"Extract {name}."), after="split")
    flow.add(Agent("summary", model="m", instructions="Summarise."),
             after=["metadata", "entities", "sentiment"])
    async with Router(sim_config(slow_sim)) as router:
        result = await flow.run("a long document", client=router)
    assert result.status == "succeeded"
    stats = slow_sim.stats()
    req = by_tag(stats.requests)
    middle = [req[n] for n in ("metadata", "entities", "sentiment")]
    # order: nothing starts before what it depends on has answered
    assert all(r.start >= req["split"].end for r in middle)
    assert req["summary"].start >= max(r.end for r in middle)
    # overlap: the three independent steps were in flight together
    assert max(r.start for r in middle) < min(r.end for r in middle)
    assert stats.max_in_flight == 3


async def test_flow_under_a_channel_cap_never_provokes_a_429() -> None:
    cfg = SimConfig(max_concurrency=3, models={"*": ModelProfile(latency_s=0.05)})
    async with SimServer(cfg) as sim, Router(sim_config(sim, max_concurrency=3)) as router:
        flow = Flow("wide")
        for i in range(12):
            flow.add(Agent(f"w{i}", model="m"))
        result = await flow.run("x", client=router)
        stats = sim.stats()
    assert result.status == "succeeded"
    assert stats.rate_limited == 0
    assert stats.max_in_flight == 3
    assert stats.total_requests == 12


async def test_parallel_steps_update_shared_context_without_lost_updates() -> None:
    @tool
    async def record(key: str, ctx: RunContext) -> str:
        """Record a finding."""
        step: StepContext = ctx.deps

        async def add(old: list[str]) -> list[str]:
            await asyncio.sleep(0.01)  # a slow read-modify-write racing the others
            return [*old, step.step]

        await step.shared.update("found", add, default=[])
        await step.shared.update("count", lambda n: n + 1, default=0)
        return "recorded"

    async with SimServer(SimConfig(models={"*": ModelProfile(latency_s=0.02)})) as sim, \
            Router(sim_config(sim)) as router:
        flow = Flow("fan")
        names = [f"agent{i}" for i in range(20)]
        for name in names:
            flow.add(Agent(name, model="m", tools=[record]))
        result = await flow.run("go", client=router)
        assert sim.stats().max_in_flight > 1
    assert result.shared["count"] == 20
    assert sorted(result.shared["found"]) == sorted(names)


async def test_cancelling_a_run_stops_its_requests() -> None:
    async with SimServer(SimConfig(models={"*": ModelProfile(latency_s=30)})) as sim, \
            Router(sim_config(sim)) as router:
        flow = Flow("slow")
        flow.add(Agent("a", model="m"))
        flow.add(Agent("b", model="m"))
        flow.add(Agent("c", model="m"), after=["a", "b"])
        task = asyncio.create_task(flow.run("x", client=router))
        for _ in range(500):  # wait (bounded) until both requests are at the provider
            if sim.stats().in_flight == 2:
                break
            await asyncio.sleep(0.01)
        assert sim.stats().in_flight == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(500):  # the provider sees the requests go away
            if sim.stats().in_flight == 0:
                break
            await asyncio.sleep(0.01)
        stats = sim.stats()
    assert stats.in_flight == 0
    assert stats.total_requests == 2  # "c" never started


async def test_a_failed_run_resumes_without_repeating_finished_steps() -> None:
    rec = MemoryRecorder()
    flow = Flow("report", recorder=rec)
    flow.add(Agent("researcher", model="m"))
    flow.add(Agent("analyzer", model="m"), after="researcher")
    flow.add(Agent("writer", model="m"), after="analyzer")
    async with SimServer(SimConfig()) as sim:
        sim.script(["ok", "ok", "401"])  # the writer's call fails: never retried
        async with Router(sim_config(sim)) as router:
            with pytest.raises(StepFailed) as err:
                await flow.run("topic", run_id="rep-001", client=router)
        assert err.value.step == "writer"
        assert sim.stats().total_requests == 3
        async with Router(sim_config(sim)) as router:  # as after a restart, key fixed
            result = await flow.run("topic", run_id="rep-001", client=router)
        log = sim.stats().requests
    assert len(log) == 4
    assert log[-1].tag == "writer"
    assert [result.steps[n].status for n in ("researcher", "analyzer", "writer")] == [
        "replayed", "replayed", "succeeded"]
    assert result.output


async def test_the_demo_pipeline_runs_on_models_that_refuse_a_temperature() -> None:
    """OpenAI's reasoning models refuse any temperature but 1 (shoal says so before
    sending): the pipeline sets none, so any catalog model can take any step."""
    from shoal.examples_builtin import run_content_pipeline
    from shoal.sim import config_for_sim

    async with SimServer(SimConfig()) as sim, Router(config_for_sim(sim.url)) as router:
        result = await run_content_pipeline(
            "tides", router=router,
            models={"researcher": "o3-mini", "analyzer": "o3-mini", "writer": "o3-mini"})
    assert result.status == "succeeded", result.table()
    assert {step.model for step in result.steps.values()} == {"o3-mini"}


async def test_the_demo_pipeline_runs_and_tolerates_a_failed_step() -> None:
    from shoal.examples_builtin import (
        PIPELINE_STEPS,
        config_for_sim,
        render_pipeline_result,
        run_content_pipeline,
    )

    async with SimServer(SimConfig()) as sim, Router(config_for_sim(sim.url)) as router:
        models = {"researcher": "deepseek-chat", "analyzer": "claude-opus-4-6",
                  "writer": "gpt-4o"}
        result = await run_content_pipeline("open-weight LLM economics", router=router,
                                            models=models)
        assert result.status == "succeeded"
        assert [result.steps[s].model for s in PIPELINE_STEPS] == list(models.values())
        assert isinstance(result.output, str)
        assert result.output
        assert result.cost_usd > 0
        # the researcher fails twice (its attempt and its retry): the run goes on without
        # its notes, and the simulator saw the analyzer and writer asked anyway
        sim.reset_stats()
        sim.script(["context_overflow", "context_overflow"])
        partial = await run_content_pipeline("topic", router=router, models=models)
        tags = [r.tag for r in sim.stats().requests]
    assert tags == ["researcher", "researcher", "analyzer", "writer"]
    assert partial.status == "partial"
    assert partial.steps["researcher"].status == "failed"
    assert partial.steps["researcher"].error_type == "ContextOverflow"
    assert partial.steps["researcher"].attempts == 2
    assert partial.steps["analyzer"].status == "succeeded"
    assert partial.steps["writer"].status == "succeeded"
    import io

    from rich.console import Console

    out = io.StringIO()
    render_pipeline_result(partial, Console(file=out, width=100))
    text = out.getvalue()
    for step in PIPELINE_STEPS:
        assert step in text
    assert "partial" in text
    assert "failed" in text
    assert partial.output.strip()[:20] in text  # the report is printed above the table
