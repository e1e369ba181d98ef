"""``shoal demo TOPIC``: the main job — Researcher → Analyzer → Writer on a topic.

Each role uses its preferred model when that provider's API key is set, and the
configuration's default model otherwise (the offline model when no key is set).
``--sim`` serves the preferred models from an in-process simulator instead: no keys.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shoal.cli.common import Command

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.config import Config
    from shoal.flows.flow import FlowResult

__all__ = ["register"]

PREFERRED = {"researcher": "deepseek-chat", "analyzer": "claude-opus-4-6", "writer": "gpt-4o"}


def register(app: typer.Typer) -> None:
    app.command("demo", cls=Command)(demo)


def demo(
    topic: Annotated[str, typer.Argument(
        metavar="TOPIC", help="What the pipeline researches and writes about.")],
    *,
    researcher: Annotated[str | None, typer.Option(help="Model for the researcher.")] = None,
    analyzer: Annotated[str | None, typer.Option(help="Model for the analyzer.")] = None,
    writer: Annotated[str | None, typer.Option(help="Model for the writer.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="shoal.toml (default: $SHOAL_CONFIG, else ./shoal.toml).")] = None,
    sim: Annotated[bool, typer.Option(
        "--sim", help="Serve every model from an in-process simulator: no keys, no "
                      "downloads, about a second; the preferred model per role, at catalog "
                      "prices.")] = False,
    progress: Annotated[bool, typer.Option(
        help="Live progress: each step's state, tokens and cost.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON.")
                        ] = None,
) -> None:
    """Run a Researcher -> Analyzer -> Writer pipeline on TOPIC and print the report and a
    table of steps, tokens, latency and cost.

    Exit status: 0 done, 1 the run failed, 2 a usage or config error."""
    from rich.console import Console

    from shoal.cli.common import fail, plain
    from shoal.cli.loop import run
    from shoal.config import Config
    from shoal.errors import ShoalError

    console = Console()
    try:
        chosen = {"researcher": researcher, "analyzer": analyzer, "writer": writer}
        if sim:
            from shoal.sim import config_for_sim

            cfg = config_for_sim("http://127.0.0.1:1")  # to check the models; served below
        else:
            cfg = Config.load(config)
        models: dict[str, str] = {}
        notes: list[str] = []
        fallback = cfg.default_model()
        for role, preferred in PREFERRED.items():
            explicit = chosen[role]
            if explicit is not None:
                # An unknown model, or one with no key: refused before any step runs
                # (the steps before it would be paid for, then the run would fail).
                _check_chosen(cfg, role, explicit, fallback)
                models[role] = explicit
            elif sim or cfg.usable(preferred):
                models[role] = preferred
            else:
                env = cfg.channels_for(preferred)[0].api_key_env
                notes.append(f"{role}: ${env} is not set, so it runs on {fallback}"
                             f"{' (offline)' if fallback == 'smollm2-135m' else ''}")
                models[role] = fallback
        for note in notes:  # once every role's model is known to be usable
            console.print(plain(note), style="dim")
        result = run(_run(topic, cfg, models, sim=sim, console=console, progress=progress))
        if json_out is not None:
            doc = {"run_id": result.run_id, "status": result.status, "output": result.output,
                   "cost_usd": result.cost_usd, "steps": result.rows()}
            json_out.write_text(json.dumps(doc, indent=2, default=str))
    except ShoalError as exc:
        raise fail(exc) from None
    if result.status == "failed":
        raise typer.Exit(1)


def _check_chosen(cfg: Config, role: str, model: str, instead: str) -> None:
    """``--ROLE MODEL`` must name a model of the configuration that can be reached: it
    or one of its fallbacks has a channel with its API key. A ``ConfigError`` naming the
    option otherwise, before anything runs."""
    from shoal.cli.common import check_model, check_reachable

    check_model(cfg, model, f"--{role}")
    check_reachable(cfg, [model], f"--{role} {model}",
                    instead=f"pick another model for --{role}, or leave --{role} out (it "
                            f"then runs on {instead}). Nothing was run")


async def _run(topic: str, cfg: Config, models: dict[str, str], *, sim: bool,
               console: Console, progress: bool) -> FlowResult:
    from shoal.agents.recorder import NullRecorder
    from shoal.cli.live import live_progress
    from shoal.examples_builtin import (
        content_pipeline,
        render_pipeline_result,
        run_content_pipeline,
    )
    from shoal.traffic.router import Router

    async with contextlib.AsyncExitStack() as stack:
        if sim:
            from shoal.sim import SimConfig, SimServer, config_for_sim

            server = await stack.enter_async_context(SimServer(SimConfig()))
            cfg = config_for_sim(server.url)
        router = await stack.enter_async_context(Router(cfg))
        with live_progress(console, content_pipeline(models), enabled=progress) as watch:
            recorder = None if watch is None else watch.watch(NullRecorder())
            result = await run_content_pipeline(topic, router=router, models=models,
                                                recorder=recorder)
    render_pipeline_result(result, console, journaled=False)  # a NullRecorder: kept nowhere
    return result
