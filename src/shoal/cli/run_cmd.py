"""``shoal run TARGET``: run an agent, a flow or a flow spec on one input or a batch.

TARGET is ``module:object`` (or ``path/to/file.py:object``) naming an Agent, a Flow, a
zero-argument factory of one, or an async function of one input; or a ``.toml`` /
``.yaml`` flow spec (see docs/flows.md). Inputs come from arguments, ``--input-file``
or ``--input-dir`` (one input per file: a batch). One input prints the output and a
table of steps; several run as a batch with a live progress bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli.common import (
    EXIT_FAILED,
    Command,
    LeaseOpt,
    check_model,
    check_models,
    exit_code,
    fail,
    plain,
)
from shoal.cli.loop import run as run_loop
from shoal.cli.stopped import print_interrupted, print_store_failed
from shoal.cli.store_notes import store_notes
from shoal.cli.targets import load_inputs, load_target
from shoal.errors import ConfigError, RunBusy, ShoalError, StepFailed, StoreError
from shoal.flows.lease import DEFAULT_LEASE_S
from shoal.stores import shown_url, store_option

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from rich.console import Console

    from shoal.agents.client import ModelClient
    from shoal.flows.flow import FlowResult
    from shoal.observe.alert_config import AlertsConfig
    from shoal.traffic.router import Router

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process Ctrl-C stopped

__all__ = [
    "EXIT_INTERRUPTED",
    "failure_summary",
    "load_inputs",
    "load_target",
    "positive_budget",
    "print_interrupted",
    "register",
    "run",
    "write_json",
]


def register(app: typer.Typer) -> None:
    """Add the ``run`` command to *app*."""
    app.command("run", cls=Command)(run)
    app.command("batch", cls=Command,
                help="Run TARGET over many inputs (as `shoal run`; with --store the batch "
                     "is journaled, with --cluster it runs on a Dask cluster).")(run)


def positive_budget(value: float | None, *, unset: str = "for no budget") -> float | None:
    """``--budget-usd``: a positive, finite number of dollars, or not given (``unset``
    says what that means). 0, a negative number, nan or inf is a usage error (exit 2),
    never "no budget"."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(
            f"{value:g} is not a budget: give a positive number of dollars (e.g. 0.5), or "
            f"leave --budget-usd out {unset}")
    return value


def _budget_usd_option(value: float | None) -> float | None:
    return positive_budget(value)  # a typer callback: its one parameter is the value


def _override_model(target: Any, model: str) -> Any:
    from shoal.agents.agent import Agent
    from shoal.flows.flow import Flow

    if isinstance(target, Agent):
        return target.clone(model=model, fallbacks=())
    if isinstance(target, Flow):
        for step in target.steps.values():
            if isinstance(step.target, Agent):
                step.target = step.target.clone(model=model, fallbacks=())
        target.default_model = model
    return target


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What the ``run`` command was asked, passed down as one value."""

    target_spec: str
    config: Path | None = None
    model: str | None = None
    sim: bool = False
    concurrency: int = 8
    run_id: str | None = None
    budget_usd: float | None = None
    progress: bool = True
    store: str | None = None
    metrics_port: int | None = None
    metrics_push: str | None = None
    cluster: str | None = None
    lease_s: float = DEFAULT_LEASE_S
    # Filled when the run stops before its end (a store that failed, Ctrl-C on a batch):
    # what --json holds then besides the error.
    stopped: dict[str, Any] = field(default_factory=dict)


async def _execute(target: Any, items: list[tuple[str, Any]], *, client: ModelClient,
                   opts: RunOptions, console: Console) -> dict[str, Any]:
    from shoal.agents.agent import Agent
    from shoal.agents.guards import Budget
    from shoal.agents.recorder import NullRecorder, to_jsonable
    from shoal.agents.runner import Runner
    from shoal.cli.live import live_progress, print_cache_line, run_prices, spent_of
    from shoal.flows.batch import Batch
    from shoal.flows.flow import Flow
    from shoal.flows.resume import as_flow

    run_id, budget_usd = opts.run_id, opts.budget_usd
    budget = Budget(max_usd=budget_usd) if budget_usd is not None else None
    if len(items) == 1 and isinstance(target, Flow | Agent) and not opts.cluster and (
            opts.store is not None or isinstance(target, Flow)):
        from shoal.agents.runner import new_run_id
        from shoal.flows.progress import RunProgress

        value = items[0][1]
        flow = as_flow(target)
        if opts.store is not None:
            run_id = run_id or new_run_id()  # known here: a Ctrl-C names it to resume
        # Followed with --no-progress too (not drawn): an interrupt prints the steps.
        progress = RunProgress(flow)
        try:
            with live_progress(console, flow, enabled=opts.progress) as shown:
                if shown is not None:  # drawn as it goes
                    progress = shown
                if opts.store is not None:
                    # Journaled: `shoal resume RUN_ID` continues it after a failure or a kill.
                    from shoal.cli.runs_cmd import journal_meta
                    from shoal.flows.resume import run_durable

                    meta = journal_meta(opts.target_spec, model=opts.model, sim=opts.sim,
                                        config=opts.config, budget_usd=budget_usd)
                    res = await run_durable(target, value, store=opts.store, run_id=run_id,
                                            client=client, meta=meta, budget=budget,
                                            progress=progress, lease_s=opts.lease_s)
                else:
                    assert isinstance(target, Flow)
                    # Not drawn, a flow's own recorder keeps the run (as it always did).
                    own = shown is None and target.recorder is not None
                    res = await target.run(
                        value, run_id=run_id, client=client, budget=budget,
                        recorder=None if own else progress.watch(NullRecorder()))
        except asyncio.CancelledError:  # Ctrl-C (or SIGTERM's cancel): say where it stood
            print_interrupted(console, progress, flow=flow.name, run_id=run_id,
                              store=opts.store)
            raise
        except StoreError as exc:
            if opts.store is None or run_id is None or isinstance(exc, RunBusy):
                raise  # a lease held or lost elsewhere: exit 3, its own advice
            # The store failed in the middle: what was saved, and how to go on.
            opts.stopped.update(print_store_failed(console, progress, flow=flow.name,
                                                   run_id=run_id, store=opts.store))
            raise
        except StepFailed as exc:
            if exc.result is not None:  # what was spent before it failed
                console.print(exc.result.table())
                if opts.store is not None:
                    run = exc.result.run_id
                    console.print(plain(f"journaled as run {run} in {shown_url(opts.store)}: "
                                        f"shoal resume {run}{store_option(opts.store)}"))
            # The library's advice is for Python callers (run_id=, a journal): say it here
            # as the command line does it.
            hint = ("" if opts.store is not None else
                    " Run with --store sqlite:///.shoal/runs.db to journal a run, so that "
                    "`shoal resume` redoes only the steps that did not finish.")
            raise StepFailed(exc.summary + hint, step=exc.step, result=exc.result,
                             summary=exc.summary) from exc.__cause__
        return _flow_summary(console, res, opts)
    if len(items) == 1 and not opts.cluster:
        value = items[0][1]
        if isinstance(target, Agent):
            text = value if isinstance(value, str) else json.dumps(value)
            with live_progress(console, enabled=opts.progress) as turns:
                recorder = None if turns is None else turns.watch(NullRecorder())
                agent_res = await Runner(client, recorder=recorder).run(
                    target, text, budget=budget, run_id=run_id)
            _print_output(console, agent_res.output)
            console.print(_turns_table(agent_res))
            print_cache_line(console, run_prices(opts.config, sim=opts.sim),
                             spent_of(agent_res))
            return {"run_id": agent_res.run_id, "status": "succeeded",
                    "output": to_jsonable(agent_res.output), "cost_usd": agent_res.cost_usd,
                    "usage": to_jsonable(agent_res.usage), "turns": len(agent_res.turns)}
    if opts.store is not None:
        # A batch with an identity (shoal runs --batch, shoal resume BATCH_ID), here or
        # on a Dask cluster (--cluster).
        from shoal.cli.common import lease_reaches_items
        from shoal.cli.runs_cmd import journal_meta
        from shoal.flows.lease import lease_options
        from shoal.scale.cli import run_batch_cli

        lease_reaches_items(run_id or "new", opts.cluster, force=False, lease_s=opts.lease_s,
                            here="shoal run ... without --cluster")
        with lease_options(lease_s=opts.lease_s):  # each item's journal's (run here)
            result = await run_batch_cli(
                target, items, client=client, store=opts.store, cluster=opts.cluster,
                sim=opts.sim, config=opts.config, run_id=run_id,
                concurrency=opts.concurrency, budget_usd=budget_usd, progress=opts.progress,
                console=console, meta=journal_meta(opts.target_spec, model=opts.model,
                                                   sim=opts.sim, config=opts.config),
                stopped=opts.stopped)
    else:
        batch = Batch(target, concurrency=opts.concurrency, client=client, run_id=run_id,
                      budget_usd=budget_usd, progress=opts.progress, console=console)
        try:
            result = await batch.run(dict(items))
        except asyncio.CancelledError:  # Ctrl-C: its items as they stood
            from shoal.cli.batch_stop import print_batch_interrupted

            opts.stopped.update(await print_batch_interrupted(
                console, batch, [label for label, _ in items], store=None))
            raise
    console.print(result.table())
    print_cache_line(console, run_prices(opts.config, sim=opts.sim), spent_of(result))
    return {
        "items": [
            {"input": label, "status": it.status, "output": to_jsonable(it.output),
             "error": it.error, "cost_usd": it.cost_usd, "usage": to_jsonable(it.usage),
             "latency_s": round(it.latency_s, 3), "run_id": it.run_id}
            for (label, _), it in zip(items, result.items, strict=True)
        ],
        "succeeded": len(result.succeeded), "failed": len(result.failed),
        "cost_usd": result.cost_usd, "usage": to_jsonable(result.usage),
    }


def _flow_summary(console: Console, res: FlowResult, opts: RunOptions) -> dict[str, Any]:
    from shoal.agents.recorder import to_jsonable
    from shoal.cli.live import print_cache_line, run_prices, spent_of

    _print_output(console, res.output)
    console.print(res.table())
    print_cache_line(console, run_prices(opts.config, sim=opts.sim), spent_of(res))
    if opts.store is not None:
        console.print(plain(f"journaled as run {res.run_id} in {shown_url(opts.store)}"))
    return {"run_id": res.run_id, "status": res.status, "output": to_jsonable(res.output),
            "steps": res.rows(), "cost_usd": res.cost_usd, "usage": to_jsonable(res.usage)}


def failure_summary(exc: ShoalError) -> dict[str, Any]:
    """What ``--json`` holds for a run that failed: ``status`` "failed", the ``error``
    and, when the run got that far, its ``run_id``, ``steps``, cost and usage so far."""
    from shoal.agents.recorder import to_jsonable

    doc: dict[str, Any] = {"status": "failed", "error": str(exc),
                           "error_type": type(exc).__name__}
    if isinstance(exc, StepFailed) and exc.result is not None:
        res = exc.result
        doc = {"run_id": res.run_id, **doc, "step": exc.step, "output": None,
               "steps": res.rows(), "cost_usd": res.cost_usd, "usage": to_jsonable(res.usage)}
    return doc


def write_json(path: Path, doc: dict[str, Any], console: Console) -> None:
    """``--json``: ``doc`` written to ``path`` (a path that cannot be written: a warning,
    the run's own outcome stands)."""
    try:
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str), "utf-8")
    except OSError as exc:
        console.print(plain(f"warning: could not write {path}: {exc.strerror or exc}"),
                      style="yellow")
        return
    console.print(plain(f"results written to {path}"))


def _print_output(console: Console, output: Any) -> None:
    from rich.panel import Panel

    from shoal.flows.flow import as_text

    console.print(Panel(plain(as_text(output).strip() or "(empty answer)"), title="output",
                        expand=False))


def _turns_table(result: Any) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=f"agent {result.agent} · run {result.run_id}", box=box.SIMPLE_HEAD)
    for col in ("turn", "model", "latency", "tok in", "tok out", "cost $", "tools", "note"):
        table.add_column(col)
    for t in result.turns:
        table.add_row(str(t.turn), t.model, f"{t.latency_s:.2f}s", str(t.usage.input_tokens),
                      str(t.usage.output_tokens), f"{t.cost_usd:.6f}",
                      ", ".join(t.tool_calls), t.note[:40])
    return table


async def _main(items: list[tuple[str, Any]], opts: RunOptions, console: Console
                ) -> dict[str, Any]:
    from shoal.config import Config
    from shoal.sim import SimConfig, SimServer, config_for_sim
    from shoal.traffic.router import Router

    # Every model the run names is checked before anything runs (not when a step is reached).
    config = config_for_sim("http://127.0.0.1:1") if opts.sim else Config.load(opts.config)
    if opts.model:
        check_model(config, opts.model, "-m/--model")
    target = load_target(opts.target_spec)
    if opts.model:
        target = _override_model(target, opts.model)
    check_models(target, config)
    # [alerts] of shoal.toml (with --sim, of --config when given)
    alerts = Config.load(opts.config).alerts if opts.sim and opts.config else config.alerts
    if not opts.sim:
        async with Router(config) as router, _observed(router, opts, console, alerts):
            return await _execute(target, items, client=router, opts=opts, console=console)
    async with SimServer(SimConfig()) as server, Router(config_for_sim(server.url)) as router, \
            _observed(router, opts, console, alerts):
        return await _execute(target, items, client=router, opts=opts, console=console)


@contextlib.asynccontextmanager
async def _observed(router: Router, opts: RunOptions, console: Console,
                    alerts: AlertsConfig | None) -> AsyncIterator[object]:
    """Metrics served (--metrics-port) or pushed (--metrics-push), and alerts, around
    the run; without live progress, a line on stderr while a call keeps being retried."""
    from shoal.observe.session import observing

    async with observing(router, metrics_port=opts.metrics_port, push_url=opts.metrics_push,
                         job="shoal_run", alerts=alerts,
                         announce=lambda line: console.print(plain(line))) as session:
        if opts.progress:
            yield session
            return
        from rich.console import Console

        from shoal.cli.notices import RetryNotices

        stop = router.events.subscribe(kinds={"retry": RetryNotices(Console(stderr=True))})
        try:
            yield session
        finally:
            stop()


def run(
    target: Annotated[str, typer.Argument(
        metavar="TARGET", help="module:object, file.py:object, or a .toml/.yaml flow spec.")],
    inputs: Annotated[list[str] | None, typer.Argument(
        metavar="INPUT", help="Inputs (several = a batch).")] = None,
    *,
    input_file: Annotated[Path | None, typer.Option(
        "--input-file", "-f", help="A file as the input (.jsonl: one input per line).")] = None,
    input_dir: Annotated[Path | None, typer.Option(
        "--input-dir", "-d", help="A folder: one input per file (a batch).")] = None,
    glob: Annotated[str, typer.Option(help="Which files of --input-dir.")] = "*",
    json_out: Annotated[Path | None, typer.Option(
        "--json", "-o", help="Write the results as JSON to this file.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="shoal.toml (default: $SHOAL_CONFIG or ./shoal.toml).")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Run every agent on this model instead.")] = None,
    sim: Annotated[bool, typer.Option(
        "--sim", help="Serve every model from an in-process simulator (offline).")] = False,
    concurrency: Annotated[int, typer.Option(help="Batch items at once.")] = 8,
    run_id: Annotated[str | None, typer.Option(help="Run id (to name or resume a run).")]
    = None,
    budget_usd: Annotated[float | None, typer.Option(
        callback=_budget_usd_option,
        help="Dollar budget for the run: a positive number (default: none).")] = None,
    progress: Annotated[bool, typer.Option(
        help="Live progress: each step's state, tokens and cost (a bar for batches).")] = True,
    store: Annotated[str | None, typer.Option(
        "--store", envvar="SHOAL_STORE",
        help="Journal the run in this store (e.g. sqlite:///.shoal/runs.db); "
             "`shoal resume RUN_ID` continues it.")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=0, max=65535,
        help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics "
             "while it runs (0: any free port; see shoal top).")]
    = None,
    metrics_push: Annotated[str | None, typer.Option(
        "--metrics-push", help="Push the metrics to this Prometheus Pushgateway URL at "
                               "the end (a short job).")] = None,
    cluster: Annotated[str | None, typer.Option(
        "--cluster", envvar="SHOAL_CLUSTER",
        help="Run the batch on this Dask scheduler (tcp://host:8786); needs --store "
             "every worker reaches (postgresql://...). See docs/scale.md.")] = None,
    lease_s: LeaseOpt = DEFAULT_LEASE_S,
) -> None:
    """Run an agent, a flow or a flow spec on one input or a batch of inputs.

    Exit status: 0 done, 1 the run (or a batch item) failed or its store failed (it
    prints which steps were saved), 2 a usage or config error, 3 another process
    executes that --run-id (it holds the run's lease), 130 interrupted (Ctrl-C: a single
    run prints its steps so far, a batch its items, and, journaled, the `shoal resume`
    command)."""
    from rich.console import Console

    console = Console(stderr=False)
    opts: RunOptions | None = None
    try:
        items = load_inputs(list(inputs or []), input_file, input_dir, glob)
        if not items:
            raise ConfigError("give an input: an argument, --input-file or --input-dir")
        if cluster and store is None:
            raise ConfigError("--cluster journals every item: give --store "
                              "postgresql://user@db-host/db (a store every worker reaches)")
        opts = RunOptions(target, config=config, model=model, sim=sim,
                          concurrency=concurrency, run_id=run_id, budget_usd=budget_usd,
                          progress=progress, store=store, metrics_port=metrics_port,
                          metrics_push=metrics_push, cluster=cluster, lease_s=lease_s)
        with store_notes():  # a failed store's lease and outcome warnings: after it all
            summary = run_loop(_main(items, opts, console))
    except ShoalError as exc:
        if json_out is not None and exit_code(exc) == EXIT_FAILED:  # the run failed
            stopped = opts.stopped if opts is not None else {}
            write_json(json_out, {**failure_summary(exc), **stopped}, console)
        raise fail(exc) from None
    except KeyboardInterrupt:  # the steps (a batch: its items) and how to go on are printed
        if json_out is not None and opts is not None and opts.stopped:  # a batch's items
            write_json(json_out, opts.stopped, console)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_out is not None:
        write_json(json_out, summary, console)
    failed = summary.get("failed", 0) or summary.get("status") == "failed"
    if failed:
        raise typer.Exit(EXIT_FAILED)
