"""Journaled runs for the run report's tests (tests/integration/test_report_html.py and
tests/browser/test_report_chromium.py): a real flow that fails against the simulator,
and a large run written through the store's own API."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shoal.agents import Agent, StepFailed
from shoal.cli.runs_cmd import journal_meta
from shoal.config import Config
from shoal.flows.flow import Flow
from shoal.flows.resume import run_durable
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.stores.base import Store
from shoal.stores.records import RunRecord, StepRecord
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router

RUN_ID = "brief-001"
TOPIC = "<i>open-weight</i> LLM economics & <script>alert('x')</script>"
LEAKED = "sk-live-4f9a8b7c6d5e4f3a2b1c"  # key-shaped: the report must mask it
REFUSAL = f"the publisher refused <b>it</b> & said </script><script>alert(1)</script> {LEAKED}"
BACKOFF_S = 0.05


def publish(analyzer: str, critic: str) -> str:
    raise RuntimeError(REFUSAL)


def brief_flow() -> Flow:
    """researcher → (analyzer, critic) → publish (fails) → announcer (never runs)."""
    flow = Flow("brief")
    flow.add(Agent("researcher", model="m", instructions="Collect the key facts."))
    flow.add(Agent("analyzer", model="m", instructions="Analyse the findings."),
             after="researcher")
    flow.add(Agent("critic", model="m", instructions="Find the weak points."),
             after="researcher")
    flow.add(publish, after=["analyzer", "critic"])
    flow.add(Agent("announcer", model="m", instructions="Announce it."), after="publish")
    return flow


@dataclass(frozen=True)
class FailedRun:
    store_url: str
    config: Path
    run_id: str = RUN_ID


async def failed_run(tmp_path: Path) -> FailedRun:
    """The brief flow against the simulator, journaled in SQLite: the researcher's first
    request gets a 503 (one retry after ``BACKOFF_S``), the analyzer and the critic share
    a channel of concurrency 1 (one queues in the limiter), ``publish`` raises."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    config = tmp_path / "shoal.toml"
    async with SimServer(SimConfig(models={"*": ModelProfile(latency_s=0.05)})) as sim:
        config.write_text(textwrap.dedent(f"""
            [channels.sim]
            protocol = "openai"
            base_url = "{sim.url}/v1"
            api_key = "sk-test"
            provider = "openai"
            max_concurrency = 1

            [models.m]
            channels = ["sim"]
            input = 1.0
            output = 2.0
            cached_input = 0.1
        """), "utf-8")
        sim.script(["503"])
        retry = RetryPolicy(attempts=3, backoff=Backoff(base=BACKOFF_S, jitter=False))
        async with Router(Config.load(config), retry=retry) as router:
            with pytest.raises(StepFailed):
                await run_durable(brief_flow(), TOPIC, store=url, run_id=RUN_ID,
                                  client=router,
                                  meta=journal_meta("report_runs:brief_flow", config=config))
        tags = [r.tag or "" for r in sim.stats().requests]
        assert tags[:2] == ["researcher", "researcher"]
        assert sorted(tags[2:]) == ["analyzer", "critic"]
    return FailedRun(url, config)


async def large_run(store: Store, *, steps: int = 500, width: int = 10, turns: int = 2,
                    run_id: str = "big") -> RunRecord:
    """A finished run of ``steps`` steps in layers of ``width`` (each step after two of
    the layer before), ``turns`` journaled model turns each, the last step failed."""
    names = [f"s{i:03d}" for i in range(steps)]
    after = {n: [names[i - width - j] for j in (0, 1) if i - width - j >= 0
                 and (i - width - j) // width == i // width - 1]
             for i, n in enumerate(names)}
    created = await store.create_run(RunRecord(run_id, flow="big", meta={
        "step_hashes": dict.fromkeys(names, "h"), "step_after": after}))
    t0 = created.created_at
    for i, name in enumerate(names):
        start = t0 + (i // width) * 3.0
        for turn in range(turns):
            began = start + turn * 1.2
            result: dict[str, Any] = {
                "text": "ok", "tool_calls": [], "finish_reason": "stop",
                "usage": {"input_tokens": 1200, "output_tokens": 80,
                          "cached_input_tokens": 1000 * turn, "reasoning_tokens": 0,
                          "cache_write_tokens": 0},
                "provider": "openai", "model": "gpt-4o", "served_model": "gpt-4o-2024-08-06",
                "latency_s": 0.8, "cost_usd": 0.001, "channel": "openai",
                "queue_s": 0.25, "attempts": 1 + (i % 7 == 0), "call_s": 1.1,
            }
            await store.complete_step(run_id, StepRecord(
                f"{name}/turn/{turn}", "succeeded", result=result, started_at=began,
                finished_at=began + 1.1, tokens=1280, cost_usd=0.001,
                meta={"kind": "turn", "step": name, "turn": turn}))
        last = i == steps - 1
        await store.put_step(run_id, StepRecord(
            name, "failed" if last else "succeeded",
            result=None if last else {"output": "ok", "usage": {}, "cost_usd": 0.002,
                                      "model": "gpt-4o"},
            started_at=start, finished_at=start + 2.5,
            error="RuntimeError: the last step broke" if last else None,
            meta={"kind": "step"}))
    await store.update_run(run_id, status="failed", error="RuntimeError: the last step broke")
    return await store.require_run(run_id)
