"""Agents through the real Router against the simulator over HTTP: what the provider saw
proves the behaviour (structured output re-asks, tool failures, guardrails, budgets, loops)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from shoal.agents import (
    Agent,
    Budget,
    GuardrailResult,
    GuardrailTripped,
    LoopPolicy,
    ModelClient,
    Runner,
    guardrail,
    tool,
)
from shoal.config import Config
from shoal.errors import BudgetExceeded, LoopDetected
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.router import Router


def sim_config(sim: SimServer, **channel: object) -> Config:
    return Config.from_dict({
        "channels": {"sim": {"protocol": "openai", "base_url": sim.url + "/v1",
                             "api_key": "sk-test", "provider": "openai", **channel}},
        "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}},
    })


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(seed=7, models={"*": ModelProfile(output_tokens=12)})) as s:
        yield s


@pytest.fixture
async def runner(sim: SimServer) -> AsyncIterator[Runner]:
    async with Router(sim_config(sim)) as router:
        client: ModelClient = router  # the Router satisfies the agents' seam
        yield Runner(client)


class Findings(BaseModel):
    topic: str
    points: list[str]
    confidence: float


async def test_structured_output_succeeds_after_a_schema_invalid_answer(
    sim: SimServer, runner: Runner
) -> None:
    sim.script(["schema_invalid", "ok"])
    agent = Agent("researcher", model="m", output_type=Findings)
    result = await runner.run(agent, "open-weight LLM economics")
    assert isinstance(result.output, Findings)
    log = sim.stats().requests
    assert [r.fault for r in log] == ["schema_invalid", None]
    assert [r.tag for r in log] == ["researcher", "researcher"]
    assert result.turns[0].note.startswith("output invalid, re-asked")
    assert "does not match the schema" in result.messages[3].content  # the re-ask
    assert result.usage.input_tokens == sum(r.prompt_tokens for r in log)
    assert result.usage.output_tokens == sum(r.completion_tokens for r in log)
    assert result.cost_usd == pytest.approx(
        (result.usage.input_tokens * 1.0 + result.usage.output_tokens * 2.0) / 1e6)


async def test_a_tool_that_raises_goes_back_to_the_model(sim: SimServer, runner: Runner) -> None:
    calls: list[str] = []

    @tool
    def lookup(query: str) -> str:
        """Look something up."""
        calls.append(query)
        raise RuntimeError("index offline")

    result = await runner.run(Agent("a", model="m", tools=[lookup]), "find it")
    assert len(calls) == 1
    tool_msg = next(m for m in result.messages if m.role == "tool")
    assert tool_msg.is_error
    assert "RuntimeError: index offline" in tool_msg.content
    assert result.turns[0].tool_errors == ["lookup: error"]
    assert sim.stats().total_requests == 2  # the model saw the error and answered
    assert result.output


async def test_a_tool_that_times_out(sim: SimServer, runner: Runner) -> None:
    started = asyncio.Event()

    @tool(timeout_s=0.05, retries=0)
    async def slow(query: str) -> str:
        """Slow lookup."""
        started.set()
        await asyncio.sleep(30)
        return "late"

    result = await runner.run(Agent("a", model="m", tools=[slow]), "find it")
    assert started.is_set()
    tool_msg = next(m for m in result.messages if m.role == "tool")
    assert "timed out after 0.05s" in tool_msg.content
    assert result.turns[0].tool_errors == ["slow: timeout"]
    assert sim.stats().total_requests == 2


async def test_invalid_tool_arguments_from_the_model(sim: SimServer, runner: Runner) -> None:
    ran: list[int] = []

    @tool
    def fetch(page: int, lang: str) -> str:
        """Fetch a page."""
        ran.append(page)
        return "page text"

    sim.script(["schema_invalid"])  # the first answer calls the tool with bad arguments
    result = await runner.run(Agent("a", model="m", tools=[fetch]), "get page")
    first_tool_msg = next(m for m in result.messages if m.role == "tool")
    assert first_tool_msg.is_error
    assert first_tool_msg.content.startswith("Invalid arguments for tool 'fetch'")
    assert ran == []  # never called with invalid arguments
    assert result.turns[0].tool_errors == ["fetch: invalid_arguments"]
    assert sim.stats().requests[0].fault == "schema_invalid"


async def test_input_guardrail_trips_and_output_guardrail_redacts(
    sim: SimServer, runner: Runner
) -> None:
    @guardrail
    def no_account_numbers(text: str) -> GuardrailResult:
        if re.search(r"\b\d{8,}\b", text):
            return GuardrailResult.trip("an account number is in the input")
        return GuardrailResult.ok()

    def redact_the(text: str) -> str:
        return re.sub(r"\b[Tt]he\b", "[redacted]", text)

    agent = Agent("a", model="m", input_guardrails=[no_account_numbers],
                  output_guardrails=[redact_the])
    with pytest.raises(GuardrailTripped, match="no_account_numbers"):
        await runner.run(agent, "move money from 12345678901")
    assert sim.stats().total_requests == 0  # the provider never saw it

    # find an input whose (deterministic) answer contains "the"
    for i in range(50):
        result = await runner.run(agent, f"question {i}")
        raw = result.messages[-1].content
        if re.search(r"\b[Tt]he\b", raw):
            break
    else:
        pytest.fail("the simulator never said 'the'")
    assert result.output == redact_the(raw)
    assert "[redacted]" in result.output
    assert not re.search(r"\b[Tt]he\b", result.output)


async def test_budget_stops_the_run_before_the_call_that_would_exceed_it(
    sim: SimServer, runner: Runner
) -> None:
    @tool
    def search(q: str) -> str:
        """Search."""
        return "result " * 50

    # "required" makes the simulator call the tool every turn, so the conversation (and
    # each call's worst case: prompt + 1000 output tokens at $2/M) grows until the next
    # call no longer fits in what is left of $0.005.
    agent = Agent("a", model="m", tools=[search], tool_choice="required", max_tokens=1000,
                  loop=LoopPolicy(max_repeats=50), max_turns=50)
    budget = Budget(max_usd=0.005)
    with pytest.raises(BudgetExceeded, match=r"budget of \$0.0050 would be exceeded") as err:
        await runner.run(agent, "dig", budget=budget)
    log = sim.stats().requests
    assert len(log) >= 2
    # what the provider billed is what the budget counted, and it stayed under the limit
    billed = sum(r.prompt_tokens * 1.0 + r.completion_tokens * 2.0 for r in log) / 1e6
    assert budget.spent_usd == pytest.approx(billed)
    assert budget.spent_usd <= 0.005
    assert budget.reserved_usd == 0
    # and the refused call is the one that could have crossed it
    found = re.search(r"up to \$([0-9.]+) for this call", str(err.value))
    assert found is not None
    assert budget.spent_usd + float(found.group(1)) > 0.005


async def test_loop_detection_fires(sim: SimServer, runner: Runner) -> None:
    @tool
    def search(q: str) -> str:
        """Search."""
        return "nothing new"

    agent = Agent("a", model="m", tools=[search], tool_choice="required",
                  loop=LoopPolicy(max_repeats=3))
    with pytest.raises(LoopDetected, match="repeated 3 times"):
        await runner.run(agent, "dig")
    assert sim.stats().total_requests == 3


async def test_loop_nudge_gets_a_final_answer(sim: SimServer, runner: Runner) -> None:
    @tool
    def search(q: str) -> str:
        """Search."""
        return "nothing new"

    agent = Agent("a", model="m", tools=[search], tool_choice="required",
                  loop=LoopPolicy(max_repeats=2, on_loop="nudge"))
    result = await runner.run(agent, "dig")
    assert result.output  # the simulator answered in text once tools were off
    assert sim.stats().total_requests == 3
    assert "nudged" in result.turns[1].note
