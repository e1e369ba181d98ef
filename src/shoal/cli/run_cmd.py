"""``shoal run TARGET``: run an agent, a flow or a flow spec on one input or a batch.

TARGET is ``module:object`` (or ``path/to/file.py:object``) naming an Agent, a Flow, a
zero-argument factory of one, or an async function of one input; or a ``.toml`` /
``.yaml`` flow spec (see docs/flows.md). Inputs come from arguments, ``--input-file``
or ``--input-dir`` (one input per file: a batch). One input prints the output and a
table of steps; several run as a batch with a live progress bar.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli.common import EXIT_FAILED, LeaseOpt, check_model, check_models, fail, plain
from shoal.cli.loop import run as run_loop
from shoal.errors import ConfigError, ShoalError, StepFailed
from shoal.flows.lease import DEFAULT_LEASE_S
from shoal.stores import shown_url, store_option

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from rich.console import Console

    from shoal.agents.client import ModelClient
    from shoal.flows.flow import FlowResult
    from shoal.observe.alert_config import AlertsConfig
    from shoal.traffic.router import Router

__all__ = ["load_inputs", "load_target", "register", "run"]


def register(app: typer.Typer) -> None:
    """Add the ``run`` command to *app*."""
    app.command("run")(run)
    app.command("batch", help="Run TARGET over many inputs (as `shoal run`; with --store "
                "the batch is journaled, with --cluster it runs on a Dask cluster).")(run)


def _import_object(spec: str) -> Any:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"target {spec!r} must be 'module:object', 'file.py:object' or a "
                          ".toml/.yaml flow spec")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"no such file {path}")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        if mod_spec is None or mod_spec.loader is None:
            raise ConfigError(f"cannot import {path}")
        module = importlib.util.module_from_spec(mod_spec)
        folder = str(path.resolve().parent)
        if folder not in sys.path:  # its sibling modules import, as when run as a script
            sys.path.insert(0, folder)
        sys.modules[path.stem] = module
        mod_spec.loader.exec_module(module)
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")  # the current directory, like `python -m`
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no {attr!r}") from None


def _read_spec(path: Path) -> dict[str, Any]:
    text = path.read_text("utf-8")
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        yaml: Any = importlib.import_module("yaml")  # optional: PyYAML
    except ImportError:
        raise ConfigError(
            f"{path} is YAML, which needs PyYAML: pip install pyyaml (or write the spec as TOML)"
        ) from None
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with [flow] and [steps.NAME]")
    return data


def load_target(target: str) -> Any:
    """The Agent, Flow or async function TARGET names (factories are called)."""
    from shoal.agents.agent import Agent
    from shoal.flows.flow import Flow

    path = Path(target)
    if path.suffix in (".toml", ".yaml", ".yml") and ":" not in target:
        if not path.is_file():
            raise ConfigError(f"no such flow spec {path}")
        return Flow.from_spec(_read_spec(path), name=None)
    obj = _import_object(target)
    if isinstance(obj, Agent | Flow):
        return obj
    if callable(obj):
        params = [p for p in inspect.signature(obj).parameters.values()
                  if p.default is inspect.Parameter.empty]
        if not params:  # a factory
            made = obj()
            if inspect.isawaitable(made):
                raise ConfigError(f"{target} is an async function of no input; "
                                  "give it one parameter (the input)")
            if isinstance(made, Agent | Flow):
                return made
            raise ConfigError(f"{target}() returned {type(made).__name__}, not an Agent or Flow")
        return obj
    raise ConfigError(f"{target} is a {type(obj).__name__}, not an Agent, Flow or function")


def load_inputs(
    inputs: list[str], input_file: Path | None, input_dir: Path | None, pattern: str
) -> list[tuple[str, Any]]:
    """(label, input) pairs: arguments, then a file (``.jsonl``: one JSON input per line),
    then every file of a folder matching ``pattern`` (sorted)."""
    out: list[tuple[str, Any]] = [(f"arg{i}", text) for i, text in enumerate(inputs)]
    if input_file is not None:
        if not input_file.is_file():
            raise ConfigError(f"no such input file {input_file}")
        if input_file.suffix == ".jsonl":
            for n, line in enumerate(input_file.read_text("utf-8").splitlines()):
                if line.strip():
                    out.append((f"{input_file.name}:{n + 1}", json.loads(line)))
        else:
            out.append((str(input_file), input_file.read_text("utf-8")))
    if input_dir is not None:
        if not input_dir.is_dir():
            raise ConfigError(f"no such input folder {input_dir}")
        files = sorted(p for p in input_dir.glob(pattern) if p.is_file())
        if not files:
            raise ConfigError(f"no files match {pattern!r} in {input_dir}")
        out += [(str(p.relative_to(input_dir)), p.read_text("utf-8", errors="replace"))
                for p in files]
    return out


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
    budget = Budget(max_usd=budget_usd) if budget_usd else None
    if len(items) == 1 and isinstance(target, Flow | Agent) and not opts.cluster and (
            opts.store is not None or isinstance(target, Flow)):
        value = items[0][1]
        try:
            with live_progress(console, as_flow(target), enabled=opts.progress) as progress:
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
                    watched = None if progress is None else progress.watch(NullRecorder())
                    res = await target.run(value, run_id=run_id, client=client, budget=budget,
                                           recorder=watched)
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
            with live_progress(console, enabled=opts.progress) as progress:
                recorder = None if progress is None else progress.watch(NullRecorder())
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
                                                   sim=opts.sim, config=opts.config))
    else:
        batch = Batch(target, concurrency=opts.concurrency, client=client, run_id=run_id,
                      budget_usd=budget_usd, progress=opts.progress, console=console)
        result = await batch.run(dict(items))
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


def _observed(router: Router, opts: RunOptions, console: Console,
              alerts: AlertsConfig | None) -> AbstractAsyncContextManager[object]:
    """Metrics served (--metrics-port) or pushed (--metrics-push), and alerts, around
    the run."""
    from shoal.observe.session import observing

    return observing(router, metrics_port=opts.metrics_port, push_url=opts.metrics_push,
                     job="shoal_run", alerts=alerts,
                     announce=lambda line: console.print(plain(line)))


def run(
    target: Annotated[str, typer.Argument(help="module:object, file.py:object, or a "
                                               ".toml/.yaml flow spec.")],
    inputs: Annotated[list[str] | None, typer.Argument(help="Inputs (several = a batch).")]
    = None,
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
    budget_usd: Annotated[float | None, typer.Option(help="Dollar budget for the run.")] = None,
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

    Exit status: 0 done, 1 the run (or a batch item) failed, 2 a usage or config error,
    3 another process executes that --run-id (it holds the run's lease)."""
    from rich.console import Console

    console = Console(stderr=False)
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
        summary = run_loop(_main(items, opts, console))
    except ShoalError as exc:
        raise fail(exc) from None
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str),
                            "utf-8")
        console.print(plain(f"results written to {json_out}"))
    failed = summary.get("failed", 0) or summary.get("status") == "failed"
    if failed:
        raise typer.Exit(EXIT_FAILED)
