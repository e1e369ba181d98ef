"""``shoal runs``, ``shoal show RUN_ID``, ``shoal delete RUN_ID``, ``shoal resume RUN_ID``
(its own module, :mod:`shoal.cli.resume_cmd`),
``shoal prune``: the journaled runs in a store (``--store URL``, ``$SHOAL_STORE``, default
``sqlite:///.shoal/runs.db``).

A run records how to rebuild its flow in its ``meta`` (:func:`journal_meta`: the
``module:object`` target ``shoal run`` was given, the ``-m`` model override, ``--sim``
and the config file), so ``shoal resume RUN_ID`` needs nothing else.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli.common import (
    EXIT_USAGE,
    Command,
    StoreOpt,
    default_url,
    fail,
    no_store,
    plain,
    require_store,
)
from shoal.cli.resume_cmd import resume
from shoal.errors import ConfigError, ShoalError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from shoal.flows.resume import RunPlan
    from shoal.stores.records import Lease, RunRecord

__all__ = [
    "delete", "journal_meta", "parse_duration", "prune", "register", "resume", "runs", "show",
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_STATUS_COLOURS = {"succeeded": "green", "running": "cyan", "failed": "red",
                   "cancelled": "magenta", "interrupted": "yellow", "skipped": "dim"}


def register(app: typer.Typer) -> None:
    """Add ``runs``, ``show``, ``resume``, ``delete`` and ``prune`` to *app*."""
    app.command("runs", cls=Command)(runs)
    app.command("show", cls=Command)(show)
    app.command("resume", cls=Command)(resume)
    app.command("delete", cls=Command)(delete)
    app.command("prune", cls=Command)(prune)


def journal_meta(target: str, *, model: str | None = None, sim: bool = False,
                 config: Path | str | None = None, budget_usd: float | None = None
                 ) -> dict[str, Any]:
    """What ``shoal run`` stores with a journaled run so ``shoal resume`` can rebuild it
    (and run it under the same ``--budget-usd``). Paths to files that exist are stored
    absolute, so a resume from another directory finds them."""
    return {"target": _absolute(target), "model": model, "sim": sim,
            "config": None if config is None else _absolute(str(config)),
            "budget_usd": budget_usd}


def _absolute(target: str) -> str:
    """``target`` (``file.py:object``, ``flow.toml``, ``package.module:object``) with its
    file made absolute when it names one that exists; a module path is left as it is."""
    file, sep, obj = target.partition(":")
    path = Path(file)
    if not path.is_file():
        return target
    return str(path.resolve()) + sep + obj


def parse_duration(text: str) -> float:
    """Seconds in ``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"`` (or ``"1d12h"``)."""
    compact = re.sub(r"\s+", "", text.lower())
    if not re.fullmatch(r"(\d+(\.\d+)?[smhdw])+", compact):
        raise ConfigError(f"cannot read the duration {text!r}: write e.g. 30d, 12h, 90m, 45s "
                          "or 2w (units s, m, h, d, w)")
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", compact)
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _now() -> float:
    from shoal.clock import RealClock

    return RealClock().wall()


def _fail(exc: ShoalError) -> typer.Exit:
    return fail(exc)


def _console() -> Console:
    """stdout; when it is not a terminal (a pipe, a file) wide enough for whole rows."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def _status(status: str) -> str:
    return f"[{_STATUS_COLOURS.get(status, 'white')}]{plain(status)}[/]"


# -- shoal runs ------------------------------------------------------------------------


def runs(
    store: StoreOpt = None,
    *,
    status: Annotated[str | None, typer.Option(
        help="Only runs in this status: running, succeeded, failed, cancelled.")] = None,
    limit: Annotated[int, typer.Option(help="How many runs, newest first.", min=1)] = 50,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
    batch: Annotated[str | None, typer.Option(
        "--batch", help="The items of this batch by status, with its counts, tokens, cost "
                        "and failures.")] = None,
) -> None:
    """List journaled runs: id, flow, status, tokens, cost, age."""
    from rich import box
    from rich.table import Table

    from shoal.cli.loop import run as run_loop

    if batch is not None:
        from shoal.scale.cli import print_batch

        print_batch(batch, store, status=status, limit=limit, json_out=json_out)
        return
    if store is None and no_store(None) is not None:
        _console().print("no runs yet: nothing was journaled in the default store "
                         "(.shoal/runs.db)")
        return
    require_store(store)
    try:
        records = run_loop(_list(store, status, limit))
    except ShoalError as exc:
        raise _fail(exc) from None
    console = _console()
    now = _now()
    if json_out:
        console.print_json(json.dumps([
            {"run_id": r.run_id, "flow": r.flow, "status": r.status, "tokens": tokens,
             "cost_usd": cost, "created_at": r.created_at, "updated_at": r.updated_at,
             "error": r.error} for r, tokens, cost in records]))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col, justify in (("run", "left"), ("flow", "left"), ("status", "left"),
                         ("tokens", "right"), ("cost $", "right"), ("age", "right"),
                         ("updated", "right"), ("error", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "error")  # type: ignore[arg-type]
    for r, tokens, cost in records:
        table.add_row(plain(r.run_id), plain(r.flow), _status(r.status),
                      "unknown" if tokens is None else str(tokens),
                      "unknown" if cost is None else f"{cost:.6f}", _age(now - r.created_at),
                      _age(now - r.updated_at), plain((r.error or "")[:60]))
    console.print(table if records else "no runs in this store")


async def _list(url: str | None, status: str | None, limit: int
                ) -> list[tuple[RunRecord, int | None, float | None]]:
    """The runs with their tokens and cost: the store's totals; for a batch recorded
    before those were its items' (an older shoal: they hold 0), its items' sum, None
    (unknown) when an item's spend is gone with its journal."""
    from shoal.scale.batch_ids import batch_items, has_item_totals, is_batch
    from shoal.stores import open_store

    async with open_store(url) as store:
        records = await store.list_runs(limit=limit, status=status)  # type: ignore[arg-type]
        found: list[tuple[RunRecord, int | None, float | None]] = []
        for r in records:
            if not is_batch(r) or has_item_totals(r):
                found.append((r, r.tokens, r.cost_usd))
                continue
            rows = await batch_items(store, r, look_up_open=False)
            if all(row.spend_known for row in rows):
                found.append((r, sum(row.usage.total_tokens for row in rows),
                              sum(row.cost_usd for row in rows)))
            else:
                found.append((r, None, None))
        return found


# -- shoal show ------------------------------------------------------------------------


def show(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to show.")],
    store: StoreOpt = None,
    *,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
    html_out: Annotated[Path | None, typer.Option(
        "--html", help="Write the run report (graph, timeline, cost, errors, resume) to "
                       "this self-contained HTML file instead.")] = None,
) -> None:
    """Show a run: its steps (status, timings, tokens, cost, errors) and what a resume
    would replay and redo."""

    from shoal.cli.loop import run as run_loop
    from shoal.flows.resume import plan

    require_store(store, run_id)
    if html_out is not None:
        _write_html(run_id, store, html_out)
        return
    try:
        p = run_loop(plan(store or default_url(), run_id))
    except ShoalError as exc:
        raise _fail(exc) from None
    console = _console()
    if json_out:
        console.print_json(json.dumps(_plan_json(p), default=str))
        return
    run = p.run
    now = _now()
    created = datetime.fromtimestamp(run.created_at).strftime("%Y-%m-%d %H:%M:%S")
    console.print(f"[b]run {plain(run.run_id)}[/b] · flow {plain(run.flow)} · "
                  f"{_status(run.status)}")
    console.print(f"created {created} ({_age(now - run.created_at)} ago), last write "
                  f"{_age(now - run.updated_at)} ago · {_spent(p)}")
    console.print(f"input: {_preview(run.input)}", markup=False, soft_wrap=True)
    if p.target:
        console.print(f"target: {p.target}", markup=False, soft_wrap=True)
    if run.error:
        console.print(f"[red]error:[/] {plain(run.error)}", highlight=False, soft_wrap=True)
    if p.lease is not None:
        console.print(plain(_lease_line(p.lease, now)), highlight=False, soft_wrap=True)
    console.print(_steps_table(p))
    _cache_footer(console, store or default_url(), run)
    console.print(plain(_resume_line(p)), soft_wrap=True)


def _spent(p: RunPlan) -> str:
    if p.unknown_spend:  # a false total would be worse than none
        many = len(p.unknown_spend) > 1
        gone = ", ".join(p.unknown_spend[:3]) + (", ..." if len(p.unknown_spend) > 3 else "")
        return (f"tokens and cost unknown (item{'s' if many else ''} {plain(gone)}: "
                f"{'their journals are' if many else 'its journal is'} gone)")
    return f"{p.run.tokens} tokens · ${p.run.cost_usd:.6f}"


def _lease_line(lease: Lease, now: float) -> str:
    from shoal.flows.lease import holder_gone
    from shoal.stores.leases import describe_owner

    who = describe_owner(lease.owner)
    if lease.live(now) and holder_gone(lease.run_id, lease.owner):
        return (f"last executor: {who} is gone (its process ended on this machine); a "
                "resume takes the run over now")
    if lease.live(now):
        return (f"executing: {who}, its lease runs {_age(lease.expires_at - now)} more (a "
                "resume is refused until the run ends or the lease lapses)")
    return (f"last executor: {who}, its lease lapsed {_age(now - lease.expires_at)} ago (a "
            "resume takes the run over)")


def _write_html(run_id: str, store: str | None, path: Path) -> None:
    from shoal.cli.loop import run as run_loop
    from shoal.observe.report import write_report

    try:
        written = run_loop(write_report(store or default_url(), run_id, path))
    except ShoalError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        raise _fail(ConfigError(f"cannot write the report to {path}: {exc.strerror or exc}; "
                                "pick a writable path")) from None
    typer.echo(f"wrote the report of run {run_id} to {written}")


def _cache_footer(console: Console, url: str, run: Any) -> None:
    """Under ``show``'s table: prompt tokens read from cache and the dollars that saved."""
    from shoal.cli.cost_cmd import load_spend
    from shoal.cli.live import print_cache_line, run_prices
    from shoal.cli.loop import run as run_loop

    config = run.meta.get("config")
    prices = run_prices(config if isinstance(config, str) else None,
                        sim=bool(run.meta.get("sim")))
    try:
        spend = run_loop(load_spend(url, run.run_id))
    except ShoalError:  # the table is printed; a footer it cannot read is left out
        return
    print_cache_line(console, prices, spend.by_model.items())


def _preview(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _steps_table(p: RunPlan) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col, justify in (("step", "left"), ("status", "left"), ("try", "right"),
                         ("start", "right"), ("took", "right"), ("turns", "right"),
                         ("tokens", "right"), ("cost $", "right"), ("model", "left"),
                         ("error", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "error")  # type: ignore[arg-type]
    origin = p.run.created_at
    for v in p.steps:
        start = "-" if v.started_at is None else f"+{v.started_at - origin:.1f}s"
        took = "-" if v.duration_s is None else f"{v.duration_s:.2f}s"
        tokens, cost = ((str(v.tokens), f"{v.cost_usd:.6f}") if v.spend_known
                        else ("unknown", "unknown"))
        table.add_row(plain(v.step_id), _status(v.status), str(v.attempt), start, took,
                      str(v.turns), tokens, cost, plain(v.model or "-"),
                      plain((v.error or "")[:80]))
    return table


def _resume_line(p: RunPlan) -> str:
    if not p.redo:
        return f"resume: nothing to redo; all {len(p.replay)} steps replay with zero calls"
    turns = (f" ({p.turns_to_replay} journaled model turns inside them replay)"
             if p.turns_to_replay else "")
    stale = (f"; {', '.join(p.stale_if_changed)} also run again if their inputs come out "
             "different" if p.stale_if_changed else "")
    return (f"resume would replay {len(p.replay)} step(s) with zero calls and run "
            f"{len(p.redo)}: {', '.join(p.redo)}{turns}{stale}")


def _plan_json(p: RunPlan) -> dict[str, Any]:
    run = p.run
    return {
        "run_id": run.run_id, "flow": run.flow, "status": run.status, "input": run.input,
        "created_at": run.created_at, "updated_at": run.updated_at,
        "tokens": None if p.unknown_spend else run.tokens,
        "cost_usd": None if p.unknown_spend else run.cost_usd,
        "unknown_spend": p.unknown_spend, "error": run.error, "meta": dict(run.meta),
        "steps": [{"step": v.step_id, "status": v.status, "attempt": v.attempt,
                   "started_at": v.started_at, "finished_at": v.finished_at,
                   "tokens": v.tokens if v.spend_known else None,
                   "cost_usd": v.cost_usd if v.spend_known else None, "model": v.model,
                   "turns": v.turns, "error": v.error} for v in p.steps],
        "replay": p.replay, "redo": p.redo, "turns_to_replay": p.turns_to_replay,
        "stale_if_changed": p.stale_if_changed,
        "lease": None if p.lease is None else {"owner": p.lease.owner,
                                               "expires_at": p.lease.expires_at},
    }


# -- shoal delete ----------------------------------------------------------------------


def delete(
    run_ids: Annotated[list[str], typer.Argument(
        metavar="RUN_ID", help="The run(s) to delete.")],
    store: StoreOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Delete a run even while an executor holds its lease (runs it).")
    ] = False,
) -> None:
    """Delete runs by id, with their steps and effects (a corrupt run, a test run).

    A run being executed (an executor holds its lease) is refused, exit status 3,
    unless --force. Exit status 2 if one of them is not in the store."""
    from shoal.cli.loop import run as run_loop
    from shoal.stores import shown_url

    require_store(store, *run_ids)
    try:
        missing = run_loop(_delete(store, run_ids, force=force))
    except ShoalError as exc:
        raise _fail(exc) from None
    for run_id in run_ids:
        if run_id not in missing:
            typer.echo(f"deleted run {run_id}")
    if missing:
        from rich.console import Console

        Console(stderr=True).print(
            plain(f"error: no run {', '.join(repr(m) for m in missing)} in "
                  f"{shown_url(store or default_url())}; `shoal runs` lists the runs "
                  "there"),
            highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE)


async def _delete(url: str | None, run_ids: list[str], *, force: bool) -> list[str]:
    from shoal.stores import open_store

    async with open_store(url) as store:
        return [r for r in run_ids if not await store.delete_run(r, force=force)]


# -- shoal prune -----------------------------------------------------------------------


def prune(
    store: StoreOpt = None,
    *,
    older_than: Annotated[str, typer.Option(
        "--older-than", help="Delete runs not written for this long: 30d, 12h, 90m, 2w.")],
) -> None:
    """Delete runs (any status) whose last write is older than --older-than, with their
    steps and effects. Runs being executed (an executor holds their lease) are kept."""
    from shoal.cli.loop import run as run_loop

    try:
        seconds = parse_duration(older_than)
        require_store(store)
        deleted = run_loop(_prune(store, seconds))
    except ShoalError as exc:
        raise _fail(exc) from None
    typer.echo(f"deleted {deleted} run(s) not written for {older_than} (runs being "
               "executed are kept)")


async def _prune(url: str | None, seconds: float) -> int:
    from shoal.stores import open_store

    async with open_store(url) as store:
        return await store.prune(seconds)
