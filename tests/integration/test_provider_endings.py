"""Answers a provider ends short, through the Router (and an Agent) against the simulator's
provider styles over HTTP (the ``finish:<reason>`` faults, PROVIDERS.md §2, §3).

* Anthropic ``pause_turn`` (server tools paused a long turn) is finish ``other`` with the
  raw label kept; an agent stops with ``BudgetExceeded`` instead of taking the partial
  answer as its output. ``model_context_window_exceeded`` is ``length`` (a truncated
  answer); inside a tool call an agent runs nothing.
* DeepSeek ``insufficient_system_resource`` and Zhipu ``network_error`` cut the answer for
  the provider's own failure: retried like a server error (the discarded answer charged
  as waste), or a ``StreamInterrupted`` once tokens reached the caller.
* Zhipu ``sensitive`` is ``content_filter``; an agent raises ``ModelRefused``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sim_fixtures import drain_into, streamed_whole, style_router

from shoal.agents import Agent, Runner, tool
from shoal.errors import (
    BadRequest,
    BudgetExceeded,
    ModelRefused,
    ProviderUnavailable,
    StreamInterrupted,
)
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEnd, StreamEvent, TextDelta

FAST = RetryPolicy(attempts=3, backoff=Backoff(base=0.01, cap=0.02), deadline_s=20)
ASK = ChatRequest("m", [Message.user("what limits bind a shared provider?")])
WORDS = 12  # the simulator's text answer, in tokens (one word each)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(seed=5, models={"*": ModelProfile(output_tokens=WORDS)})) as s:
        yield s


def router(sim: SimServer, style: str) -> Router:
    return style_router(sim, style, FAST)


async def streamed(r: Router, ask: ChatRequest = ASK) -> tuple[list[StreamEvent], ChatResponse]:
    return await streamed_whole(r, ask)


async def drain(r: Router, seen: list[StreamEvent]) -> None:
    await drain_into(r, ASK, seen)


async def ended_three_ways(sim: SimServer, style: str, finish: str, agent: Agent[str],
                           task: str, error: type[Exception], match: str
                           ) -> tuple[ChatResponse, ChatResponse, Exception]:
    """Every answer ends with the provider's ``finish``: a whole answer, a streamed one,
    and the error an agent on it raises (matching ``match``)."""
    sim.script([f"finish:{finish}"] * 3)
    async with router(sim, style) as r:
        whole = await r.complete(ASK)
        _, end = await streamed(r)
        with pytest.raises(error, match=match) as caught:
            await Runner(r).run(agent, task)
    return whole, end, caught.value


# -- Anthropic ---------------------------------------------------------------------------


async def test_pause_turn_is_other_and_an_agent_does_not_take_it_as_output(
        sim: SimServer) -> None:
    whole, end, raised = await ended_three_ways(
        sim, "anthropic", "pause_turn", Agent("searcher", model="m"),
        "find the latest figures", BudgetExceeded, "pause_turn")
    for answer in (whole, end):
        assert (answer.finish_reason, answer.raw_finish_reason) == ("other", "pause_turn")
        assert len(answer.text.split()) == WORDS // 2  # the text before the paused search
        assert answer.tool_calls == []  # the server tool's call is not the caller's to run
    assert "server tools" in str(raised)
    assert sim.stats().total_requests == 3  # none retried: the answer is the provider's


async def test_model_context_window_exceeded_is_a_truncated_answer(sim: SimServer) -> None:
    sim.script(["finish:model_context_window_exceeded"] * 2)
    async with router(sim, "anthropic") as r:
        whole = await r.complete(ASK)
        _, end = await streamed(r)
    for answer in (whole, end):
        assert answer.finish_reason == "length"
        assert answer.raw_finish_reason == "model_context_window_exceeded"
        assert len(answer.text.split()) == WORDS // 2


async def test_a_full_context_window_inside_a_tool_call_runs_nothing(sim: SimServer) -> None:
    ran: list[str] = []

    @tool
    def lookup(query: str) -> str:
        """Look something up."""
        ran.append(query)
        return "found"

    sim.script(["finish:model_context_window_exceeded"])
    async with router(sim, "anthropic") as r:
        with pytest.raises(BudgetExceeded, match="context window") as caught:
            await Runner(r).run(Agent("a", model="m", tools=[lookup]), "look it up")
    assert ran == []
    assert "lookup" in str(caught.value) and "max_tokens" not in str(caught.value)


# -- DeepSeek, Zhipu: the provider's own failure ends the answer ------------------------------


@pytest.mark.parametrize(("style", "reason"), [("deepseek", "insufficient_system_resource"),
                                                ("zhipu", "network_error")])
async def test_an_answer_cut_by_the_provider_is_retried_not_returned(
        sim: SimServer, style: str, reason: str) -> None:
    sim.script([f"finish:{reason}", "ok"])
    async with router(sim, style) as r:
        answer = await r.complete(ASK)
    assert answer.finish_reason == "stop" and len(answer.text.split()) == WORDS
    assert [q.status for q in sim.stats().requests] == [200, 200]
    assert answer.wasted is not None  # the cut answer was billed: charged as waste
    assert answer.wasted.output_tokens == WORDS // 2


@pytest.mark.parametrize(("style", "reason"), [("deepseek", "insufficient_system_resource"),
                                                ("zhipu", "network_error")])
async def test_a_stream_cut_by_the_provider_after_tokens_is_interrupted(
        sim: SimServer, style: str, reason: str) -> None:
    sim.script([f"finish:{reason}"])
    seen: list[StreamEvent] = []
    async with router(sim, style) as r:
        with pytest.raises(StreamInterrupted) as caught:
            await drain(r, seen)
    err = caught.value
    assert isinstance(err.__cause__, ProviderUnavailable) and err.__cause__.code == reason
    text = "".join(e.text for e in seen if isinstance(e, TextDelta))
    assert err.partial_output == text and len(text.split()) == WORDS // 2
    assert not any(isinstance(e, StreamEnd) for e in seen)
    assert sim.stats().total_requests == 1  # tokens reached the caller: not retried


# -- Zhipu's content filter ------------------------------------------------------------------


async def test_zhipu_sensitive_is_content_filter_and_an_agent_refuses(sim: SimServer) -> None:
    whole, end, raised = await ended_three_ways(
        sim, "zhipu", "sensitive", Agent("writer", model="m"), "write it", ModelRefused,
        "content filter")
    for answer in (whole, end):
        assert (answer.finish_reason, answer.raw_finish_reason) == ("content_filter",
                                                                    "sensitive")
    assert isinstance(raised, ModelRefused) and "sensitive" in raised.refusal


async def test_a_finish_reason_the_style_lacks_is_a_clear_400(sim: SimServer) -> None:
    sim.script(["finish:sensitive"])  # Zhipu's, sent to the DeepSeek style
    async with router(sim, "deepseek") as r:
        with pytest.raises(BadRequest, match=r"no finish reason 'sensitive'.*"
                                            r"insufficient_system_resource"):
            await r.complete(ASK)
