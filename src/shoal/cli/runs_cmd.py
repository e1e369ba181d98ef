"""``shoal runs``, ``shoal show RUN_ID``, ``shoal resume RUN_ID``, ``shoal delete RUN_ID``,
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

from shoal.cli.common import EXIT_USAGE, fail, plain
from shoal.errors import ConfigError, ShoalError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from shoal.agents.client import ModelClient
    from shoal.agents.guards import Budget
    from shoal.flows.flow import Flow
    from shoal.flows.resume import RunPlan

__all__ = [
    "delete", "journal_meta", "parse_duration", "prune", "register", "resume", "runs", "show",
]

StoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar="SHOAL_STORE",
    help="Store URL (sqlite:///path.db, redis://..., postgresql://...). "
         "Default: $SHOAL_STORE or sqlite:///.shoal/runs.db.")]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_STATUS_COLOURS = {"succeeded": "green", "running": "cyan", "failed": "red",
                   "cancelled": "magenta", "interrupted": "yellow", "skipped": "dim"}


def register(app: typer.Typer) -> None:
    """Add ``runs``, ``show``, ``resume``, ``delete`` and ``prune`` to *app*."""
    app.command("runs")(runs)
    app.command("show")(show)
    app.command("resume")(resume)
    app.command("delete")(delete)
    app.command("prune")(prune)


def journal_meta(target: str, *, model: str | None = None, sim: bool = False,
                 config: Path | str | None = None, budget_usd: float | None = None
                 ) -> dict[str, Any]:
    """What ``shoal run`` stores with a journaled run so ``shoal resume`` can rebuild it
    (and run it under the same ``--budget-usd``)."""
    return {"target": target, "model": model, "sim": sim,
            "config": None if config is None else str(config), "budget_usd": budget_usd}


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
    limit: Annotated[int, typer.Option(help="How many runs, newest first.")] = 50,
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
    if store is None and _no_store(None) is not None:
        _console().print("no runs yet: nothing was journaled in the default store "
                         "(.shoal/runs.db)")
        return
    _require_store(store)
    try:
        records = run_loop(_list(store, status, limit))
    except ShoalError as exc:
        raise _fail(exc) from None
    console = _console()
    now = _now()
    if json_out:
        console.print_json(json.dumps([
            {"run_id": r.run_id, "flow": r.flow, "status": r.status, "tokens": r.tokens,
             "cost_usd": r.cost_usd, "created_at": r.created_at, "updated_at": r.updated_at,
             "error": r.error} for r in records]))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col, justify in (("run", "left"), ("flow", "left"), ("status", "left"),
                         ("tokens", "right"), ("cost $", "right"), ("age", "right"),
                         ("updated", "right"), ("error", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "error")  # type: ignore[arg-type]
    for r in records:
        table.add_row(plain(r.run_id), plain(r.flow), _status(r.status), str(r.tokens),
                      f"{r.cost_usd:.6f}", _age(now - r.created_at), _age(now - r.updated_at),
                      plain((r.error or "")[:60]))
    console.print(table if records else "no runs in this store")


async def _list(url: str | None, status: str | None, limit: int) -> list[Any]:
    from shoal.stores import open_store

    async with open_store(url) as store:
        return await store.list_runs(limit=limit, status=status)  # type: ignore[arg-type]


# -- shoal show ------------------------------------------------------------------------


def show(
    run_id: Annotated[str, typer.Argument(help="The run to show.")],
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

    _require_store(store, run_id)
    if html_out is not None:
        _write_html(run_id, store, html_out)
        return
    try:
        p = run_loop(plan(store or _default_url(), run_id))
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
                  f"{_age(now - run.updated_at)} ago · {run.tokens} tokens · "
                  f"${run.cost_usd:.6f}")
    console.print(f"input: {_preview(run.input)}", markup=False, soft_wrap=True)
    if p.target:
        console.print(f"target: {p.target}", markup=False, soft_wrap=True)
    if run.error:
        console.print(f"[red]error:[/] {plain(run.error)}", highlight=False, soft_wrap=True)
    console.print(_steps_table(p))
    _cache_footer(console, store or _default_url(), run)
    console.print(plain(_resume_line(p)), soft_wrap=True)


def _write_html(run_id: str, store: str | None, path: Path) -> None:
    from shoal.cli.loop import run as run_loop
    from shoal.observe.report import write_report

    try:
        written = run_loop(write_report(store or _default_url(), run_id, path))
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


def _no_store(url: str | None) -> str | None:
    """Why there is nothing to read at ``url`` (None: the default store), when it names a
    SQLite file that does not exist; reading must not create it, and a mistyped
    ``--store`` must not look like an empty store."""
    from shoal.stores import missing_sqlite_file

    missing = missing_sqlite_file(url)
    if missing is None:
        return None
    where = "check --store / $SHOAL_STORE" if url else "`shoal run --store` makes it"
    return f"no store at {missing}: nothing was journaled there ({where})"


def _require_store(url: str | None, *run_ids: str) -> None:
    why = _no_store(url)
    if why is not None:
        asked = f"no run {', '.join(map(repr, run_ids))}: " if run_ids else ""
        raise _fail(ConfigError(asked + why))


def _default_url() -> str:
    from shoal.stores import DEFAULT_URL

    return DEFAULT_URL


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
        table.add_row(plain(v.step_id), _status(v.status), str(v.attempt), start, took,
                      str(v.turns), str(v.tokens), f"{v.cost_usd:.6f}", plain(v.model or "-"),
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
        "created_at": run.created_at, "updated_at": run.updated_at, "tokens": run.tokens,
        "cost_usd": run.cost_usd, "error": run.error, "meta": dict(run.meta),
        "steps": [{"step": v.step_id, "status": v.status, "attempt": v.attempt,
                   "started_at": v.started_at, "finished_at": v.finished_at,
                   "tokens": v.tokens, "cost_usd": v.cost_usd, "model": v.model,
                   "turns": v.turns, "error": v.error} for v in p.steps],
        "replay": p.replay, "redo": p.redo, "turns_to_replay": p.turns_to_replay,
        "stale_if_changed": p.stale_if_changed,
    }


# -- shoal delete ----------------------------------------------------------------------


def delete(
    run_ids: Annotated[list[str], typer.Argument(help="The run(s) to delete.")],
    store: StoreOpt = None,
) -> None:
    """Delete runs by id, with their steps and effects (a corrupt run, a test run).

    Exit status 2 if one of them is not in the store."""
    from shoal.cli.loop import run as run_loop
    from shoal.stores import shown_url

    _require_store(store, *run_ids)
    try:
        missing = run_loop(_delete(store, run_ids))
    except ShoalError as exc:
        raise _fail(exc) from None
    for run_id in run_ids:
        if run_id not in missing:
            typer.echo(f"deleted run {run_id}")
    if missing:
        from rich.console import Console

        Console(stderr=True).print(
            plain(f"error: no run {', '.join(repr(m) for m in missing)} in "
                  f"{shown_url(store or _default_url())}; `shoal runs` lists the runs "
                  "there"),
            highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE)


async def _delete(url: str | None, run_ids: list[str]) -> list[str]:
    from shoal.stores import open_store

    async with open_store(url) as store:
        return [r for r in run_ids if not await store.delete_run(r)]


# -- shoal prune -----------------------------------------------------------------------


def prune(
    store: StoreOpt = None,
    *,
    older_than: Annotated[str, typer.Option(
        "--older-than", help="Delete runs not written for this long: 30d, 12h, 90m, 2w.")],
) -> None:
    """Delete runs (any status) whose last write is older than --older-than, with their
    steps and effects."""
    from shoal.cli.loop import run as run_loop

    try:
        seconds = parse_duration(older_than)
        _require_store(store)
        deleted = run_loop(_prune(store, seconds))
    except ShoalError as exc:
        raise _fail(exc) from None
    typer.echo(f"deleted {deleted} run(s) not written for {older_than}")


async def _prune(url: str | None, seconds: float) -> int:
    from shoal.stores import open_store

    async with open_store(url) as store:
        return await store.prune(seconds)


# -- shoal resume ----------------------------------------------------------------------


def resume(
    run_id: Annotated[str, typer.Argument(help="The run to continue.")],
    store: StoreOpt = None,
    *,
    target: Annotated[str | None, typer.Option(
        help="module:object (or file.py:object, or a flow spec) to rebuild the flow from; "
             "default: what the run recorded.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="shoal.toml (default: what the run recorded, else "
                               "$SHOAL_CONFIG or ./shoal.toml).")] = None,
    sim: Annotated[bool | None, typer.Option(
        "--sim/--no-sim", help="Serve every model from an in-process simulator "
                               "(default: as the run did).")] = None,
    allow_changed: Annotated[bool, typer.Option(
        "--allow-changed", help="Resume even if the flow's definition changed; journaled "
                                "steps replay as recorded.")] = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json", "-o", help="Write the result as JSON to this file.")] = None,
    progress: Annotated[bool, typer.Option(
        help="Live progress: each step's state, tokens and cost.")] = True,
    cluster: Annotated[str | None, typer.Option(
        "--cluster", help="A batch: resume it on this Dask scheduler (default: where it "
                          "ran; 'local': here).")] = None,
    budget_usd: Annotated[float | None, typer.Option(
        "--budget-usd", help="Dollar budget for the whole run, replayed steps included "
                             "(default: the run's own --budget-usd).")] = None,
) -> None:
    """Continue a failed, cancelled or killed run: journaled steps and model turns replay
    with zero calls, the rest runs. A batch id runs its unfinished items again.

    Exit status 1 if the run fails again, 2 for a usage or config error (an unknown run,
    a changed flow, an unknown model)."""
    from rich.console import Console

    from shoal.cli.loop import run as run_loop

    console = Console()
    _require_store(store, run_id)
    try:
        summary = run_loop(_resume(run_id, store, target=target, config=config, sim=sim,
                                   allow_changed=allow_changed, console=console,
                                   progress=progress, cluster=cluster,
                                   budget_usd=budget_usd))
    except ShoalError as exc:
        raise _fail(exc) from None
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str),
                            "utf-8")


async def _resume(run_id: str, url: str | None, *, target: str | None, config: Path | None,
                  sim: bool | None, allow_changed: bool, console: Console,
                  progress: bool = True, cluster: str | None = None,
                  budget_usd: float | None = None) -> dict[str, Any]:
    from shoal.agents.guards import Budget
    from shoal.cli.common import check_models
    from shoal.scale.batch_ids import is_batch
    from shoal.stores import open_store

    async with open_store(url) as store:
        run = await store.require_run(run_id)
        if is_batch(run):  # its items: only the unfinished run again (shoal.scale)
            from shoal.scale.cli import resume_batch_cli

            return await resume_batch_cli(run, url or _default_url(), target=target,
                                          config=config, sim=sim, cluster=cluster,
                                          progress=progress, console=console)
        meta = dict(run.meta)
        spec = target or meta.get("target")
        if not isinstance(spec, str):
            raise ConfigError(
                f"run {run_id!r} does not record how to rebuild its flow (it was not started "
                "by `shoal run`); pass --target module:object naming the flow")
        if config is None and isinstance(meta.get("config"), str):
            config = Path(meta["config"])
        use_sim = bool(meta.get("sim")) if sim is None else sim
        model = meta.get("model") if isinstance(meta.get("model"), str) else None
        if budget_usd is None and isinstance(meta.get("budget_usd"), int | float):
            budget_usd = float(meta["budget_usd"])  # the run's own `shoal run --budget-usd`
        budget = Budget(max_usd=budget_usd) if budget_usd else None
        flow = _rebuild(spec, model)
        if not use_sim:
            from shoal.config import Config
            from shoal.traffic.router import Router

            cfg = Config.load(config)
            check_models(flow, cfg)
            async with Router(cfg) as router:
                return await _continue(flow, run_id, store, router, allow_changed=allow_changed,
                                       console=console, progress=progress, budget=budget)
        from shoal.sim import SimConfig, SimServer, config_for_sim
        from shoal.traffic.router import Router

        check_models(flow, config_for_sim("http://127.0.0.1:1"))
        async with SimServer(SimConfig()) as server, \
                Router(config_for_sim(server.url)) as router:
            return await _continue(flow, run_id, store, router, allow_changed=allow_changed,
                                   console=console, progress=progress, budget=budget)


def _rebuild(spec: str, model: str | None) -> Flow:
    from shoal.agents.agent import Agent
    from shoal.cli.run_cmd import load_target
    from shoal.flows.resume import as_flow

    flow = as_flow(load_target(spec))
    if model:  # as `shoal run -m MODEL` ran it
        for step in flow.steps.values():
            if isinstance(step.target, Agent):
                step.target = step.target.clone(model=model, fallbacks=())
        flow.default_model = model
    return flow


async def _continue(flow: Flow, run_id: str, store: Any, client: ModelClient, *,
                    allow_changed: bool, console: Console, progress: bool = True,
                    budget: Budget | None = None) -> dict[str, Any]:
    from shoal.agents.recorder import to_jsonable
    from shoal.cli.live import live_progress, print_cache_line
    from shoal.errors import StepFailed
    from shoal.flows.flow import as_text
    from shoal.flows.resume import resume as resume_run

    try:
        with live_progress(console, flow, enabled=progress) as watch:
            result = await resume_run(run_id, flow, store=store, client=client,
                                      allow_changed=allow_changed, budget=budget,
                                      progress=watch)
    except StepFailed as exc:
        if exc.result is not None:  # what this attempt spent before it failed
            console.print(exc.result.table())
        raise StepFailed(
            f"{exc.summary} Fix the cause and run `shoal resume {run_id}` again, with the "
            "same --store: the finished steps are not redone.",
            step=exc.step, result=exc.result, summary=exc.summary) from exc.__cause__
    console.print(as_text(result.output), markup=False, highlight=False)
    console.print(result.table())
    prices = getattr(client, "config", None)  # the Router's: the prices it charged
    if prices is not None:
        print_cache_line(console, prices, [(s.model, s.usage) for s in result.steps.values()])
    return {"run_id": result.run_id, "status": result.status,
            "output": to_jsonable(result.output), "steps": result.rows(),
            "cost_usd": result.cost_usd, "usage": to_jsonable(result.usage)}
