"""The shell blocks of README.md and docs/*.md: every ``shoal`` command they show exists as
written, and the blocks marked runnable run.

- **Every ``shoal …`` command** in a ``bash``/``console``/``sh`` or unlabelled block (in a
  ``console`` block, the ``$ `` lines) is parsed by shoal's own command line, as the
  shell would pass it, without running it: the subcommand exists, each option exists and
  its value converts, the arguments fit. A renamed or removed option fails here. A line
  that is a synopsis (``TARGET``, ``[...]``) is not a command and is left out.
- **A block marked ``<!-- docs-test: run -->``** on the line before its fence runs for
  real with ``bash -e`` in a fresh directory, with shoal's ``bin`` first on ``PATH``, no
  provider key in the environment and ``SHOAL_CONFIG`` at ``docs/sim.toml`` (the
  simulator is not started: such a block needs none). A ``console`` block's ``$ `` lines
  are its commands; the rest is output, not compared.

Blocks that need servers (a gateway, a Dask cluster, a database on another host) or the
state an earlier block made are parsed, not run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from test_docs_run import ALL_BLOCKS, SIM_TOML, Block, _clean_env

SHELL_LANGS = {"bash", "console", "sh", "shell", ""}
RUN_RE = re.compile(r"^<!--\s*docs-test:\s*run\s*-->$")
SYNOPSIS = re.compile(r"\[|\b[A-Z][A-Z_]{2,}\b(?!=)")  # [OPTIONS], TARGET, RUN_ID
RUN_TIMEOUT_S = 120.0


def _lines(block: Block) -> list[str]:
    """The block's command lines: continuations joined; a console block's ``$ `` lines."""
    raw = block.code.replace("\\\n", " ").splitlines()
    if block.lang == "console":
        return [line.strip()[2:] for line in raw if line.strip().startswith("$ ")]
    return [line.strip() for line in raw if line.strip() and not line.strip().startswith("#")]


def _shoal_args(line: str) -> list[str] | None:
    """The arguments of the ``shoal`` command on ``line`` (None: it runs none)."""
    inner = re.search(r"\$\((shoal [^)]*)\)", line)  # KEY=$(shoal keys create ...)
    if inner is not None:
        line = inner[1]
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    while words and re.fullmatch(r"\w+=.*", words[0]):  # VAR=value shoal ...
        words.pop(0)
    if not words or words[0] != "shoal":
        return None
    args: list[str] = []
    for word in words[1:]:
        if word in ("&", "&&", ";", "|", "||"):
            break
        args.append(word)
    return args


def _commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for block in ALL_BLOCKS:
        if block.lang not in SHELL_LANGS:
            continue
        for line in _lines(block):
            args = _shoal_args(line)
            if args is not None and not SYNOPSIS.search(" ".join(args)):
                found.append((block.id, line, args))
    return found


COMMANDS = _commands()


_APP: list[Any] = []


def _cli() -> Any:
    """shoal's command line as click sees it, every subcommand registered (once)."""
    if not _APP:
        from shoal.cli.main import _register, app

        _register()
        _APP.append(typer.main.get_command(app))
    return _APP[0]


def _parse(args: list[str]) -> None:
    """Parse ``shoal ARGS`` down to its last subcommand, running nothing."""
    command = _cli()
    ctx = command.make_context("shoal", list(args))
    while hasattr(command, "resolve_command"):  # a group (typer vendors its own click)
        # click keeps the subcommand's words in _protected_args (protected_args before 8.3)
        protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])
        rest = [*protected, *ctx.args]
        if not rest:
            return
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None, f"no command {rest[0]!r}"
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub


@pytest.mark.parametrize(("where", "line", "args"), COMMANDS,
                         ids=[f"{w}:{' '.join(a[:2])}" for w, _, a in COMMANDS])
def test_a_documented_shoal_command_parses(where: str, line: str, args: list[str],
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # options naming files that must exist: put them there
    for word in args:
        if word.endswith((".toml", ".py", ".html")) and "/" not in word:
            (tmp_path / word).write_text("", encoding="utf-8")
    try:
        _parse(args)
    except typer.Exit:
        pass  # --help and the like: parsed
    except Exception as exc:
        if not hasattr(exc, "format_message"):  # not a usage error: shoal's own bug
            raise
        pytest.fail(f"{where}: `{line}` does not parse: {exc.format_message()}")


def _runnable() -> list[Block]:
    marked = []
    for block in ALL_BLOCKS:
        lines = block.path.read_text(encoding="utf-8").splitlines()[:block.line - 1]
        previous = next((x.strip() for x in reversed(lines) if x.strip()), "")
        if RUN_RE.match(previous):
            assert block.lang in SHELL_LANGS, f"{block.id}: only shell blocks are run here"
            marked.append(block)
    return marked


RUNNABLE = _runnable()


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_a_runnable_shell_block_runs(block: Block, tmp_path: Path) -> None:
    env = _clean_env(SIM_TOML)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    script = "set -euo pipefail\n" + "\n".join(_lines(block)) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=RUN_TIMEOUT_S, check=False)
    assert done.returncode == 0, (
        f"{block.id} exited {done.returncode}:\n{done.stdout[-2000:]}\n--- stderr ---\n"
        f"{done.stderr[-4000:]}")


def test_shell_block_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """How many documented commands were parsed and blocks run (shown under -q too)."""
    with capsys.disabled():
        print(f"\ndocs shell: {len(COMMANDS)} shoal commands parsed, "
              f"{len(RUNNABLE)} blocks run ({', '.join(b.id for b in RUNNABLE)})")
    assert len(COMMANDS) >= 20, "few shoal commands found: is the extractor broken?"
    assert RUNNABLE, "no runnable shell block found: is the marker check broken?"
