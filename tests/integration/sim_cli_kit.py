"""What the CLI tests of runs, journals, leases and batches share: a shoal.toml with one
channel on a simulator and one model ``m`` behind it, the run commands (``shoal show``,
``resume``, ``runs``…) on a Typer app of their own, and invoking them in this process;
or ``shoal`` as a process that Ctrl-C (SIGINT) stops as in a terminal (``shoal_argv``,
``clean_env``).

A plain module, not fixtures: each test module keeps its own ``sim`` and ``cli``
fixtures (their simulator settings differ) and calls these."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
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


def wait_until(done: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    """Poll ``done()`` (a look at the store, a file...) until it is true; fail after
    ``timeout_s`` naming ``what`` was awaited. Synchronisation on state, not on time."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.05)


def ctrl_c(args: list[str], cwd: Path, ready: Callable[[], object], *,
           env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``shoal ARGS`` in ``cwd`` (``env``: default :func:`clean_env`), send it SIGINT
    once ``ready()`` is true, and return its exit status, stdout and stderr."""
    proc = subprocess.Popen(shoal_argv(*args), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=clean_env() if env is None else env)
    try:
        wait_until(lambda: ready() or proc.poll() is not None, "command in flight")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def item_outcomes(db: Path, batch_id: str) -> dict[int, tuple[str, str]]:
    """The outcomes of batch ``batch_id``'s items recorded in the SQLite file ``db``, read
    as another process sees them: item index -> (status, the record's JSON text)."""
    if not db.exists():
        return {}
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT step_id, status, payload FROM steps WHERE run_id = ? "
                            "AND step_id LIKE 'item/%'", (batch_id,)).fetchall()
    except sqlite3.OperationalError:  # the tables are not there yet
        return {}
    finally:
        conn.close()
    return {int(step.split("/", 1)[1]): (status, payload) for step, status, payload in rows}


async def journal_as_before_totals(url: str, batch_id: str, *, spend: bool) -> None:
    """Record batch ``batch_id`` in the store at ``url`` again as an older shoal did: its
    record without ``item_totals``, its items' outcomes without tokens or cost (so the
    batch run's totals stay 0) and, unless ``spend``, none in their results either. The
    items' own runs stay as they are."""
    from shoal.stores import RunRecord, StepRecord, open_store

    async with open_store(url) as store:
        record = await store.require_run(batch_id)
        outcomes = await store.get_steps(batch_id, prefix="item/")
        assert await store.delete_run(batch_id)
        await store.create_run(RunRecord(
            batch_id, flow=record.flow, input=record.input,
            meta={k: v for k, v in record.meta.items() if k != "item_totals"}))
        for step in outcomes:
            result = dict(step.result)
            if not spend:
                result.pop("usage")
                result.pop("cost_usd")
            await store.complete_step(batch_id, StepRecord(
                step.step_id, "succeeded", result=result, attempt=step.attempt,
                started_at=step.started_at, finished_at=step.finished_at, meta=step.meta))
        await store.update_run(batch_id, status=record.status)
