"""Where a batch's items run: :class:`LocalExecutor` (this process) or
:class:`DaskExecutor` (the workers of a Dask distributed cluster).

    executor = DaskExecutor("tcp://scheduler:8786", store="postgresql://db-host/shoal")
    result = await Batch(flow, run_id="docs-0427").run(inputs, executor=executor)

Items go to the workers in chunks (``chunk_size`` items per Dask task); a worker runs
the items of its chunks concurrently on its event loop, at most ``items_per_worker`` at
once per worker process, under the limits of its Router (shared through Redis for
channels with ``shared = true``). Every item is a journaled run in ``store``; a chunk
whose worker died is re-run by Dask elsewhere, and its finished steps and turns replay
from the journal. ``distributed`` is imported only when a DaskExecutor runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shoal.errors import ConfigError
from shoal.scale.batch_run import resume_batch, run_batch
from shoal.scale.worker import (
    ChunkJob,
    announced,
    progress_topic,
    run_chunk,
    worker_plugin,
)

if TYPE_CHECKING:
    from distributed import Client

    from shoal.agents.client import ModelClient
    from shoal.agents.guards import Budget
    from shoal.flows.batch import Batch, BatchItem, BatchResult, Target

__all__ = ["DaskExecutor", "LocalExecutor"]


def _check_sizes(chunk_size: int, items_per_worker: int) -> None:
    if chunk_size < 1 or items_per_worker < 1:
        raise ConfigError(f"chunk_size and items_per_worker must be >= 1, got {chunk_size} "
                          f"and {items_per_worker}")


def _failed(job: ChunkJob, exc: BaseException) -> list[BatchItem]:
    """A chunk that raised (its worker died too often, it could not be unpickled...):
    each of its items failed with that error."""
    from shoal.flows.batch import BatchItem
    from shoal.scale.batch_ids import item_run_id

    error = (f"{type(exc).__name__}: {exc} (its chunk did not finish on the cluster; "
             f"`shoal resume {job.batch_id}` runs it again)")
    return [BatchItem(i, value, "failed", error=error, error_type=type(exc).__name__,
                      run_id=item_run_id(job.batch_id, i), name=name)
            for i, name, value in job.items]


class _Executor:
    store: str | None
    config: str | None
    chunk_size: int
    items_per_worker: int

    async def run_chunks(self, jobs: Sequence[ChunkJob],
                         done: Callable[[ChunkJob, list[BatchItem]], None],
                         item_done: Callable[[BatchItem], None]) -> None:
        raise NotImplementedError

    async def run(self, batch: Batch, inputs: Iterable[Any] | Mapping[str, Any], *,
                  meta: Mapping[str, Any] | None = None) -> BatchResult:
        """Run ``batch`` over ``inputs`` here (what ``Batch.run(inputs, executor=...)``
        calls). ``meta`` is stored with the batch and each item run."""
        return await run_batch(self, batch, inputs, meta=meta)

    async def resume(self, batch_id: str, target: Target, *, progress: bool = False,
                     console: Any = None) -> BatchResult:
        """Run the unfinished items of batch ``batch_id`` (see
        :func:`~shoal.scale.batch_run.resume_batch`)."""
        return await resume_batch(batch_id, target, self, progress=progress, console=console)


class LocalExecutor(_Executor):
    """Chunks run in this process, with the same journal and batch record as on a
    cluster (so ``shoal runs --batch`` and ``shoal resume BATCH_ID`` work the same).

    ``client``: the model call path (default: a Router over ``config``, closed after).
    """

    def __init__(self, *, store: str | None = None, config: str | None = None,
                 client: ModelClient | None = None, chunk_size: int = 16,
                 items_per_worker: int = 32) -> None:
        _check_sizes(chunk_size, items_per_worker)
        self.store = store
        self.config = config
        self.client = client
        self.chunk_size = chunk_size
        self.items_per_worker = items_per_worker
        self.address = None
        self.budget: Budget | None = None  # the running batch's (set by run)

    async def run(self, batch: Batch, inputs: Iterable[Any] | Mapping[str, Any], *,
                  meta: Mapping[str, Any] | None = None) -> BatchResult:
        """As :meth:`DaskExecutor.run`; a batch budget holds over the items (one process)."""
        from shoal.agents.guards import Budget

        self.budget = None
        if batch.budget_usd is not None or batch.budget_tokens is not None:
            self.budget = Budget(max_usd=batch.budget_usd, max_tokens=batch.budget_tokens,
                                 name="batch")
        return await run_batch(self, batch, inputs, meta=meta)

    async def run_chunks(self, jobs: Sequence[ChunkJob],
                         done: Callable[[ChunkJob, list[BatchItem]], None],
                         item_done: Callable[[BatchItem], None]) -> None:
        from shoal.scale.worker import WorkerState

        state = WorkerState()  # this run's own: another batch here never closes it

        async def one(job: ChunkJob) -> None:
            done(job, await run_chunk(job, self.client, self.budget, on_item=item_done,
                                      state=state))

        try:
            async with asyncio.TaskGroup() as tg:
                for job in jobs:
                    tg.create_task(one(job))
        finally:
            await state.aclose()


class DaskExecutor(_Executor):
    """Chunks run as tasks on a Dask distributed cluster.

    Args:
        address: the scheduler (``"tcp://host:8786"``) or a ``distributed.Client``.
        store: the journal every worker reaches (``postgresql://...``; default
            ``$SHOAL_STORE``). SQLite is refused: each host would have its own file.
        config: the shoal.toml path each worker loads (default: the worker's own
            ``$SHOAL_CONFIG`` or ``./shoal.toml``).
        chunk_size: items per Dask task. Smaller chunks spread better and lose less to a
            dead worker; larger ones cost the scheduler less.
        items_per_worker: items in flight at once in one worker process, over all the
            chunks it runs (Dask runs up to ``nthreads`` chunks per worker at a time).
    """

    def __init__(self, address: str | Client, *, store: str | None = None,
                 config: str | None = None, chunk_size: int = 16,
                 items_per_worker: int = 32) -> None:
        _check_sizes(chunk_size, items_per_worker)
        if store is not None and ("://" not in store or store.split("://", 1)[0].lower()
                                  in ("sqlite", "memory")):
            raise ConfigError(
                f"a cluster batch needs a store every worker reaches, not {store!r} (a file "
                "or memory of one host): use postgresql://user@db-host/db or redis://host")
        self.client = None if isinstance(address, str) else address
        self.address = address if isinstance(address, str) else _address_of(address)
        self.store = store
        self.config = config
        self.chunk_size = chunk_size
        self.items_per_worker = items_per_worker

    def __repr__(self) -> str:
        return f"DaskExecutor({self.address!r})"

    async def run(self, batch: Batch, inputs: Iterable[Any] | Mapping[str, Any], *,
                  meta: Mapping[str, Any] | None = None) -> BatchResult:
        """Run ``batch`` over ``inputs`` on the cluster (what ``Batch.run(inputs,
        executor=...)`` calls). ``meta`` is stored with the batch and each item run."""
        if batch.budget_usd is not None or batch.budget_tokens is not None:
            raise ConfigError(
                "a batch on a cluster has no batch-wide budget yet (its items run in several "
                "processes): give the flow or agent its own budget_usd, or run the batch "
                "without a cluster")
        return await run_batch(self, batch, inputs, meta=meta)

    async def run_chunks(self, jobs: Sequence[ChunkJob],
                         done: Callable[[ChunkJob, list[BatchItem]], None],
                         item_done: Callable[[BatchItem], None]) -> None:
        import importlib

        dd: Any = importlib.import_module("distributed")  # untyped; imported only here
        client: Any = self.client
        own = client is None or not client.asynchronous
        if own:
            try:
                client = await dd.Client(self.address, asynchronous=True)
            except OSError as exc:  # TimeoutError included
                raise ConfigError(
                    f"cannot reach the Dask scheduler at {self.address} ({exc}); start one "
                    "(`dask scheduler`, docs/scale.md) or check --cluster") from exc
        topic = progress_topic(jobs[0].batch_id) if jobs else ""
        futures: list[Any] = []
        finished = False
        try:
            await client.register_plugin(worker_plugin(), name="shoal-scale")
            if topic:  # each item as a worker finishes it: the progress bar moves per item
                client.subscribe_topic(topic, lambda event: item_done(announced(event[1])))
            futures = client.map(run_chunk, list(jobs), pure=False)
            job_of = {f.key: job for f, job in zip(futures, jobs, strict=True)}
            async for future in dd.as_completed(futures):
                job = job_of[future.key]
                try:
                    items = await future
                except Exception as exc:  # the chunk's items carry it
                    items = _failed(job, exc)
                done(job, items)
            finished = True
        finally:
            # Best effort: with the scheduler gone there is nothing left to cancel.
            with contextlib.suppress(Exception):
                if not finished and futures:
                    await asyncio.wait_for(client.cancel(futures), 10)
                if topic:
                    client.unsubscribe_topic(topic)
            if own:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 30)


def _address_of(client: Client) -> str:
    address = getattr(client.scheduler, "address", None)
    if not isinstance(address, str):
        raise ConfigError("this distributed.Client is not connected to a scheduler")
    return address
