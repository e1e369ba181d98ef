"""The must-show: a flow of six agents with tools, a retry and a failover, through a real
Router against two simulators; the Prometheus endpoint, scraped over HTTP, has the
expected series, and its tokens and cost equal the run's result."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.agents import Agent, tool
from shoal.config import Config
from shoal.flows.flow import Flow, FlowResult
from shoal.observe.events import Event
from shoal.observe.prometheus import PrometheusExporter
from shoal.sim import Faults, SimConfig, SimServer
from shoal.traffic.router import Router

AGENTS = ("planner", "researcher", "analyst", "critic", "coder", "writer")


class Scrape:
    def __init__(self, text: str) -> None:
        self.rows = [(s.name, s.labels, s.value)
                     for f in text_string_to_metric_families(text) for s in f.samples]

    def sum(self, name: str, **labels: str) -> float:
        """The sum of ``name`` over every series whose labels include ``labels``."""
        hits = [v for n, lab, v in self.rows
                if n == name and all(lab.get(k) == want for k, want in labels.items())]
        assert hits, f"no series {name}{labels}"
        return sum(hits)


@tool
def lookup(topic: str) -> str:
    """Look a topic up in the team's notes."""
    return f"notes on {topic}: three facts"


@pytest.fixture
async def run() -> AsyncIterator[tuple[FlowResult, Scrape, list[Event]]]:
    # primary: every request "insufficient quota" -> failover; backup: a seeded share of
    # 429s with a short Retry-After -> retries.
    broke = SimConfig(faults=Faults(quota_exhausted=True))
    flaky = SimConfig(seed=7, faults=Faults(rate_limit_rate=0.3), fault_retry_after_s=0.05)
    async with SimServer(broke) as primary, SimServer(flaky) as backup:
        cfg = Config.from_dict({
            "channels": {
                "primary": {"protocol": "openai", "base_url": primary.url + "/v1",
                            "api_key": "sk-test", "provider": "openai", "max_concurrency": 8,
                            "weight": 100},
                "backup": {"protocol": "openai", "base_url": backup.url + "/v1",
                           "api_key": "sk-test", "provider": "openai", "max_concurrency": 8}},
            "models": {"m": {"channels": ["primary", "backup"], "input": 1.0, "output": 2.0}}})
        async with Router(cfg) as router:
            exporter = PrometheusExporter(router.events, router=router)
            exporter.subscribe()
            events: list[Event] = []
            router.events.subscribe(events.append)
            port = exporter.serve(0)
            try:
                flow = Flow("team")
                flow.add(Agent("planner", model="m", tools=[lookup]))
                for name in AGENTS[1:5]:
                    flow.add(Agent(name, model="m", tools=[lookup],
                                   instructions=f"Do the {name}'s part."), after="planner")
                flow.add(Agent("writer", model="m", tools=[lookup]), after=list(AGENTS[1:5]))
                result = await flow.run("open-weight LLM economics", client=router)
                async with aiohttp.ClientSession() as http, \
                        http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    assert resp.status == 200
                    scrape = Scrape(await resp.text())
            finally:
                exporter.close()
            yield result, scrape, events


async def test_the_scraped_tokens_and_cost_equal_the_runs_result(
        run: tuple[FlowResult, Scrape, list[Event]]) -> None:
    result, got, _ = run
    assert result.status == "succeeded"
    usage = result.usage
    assert got.sum("shoal_tokens_total", type="input") == usage.input_tokens > 0
    assert got.sum("shoal_tokens_total", type="output") == usage.output_tokens > 0
    assert got.sum("shoal_cost_usd_total") == pytest.approx(result.cost_usd, rel=1e-9)
    for name, step in result.steps.items():  # and per agent
        assert got.sum("shoal_tokens_total", agent=name, type="input") == \
            step.usage.input_tokens
        assert got.sum("shoal_cost_usd_total", agent=name) == pytest.approx(step.cost_usd)
    # the GenAI semantic-convention histograms agree
    assert got.sum("gen_ai_client_token_usage_sum", gen_ai_token_type="input",
                   gen_ai_operation_name="chat", gen_ai_request_model="m") == usage.input_tokens
    assert got.sum("gen_ai_client_token_usage_sum",
                   gen_ai_token_type="output") == usage.output_tokens
    turns = sum(s.turns for s in result.steps.values())
    assert got.sum("gen_ai_client_operation_duration_seconds_count", error_type="") == turns
    assert got.sum("shoal_model_calls_total", model="m", status="ok") == turns
    assert got.sum("shoal_model_call_duration_seconds_count") == turns


async def test_the_scrape_shows_steps_tools_the_failover_and_the_retries(
        run: tuple[FlowResult, Scrape, list[Event]]) -> None:
    result, got, events = run
    assert got.sum("shoal_steps_total", status="succeeded") == len(AGENTS)
    assert got.sum("shoal_run_steps", run_id=result.run_id, status="succeeded") == len(AGENTS)
    assert got.sum("shoal_run_steps", run_id=result.run_id, status="running") == 0
    assert got.sum("shoal_runs_total", flow="team", status="succeeded") == 1
    assert got.sum("shoal_agent_invocations_total") == len(AGENTS)
    tools = sum(1 for e in events if e.kind == "tool_end")
    assert got.sum("shoal_tool_calls_total", tool="lookup") == tools >= len(AGENTS)
    kinds = Counter((e.kind, e.channel, e.data.get("error")) for e in events)
    failovers = kinds["failover", "primary", "QuotaExhausted"]
    retries = kinds["retry", "backup", "RateLimited"]
    assert failovers >= 1 and retries >= 1  # the scenario happened...
    assert got.sum("shoal_channel_failovers_total", channel="primary",  # ...and is counted
                   error="QuotaExhausted") == failovers
    assert got.sum("shoal_channel_quota_errors_total", channel="primary") == failovers
    assert got.sum("shoal_channel_retries_total", channel="backup",
                   error="RateLimited") == retries
    assert got.sum("shoal_channel_rate_limited_total", channel="backup") == retries
    turns = sum(s.turns for s in result.steps.values())
    assert got.sum("shoal_channel_requests_total", channel="backup", outcome="ok") == turns
    assert got.sum("shoal_channel_breaker_state", channel="primary") == 2  # open: no quota
    assert got.sum("shoal_channel_in_flight", channel="backup") == 0
    assert got.sum("shoal_channel_limit", channel="backup") == 8
    assert got.sum("shoal_running", what="step") == 0
