"""The ``shoal`` command. Subcommands live in their own modules and register here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="shoal",
    help="Run many LLM agents together: pipelines, simulator, runs.",
    no_args_is_help=True,
    add_completion=False,
    # Markdown: a help text's lines wrap as one paragraph (with "rich" each source line
    # break stayed, and the terminal's wrap cut across them); `code` shows as code.
    rich_markup_mode="markdown",
)


@app.callback()
def _root() -> None:
    """Run many LLM agents together: pipelines, simulator, runs."""


def _register() -> None:
    from shoal.cli import (
        channels_cmd,
        cost_cmd,
        demo_cmd,
        gateway_cmd,
        keys_cmd,
        models_cmd,
        run_cmd,
        runs_cmd,
        sim_cmd,
        top_cmd,
    )

    channels_cmd.register(app)
    cost_cmd.register(app)
    demo_cmd.register(app)
    gateway_cmd.register(app)
    models_cmd.register(app)
    keys_cmd.register(app)
    run_cmd.register(app)
    runs_cmd.register(app)
    sim_cmd.register(app)
    top_cmd.register(app)


def main() -> None:
    _register()
    app()
