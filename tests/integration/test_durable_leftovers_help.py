"""Every ``shoal`` command's usage line names its arguments as the docs write them
(``shoal show RUN_ID``, ``shoal run TARGET [INPUT]...``): Typer 0.29 wrote a required
argument in braces (``shoal show [OPTIONS] {run_id}``), which a newcomer read as a
placeholder the help forgot to fill in. Checked on ``--help`` and on the usage a missing
argument prints, for every command of the ``shoal`` app itself."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from shoal.cli.main import _register, app


@pytest.fixture(scope="module")
def shoal() -> Any:
    """The ``shoal`` group as Typer builds it (on its own copy of click)."""
    if not app.registered_commands:  # once per process: _register adds, never replaces
        _register()
    return typer.main.get_command(app)


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):  # a group: `shoal keys`
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


def _usage(args: list[str]) -> str:
    out = CliRunner().invoke(app, args, env={"COLUMNS": "200"}, catch_exceptions=False)
    line = next((ln for ln in out.output.splitlines() if "Usage:" in ln), "")
    return " ".join(line.split())


def test_no_usage_line_shows_braces(shoal: Any) -> None:
    commands = _commands(shoal)
    assert len(commands) >= 20, commands  # every command and `keys` subcommand
    for command in commands:
        usage = _usage([*command, "--help"])
        assert usage.startswith(f"Usage: shoal {' '.join(command)}"), (command, usage)
        assert "{" not in usage and "}" not in usage, usage
        # arguments in capitals, as the docs and error messages write them
        assert not re.search(r"\[?[a-z_]+\]?(\.\.\.)?$", usage.split("[OPTIONS]")[-1]), usage


@pytest.mark.parametrize(("args", "usage"), [
    (["show", "--help"], "Usage: shoal show [OPTIONS] RUN_ID"),
    (["resume", "--help"], "Usage: shoal resume [OPTIONS] RUN_ID"),
    (["delete", "--help"], "Usage: shoal delete [OPTIONS] RUN_ID..."),
    (["run", "--help"], "Usage: shoal run [OPTIONS] TARGET [INPUT]..."),
    (["batch", "--help"], "Usage: shoal batch [OPTIONS] TARGET [INPUT]..."),
    (["demo", "--help"], "Usage: shoal demo [OPTIONS] TOPIC"),
    (["keys", "revoke", "--help"], "Usage: shoal keys revoke [OPTIONS] KEY"),
    (["show"], "Usage: shoal show [OPTIONS] RUN_ID"),  # a missing argument's usage error
])
def test_usage_names_the_arguments(shoal: Any, args: list[str], usage: str) -> None:
    assert _usage(args) == usage
