"""What the CLI tests of runs, journals, leases and batches share: a shoal.toml with one
channel on a simulator and one model ``m`` behind it, the run commands (``shoal show``,
``resume``, ``runs``…) on a Typer app of their own, and invoking them in this process.

A plain module, not fixtures: each test module keeps its own ``sim`` and ``cli``
fixtures (their simulator settings differ) and calls these."""

from __future__ import annotations

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


def invoke(app: typer.Typer, *args: str) -> Any:
    """Run ``app`` with ``args`` in this process; exceptions propagate."""
    return CliRunner().invoke(app, list(args), catch_exceptions=False)
