"""``shoal resume RUN_ID``: continue a failed, cancelled or killed run from its journal
(a batch id: its unfinished items). The run's ``meta`` (:func:`shoal.cli.runs_cmd.journal_meta`)
says how to rebuild its flow; the run lease (:mod:`shoal.flows.lease`) keeps a second
executor out (exit 3) unless ``--force``. A batch's items take their leases with
``--force`` and ``--lease-s`` too (:func:`~shoal.flows.lease.lease_options`), when they
run in this process.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli.common import (
    EXIT_FAILED,
    LeaseOpt,
    StoreOpt,
    default_url,
    exit_code,
    fail,
    lease_reaches_items,
    require_store,
)
from shoal.errors import ConfigError, ShoalError
from shoal.flows.lease import DEFAULT_LEASE_S, lease_options

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.agents.client import ModelClient
    from shoal.agents.guards import Budget
    from shoal.flows.flow import Flow

__all__ = ["resume"]


def _budget_usd_option(value: float | None) -> float | None:
    """``--budget-usd``: positive and finite, or not given (the run's own budget)."""
    from shoal.cli.run_cmd import positive_budget

    return positive_budget(value, unset="to keep the run's own budget")


def resume(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to continue.")],
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
        "--budget-usd", callback=_budget_usd_option,
        help="Dollar budget for the whole run, replayed steps included: a positive number "
             "(default: the run's own --budget-usd).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Take the run over (a batch: each unfinished item) even while "
                        "another process holds its lease. If that one is alive, what it "
                        "has in flight is paid twice.")]
    = False,
    lease_s: LeaseOpt = DEFAULT_LEASE_S,
) -> None:
    """Continue a failed, cancelled or killed run: journaled steps and model turns replay
    with zero calls, the rest runs. A batch id runs its unfinished items again.

    Exit status 1 if the run fails again, 2 for a usage or config error (an unknown run,
    a changed flow, an unknown model), 3 while another process executes the run (it
    holds the run's lease; --force takes it over), 130 interrupted (Ctrl-C: the steps
    so far, a batch its items, and the command to continue are printed). A batch waits
    for an item another process executes; --force takes every item over (items run
    here: --cluster local)."""
    from rich.console import Console

    from shoal.cli.loop import run as run_loop
    from shoal.cli.run_cmd import EXIT_INTERRUPTED, failure_summary, write_json
    from shoal.cli.store_notes import store_notes

    console = Console()
    require_store(store, run_id)
    # A store that failed mid-run: what --json adds; a batch stopped by Ctrl-C: --json.
    stopped: dict[str, Any] = {}
    try:
        with store_notes():  # a failed store's lease and outcome warnings: after it all
            summary = run_loop(_resume(run_id, store, target=target, config=config,
                                       sim=sim, allow_changed=allow_changed,
                                       console=console, progress=progress,
                                       cluster=cluster, budget_usd=budget_usd,
                                       force=force, lease_s=lease_s, stopped=stopped))
    except ShoalError as exc:
        if json_out is not None and exit_code(exc) == EXIT_FAILED:  # the run failed again
            write_json(json_out, {**failure_summary(exc), **stopped}, console)
        raise fail(exc) from None
    except KeyboardInterrupt:  # the steps (a batch: its items) and how to go on are printed
        if json_out is not None and stopped:  # a batch's items
            write_json(json_out, stopped, console)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_out is not None:
        write_json(json_out, summary, console)


async def _resume(run_id: str, url: str | None, *, target: str | None, config: Path | None,
                  sim: bool | None, allow_changed: bool, console: Console,
                  progress: bool = True, cluster: str | None = None,
                  budget_usd: float | None = None, force: bool = False,
                  lease_s: float = DEFAULT_LEASE_S, stopped: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    from shoal.agents.guards import Budget
    from shoal.cli.common import check_models
    from shoal.scale.batch_ids import is_batch
    from shoal.stores import open_store

    async with open_store(url) as store:
        run = await store.require_run(run_id)
        if is_batch(run):  # its items: only the unfinished run again (shoal.scale)
            from shoal.scale.cli import resume_batch_cli

            where = cluster if cluster is not None else run.meta.get("cluster")
            lease_reaches_items(run.run_id, where, force=force, lease_s=lease_s)
            with lease_options(force=force, lease_s=lease_s):  # each item's journal's
                return await resume_batch_cli(run, url or default_url(), store,
                                              target=target,
                                              config=config, sim=sim, cluster=cluster,
                                              progress=progress, console=console,
                                              stopped=stopped)
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
        recorded = meta.get("budget_usd")
        if budget_usd is None and isinstance(recorded, int | float) and not \
                isinstance(recorded, bool) and math.isfinite(recorded) and recorded > 0:
            # The run's own `shoal run --budget-usd` (0 once meant none: still none).
            budget_usd = float(recorded)
        budget = Budget(max_usd=budget_usd) if budget_usd is not None else None
        flow = _rebuild(spec, model)
        if not use_sim:
            from shoal.config import Config
            from shoal.traffic.router import Router

            cfg = Config.load(config)
            check_models(flow, cfg)
            async with Router(cfg) as router:
                return await _continue(flow, run_id, store, router, allow_changed=allow_changed,
                                       console=console, progress=progress, budget=budget,
                                       force=force, lease_s=lease_s, url=url,
                                       stopped=stopped)
        from shoal.sim import SimConfig, SimServer, config_for_sim
        from shoal.traffic.router import Router

        check_models(flow, config_for_sim("http://127.0.0.1:1"))
        async with SimServer(SimConfig()) as server, \
                Router(config_for_sim(server.url)) as router:
            return await _continue(flow, run_id, store, router, allow_changed=allow_changed,
                                   console=console, progress=progress, budget=budget,
                                   force=force, lease_s=lease_s, url=url,
                                   stopped=stopped)


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
                    budget: Budget | None = None, force: bool = False,
                    lease_s: float = DEFAULT_LEASE_S, url: str | None = None,
                    stopped: dict[str, Any] | None = None) -> dict[str, Any]:
    from shoal.agents.recorder import to_jsonable
    from shoal.cli.live import live_progress, print_cache_line
    from shoal.cli.stopped import print_interrupted, print_store_failed
    from shoal.errors import RunBusy, StepFailed, StoreError
    from shoal.flows.flow import as_text
    from shoal.flows.progress import RunProgress
    from shoal.flows.resume import resume as resume_run

    watch = RunProgress(flow)  # followed with --no-progress too: a Ctrl-C prints it
    try:
        with live_progress(console, flow, enabled=progress) as shown:
            if shown is not None:  # drawn as it goes
                watch = shown
            result = await resume_run(run_id, flow, store=store, client=client,
                                      allow_changed=allow_changed, budget=budget,
                                      progress=watch, force=force, lease_s=lease_s)
    except asyncio.CancelledError:  # Ctrl-C: where it stood, and how to go on
        print_interrupted(console, watch, flow=flow.name, run_id=run_id,
                          store=url or default_url())
        raise
    except StoreError as exc:
        if isinstance(exc, RunBusy):
            raise  # a lease held or lost elsewhere: exit 3, its own advice
        # The store failed in the middle: what was saved, and how to go on.
        found = print_store_failed(console, watch, flow=flow.name, run_id=run_id,
                                   store=url or default_url())
        if stopped is not None:
            stopped.update(found)
        raise
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
