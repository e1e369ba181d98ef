"""``shoal demo TOPIC``: the main job — Researcher → Analyzer → Writer on a topic.

Each role uses its preferred model when that provider's API key is set, and the
configuration's default model otherwise (the offline model when no key is set).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from shoal.config import Config
    from shoal.flows.flow import FlowResult

__all__ = ["register"]

PREFERRED = {"researcher": "deepseek-chat", "analyzer": "claude-opus-4-6", "writer": "gpt-4o"}


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    topic: Annotated[str, typer.Argument(help="What the pipeline researches and writes about.")],
    *,
    researcher: Annotated[str | None, typer.Option(help="Model for the researcher.")] = None,
    analyzer: Annotated[str | None, typer.Option(help="Model for the analyzer.")] = None,
    writer: Annotated[str | None, typer.Option(help="Model for the writer.")] = None,
    config: Annotated[Path | None, typer.Option(help="shoal.toml to use.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON.")
                        ] = None,
) -> None:
    """Run a Researcher -> Analyzer -> Writer pipeline on TOPIC and print the report and a
    table of steps, tokens, latency and cost."""
    from rich.console import Console

    from shoal.cli.loop import run
    from shoal.config import Config
    from shoal.errors import ShoalError

    console = Console()
    try:
        cfg = Config.load(config)
        chosen = {"researcher": researcher, "analyzer": analyzer, "writer": writer}
        models: dict[str, str] = {}
        fallback = cfg.default_model()
        for role, preferred in PREFERRED.items():
            explicit = chosen[role]
            if explicit is not None:
                cfg.model(explicit)  # unknown model: a clear error before anything runs
                models[role] = explicit
            elif cfg.usable(preferred):
                models[role] = preferred
            else:
                env = cfg.channels_for(preferred)[0].api_key_env
                console.print(f"[dim]{role}: ${env} is not set, so it runs on {fallback}"
                              f"{' (offline)' if fallback == 'smollm2-135m' else ''}[/dim]")
                models[role] = fallback
        result = run(_run(topic, cfg, models))
        if json_out is not None:
            doc = {"run_id": result.run_id, "status": result.status, "output": result.output,
                   "cost_usd": result.cost_usd, "steps": result.rows()}
            json_out.write_text(json.dumps(doc, indent=2, default=str))
    except ShoalError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


async def _run(topic: str, cfg: Config, models: dict[str, str]) -> FlowResult:
    from shoal.examples_builtin import render_pipeline_result, run_content_pipeline
    from shoal.traffic.router import Router

    async with Router(cfg) as router:
        result = await run_content_pipeline(topic, router=router, models=models)
    render_pipeline_result(result)
    return result
