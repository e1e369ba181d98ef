"""Context management: trimming keeps the system prompt, the task and recent turns (tool
calls with their results), summarises what it drops, and map-reduce covers long inputs."""

from __future__ import annotations

import pytest

from shoal.agents import Agent, ContextPolicy, Runner, map_reduce, split_text, trim_messages
from shoal.agents.context import SUMMARY_HEADER
from shoal.agents.testing import ScriptedClient, call, reply
from shoal.config import ModelInfo
from shoal.errors import ContextOverflow
from shoal.types import ChatRequest, Message, ToolCall


def _count(msgs: list[Message]) -> int:
    return sum(len(m.content) for m in msgs)


def _conversation() -> list[Message]:
    return [
        Message.system("S" * 10),
        Message.user("T" * 10),  # the task
        Message.assistant("", [ToolCall("c1", "f", "{}")]),
        Message.tool("c1", "R" * 50),
        Message.assistant("A" * 20),
        Message.user("U" * 20),
        Message.assistant("", [ToolCall("c2", "f", "{}")]),
        Message.tool("c2", "Q" * 10),
    ]


async def test_fits_is_untouched() -> None:
    msgs = _conversation()
    out = await trim_messages(msgs, estimate=_count, limit=10_000, policy=ContextPolicy())
    assert out is msgs


async def test_drops_oldest_turns_keeping_system_task_and_recent() -> None:
    msgs = _conversation()  # 140 chars in all
    out = await trim_messages(msgs, estimate=_count, limit=80, policy=ContextPolicy())
    assert out[0].content == "S" * 10
    assert out[1].content == "T" * 10
    # the first tool call went with its result, never one without the other
    ids = [c.id for m in out for c in m.tool_calls]
    results = [m.tool_call_id for m in out if m.role == "tool"]
    assert ids == results == ["c2"]
    assert out[-2:] == msgs[-2:]
    assert _count(out) <= 80


async def test_summarises_the_dropped_turns_after_the_task_leaving_the_prefix_alone() -> None:
    seen: list[list[Message]] = []

    async def summarize(dropped: list[Message]) -> str:
        seen.append(dropped)
        return "sum"

    msgs = _conversation()
    msgs[3] = Message.tool("c1", "R" * 500)
    out = await trim_messages(
        msgs, estimate=_count, limit=200, policy=ContextPolicy(summarize=True),
        summarize=summarize,
    )
    assert [m.tool_call_id for m in seen[0] if m.role == "tool"] == ["c1"]
    # the cached prefix (system prompt, task) is byte for byte what it was
    assert out[:2] == msgs[:2]
    assert out[2].role == "user"
    assert out[2].content == f"{SUMMARY_HEADER}\nsum"
    assert out[-2:] == msgs[-2:]


async def test_overflow_when_even_the_essentials_do_not_fit() -> None:
    with pytest.raises(ContextOverflow, match="last 2 turn"):
        await trim_messages(_conversation(), estimate=_count, limit=30, policy=ContextPolicy())
    # with keep_recent=0 only system + task remain, which fit
    out = await trim_messages(
        _conversation(), estimate=_count, limit=25, policy=ContextPolicy(keep_recent=0)
    )
    assert [m.content for m in out] == ["S" * 10, "T" * 10]


def test_split_text_respects_boundaries_and_limits() -> None:
    text = "para one is here.\n\npara two is longer than that.\n\n" + "w" * 45
    parts = split_text(text, 30)
    assert all(len(p) <= 30 for p in parts)
    assert parts[0] == "para one is here."
    assert "".join(parts).replace("\n", "") == text.replace("\n", "")
    assert split_text("", 10) == []
    assert split_text("short", 10) == ["short"]


async def test_runner_trims_to_the_model_window_and_summarises() -> None:
    small = ModelInfo(name="small", context_window=300, max_output=100, input=1.0, output=2.0)

    def fetch(page: int) -> str:
        return "data " * 40  # ~50 tokens per result

    script = [call("fetch", page=i) for i in range(6)] + [reply("done")]
    client = ScriptedClient(handler=None, models={"small": small})
    # Interleave: a summary request (from the trimmer) gets "summary", the agent its script.
    queue = list(script)

    def handler(req: ChatRequest) -> object:
        if req.messages[0].content.startswith("Summarise this conversation"):
            return reply("earlier pages were fetched")
        return queue.pop(0)

    client.handler = handler
    agent = Agent(
        "reader", model="small", tools=[fetch], max_tokens=50,
        context=ContextPolicy(summarize=True, keep_recent=1),
    )
    result = await Runner(client).run(agent, "read all pages")
    assert result.output == "done"
    for req in client.requests:
        assert client.estimate_tokens(req) <= 300
    summaries = [r for r in client.requests if r.messages[0].content.startswith("Summarise")]
    assert summaries, "the trimmer should have summarised dropped turns"
    last = client.requests[-1]
    assert last.messages[0].content == "read all pages"  # the task survived, first
    assert last.messages[1].content.startswith(SUMMARY_HEADER)  # the summary after it
    # the summaries were paid for by this run
    assert result.cost_usd == pytest.approx(sum(r.cost_usd for r in client.responses))
    assert result.cost_usd > sum(t.cost_usd for t in result.turns)


async def test_context_none_never_trims() -> None:
    small = ModelInfo(name="small", context_window=50, max_output=10)
    client = ScriptedClient([reply("ok")], models={"small": small})
    agent = Agent("a", model="small", context=None)
    await Runner(client).run(agent, "x" * 400)
    assert client.requests[0].messages[-1].content == "x" * 400


async def test_map_reduce_over_a_long_text() -> None:
    text = "\n\n".join(f"Section {i}: " + "word " * 100 for i in range(10))
    mapper = Agent("mapper", model="m", instructions="Extract key facts.")
    reducer = Agent("reducer", model="m", instructions="Combine.")

    def handler(req: ChatRequest) -> object:
        if req.messages[0].content == "Extract key facts.":
            body = req.messages[-1].content
            return reply(f"fact from {body.split(':')[0]}")
        return reply("combined: " + str(req.messages[-1].content.count("fact from")))

    client = ScriptedClient(handler=handler)
    result = await map_reduce(
        Runner(client), text, map_agent=mapper, reduce_agent=reducer, chunk_tokens=150,
        concurrency=3,
    )
    maps = [r for r in client.requests if r.messages[0].content == "Extract key facts."]
    assert len(maps) >= 5
    assert all(client.estimate_tokens(r) - (r.max_tokens or 0) <= 150 + 30 for r in maps)
    assert result.output == f"combined: {len(maps)}"
    assert result.cost_usd == pytest.approx(sum(r.cost_usd for r in client.responses))
    assert result.usage.total_tokens == sum(r.usage.total_tokens for r in client.responses)
    assert client.max_in_flight <= 3
