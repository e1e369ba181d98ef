"""OpenTelemetry traces of a real flow against the simulator over HTTP (issue 11's must-show):
five agents with tools, a model call that fails over and then retries, exported to an
in-memory span exporter. The span tree, the GenAI attributes, the token sums and the
retry/failover span events are checked against the flow's own result."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import shoal.observe
from shoal.agents import Agent, tool
from shoal.config import Config
from shoal.flows.flow import Flow, FlowResult
from shoal.secrets import register_secret
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router

FAST_RETRY = RetryPolicy(attempts=4, backoff=Backoff(base=0.01, cap=0.05),
                         max_retry_after_s=0.05, deadline_s=30)
SECRET = "tok-9f8e7d6c5b4a39281706"


@tool
def search(query: str) -> str:
    """Search the corpus."""
    return f"3 documents about {query}"


@tool
def cite(source: str) -> str:
    """Format a citation."""
    return f"[{source}]"


def research_flow() -> Flow:
    flow = Flow("research")
    flow.add(Agent("plan", model="m", tools=[search], instructions="Plan the research."))
    for name in ("market", "costs", "risks"):
        flow.add(Agent(name, model="m", tools=[search], instructions=f"Research {name}."),
                 after="plan")
    flow.add(Agent("write", model="m", tools=[cite], instructions="Write the report."),
             after=["market", "costs", "risks"])
    return flow


def two_channels(primary: SimServer, backup: SimServer) -> Config:
    def channel(sim: SimServer, weight: float) -> dict[str, object]:
        return {"protocol": "openai", "base_url": sim.url + "/v1", "api_key": "sk-test",
                "provider": "openai", "max_concurrency": 8, "weight": weight}

    return Config.from_dict({
        "channels": {"primary": channel(primary, 1.0), "backup": channel(backup, 0.001)},
        "models": {"m": {"channels": ["primary", "backup"], "input": 1.0, "output": 2.0}},
    })


@pytest.fixture
async def sims() -> AsyncIterator[tuple[SimServer, SimServer]]:
    fast = SimConfig(models={"*": ModelProfile(latency_s=0.005)})
    async with AsyncExitStack() as stack:
        primary = await stack.enter_async_context(SimServer(fast))
        backup = await stack.enter_async_context(SimServer(fast))
        yield primary, backup


async def traced_run(sims: tuple[SimServer, SimServer], *, capture_content: bool = False,
                     task: str = "open-weight LLM economics"
                     ) -> tuple[FlowResult, Sequence[ReadableSpan]]:
    primary, backup = sims
    # The plan's first call: a 503 on the primary fails over at once to the backup, whose
    # 503 leaves no less-failed lane, so the call waits and retries (on the primary).
    primary.script(["503"])
    backup.script(["503"])
    exporter = InMemorySpanExporter()
    async with Router(two_channels(primary, backup), retry=FAST_RETRY) as router:
        with shoal.observe.tracing(exporter, bus=router, capture_content=capture_content):
            result = await research_flow().run(task, client=router)
    return result, exporter.get_finished_spans()


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans
            if s.parent is not None and s.parent.span_id == parent.context.span_id]


def attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def num(span: ReadableSpan, key: str) -> float:
    value = attrs(span)[key]
    assert isinstance(value, int | float), (key, value)
    return value


async def test_a_flow_is_one_span_tree_with_genai_attributes(
    sims: tuple[SimServer, SimServer],
) -> None:
    result, spans = await traced_run(sims)
    assert result.status == "succeeded"

    (run,) = [s for s in spans if s.parent is None]
    assert run.name == "run research"
    assert run.context is not None
    assert {s.context.trace_id for s in spans if s.context} == {run.context.trace_id}
    steps = children(spans, run)
    assert sorted(s.name for s in steps) == [
        "step costs", "step market", "step plan", "step risks", "step write"]
    chats: list[ReadableSpan] = []
    tools: list[ReadableSpan] = []
    for step in steps:
        (agent,) = children(spans, step)
        name = step.name.removeprefix("step ")
        assert agent.name == f"invoke_agent {name}"
        assert attrs(agent)["gen_ai.operation.name"] == "invoke_agent"
        assert attrs(agent)["gen_ai.agent.name"] == name
        below = children(spans, agent)
        tool_name = "cite" if name == "write" else "search"
        assert {s.name for s in below} == {"chat m", f"execute_tool {tool_name}"}
        # a tool call between two model calls: chat, then the tool, then chat
        ordered = sorted(below, key=lambda s: s.start_time or 0)
        assert [s.name.split()[0] for s in ordered] == ["chat", "execute_tool", "chat"]
        assert [attrs(s).get("shoal.turn") for s in ordered] == [0, None, 1]
        chats += [s for s in below if s.name == "chat m"]
        tools += [s for s in below if s.name.startswith("execute_tool")]
        assert attrs(step)["shoal.status"] == "succeeded"
        assert attrs(agent)["shoal.turns"] == 2
    assert len(chats) == 10
    assert len(tools) == 5
    assert len(spans) == 1 + 5 + 5 + 10 + 5

    for chat in chats:
        a = attrs(chat)
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "openai"
        assert a["gen_ai.request.model"] == "m"
        assert a["gen_ai.response.model"]
        assert num(chat, "gen_ai.usage.input_tokens") > 0
        assert num(chat, "gen_ai.usage.output_tokens") > 0
        assert "gen_ai.input.messages" not in a  # content only when asked
        assert (chat.start_time or 0) <= (chat.end_time or 0)
    for t in tools:
        a = attrs(t)
        assert a["gen_ai.operation.name"] == "execute_tool"
        assert a["gen_ai.tool.name"] in ("search", "cite")
        assert a["gen_ai.tool.call.id"]

    # Tokens and cost on the spans are the run's own figures.
    assert sum(num(c, "gen_ai.usage.input_tokens") for c in chats) == result.usage.input_tokens
    assert sum(num(c, "gen_ai.usage.output_tokens") for c in chats) == result.usage.output_tokens
    assert sum(num(c, "shoal.cost_usd") for c in chats) == pytest.approx(result.cost_usd)
    assert attrs(run)["shoal.usage.input_tokens"] == result.usage.input_tokens
    assert attrs(run)["shoal.cost_usd"] == pytest.approx(result.cost_usd)

    # The failover and the retry are span events of the call they happened in.
    (troubled,) = [c for c in chats if c.events]
    assert [e.name for e in troubled.events] == ["failover", "retry"]
    failover, retry = troubled.events
    assert dict(failover.attributes or {})["shoal.error"] == "ProviderUnavailable"
    assert dict(failover.attributes or {})["shoal.to"] == "backup"
    delay = dict(retry.attributes or {})["shoal.delay_s"]
    assert isinstance(delay, float) and delay > 0
    assert attrs(troubled)["shoal.attempts"] == 3
    assert attrs(troubled)["shoal.channel"] == "primary"
    plan_agent = next(s for s in spans if s.name == "invoke_agent plan")
    assert troubled.parent is not None and plan_agent.context is not None
    assert troubled.parent.span_id == plan_agent.context.span_id


async def test_content_is_recorded_only_when_asked_and_redacted(
    sims: tuple[SimServer, SimServer],
) -> None:
    register_secret(SECRET)
    result, spans = await traced_run(sims, capture_content=True,
                                     task=f"use the key {SECRET} to fetch the data")
    assert result.status == "succeeded"
    chats = [s for s in spans if s.name == "chat m"]
    first = min(chats, key=lambda s: s.start_time or 0)
    messages = str(attrs(first)["gen_ai.input.messages"])
    assert "use the key" in messages
    assert SECRET not in messages
    assert "gen_ai.output.messages" in attrs(first)
    assert all(SECRET not in str(v) for s in spans for v in attrs(s).values())
