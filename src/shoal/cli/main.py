"""The ``shoal`` command. Subcommands live in their own modules and register here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="shoal",
    help="Run many LLM agents together: pipelines, simulator, runs.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Run many LLM agents together: pipelines, simulator, runs."""


def _register() -> None:
    from shoal.cli import demo_cmd, sim_cmd

    demo_cmd.register(app)
    sim_cmd.register(app)
    try:
        from shoal.cli import run_cmd
    except ImportError:  # pragma: no cover - run_cmd is optional while it is being built
        return
    register = getattr(run_cmd, "register", None)
    if register is not None:
        register(app)


def main() -> None:
    _register()
    app()
