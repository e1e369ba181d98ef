"""Batch identity: a batch is a journaled run of its own, beside its items' runs.

A batch ``B`` of ``n`` inputs is, in the store:

- the run ``B`` (``flow = "batch"``): its input is the list of inputs, its ``meta`` says
  ``kind = "batch"``, the item names, the target's name (and how to rebuild it, for
  ``shoal resume B``) and where it ran;
- one run per item, ``B-0`` .. ``B-{n-1}``: the item's journal (its steps and model
  turns), as a local batch with a store journals them;
- one step ``item/i`` of the run ``B`` per finished item, written by whoever ran it (a
  Dask worker, or this process): status, run id, output, usage, cost and error. An item
  with no such step has not finished (never started, or in flight when its worker or
  the client died).

So ``shoal runs --batch B`` lists the items by status from one store, whichever
machines ran them, and ``shoal resume B`` runs again only the items with no
``succeeded`` step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.errors import ConfigError, StoreError
from shoal.stores.records import RunRecord, StepRecord
from shoal.types import Usage

if TYPE_CHECKING:
    from shoal.flows.batch import BatchItem
    from shoal.stores.base import Store

__all__ = [
    "BATCH_FLOW",
    "ItemRow",
    "batch_items",
    "has_item_totals",
    "is_batch",
    "item_run_id",
    "item_step_id",
    "mark_item",
    "open_batch",
]

BATCH_FLOW = "batch"
_log = logging.getLogger("shoal.scale")


def item_run_id(batch_id: str, index: int) -> str:
    """The run id of item ``index`` (as a local batch with a journal names it)."""
    return f"{batch_id}-{index}"


def item_step_id(index: int) -> str:
    """The step of the batch run that records item ``index``'s outcome (zero-padded so
    the store lists them in input order)."""
    return f"item/{index:08d}"


def is_batch(run: RunRecord) -> bool:
    return run.flow == BATCH_FLOW and run.meta.get("kind") == "batch"


async def open_batch(store: Store, batch_id: str, names: Sequence[str], inputs: Sequence[Any],
                     meta: Mapping[str, Any]) -> RunRecord:
    """Create the batch run, or check that the existing one is this batch (same inputs)."""
    from shoal.agents.recorder import to_jsonable

    existing = await store.get_run(batch_id)
    if existing is None:
        # "item_totals": the record's tokens and cost are its items' (each outcome
        # carries its spend); a batch recorded without it is summed from its items.
        record = RunRecord(batch_id, flow=BATCH_FLOW, input=to_jsonable(list(inputs)),
                           meta={**meta, "kind": "batch", "names": list(names),
                                 "items": len(inputs), "item_totals": True})
        return await store.create_run(record)
    if not is_batch(existing):
        raise ConfigError(
            f"run {batch_id!r} in {store.url} is a run of {existing.flow!r}, not a batch; "
            "pick another batch id (run_id=...)")
    if existing.meta.get("items") != len(inputs) or list(existing.meta.get("names", [])) \
            != list(names):
        raise ConfigError(
            f"batch {batch_id!r} in {store.url} was started on {existing.meta.get('items')} "
            f"other inputs; resume it with its own inputs (shoal resume {batch_id} reads "
            "them from the store) or pick another batch id")
    await store.update_run(batch_id, status="running")
    return existing


async def mark_item(store: Store, batch_id: str, item: BatchItem) -> None:
    """Record a finished item's outcome under the batch run. A failed write is logged,
    not raised: the item's own journal holds its work, and a resume replays it."""
    from shoal.agents.recorder import to_jsonable

    step = StepRecord(
        item_step_id(item.index), "succeeded" if item.status == "succeeded" else "failed",
        result={"run_id": item.run_id, "name": item.name, "output": to_jsonable(item.output),
                "usage": to_jsonable(item.usage), "cost_usd": item.cost_usd,
                "latency_s": item.latency_s, "error_type": item.error_type},
        tokens=item.usage.total_tokens, cost_usd=item.cost_usd,  # the batch run's totals
        error=item.error, meta={"kind": "item", "index": item.index},
    )
    try:
        if step.status == "succeeded":
            await store.complete_step(batch_id, step)
        else:
            await store.put_step(batch_id, step)
    except StoreError as exc:
        _log.warning("batch %s: item %d finished but its outcome was not recorded (%s); "
                     "a resume replays it from its journal", batch_id, item.index, exc,
                     extra={"store_note": ("outcome", batch_id, item.index)})


@dataclass(slots=True)
class ItemRow:
    """One item of a batch as the store tells it. ``status``: ``succeeded`` or ``failed``
    (its outcome is recorded); with no outcome yet, its run's: ``running`` (in flight, or
    its worker died within the lease), ``interrupted`` (its run says running, but its
    executor is gone or its lease lapsed), ``cancelled`` (stopped by Ctrl-C or a cancelled
    batch), ``failed`` or ``succeeded`` (the outcome was not recorded); ``pending``: never
    started."""

    index: int
    name: str
    run_id: str
    status: str
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_s: float = 0.0
    # False when its tokens and cost cannot be known: its outcome was recorded without
    # them (an older shoal) and its own run, which has them, is gone (deleted, pruned)
    spend_known: bool = True


def has_item_totals(batch: RunRecord) -> bool:
    """Whether the batch run's own tokens and cost are its items' (recorded so since
    outcomes carry their spend); else they are summed from :func:`batch_items`."""
    return batch.meta.get("item_totals") is True


async def batch_items(store: Store, batch: RunRecord, *, look_up_open: bool = True
                      ) -> list[ItemRow]:
    """Every item of ``batch`` in input order. With ``look_up_open``, items with no
    outcome are told apart by reading their runs (see :class:`ItemRow`: ``running``,
    ``interrupted``, ``cancelled``... or ``pending``), and their tokens and cost so far
    are their runs'. An outcome recorded without its tokens and cost (by an older shoal)
    takes its run's; with that run gone, the item's ``spend_known`` is False."""
    names = [str(n) for n in batch.meta.get("names", [])]
    rows = [ItemRow(i, name, item_run_id(batch.run_id, i), "pending")
            for i, name in enumerate(names)]
    for step in await store.get_steps(batch.run_id, prefix="item/"):
        index = step.meta.get("index")
        if not isinstance(index, int) or not 0 <= index < len(rows):
            continue
        row = rows[index]
        raw = step.result if isinstance(step.result, dict) else {}
        row.status = step.status
        row.output = raw.get("output")
        row.error = step.error
        row.error_type = raw.get("error_type")
        row.latency_s = float(raw.get("latency_s") or 0.0)
        if isinstance(raw.get("usage"), dict):
            row.usage = Usage(**raw["usage"])
            row.cost_usd = float(raw.get("cost_usd") or 0.0)
        else:  # an outcome recorded without its spend (an older shoal): its run's
            run = await store.get_run(row.run_id)
            row.spend_known = run is not None
            if run is not None:  # the journal's totals (not split by kind)
                row.usage, row.cost_usd = Usage(output_tokens=run.tokens), run.cost_usd
    if look_up_open:
        for row in rows:
            if row.status != "pending":
                continue
            run = await store.get_run(row.run_id)
            if run is not None:
                row.status = await _open_status(store, run, batch)
                row.error = run.error
                row.usage = Usage(output_tokens=run.tokens)
                row.cost_usd = run.cost_usd
    return rows


async def _open_status(store: Store, run: RunRecord, batch: RunRecord) -> str:
    """The status of an item's run that has no recorded outcome: the run's own, and for
    a run still marked running, ``interrupted`` when nothing executes it any more: its
    lease lapsed, its holder is a process of this machine that is gone, or it holds no
    lease while its batch is no longer running (stopped between creating the item's run
    and taking its lease)."""
    if run.status != "running":
        return run.status
    from shoal.clock import RealClock
    from shoal.flows.lease import holder_gone

    try:
        lease = await store.get_lease(run.run_id)
    except StoreError:  # the listing goes on; the run says running
        return "running"
    if lease is None:  # about to take it (the batch runs), or never will (it stopped)
        return "running" if batch.status == "running" else "interrupted"
    if not lease.live(RealClock().wall()) or holder_gone(run.run_id, lease.owner):
        return "interrupted"
    return "running"
