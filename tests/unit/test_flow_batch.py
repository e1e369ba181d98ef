"""Batch: bounded concurrency, every item accounted for, one budget, a progress bar."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

from shoal.agents import Agent
from shoal.agents.testing import ScriptedClient, reply
from shoal.clock import VirtualClock
from shoal.errors import ConfigError, ProviderUnavailable
from shoal.flows.batch import Batch
from shoal.flows.flow import Flow
from shoal.types import ChatRequest


def handler(req: ChatRequest) -> object:
    text = req.messages[-1].content
    if text.startswith("bad"):
        return ProviderUnavailable(f"{text} failed")
    return reply(text.upper())


async def test_agent_batch_collects_every_item() -> None:
    clock = VirtualClock()
    client = ScriptedClient(handler=handler, clock=clock, latency_s=1.0)
    inputs = [f"doc{i}" if i % 5 else f"bad{i}" for i in range(20)]
    batch = Batch(Agent("summarise", model="m"), concurrency=4, client=client, clock=clock)
    result = await clock.run(batch.run(inputs))
    assert [i.index for i in result.items] == list(range(20))
    assert len(result.succeeded) == 16
    assert [i.index for i in result.failed] == [0, 5, 10, 15]
    assert result.items[5].error == "ProviderUnavailable: bad5 failed"
    assert result.items[5].error_type == "ProviderUnavailable"
    assert result.outputs[1] == "DOC1"
    assert result.outputs[0] is None
    assert client.max_in_flight == 4
    assert result.latency_s == 5.0  # 20 items, 4 at a time, 1 s each
    assert result.cost_usd == pytest.approx(sum(r.cost_usd for r in client.responses))
    assert "16 ok, 4 failed" in str(result.table().title)


async def test_flow_batch_and_one_budget() -> None:
    clock = VirtualClock()
    client = ScriptedClient(handler=handler, clock=clock, latency_s=1.0)
    flow = Flow("pipe")
    flow.add(Agent("a", model="m", max_tokens=1000))
    # each call reserves ≈ $0.002 (1000 output tokens at $2/M): $0.005 admits two in flight
    batch = Batch(flow, concurrency=4, client=client, budget_usd=0.005, clock=clock)
    result = await clock.run(batch.run(["x", "y", "z", "w"]))
    assert [i.status for i in result.items] == ["succeeded", "succeeded", "failed", "failed"]
    assert client.calls == 2
    assert result.cost_usd <= 0.005
    assert all("BudgetExceeded" in (i.error or "") for i in result.failed)
    # What failed, not the single run's advice (a batch resumes by its own id).
    assert all("run_id=" not in (i.error or "") for i in result.failed)
    assert result.items[2].detail.steps["a"].error_type == "BudgetExceeded"
    assert result.items[0].detail.steps["a"].status == "succeeded"


async def test_function_batch_without_a_client() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        if x == 3:
            raise ValueError("three")
        return 2 * x

    result = await Batch(double, concurrency=2).run(range(5))
    assert result.outputs == [0, 2, 4, None, 8]
    assert result.items[3].error == "ValueError: three"


async def test_progress_bar_shows_counts() -> None:
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False)
    client = ScriptedClient(handler=handler)
    batch = Batch(Agent("s", model="m"), client=client, progress=True, console=console,
                  description="docs")
    await batch.run(["a", "bad", "c"])
    text = out.getvalue()
    assert "docs" in text
    assert "3/3" in text
    assert "3/3 done" in text and "2 ok" in text and "1 failed" in text
    assert " tok " in text
    assert "ETA" in text
    assert "$0.0000" in text


async def test_the_bar_of_an_all_failed_batch_says_none_was_ok() -> None:
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False)

    async def broken(x: str) -> str:
        raise RuntimeError(f"no {x}")

    result = await Batch(broken, progress=True, console=console, description="docs").run(
        [str(i) for i in range(8)])
    text = out.getvalue()
    assert len(result.failed) == 8
    assert "8/8 done · 0 ok · 8 failed · 0 running" in text


async def test_a_batch_of_named_inputs_labels_its_rows_with_the_names() -> None:
    async def shout(x: str) -> str:
        return x.upper()

    result = await Batch(shout).run({"a.txt": "alpha", "b.txt": "beta"})
    assert [(i.name, i.index, i.output) for i in result.items] == [
        ("a.txt", 0, "ALPHA"), ("b.txt", 1, "BETA")]
    out = io.StringIO()
    Console(file=out, width=120).print(result.table())
    rows = [line.split()[0] for line in out.getvalue().splitlines() if ".txt" in line]
    assert rows == ["a.txt", "b.txt"]
    plain = await Batch(shout).run(["x"])
    assert plain.items[0].name == "0"


def test_batch_validation() -> None:
    with pytest.raises(ConfigError):
        Batch(Agent("a"), concurrency=0)
    with pytest.raises(ConfigError):
        Batch(42)  # type: ignore[arg-type]
