"""A batch run through an executor: the batch record, the chunks, one progress bar,
the result; and resuming a batch (only its unfinished items run again).

An executor only knows how to run :class:`~shoal.scale.worker.ChunkJob` s somewhere
(:class:`~shoal.scale.executor.LocalExecutor`: this process;
:class:`~shoal.scale.executor.DaskExecutor`: a Dask cluster); everything else about a
batch is here, the same for both.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from shoal.errors import ConfigError
from shoal.scale.batch_ids import ItemRow, batch_items, is_batch, item_run_id, open_batch
from shoal.scale.worker import ChunkJob
from shoal.types import Usage

if TYPE_CHECKING:
    from shoal.flows.batch import Batch, BatchItem, BatchResult, Target
    from shoal.stores.base import Store

__all__ = ["ChunkExecutor", "resume_batch", "run_batch"]


class ChunkExecutor(Protocol):
    """Runs chunks of batch items somewhere; calls ``done`` with each chunk's items, and
    ``item_done`` as each item finishes when it can tell (for the progress bar)."""

    store: str | None
    config: str | None
    chunk_size: int
    items_per_worker: int

    async def run_chunks(self, jobs: Sequence[ChunkJob],
                         done: Callable[[ChunkJob, list[BatchItem]], None],
                         item_done: Callable[[BatchItem], None]) -> None: ...


def store_url(executor: ChunkExecutor) -> str:
    url = executor.store or os.environ.get("SHOAL_STORE")
    if not url:
        raise ConfigError(
            "a batch on an executor journals every item: give the executor a store every "
            "worker reaches (store='postgresql://user@db-host/shoal', or $SHOAL_STORE)")
    return url


def shippable(target: Target) -> Target:
    """The target without what cannot travel to a worker (a Flow's client, recorder and
    clock: each worker brings its own)."""
    from shoal.flows.flow import Flow

    if isinstance(target, Flow) and (target.client or target.recorder or target.clock):
        target = copy.copy(target)
        target.client = target.recorder = target.clock = None
    return target


def _jobs(executor: ChunkExecutor, batch: Batch, batch_id: str, *, todo: Sequence[int],
          names: Sequence[str], inputs: Sequence[Any], url: str, meta: Mapping[str, Any]
          ) -> list[ChunkJob]:
    target = shippable(batch.target)
    size = max(1, executor.chunk_size)
    return [
        ChunkJob(target, batch_id, [(i, names[i], inputs[i]) for i in todo[k:k + size]],
                 store=url, config=executor.config, items_per_worker=executor.items_per_worker,
                 description=batch.description, meta=dict(meta))
        for k in range(0, len(todo), size)
    ]


async def _execute(executor: ChunkExecutor, batch: Batch, batch_id: str, *,
                   todo: Sequence[int], names: Sequence[str], inputs: Sequence[Any], url: str,
                   meta: Mapping[str, Any], finished: Sequence[BatchItem] = ()
                   ) -> BatchResult:
    from shoal.flows.batch import BatchResult, _Progress

    started = batch.clock.now()
    results: dict[int, BatchItem] = {i.index: i for i in finished}
    batch.outcomes = dict(results)  # and each item as it finishes (Batch.outcomes)
    state = _Progress(len(inputs), batch.clock, batch.progress, batch.console,
                      batch.description)
    counted: set[int] = set()

    def item_done(item: BatchItem) -> None:
        batch.outcomes.setdefault(item.index, item)  # a cluster's: status and spend only
        if item.index not in counted:  # an item announced, then in its chunk's results
            counted.add(item.index)
            state.started()
            state.finished(item)

    for item in finished:
        item_done(item)

    def done(job: ChunkJob, items: list[BatchItem]) -> None:
        for item in items:
            item.input = inputs[item.index]
            results[item.index] = batch.outcomes[item.index] = item
            item_done(item)

    with state:
        await executor.run_chunks(_jobs(executor, batch, batch_id, todo=todo, names=names,
                                        inputs=inputs, url=url, meta=meta), done, item_done)
    missing = [i for i in range(len(inputs)) if i not in results]
    assert not missing, f"every input has an outcome (missing {missing[:5]})"
    items = [results[i] for i in range(len(inputs))]
    usage = sum((i.usage for i in items), Usage())
    return BatchResult(items, usage, sum(i.cost_usd for i in items),
                       batch.clock.now() - started)


async def run_batch(executor: ChunkExecutor, batch: Batch,
                    inputs: Iterable[Any] | Mapping[str, Any], *,
                    meta: Mapping[str, Any] | None = None) -> BatchResult:
    """Run ``batch`` over ``inputs`` on ``executor`` as batch ``batch.run_id`` (a new id
    when unset): every item journaled as run ``{batch_id}-{i}``, its outcome recorded
    under the batch run. A batch id already in the store continues that batch: finished
    items replay from their journals."""
    from shoal.agents.runner import new_run_id
    from shoal.stores import open_store

    if isinstance(inputs, Mapping):
        names, values = [str(k) for k in inputs], list(inputs.values())
    else:
        values = list(inputs)
        names = [str(i) for i in range(len(values))]
    batch_id = batch.run_id or new_run_id()
    url = store_url(executor)
    item_meta = dict(meta or {})
    async with open_store(url) as store:
        await open_batch(store, batch_id, names, values,
                         {**item_meta, "description": batch.description,
                          "cluster": getattr(executor, "address", None)})
        try:
            result = await _execute(executor, batch, batch_id, todo=range(len(values)),
                                    names=names, inputs=values, url=url, meta=item_meta)
        except BaseException as exc:
            await _interrupted(store, batch_id, exc)
            raise
        return await _finish(store, batch_id, result)


async def _interrupted(store: Store, batch_id: str, exc: BaseException) -> None:
    """The batch stopped before its end (cancelled, the cluster out of reach...): its
    record says so, and how to continue. A failing store does not hide ``exc``."""
    from shoal.errors import StoreError

    with contextlib.suppress(StoreError):
        await store.update_run(batch_id, status="cancelled", error=(
            f"interrupted ({type(exc).__name__}); shoal resume {batch_id} continues it"))


def _recorded(row: ItemRow, value: Any, batch_id: str) -> BatchItem:
    from shoal.flows.batch import BatchItem

    return BatchItem(row.index, value, "succeeded", output=row.output, usage=row.usage,
                     cost_usd=row.cost_usd, latency_s=row.latency_s,
                     run_id=item_run_id(batch_id, row.index), name=row.name)


async def _finish(store: Store, batch_id: str, result: BatchResult) -> BatchResult:
    """Settle the batch's status; an item reported failed whose worker recorded it as
    succeeded (its chunk's result was lost: the worker died after it, or the result
    could not travel back) is taken as the store tells it."""
    from shoal.flows.batch import BatchResult

    if result.failed:
        record = await store.require_run(batch_id)
        rows = await batch_items(store, record, look_up_open=False)
        items = [_recorded(rows[i.index], i.input, batch_id)
                 if i.status != "succeeded" and rows[i.index].status == "succeeded" else i
                 for i in result.items]
        for old, new in zip(result.items, items, strict=True):
            new.name = new.name or old.name
        result = BatchResult(items, sum((i.usage for i in items), Usage()),
                             sum(i.cost_usd for i in items), result.latency_s)
    failed = len(result.failed)
    await store.update_run(batch_id, status="succeeded" if not failed else "failed",
                           error=f"{failed} of {len(result.items)} items failed" if failed
                           else None)
    return result


async def resume_batch(batch_id: str, target: Target, executor: ChunkExecutor, *,
                       progress: bool = False, console: Any = None,
                       meta: Mapping[str, Any] | None = None,
                       on_batch: Callable[[Batch], None] | None = None) -> BatchResult:
    """Continue batch ``batch_id``: items with a ``succeeded`` outcome are taken from the
    store as they are; every other item (failed, in flight when a worker or the client
    died, never started) runs again on ``executor`` (its finished steps and turns replay
    from its journal). The inputs are the batch's own, read from the store.

    ``on_batch``: called with the :class:`~shoal.flows.batch.Batch` before its items run,
    so a caller stopped half-way (Ctrl-C) can tell its items as they stood
    (:attr:`Batch.outcomes`)."""
    from shoal.flows.batch import Batch
    from shoal.stores import open_store

    url = store_url(executor)
    async with open_store(url) as store:
        record = await store.require_run(batch_id)
        if not is_batch(record):
            raise ConfigError(f"run {batch_id!r} is not a batch (it is a run of "
                              f"{record.flow!r}); resume it with `shoal resume {batch_id}`")
        inputs = list(record.input or [])
        names = [str(n) for n in record.meta.get("names", [])]
        rows = await batch_items(store, record, look_up_open=False)
        finished = [_recorded(r, inputs[r.index], batch_id)
                    for r in rows if r.status == "succeeded"]
        todo = [r.index for r in rows if r.status != "succeeded"]
        batch = Batch(target, run_id=batch_id, progress=progress, console=console,
                      description=str(record.meta.get("description") or batch_id))
        if on_batch is not None:
            on_batch(batch)
        item_meta = {k: v for k, v in record.meta.items()
                     if k not in ("kind", "names", "items", "description", "cluster")}
        item_meta.update(meta or {})
        await store.update_run(batch_id, status="running")
        try:
            result = await _execute(executor, batch, batch_id, todo=todo, names=names,
                                    inputs=inputs, url=url, meta=item_meta, finished=finished)
        except BaseException as exc:
            await _interrupted(store, batch_id, exc)
            raise
        return await _finish(store, batch_id, result)
