"""Guards: budgets refuse the call that would overspend (also when agents race), and loop
detection raises or nudges."""

from __future__ import annotations

import asyncio
import re

import pytest

from shoal.agents import Agent, Budget, LoopPolicy, Runner
from shoal.agents.guards import LoopDetector, estimate_cost
from shoal.agents.testing import ScriptedClient, call, reply
from shoal.clock import VirtualClock
from shoal.config import ModelInfo
from shoal.errors import BudgetExceeded, ConfigError, LoopDetected
from shoal.types import ChatResponse, ToolCall, Usage

PRICED = ModelInfo(name="p", input=10.0, output=30.0)  # $ per million tokens


def test_reservation_arithmetic_and_nesting() -> None:
    parent = Budget(max_usd=1.0, max_tokens=1000)
    child = parent.child(max_usd=0.5, name="agent 'x'")
    r1 = child.reserve(100, 0.3)
    assert parent.reserved_usd == pytest.approx(0.3)
    assert child.remaining_usd == pytest.approx(0.2)
    with pytest.raises(BudgetExceeded, match=r"agent 'x' budget of \$0.5000"):
        child.reserve(100, 0.3)
    assert child.reserved_usd == pytest.approx(0.3)  # a refused reservation holds nothing
    r1.settle(80, 0.1)
    r1.settle(999, 9.0)  # idempotent
    assert parent.spent_usd == pytest.approx(0.1)
    assert parent.spent_tokens == 80
    assert parent.reserved_tokens == 0
    with pytest.raises(BudgetExceeded, match="run token budget of 1000"):
        child.reserve(950, 0.01)
    r2 = child.reserve(10, 0.01)
    r2.cancel()
    assert child.spent_usd == pytest.approx(0.1)
    parent.charge(5, 0.05)
    assert parent.spent_usd == pytest.approx(0.15)
    with pytest.raises(ConfigError):
        Budget(max_usd=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0])
def test_a_budget_that_could_never_stop_a_run_is_refused(bad: float) -> None:
    """NaN compares false with everything, so "max_usd <= 0" let it through, and a NaN
    budget never stopped a run (a newcomer's finding); infinity is no budget either."""
    with pytest.raises(ConfigError, match="finite number > 0"):
        Budget(max_usd=bad)
    with pytest.raises(ConfigError, match="finite number > 0"):
        Budget(max_tokens=bad)  # type: ignore[arg-type]


def test_estimate_cost_splits_prompt_and_output() -> None:
    # 1,000 estimated tokens, 400 of them the max_tokens: 600 in at $10/M + 400 out at $30/M
    assert estimate_cost(PRICED, 1000, 400) == pytest.approx((600 * 10 + 400 * 30) / 1e6)


async def test_budget_refuses_the_call_that_would_exceed_it() -> None:
    def lookup(q: str) -> str:
        return "x" * 400

    client = ScriptedClient(handler=lambda req: call("lookup", q="again"), models={"p": PRICED})
    agent = Agent("a", model="p", tools=[lookup], max_tokens=200, max_turns=50,
                  loop=LoopPolicy(max_repeats=100))
    budget = Budget(max_usd=0.05)
    with pytest.raises(BudgetExceeded, match="would be exceeded by agent 'a' turn") as err:
        await Runner(client).run(agent, "go", budget=budget)
    assert client.calls >= 2
    # never overspent: what was sent was reserved first
    assert budget.spent_usd <= 0.05
    assert budget.reserved_usd == 0
    # and the refusal was justified: the refused call's estimate did not fit what was left
    found = re.search(r"up to \$([0-9.]+) for this call", str(err.value))
    assert found is not None
    refused = float(found.group(1))
    assert budget.spent_usd + refused > 0.05
    assert f"spent ${budget.spent_usd:.4f}" in str(err.value)


async def test_agent_budget_nests_inside_the_run_budget() -> None:
    client = ScriptedClient([reply("a")], models={"p": PRICED})
    run_budget = Budget(max_usd=1.0)
    agent = Agent("a", model="p", max_tokens=10, budget_usd=0.5)
    result = await Runner(client).run(agent, "x", budget=run_budget)
    assert run_budget.spent_usd == pytest.approx(result.cost_usd)
    tiny = Agent("t", model="p", max_tokens=100_000, budget_usd=0.0001)
    with pytest.raises(BudgetExceeded, match="agent 't' budget"):
        await Runner(client).run(tiny, "x", budget=run_budget)
    assert client.calls == 1


async def test_token_budget() -> None:
    client = ScriptedClient([reply("a"), reply("b")])
    budget = Budget(max_tokens=110)
    agent = Agent("a", model="m", max_tokens=100)
    # reserves 5 prompt + 100 output; spends 5 + 1
    await Runner(client).run(agent, "x", budget=budget)
    assert budget.spent_tokens == 6
    with pytest.raises(BudgetExceeded, match="token budget of 110"):
        await Runner(client).run(agent, "x", budget=budget)
    assert client.calls == 1


async def test_concurrent_agents_sharing_a_budget_cannot_race_past_it() -> None:
    clock = VirtualClock()
    client = ScriptedClient(handler=lambda req: reply("done"), clock=clock, latency_s=1.0,
                            models={"p": PRICED})
    agent = Agent("a", model="p", max_tokens=1000)
    # Each call may cost up to 6 prompt tokens x $10/M + 1000 output x $30/M ≈ $0.03006.
    budget = Budget(max_usd=0.1)  # → three reservations fit, a fourth would not
    runner = Runner(client, clock=clock)

    async def one() -> str:
        try:
            return (await runner.run(agent, "question", budget=budget)).output
        except BudgetExceeded:
            return "refused"

    results = await clock.run(asyncio.gather(*(one() for _ in range(10))))
    assert results.count("done") == 3
    assert results.count("refused") == 7
    assert client.max_in_flight == 3  # all started at once, only three were let through
    assert budget.spent_usd <= 0.1


def _resp(*calls: tuple[str, str], text: str = "") -> ChatResponse:
    return ChatResponse(
        text=text, tool_calls=[ToolCall(f"id{i}", n, a) for i, (n, a) in enumerate(calls)],
        finish_reason="tool_calls", usage=Usage(), provider="t", model="m",
    )


def test_loop_detector_counts_canonical_calls() -> None:
    det = LoopDetector(LoopPolicy(max_repeats=3))
    assert det.observe(_resp(("search", '{"q": "a", "n": 1}'))) is None
    assert det.observe(_resp(("search", '{"n":1,"q":"a"}'))) is None  # same call, reordered
    assert det.observe(_resp(("search", '{"q": "b", "n": 1}'))) is None
    found = det.observe(_resp(("search", '{"q": "a",  "n": 1}')))
    assert found is not None
    assert "search" in found
    assert "repeated 3 times" in found
    with pytest.raises(ConfigError):
        LoopPolicy(max_repeats=1)


async def test_loop_detected_raises() -> None:
    def search(q: str) -> str:
        return "nothing"

    client = ScriptedClient(handler=lambda req: call("search", q="same"))
    agent = Agent("a", model="m", tools=[search], loop=LoopPolicy(max_repeats=3))
    with pytest.raises(LoopDetected, match=r"agent 'a' is looping: tool call search"):
        await Runner(client).run(agent, "go")
    assert client.calls == 3


async def test_loop_nudge_asks_for_a_summary_with_tools_off() -> None:
    def search(q: str) -> str:
        return "nothing"

    client = ScriptedClient([call("search", q="same")] * 2 + [reply("summary: nothing found")])
    agent = Agent("a", model="m", tools=[search],
                  loop=LoopPolicy(max_repeats=2, on_loop="nudge"))
    result = await Runner(client).run(agent, "go")
    assert result.output == "summary: nothing found"
    last = client.requests[-1]
    assert last.tool_choice == "none"
    assert "You are repeating yourself" in last.messages[-1].content
    # every tool call got an answer, so the conversation stays valid for providers
    calls = {c.id for m in last.messages for c in m.tool_calls}
    answered = {m.tool_call_id for m in last.messages if m.role == "tool"}
    assert calls == answered
    assert "nudged" in result.turns[1].note


async def test_loop_nudge_ignored_raises() -> None:
    def search(q: str) -> str:
        return "nothing"

    client = ScriptedClient(handler=lambda req: call("search", q="same"))
    agent = Agent("a", model="m", tools=[search],
                  loop=LoopPolicy(max_repeats=2, on_loop="nudge"))
    with pytest.raises(LoopDetected, match="nudge ignored"):
        await Runner(client).run(agent, "go")
    assert client.calls == 3
