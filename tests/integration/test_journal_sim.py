"""Resume through the real Router against the simulator, on SQLite, Redis and PostgreSQL:
the simulator's request log (tagged with each step) proves which calls a resume makes."""

from __future__ import annotations

import asyncio

import pytest

from shoal.agents import Agent, StepFailed
from shoal.config import Config
from shoal.flows.flow import Flow
from shoal.flows.resume import plan, resume, run_durable
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.stores import open_store
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router

QUICK_RETRY = RetryPolicy(attempts=2, backoff=Backoff(base=0.01, jitter=False))


def sim_config(sim: SimServer) -> Config:
    return Config.from_dict({
        "channels": {"sim": {"protocol": "openai", "base_url": sim.url + "/v1",
                             "api_key": "sk-test", "provider": "openai",
                             "max_concurrency": 8}},
        "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}},
    })


def pipeline() -> Flow:
    flow = Flow("report")
    flow.add(Agent("researcher", model="m", instructions="Collect the key facts."))
    flow.add(Agent("analyzer", model="m", instructions="Analyse the findings."),
             after="researcher")
    flow.add(Agent("writer", model="m", instructions="Write a crisp report."), after="analyzer")
    return flow


async def test_step_2_fails_past_its_retries_and_resume_calls_only_steps_2_and_3(
    journal_url: str,
) -> None:
    flow = pipeline()
    async with SimServer(SimConfig()) as sim:
        async with Router(sim_config(sim), retry=QUICK_RETRY) as router:
            reference = await flow.run("open-weight LLM economics", run_id="ref",
                                       client=router)
        sim.reset_stats()
        sim.script(["ok", "503", "503"])  # the analyzer's call and its one retry fail
        async with Router(sim_config(sim), retry=QUICK_RETRY) as router:
            with pytest.raises(StepFailed) as failed:
                await run_durable(flow, "open-weight LLM economics", store=journal_url,
                                  run_id="rep-001", client=router)
        assert sim.tags() == ["researcher", "analyzer", "analyzer"]
        message = str(failed.value)
        assert failed.value.step == "analyzer"
        assert "step 'analyzer' of flow 'report' failed: ProviderUnavailable" in message
        assert "503" in message
        assert "Finished steps: researcher" in message
        assert "run_id='rep-001'" in message

        before = await plan(journal_url, "rep-001")
        assert before.run.status == "failed"
        assert (before.replay, before.redo) == (["researcher"], ["analyzer", "writer"])

        sim.reset_stats()  # the fault has cleared; a new process resumes
        async with Router(sim_config(sim), retry=QUICK_RETRY) as router:
            result = await resume("rep-001", flow, store=journal_url, client=router)
        assert sim.tags() == ["analyzer", "writer"]
    assert [result.steps[n].status for n in ("researcher", "analyzer", "writer")] == [
        "replayed", "succeeded", "succeeded"]
    assert result.output == reference.output
    assert result.cost_usd == pytest.approx(reference.cost_usd)
    after = await plan(journal_url, "rep-001")
    assert after.run.status == "succeeded"
    assert after.redo == []
    async with open_store(journal_url) as store:
        run = await store.require_run("rep-001")
    # totals: the three answered turns, nothing for the failed attempts (no answer, no bill)
    assert run.cost_usd == pytest.approx(reference.cost_usd)


async def test_a_cancelled_run_resumes_and_reruns_only_the_step_in_flight(
    journal_url: str,
) -> None:
    flow = pipeline()
    cfg = SimConfig(models={"*": ModelProfile(latency_s=0.3)})
    async with SimServer(cfg) as sim, Router(sim_config(sim)) as router:
        task = asyncio.create_task(run_durable(flow, "topic", store=journal_url,
                                               run_id="c1", client=router))
        while not (len(sim.stats().requests) == 1 and sim.stats().in_flight == 1):
            await asyncio.sleep(0.01)  # the researcher answered; the analyzer is in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled = await plan(journal_url, "c1")
        assert cancelled.run.status == "cancelled"
        assert (cancelled.replay, cancelled.redo) == (["researcher"], ["analyzer", "writer"])
        sim.reset_stats()
        result = await resume("c1", flow, store=journal_url, client=router)
        assert [r.tag for r in sim.stats().requests] == ["analyzer", "writer"]
    assert result.status == "succeeded"
