"""What runs on a worker: one chunk of a batch's items, concurrently on the worker's
event loop, each item a journaled run.

A Dask worker process keeps, across the tasks it runs (:class:`WorkerState`, one per
event loop):

- one Router per shoal.toml, built from the config and environment *the worker* sees
  (``config`` names a path every host has, else ``$SHOAL_CONFIG`` / ``./shoal.toml``):
  channels with ``shared = true`` take their limiter and breaker state from Redis, so
  every worker of the cluster shares the provider's cap;
- one open store per URL (the journal: PostgreSQL or Redis, reachable from every host);
- one semaphore per ``items_per_worker``: the items in flight in this process, over
  every chunk it runs at once (Dask runs up to ``nthreads`` chunks at a time; an
  ``async`` task still holds one of those thread slots while it awaits).

A chunk re-run after its worker died replays the items that finished (their journal
holds every step and turn) and runs only the rest.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.scale.batch_ids import item_run_id, mark_item

if TYPE_CHECKING:
    from shoal.agents.client import ModelClient
    from shoal.agents.guards import Budget
    from shoal.flows.batch import BatchItem, Target
    from shoal.stores.base import Store

__all__ = ["ChunkJob", "WorkerState", "announced", "close_worker_state", "progress_topic",
           "run_chunk", "worker_plugin"]

_log = logging.getLogger("shoal.scale")


@dataclass(frozen=True, slots=True)
class ChunkJob:
    """Items ``(index, name, input)`` of batch ``batch_id`` for one task.

    ``store``: the journal's URL (every worker opens it). ``config``: the shoal.toml
    path the worker loads (``None``: its own ``$SHOAL_CONFIG`` or ``./shoal.toml``).
    ``meta``: stored with each item's run (how ``shoal resume`` rebuilds the target).
    """

    target: Target
    batch_id: str
    # Neither in the repr (Dask logs a failed task's arguments): the URL may carry a
    # password, the items the users' documents.
    items: Sequence[tuple[int, str, Any]] = field(repr=False)
    store: str = field(repr=False)
    config: str | None = None
    items_per_worker: int = 32
    description: str = "batch"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class WorkerState:
    """What a worker process keeps between tasks (bound to its event loop)."""

    routers: dict[str | None, ModelClient] = field(default_factory=dict)
    stores: dict[str, Store] = field(default_factory=dict)
    slots: dict[int, asyncio.Semaphore] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def router(self, config: str | None) -> ModelClient:
        found = self.routers.get(config)
        if found is None:
            from shoal.config import Config
            from shoal.traffic.router import Router

            found = self.routers[config] = Router(Config.load(config))
        return found

    async def store(self, url: str) -> Store:
        async with self.lock:  # one pool per URL, even when chunks start together
            found = self.stores.get(url)
            if found is None:
                from shoal.stores import open_store

                found = await open_store(url).open()
                self.stores[url] = found
            return found

    def slots_for(self, n: int) -> asyncio.Semaphore:
        found = self.slots.get(n)
        if found is None:
            found = self.slots[n] = asyncio.Semaphore(n)
        return found


    async def aclose(self) -> None:
        """Close the routers and stores it opened."""
        routers, stores = list(self.routers.values()), list(self.stores.values())
        self.routers.clear()
        self.stores.clear()
        for router in routers:
            close = getattr(router, "aclose", None)
            if close is not None:
                await close()
        for store in stores:
            await store.aclose()


_STATES: dict[int, WorkerState] = {}


def _state() -> WorkerState:
    loop = asyncio.get_running_loop()
    found = _STATES.get(id(loop))
    if found is None:
        found = _STATES[id(loop)] = WorkerState()
    return found


async def close_worker_state() -> None:
    """Close the routers and stores this process keeps for the running loop (the worker
    plugin's teardown)."""
    state = _STATES.pop(id(asyncio.get_running_loop()), None)
    if state is not None:
        await state.aclose()


def worker_plugin() -> Any:
    """A Dask worker plugin that closes the worker's routers and stores when it stops
    (registered by :class:`~shoal.scale.executor.DaskExecutor`)."""
    import importlib

    plugin: Any = importlib.import_module("distributed.diagnostics.plugin")

    class ShoalWorkerPlugin(plugin.WorkerPlugin):  # type: ignore[misc]
        name = "shoal-scale"

        async def teardown(self, worker: Any) -> None:
            await close_worker_state()

    return ShoalWorkerPlugin()


async def run_chunk(job: ChunkJob, client: ModelClient | None = None,
                    budget: Budget | None = None, *,
                    on_item: Callable[[BatchItem], None] | None = None,
                    state: WorkerState | None = None) -> list[BatchItem]:
    """Run every item of ``job`` (each under this process's ``items_per_worker`` slots)
    and record each outcome under the batch run. Item errors are in the items, never
    raised. ``client``: the model call path (default: this process's Router for
    ``job.config``); ``budget``: one budget over the items (in one process only);
    ``on_item``: called as each item finishes (default, on a Dask worker: an event on
    the batch's progress topic, which the client's progress bar follows); ``state``:
    the routers, stores and slots to use (default: this process's, for this loop)."""
    from shoal.agents.agent import Agent
    from shoal.flows.batch import Batch
    from shoal.flows.flow import Flow
    from shoal.flows.journal import StoreRecorder

    state = state or _state()
    model_client = client
    if model_client is None and isinstance(job.target, Agent | Flow):
        model_client = await state.router(job.config)
    store = await state.store(job.store)
    flow = job.target if isinstance(job.target, Flow) else None
    slots = state.slots_for(job.items_per_worker)

    async def one(index: int, name: str, value: Any) -> BatchItem:
        recorder = StoreRecorder(store, flow=flow,
                                 meta={**job.meta, "batch": job.batch_id, "index": index})
        batch = Batch(job.target, client=model_client, recorder=recorder,
                      description=job.description)
        async with slots:
            # Batch._one: the same item semantics (journal, events, errors) as a local batch.
            item = await batch._one(index, value, item_run_id(job.batch_id, index),
                                    model_client, budget)
        item.name = name  # an agent item's run recorded its own end, under its lease
        await mark_item(store, job.batch_id, item)
        if on_item is not None:
            on_item(item)
        else:
            _announce(job.batch_id, item)
        return portable(item)

    # A task group, not gather: cancelled (Ctrl-C), it waits until every item has ended
    # and recorded its end; gather returned at the first cancelled item, and the store
    # was closed under the others' last writes (their runs left "running").
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(i, n, v)) for i, n, v in job.items]
    return [task.result() for task in tasks]


def progress_topic(batch_id: str) -> str:
    return f"shoal-batch-{batch_id}"


def _announce(batch_id: str, item: BatchItem) -> None:
    """An event on the batch's progress topic, when running on a Dask worker."""
    if "distributed" not in sys.modules:
        return
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a worker
        return
    worker.log_event(progress_topic(batch_id), {
        "index": item.index, "status": item.status, "tokens": item.usage.total_tokens,
        "cost_usd": item.cost_usd})


def announced(event: Any) -> BatchItem:
    """The item an event of :func:`_announce` tells of (enough for a progress bar)."""
    from shoal.flows.batch import BatchItem
    from shoal.types import Usage

    return BatchItem(int(event["index"]), None, event["status"],
                     usage=Usage(input_tokens=int(event["tokens"])),
                     cost_usd=float(event["cost_usd"]))


def portable(item: BatchItem) -> BatchItem:
    """The item as it can travel back to the client: ``detail`` and ``exception`` are
    dropped when they do not survive a pickle round trip (an exception whose ``__init__``
    takes keyword-only arguments unpickles with a TypeError, failing the whole chunk's
    result on the client); the error's text and type always travel."""
    for name in ("detail", "exception"):
        value = getattr(item, name)
        if value is None:
            continue
        try:
            pickle.loads(pickle.dumps(value))  # noqa: S301 - our own bytes, just made
        except Exception:  # anything that cannot travel stays on the worker
            setattr(item, name, None)
    try:
        pickle.loads(pickle.dumps(item.output))  # noqa: S301 - as above
    except Exception:  # its JSON form travels instead
        from shoal.agents.recorder import to_jsonable

        item.output = to_jsonable(item.output)
    return item
