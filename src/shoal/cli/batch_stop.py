"""What ``shoal batch`` (``shoal run`` on several inputs) prints when Ctrl-C stops it: its
items as they stood — ``succeeded`` and ``failed`` (finished), ``interrupted`` (in flight
or not started) — and, journaled, the ``shoal resume BATCH_ID`` command that runs the
unfinished ones again; what ``--json`` holds then. A single run: :mod:`shoal.cli.stopped`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shoal.cli.common import plain
from shoal.errors import StoreError
from shoal.stores import shown_url, store_option
from shoal.types import Usage

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from shoal.flows.batch import Batch
    from shoal.scale.batch_ids import ItemRow

__all__ = ["print_batch_interrupted"]


async def print_batch_interrupted(console: Console, batch: Batch, labels: list[str], *,
                                  store: str | None,
                                  stale: Mapping[int, ItemRow] | None = None
                                  ) -> dict[str, Any]:
    """Print the items of ``batch`` (named ``labels``, in input order) after Ctrl-C, and
    return the ``--json`` document of it (``"status": "interrupted"``). An item's outcome
    is what this process saw finish (:attr:`Batch.outcomes`), else, for a batch journaled
    in ``store``, the outcome its worker recorded there. ``stale``: outcomes recorded
    before this run for items it runs again (a resume's): such an item is
    ``interrupted`` until a new outcome replaces that one."""
    from shoal.agents.recorder import to_jsonable
    from shoal.scale.batch_ids import item_run_id

    recorded = await _recorded(store, batch.run_id) if store is not None else {}
    items: list[dict[str, Any]] = []
    for index, label in enumerate(labels):
        item, row = batch.outcomes.get(index), recorded.get(index)
        if row is not None and stale is not None and stale.get(index) == row:
            row = None  # an earlier run's outcome: this one did not finish the item
        run_id = item_run_id(batch.run_id, index) if store and batch.run_id else ""
        doc: dict[str, Any] = {"input": label, "status": "interrupted", "output": None,
                               "error": None, "cost_usd": 0.0, "usage": None,
                               "latency_s": None, "run_id": run_id}
        if item is not None:
            doc.update(status=item.status, output=to_jsonable(item.output), error=item.error,
                       cost_usd=item.cost_usd, usage=to_jsonable(item.usage),
                       latency_s=round(item.latency_s, 3), run_id=item.run_id or run_id)
        elif row is not None:
            doc.update(status=row.status, output=row.output, error=row.error,
                       cost_usd=row.cost_usd, usage=to_jsonable(row.usage),
                       latency_s=round(row.latency_s, 3))
        items.append(doc)
    counts = {s: sum(1 for i in items if i["status"] == s)
              for s in ("succeeded", "failed", "interrupted")}
    usage = sum((Usage(**i["usage"]) for i in items if i["usage"]), Usage())
    title = " ".join(["batch", *([batch.run_id] if store and batch.run_id else [])])
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n or s == "interrupted")
    console.print(_table(f"{title} · interrupted: {summary}", items))
    unfinished = counts["failed"] + counts["interrupted"]
    if store is not None and batch.run_id:
        console.print(plain(
            f"interrupted: batch {batch.run_id} journaled in {shown_url(store)}; continue "
            f"with: shoal resume {batch.run_id}{store_option(store)} (runs its "
            f"{unfinished} unfinished items again)"), soft_wrap=True)
    else:
        console.print(plain(
            "interrupted; the batch was not journaled: with --store sqlite:///.shoal/runs.db,"
            " `shoal resume BATCH_ID` runs only its unfinished items again"), soft_wrap=True)
    return {"status": "interrupted",
            **({"batch_id": batch.run_id} if store and batch.run_id else {}),
            "items": items, **counts, "cost_usd": sum(i["cost_usd"] for i in items),
            "usage": to_jsonable(usage)}


async def _recorded(store: str, batch_id: str | None) -> dict[int, ItemRow]:
    """The items of batch ``batch_id`` with an outcome recorded in ``store`` (nothing
    when the store does not answer: the summary is printed anyway)."""
    from shoal.scale.batch_ids import batch_items, is_batch
    from shoal.stores import open_store

    if batch_id is None:
        return {}
    with contextlib.suppress(StoreError):
        async with open_store(store) as opened:
            record = await opened.get_run(batch_id)
            if record is not None and is_batch(record):
                return {row.index: row
                        for row in await batch_items(opened, record, look_up_open=False)
                        if row.status in ("succeeded", "failed")}
    return {}


def _table(title: str, items: list[dict[str, Any]]) -> Table:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    colours = {"succeeded": "green", "failed": "red", "interrupted": "yellow"}
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="in/out: tokens")
    for col in ("item", "status", "in", "out", "cost $", "error"):
        table.add_column(col, justify="right" if col in ("in", "out", "cost $") else "left")
    for i in items:
        usage = i["usage"] or {}
        table.add_row(escape(i["input"]), f"[{colours.get(i['status'], 'white')}]{i['status']}[/]",
                      str(usage.get("input_tokens", "-")), str(usage.get("output_tokens", "-")),
                      f"{i['cost_usd']:.6f}", escape((i["error"] or "")[:60]))
    return table
