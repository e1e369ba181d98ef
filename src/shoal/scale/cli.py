"""The command-line side of batches with an identity: ``shoal run ... --store URL``
(several inputs) and ``--cluster tcp://host:8786``, ``shoal runs --batch BATCH_ID`` and
``shoal resume BATCH_ID``. The commands themselves live in :mod:`shoal.cli`; they call
these."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.errors import ConfigError
from shoal.scale.batch_ids import ItemRow, batch_items

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from shoal.agents.client import ModelClient
    from shoal.flows.batch import BatchResult
    from shoal.scale.executor import DaskExecutor, LocalExecutor
    from shoal.stores.base import Store
    from shoal.stores.records import RunRecord

__all__ = ["batch_report", "print_batch", "resume_batch_cli", "run_batch_cli"]


def _executor(cluster: str | None, store: str, *, config: Path | str | None,
              client: ModelClient | None, concurrency: int) -> DaskExecutor | LocalExecutor:
    from shoal.scale.executor import DaskExecutor, LocalExecutor

    if cluster:
        return DaskExecutor(cluster, store=store, items_per_worker=concurrency,
                            config=None if config is None else str(Path(config).resolve()))
    return LocalExecutor(store=store, client=client, items_per_worker=concurrency)


async def run_batch_cli(target: Any, items: list[tuple[str, Any]], *, client: ModelClient,
                        store: str, cluster: str | None, sim: bool, meta: dict[str, Any],
                        config: Path | None, run_id: str | None, concurrency: int,
                        budget_usd: float | None, progress: bool, console: Console,
                        stopped: dict[str, Any] | None = None) -> BatchResult:
    """A journaled batch, here (``cluster`` unset) or on a Dask cluster: the batch and
    each item are runs in ``store``. Stopped with Ctrl-C, it prints its items as they
    stood and the command that continues it (``stopped``: filled with the ``--json``
    document of that)."""
    from shoal.agents.runner import new_run_id
    from shoal.cli.common import plain
    from shoal.flows.batch import Batch
    from shoal.stores import shown_url, store_option

    if cluster and sim:
        raise ConfigError("--sim serves the models from this process, which the cluster's "
                          "workers cannot reach: point --config at a shoal.toml every "
                          "worker can use instead")
    batch_id = run_id or new_run_id()
    executor = _executor(cluster, store, config=config, client=client,
                         concurrency=concurrency)
    if cluster:  # before the batch's record exists: an unreachable cluster leaves none
        await _scheduler_reachable(cluster)
    batch = Batch(target, client=client, run_id=batch_id, budget_usd=budget_usd,
                  progress=progress, console=console)
    console.print(plain(f"batch {batch_id} ({len(items)} items) on "
                        f"{cluster or 'this process'}, journaled in {shown_url(store)}"))
    try:
        result = await executor.run(batch, dict(items), meta=meta)
    except asyncio.CancelledError:  # Ctrl-C: where it stood, and how to go on
        from shoal.cli.batch_stop import print_batch_interrupted

        doc = await print_batch_interrupted(console, batch, [label for label, _ in items],
                                            store=store)
        if stopped is not None:
            stopped.update(doc)
        raise
    flag = store_option(store)
    console.print(plain(f"shoal runs --batch {batch_id}{flag} lists its items; "
                        f"shoal resume {batch_id}{flag} runs the unfinished ones again"))
    return result


async def _scheduler_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connection to the Dask scheduler at ``address`` (``tcp://host:port`` or
    ``host:port``) opens, or a ``ConfigError`` saying how to fix it."""
    import asyncio
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname or "127.0.0.1", parts.port or 8786
    except ValueError:  # a port that is not a number
        raise ConfigError(f"--cluster {address!r} is not tcp://host:port") from None
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address} ({type(exc).__name__}: {exc}); "
            "start one (`dask scheduler`, docs/scale.md) or check --cluster; no batch "
            "was recorded") from None
    writer.close()


def _status_cell(status: str) -> str:
    colour = {"succeeded": "green", "failed": "red", "running": "cyan",
              "pending": "dim"}.get(status, "white")
    return f"[{colour}]{status}[/]"


async def batch_report(store: Store, record: RunRecord, *, status: str | None = None,
                       limit: int = 50) -> tuple[dict[str, Any], Table]:
    """A batch's counts, tokens, cost and failures (as JSON data) and a table of its
    items (``status``: only those; at most ``limit`` rows, failures first)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    rows = await batch_items(store, record)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    shown = [r for r in rows if status is None or r.status == status]
    shown.sort(key=lambda r: (r.status == "succeeded", r.index))
    known = all(r.spend_known for r in rows)  # else unknown, not a false sum
    data = {
        "batch_id": record.run_id, "status": record.status, "items": len(rows),
        "counts": counts, "tokens": sum(r.usage.total_tokens for r in rows) if known else None,
        "cost_usd": sum(r.cost_usd for r in rows) if known else None,
        "cluster": record.meta.get("cluster"),
        "failures": [{"index": r.index, "name": r.name, "run_id": r.run_id,
                      "error": r.error} for r in rows if r.status == "failed"],
        "rows": [{"index": r.index, "name": r.name, "run_id": r.run_id, "status": r.status,
                  "tokens": r.usage.total_tokens if r.spend_known else None,
                  "cost_usd": r.cost_usd if r.spend_known else None, "error": r.error}
                 for r in shown[:limit]],
    }
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    spent = (f"{data['tokens']} tokens · ${data['cost_usd']:.6f}" if known else
             "tokens and cost unknown: an item's outcome and journal lack them")
    table = Table(title=f"batch {escape(record.run_id)}: {summary}", box=box.SIMPLE_HEAD,
                  pad_edge=False, caption=spent)
    for col in ("item", "run", "status", "tokens", "cost $", "error"):
        table.add_column(col, justify="right" if col in ("tokens", "cost $") else "left")
    for r in shown[:limit]:
        table.add_row(escape(r.name), escape(r.run_id), _status_cell(r.status),
                      str(r.usage.total_tokens) if r.spend_known else "unknown",
                      f"{r.cost_usd:.6f}" if r.spend_known else "unknown",
                      escape((r.error or "")[:60]))
    return data, table


def print_batch(batch_id: str, url: str | None, *, status: str | None, limit: int,
                json_out: bool) -> None:
    """``shoal runs --batch BATCH_ID``: the batch report, as a table or JSON."""
    import json

    from shoal.cli.common import fail
    from shoal.cli.loop import run as run_loop
    from shoal.cli.runs_cmd import _console
    from shoal.errors import ShoalError

    async def report() -> tuple[dict[str, Any], Table]:
        from shoal.scale.batch_ids import is_batch
        from shoal.stores import open_store

        async with open_store(url) as opened:
            record = await opened.require_run(batch_id)
            if not is_batch(record):
                raise ConfigError(f"run {batch_id!r} is not a batch: shoal show {batch_id}")
            return await batch_report(opened, record, status=status, limit=limit)

    try:
        data, table = run_loop(report())
    except ShoalError as exc:
        raise fail(exc) from None
    console = _console()
    if json_out:
        console.print_json(json.dumps(data, default=str))
    else:
        console.print(table)


async def resume_batch_cli(record: RunRecord, store: str, opened: Store, *,
                           target: str | None,
                           config: Path | None, sim: bool | None, cluster: str | None,
                           progress: bool, console: Console,
                           stopped: dict[str, Any] | None = None) -> dict[str, Any]:
    """``shoal resume BATCH_ID``: the unfinished items run again, here or on the cluster
    the batch ran on (``--cluster`` overrides; ``--cluster local``: here). ``opened``:
    the store at ``store``, open (the caller read ``record`` from it). Stopped with
    Ctrl-C, it prints its items as they stood and the command that continues it
    (``stopped``: filled with the ``--json`` document of that), as ``shoal batch`` does."""
    from shoal.cli.common import check_models, plain
    from shoal.cli.run_cmd import _override_model, load_target
    from shoal.config import Config
    from shoal.traffic.router import Router

    rows = await batch_items(opened, record, look_up_open=False)
    if rows and all(row.status == "succeeded" for row in rows):
        console.print(plain(f"batch {record.run_id}: nothing to redo, all {len(rows)} items "
                            f"succeeded (`shoal runs --batch {record.run_id}` lists them)"))
        return {"batch_id": record.run_id, "succeeded": len(rows), "failed": 0,
                "cost_usd": sum(row.cost_usd for row in rows)}
    meta = dict(record.meta)
    spec = target or meta.get("target")
    if not isinstance(spec, str):
        raise ConfigError(
            f"batch {record.run_id!r} does not record its target (it was not started by "
            "`shoal run`); pass --target module:object, or call shoal.scale.resume_batch")
    if config is None and isinstance(meta.get("config"), str):
        config = Path(meta["config"])
    where = cluster if cluster is not None else meta.get("cluster")
    where = None if where in (None, "", "local") else str(where)
    use_sim = bool(meta.get("sim")) if sim is None else sim
    built = load_target(spec)
    if isinstance(meta.get("model"), str):
        built = _override_model(built, meta["model"])
    if where and use_sim:
        raise ConfigError("this batch ran with --sim: resume it here (--cluster local)")
    resume = _Resume(record, built, store, where, config, progress, console, rows, stopped)
    if use_sim:
        from shoal.sim import SimConfig, SimServer, config_for_sim

        async with SimServer(SimConfig()) as server, \
                Router(config_for_sim(server.url)) as router:
            return await _resume(resume, router)
    cfg = Config.load(config)
    check_models(built, cfg)
    async with Router(cfg) as router:
        return await _resume(resume, router)


@dataclass(frozen=True, slots=True)
class _Resume:
    """What ``shoal resume BATCH_ID`` resumes, and how. ``before``: the items as the
    store held them when it began (an outcome of an item it runs again, recorded by an
    earlier run, is not this resume's)."""

    record: RunRecord
    target: Any
    store: str
    where: str | None
    config: Path | None
    progress: bool
    console: Console
    before: list[ItemRow]
    stopped: dict[str, Any] | None


async def _resume(r: _Resume, router: ModelClient) -> dict[str, Any]:
    from shoal.cli.common import plain
    from shoal.flows.batch import Batch
    from shoal.scale.batch_run import resume_batch

    record, console, where = r.record, r.console, r.where
    executor = _executor(where, r.store, config=r.config, client=router, concurrency=8)
    started: list[Batch] = []
    try:
        result = await resume_batch(record.run_id, r.target, executor, progress=r.progress,
                                    console=console, on_batch=started.append)
    except asyncio.CancelledError:  # Ctrl-C: its items as they stood, and how to go on
        from shoal.cli.batch_stop import print_batch_interrupted

        batch = started[0] if started else Batch(r.target, run_id=record.run_id)
        labels = [str(n) for n in record.meta.get("names", [])]
        doc = await print_batch_interrupted(
            console, batch, labels, store=r.store,
            stale={row.index: row for row in r.before if row.status != "succeeded"})
        if r.stopped is not None:
            r.stopped.update(doc)
        raise
    console.print(result.table(title=f"batch {record.run_id}"))
    console.print(plain(f"resumed on {where or 'this process'}"))
    return {"batch_id": record.run_id, "succeeded": len(result.succeeded),
            "failed": len(result.failed), "cost_usd": result.cost_usd}
