"""Batch identity without a cluster: a LocalExecutor on a SQLite journal, a plain async
function as the target (no model). The batch record tells every item's status; a
resume runs only the unfinished items; a batch id is never reused for other inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shoal.errors import ConfigError
from shoal.flows.batch import Batch
from shoal.scale import LocalExecutor
from shoal.scale.batch_ids import batch_items, item_run_id
from shoal.stores import open_store
from shoal.stores.records import RunRecord

calls: list[str] = []
broken: set[str] = set()


async def shout(text: str) -> str:
    calls.append(text)
    if text in broken:
        raise ValueError(f"cannot shout {text!r}")
    return text.upper()


@pytest.fixture
def store(tmp_path: Path) -> str:
    calls.clear()
    broken.clear()
    return f"sqlite:///{tmp_path / 'runs.db'}"


async def test_items_statuses_and_a_resume_of_only_the_unfinished(store: str) -> None:
    broken.add("b")
    executor = LocalExecutor(store=store, chunk_size=2)
    first = await Batch(shout, run_id="B").run(["a", "b", "c"], executor=executor)
    assert [(i.status, i.output) for i in first.items] == [
        ("succeeded", "A"), ("failed", None), ("succeeded", "C")]
    assert first.items[1].error == "ValueError: cannot shout 'b'"
    assert [i.run_id for i in first.items] == ["B-0", "B-1", "B-2"]

    async with open_store(store) as s:
        record = await s.require_run("B")
        assert (record.status, record.error) == ("failed", "1 of 3 items failed")
        rows = await batch_items(s, record)
    assert [(r.name, r.status, r.output) for r in rows] == [
        ("0", "succeeded", "A"), ("1", "failed", None), ("2", "succeeded", "C")]

    broken.clear()
    calls.clear()
    resumed = await executor.resume("B", shout)
    assert calls == ["b"]  # only the unfinished item ran again
    assert [(i.status, i.output) for i in resumed.items] == [
        ("succeeded", "A"), ("succeeded", "B"), ("succeeded", "C")]
    async with open_store(store) as s:
        assert (await s.require_run("B")).status == "succeeded"


async def test_an_item_with_a_run_but_no_outcome_is_running_and_one_without_is_pending(
        store: str) -> None:
    executor = LocalExecutor(store=store)
    await Batch(shout, run_id="P").run({"x.txt": "x"}, executor=executor)
    async with open_store(store) as s:
        # As if the client had died after item 0 started and before item 1 did.
        await s.create_run(RunRecord("Q", flow="batch", input=["p", "q"],
                                     meta={"kind": "batch", "names": ["p", "q"], "items": 2}))
        await s.create_run(RunRecord(item_run_id("Q", 0), flow="agent"))
        rows = await batch_items(s, await s.require_run("Q"))
        named = await batch_items(s, await s.require_run("P"))
    assert [r.status for r in rows] == ["running", "pending"]
    assert [r.name for r in named] == ["x.txt"]
    calls.clear()
    resumed = await executor.resume("Q", shout)
    assert sorted(calls) == ["p", "q"] and [i.output for i in resumed.items] == ["P", "Q"]


async def test_a_batch_id_is_not_reused_for_other_inputs(store: str) -> None:
    executor = LocalExecutor(store=store)
    await Batch(shout, run_id="R").run(["a"], executor=executor)
    with pytest.raises(ConfigError, match="was started on 1 other inputs"):
        await Batch(shout, run_id="R").run(["a", "b"], executor=executor)


def test_a_cluster_refuses_a_store_of_one_host() -> None:
    from shoal.scale import DaskExecutor

    with pytest.raises(ConfigError, match="a store every worker reaches"):
        DaskExecutor("tcp://127.0.0.1:8786", store="sqlite:///runs.db")


async def test_a_cluster_batch_has_no_batch_wide_budget_yet() -> None:
    from shoal.scale import DaskExecutor

    executor = DaskExecutor("tcp://127.0.0.1:8786", store="postgresql://db/x")
    with pytest.raises(ConfigError, match="no batch-wide budget"):
        await Batch(shout, budget_usd=1.0).run(["a"], executor=executor)


class LosingExecutor(LocalExecutor):
    """Runs every chunk, then reports it lost (as when a worker dies after finishing it,
    or its result cannot travel back)."""

    async def run_chunks(self, jobs: Any, done: Any, item_done: Any) -> None:
        from shoal.flows.batch import BatchItem
        from shoal.scale.worker import run_chunk

        for job in jobs:
            await run_chunk(job, on_item=lambda item: None)
            done(job, [BatchItem(i, v, "failed", error="KilledWorker: lost", name=n,
                                 run_id=item_run_id(job.batch_id, i))
                       for i, n, v in job.items])


async def test_items_a_lost_chunk_recorded_as_done_are_taken_from_the_store(
        store: str) -> None:
    broken.add("b")
    result = await Batch(shout, run_id="L").run(["a", "b"], executor=LosingExecutor(
        store=store))
    assert [(i.status, i.output, i.error) for i in result.items] == [
        ("succeeded", "A", None), ("failed", None, "KilledWorker: lost")]
    async with open_store(store) as s:
        assert (await s.require_run("L")).error == "1 of 2 items failed"


async def test_flow_run_batch_takes_the_same_executor(store: str) -> None:
    from shoal.flows.flow import Flow

    async def loud(input: str) -> str:
        return await shout(input)

    flow = Flow("loud")
    flow.add(loud)
    result = await flow.run_batch(["x", "y"], executor=LocalExecutor(store=store),
                                  run_id="F")
    assert [(i.status, i.output, i.run_id) for i in result.items] == [
        ("succeeded", "X", "F-0"), ("succeeded", "Y", "F-1")]
    async with open_store(store) as s:
        assert (await s.require_run("F-1")).flow == "loud"  # each item a journaled run
        assert len(await batch_items(s, await s.require_run("F"))) == 2
