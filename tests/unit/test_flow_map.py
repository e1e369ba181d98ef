"""Fan-out maps under a cap, item failure policies, and the priority slot pool."""

from __future__ import annotations

import asyncio

import pytest

from shoal.agents import Agent, MemoryRecorder, StepFailed
from shoal.agents.testing import ScriptedClient, reply
from shoal.clock import VirtualClock
from shoal.errors import ConfigError, ProviderUnavailable
from shoal.flows.context import StepContext
from shoal.flows.flow import Flow
from shoal.flows.scheduler import SlotPool
from shoal.types import ChatRequest


def topics(input: str) -> list[str]:
    return [f"{input}-{i}" for i in range(10)]


def upper_handler(req: ChatRequest) -> object:
    return reply(req.messages[-1].content.upper())


async def test_map_fans_out_under_its_cap_and_keeps_order() -> None:
    clock = VirtualClock()
    client = ScriptedClient(handler=upper_handler, clock=clock, latency_s=1.0)
    flow = Flow("fan", client=client, clock=clock)
    flow.add(topics)
    researcher = Agent("researcher", model="m")
    flow.map(researcher, over=topics, concurrency=3)
    result = await clock.run(flow.run("llm"))
    assert result.output == [f"LLM-{i}" for i in range(10)]
    assert client.max_in_flight == 3
    assert result.latency_s == 4.0  # ceil(10 / 3) rounds of 1 s
    step = result.steps["researcher"]
    assert [i.name for i in step.items] == [f"researcher/{i}" for i in range(10)]
    assert step.cost_usd == pytest.approx(sum(r.cost_usd for r in client.responses))
    assert step.turns == 10


async def test_map_items_share_the_flow_cap() -> None:
    clock = VirtualClock()
    client = ScriptedClient(handler=upper_handler, clock=clock, latency_s=1.0)
    flow = Flow("fan", client=client, clock=clock, max_concurrency=2)
    flow.map(Agent("a", model="m"), over=lambda ctx: ["x", "y", "z"], name="m1")
    flow.map(Agent("b", model="m"), over=lambda ctx: ["p", "q"], name="m2")
    result = await clock.run(flow.run())
    assert client.max_in_flight == 2
    assert result.latency_s == 3.0
    assert result.output == {"m1": ["X", "Y", "Z"], "m2": ["P", "Q"]}


async def test_function_map_gets_item_and_index_and_context() -> None:
    flow = Flow("fan", client=ScriptedClient())

    def square(item: int, index: int, ctx: StepContext) -> tuple[int, int, str]:
        return index, item * item, ctx.step

    flow.map(square, over=lambda ctx: [3, 4])
    result = await flow.run()
    assert result.output == [(0, 9, "square/0"), (1, 16, "square/1")]


async def test_item_failure_policies() -> None:
    def flaky(item: int) -> int:
        if item % 2:
            raise ProviderUnavailable(f"item {item} down")
        return item

    def items(ctx: StepContext) -> list[int]:
        return [0, 1, 2, 3]

    flow = Flow("f", client=ScriptedClient())
    flow.map(flaky, over=items, name="drop", on_item_failure="drop")
    flow.map(flaky, over=items, name="fb", on_item_failure="fallback", default=-1)
    result = await flow.run()
    assert result.outputs["drop"] == [0, 2]
    assert [i.status for i in result.steps["drop"].items] == [
        "succeeded", "failed", "succeeded", "failed"]
    assert result.outputs["fb"] == [0, -1, 2, -1]

    strict = Flow("g", client=ScriptedClient())
    strict.map(flaky, over=items, name="strict")
    with pytest.raises(StepFailed, match="item 1 down") as err:
        await strict.run()
    assert isinstance(err.value.__cause__, ProviderUnavailable)


async def test_map_over_a_non_list_is_a_clear_error() -> None:
    flow = Flow("f", client=ScriptedClient())
    flow.map(lambda item: item, over=lambda ctx: "not a list", name="bad")
    with pytest.raises(StepFailed) as err:
        await flow.run()
    assert isinstance(err.value.__cause__, ConfigError)
    assert "'over' gave str, not a list" in str(err.value)


async def test_map_resume_replays_finished_items() -> None:
    rec = MemoryRecorder()
    calls: list[int] = []
    fail = {3}

    def work(item: int) -> int:
        calls.append(item)
        if item in fail:
            raise ProviderUnavailable("down")
        return item * 10

    flow = Flow("f", client=ScriptedClient(), recorder=rec)
    flow.map(work, over=lambda ctx: [1, 2, 3], concurrency=1)
    with pytest.raises(StepFailed):
        await flow.run(run_id="m1")
    assert calls == [1, 2, 3]
    fail.clear()
    result = await flow.run(run_id="m1")
    assert calls == [1, 2, 3, 3]  # items 1 and 2 were replayed
    assert result.output == [10, 20, 30]
    again = await flow.run(run_id="m1")  # the whole map step is now recorded
    assert again.steps["work"].status == "replayed"
    assert again.output == [10, 20, 30]
    assert calls == [1, 2, 3, 3]


async def test_slot_pool_serves_priority_then_fifo() -> None:
    pool = SlotPool(1)
    holder = pool.request(0)
    assert holder.done()
    order: list[str] = []

    async def want(name: str, prio: float) -> None:
        async with pool.slot(prio):
            order.append(name)

    tasks = [asyncio.create_task(want(n, p)) for n, p in
             (("low", 1), ("high", 5), ("mid", 3), ("high2", 5))]
    await asyncio.sleep(0)
    assert pool.in_use == 1
    pool.give_back(holder)
    await asyncio.gather(*tasks)
    assert order == ["high", "high2", "mid", "low"]
    assert pool.max_in_use == 1
    assert pool.in_use == 0


async def test_slot_pool_cancellation_never_leaks_a_slot() -> None:
    pool = SlotPool(1)
    holder = pool.request()
    waiter = asyncio.create_task(pool.slot().__aenter__())
    await asyncio.sleep(0)
    waiter.cancel()  # cancelled while queued
    with pytest.raises(asyncio.CancelledError):
        await waiter
    pool.give_back(holder)
    assert pool.in_use == 0
    # cancelled exactly when handed the slot: the slot passes on
    holder = pool.request()
    queued = pool.request()
    third = pool.request()
    pool.give_back(holder)  # queued is granted...
    assert queued.done()
    pool.give_back(queued)  # ...and given back by its (cancelled) owner: third gets it
    assert third.done()
    assert not third.cancelled()
    pool.give_back(third)
    assert pool.in_use == 0
    fresh = pool.request()
    assert fresh.done()
    withdrawn = pool.request()
    pool.give_back(withdrawn)  # withdrawn while waiting
    assert withdrawn.cancelled()
    pool.give_back(fresh)
    assert pool.request().done()
