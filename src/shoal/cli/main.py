"""The ``shoal`` command. Subcommands live in their own modules and register here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="shoal",
    help="Run many LLM agents together: pipelines, simulator, runs.",
    no_args_is_help=True,
    add_completion=False,
)


def _register() -> None:
    from shoal.cli import sim_cmd

    sim_cmd.register(app)


def main() -> None:
    _register()
    app()
