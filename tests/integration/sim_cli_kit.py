"""What the CLI tests of runs, journals, leases and batches share: a shoal.toml with one
channel on a simulator and one model ``m`` behind it, the run commands (``shoal show``,
``resume``, ``runs``…) on a Typer app of their own, and invoking them in this process;
or ``shoal`` as a process that Ctrl-C (SIGINT) stops as in a terminal (``shoal_argv``,
``clean_env``).

A plain module, not fixtures: each test module keeps its own ``sim`` and ``cli``
fixtures (their simulator settings differ) and calls these."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from shoal.cli.runs_cmd import register


def write_sim_toml(sim_url: str, path: Path) -> Path:
    """Write ``path``: channel ``sim`` (OpenAI wire) at the simulator ``sim_url``, model
    ``m`` on it at $1 / $2 per million tokens in / out."""
    path.write_text(textwrap.dedent(f"""
        [channels.sim]
        protocol = "openai"
        base_url = "{sim_url}/v1"
        api_key = "sk-test"
        provider = "openai"

        [models.m]
        channels = ["sim"]
        input = 1.0
        output = 2.0
    """))
    return path


def runs_cli() -> typer.Typer:
    """A Typer app with shoal's run commands registered on it."""
    app = typer.Typer()
    register(app)
    return app


def run_and_runs_cli() -> typer.Typer:
    """A Typer app with ``shoal run``/``batch`` and the run commands registered on it."""
    from shoal.cli import run_cmd

    app = runs_cli()
    run_cmd.register(app)
    return app


def invoke(app: typer.Typer, *args: str) -> Any:
    """Run ``app`` with ``args`` in this process; exceptions propagate."""
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


# -- `shoal` as a process, stopped with Ctrl-C ----------------------------------------


def shoal_argv(*args: str, prelude: str = "") -> list[str]:
    """The command line of a ``shoal ARGS`` process that handles Ctrl-C as in a terminal,
    even when this test process was started with SIGINT ignored (a background job: CI
    under nohup), which a child would inherit and keep. ``prelude``: Python run first
    (e.g. replacing a store's method, to stop the command at a chosen point)."""
    code = "\n".join([
        "import signal, sys",
        "signal.signal(signal.SIGINT, signal.default_int_handler)",
        "sys.argv[0] = 'shoal'",
        prelude,
        "from shoal.cli.main import main",
        "main()",
    ])
    return [sys.executable, "-c", code, *args]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``SHOAL_*`` settings, wide rows, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env["COLUMNS"] = "200"
    env.update(extra)
    return env
