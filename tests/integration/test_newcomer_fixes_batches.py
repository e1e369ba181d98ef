"""Batches as ``shoal show``, ``shoal runs`` and ``shoal runs --batch`` tell them
(findings 8 and 9):

- a batch's run shows its items' tokens and cost (it showed 0 tokens, $0), and no
  phantom step "item" that a resume "would run"; a finished batch has nothing to redo,
  in ``shoal show``, its JSON and its HTML report;
- after Ctrl-C (or a kill) the items that were in flight are ``cancelled`` (or
  ``interrupted``), not ``running``.

The commands run as a user runs them: ``shoal batch`` over the example folder, on the
in-process simulator or as a process over ``shoal sim``, journaled in SQLite under
tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from shoal.cli import run_cmd, runs_cmd
from shoal.sim import SimProcess

ROOT = Path(__file__).resolve().parents[2]
TARGET = f"{ROOT / 'examples' / 'batch_folder.py'}:summarizer"
DOCS = ROOT / "examples" / "docs"
ITEMS = len(list(DOCS.iterdir()))
# Ctrl-C handled as in a terminal, even when this test process was started with SIGINT
# ignored (a background job: CI under nohup), which the child would inherit and keep.
SHOAL = ["-c", "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "from shoal.cli.main import main; main()"]


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    run_cmd.register(app)
    runs_cmd.register(app)
    return app


def _invoke(app: typer.Typer, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_a_batch_shows_its_items_totals_and_no_phantom_step(
        app: typer.Typer, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'batch.db'}"
    done = _invoke(app, "batch", TARGET, "-d", str(DOCS), "--sim", "--store", store,
                   "--run-id", "b1", "--no-progress")
    assert done.exit_code == 0, done.output
    report = json.loads(_invoke(app, "runs", "--batch", "b1", "--store", store,
                                "--json").stdout)
    assert report["counts"] == {"succeeded": ITEMS} and report["tokens"] > 0

    shown = json.loads(_invoke(app, "show", "b1", "--store", store, "--json").stdout)
    steps = [s["step"] for s in shown["steps"]]
    assert steps == [f"item/{i:08d}" for i in range(ITEMS)]  # no step "item"
    assert shown["redo"] == [] and len(shown["replay"]) == ITEMS
    assert shown["tokens"] == report["tokens"]
    assert shown["cost_usd"] == pytest.approx(report["cost_usd"])
    assert sum(s["tokens"] for s in shown["steps"]) == report["tokens"]

    text = _invoke(app, "show", "b1", "--store", store).stdout
    assert f"{report['tokens']} tokens · ${report['cost_usd']:.6f}" in text
    assert "resume: nothing to redo" in text and "would run" not in text

    listed = json.loads(_invoke(app, "runs", "--store", store, "--json").stdout)
    batch = next(r for r in listed if r["run_id"] == "b1")
    assert batch["tokens"] == report["tokens"]  # the store's own totals, not only show's
    assert batch["cost_usd"] == pytest.approx(report["cost_usd"])

    html = tmp_path / "b1.html"
    assert _invoke(app, "show", "b1", "--store", store, "--html", str(html)).exit_code == 0
    raw = html.read_text().split('id="shoal-data">', 1)[1].split("</script>", 1)[0]
    nodes = json.loads(raw)["nodes"]
    assert [n["status"] for n in nodes] == ["succeeded"]  # the items; nothing "not_run"
    assert nodes[0]["items"] == ITEMS and nodes[0]["resume"] == "replay"
    assert nodes[0]["tokens"] == report["tokens"]

    # resuming the finished batch runs nothing and says so (it printed the items table
    # and "resumed on this process")
    again = _invoke(app, "resume", "b1", "--store", store, "--no-progress")
    assert again.exit_code == 0, again.output
    assert f"nothing to redo, all {ITEMS} items succeeded" in " ".join(again.output.split())
    assert "resumed on" not in again.output


def _config(tmp_path: Path, sim: SimProcess) -> Path:
    path = tmp_path / "shoal.toml"
    path.write_text(f'[channels.openai]\nbase_url = "{sim.url}/v1"\napi_key = "sk-sim"\n')
    return path


def _items_started(db: Path, batch_id: str, at_least: int, timeout_s: float = 60.0) -> None:
    """Until ``at_least`` item runs of the batch are in the store (they are in flight:
    the simulator holds every answer for a minute)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if db.exists():
            with sqlite3.connect(db) as conn:
                try:
                    (n,) = conn.execute("SELECT count(*) FROM runs WHERE run_id LIKE ?",
                                        (f"{batch_id}-%",)).fetchone()
                except sqlite3.OperationalError:  # the tables are not there yet
                    n = 0
            if n >= at_least:
                return
        time.sleep(0.1)
    raise AssertionError(f"no {at_least} item runs of {batch_id} within {timeout_s} s")


def _start_batch(tmp_path: Path, config: Path, batch_id: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_CONFIG", "SHOAL_STORE")}
    return subprocess.Popen(
        [sys.executable, *SHOAL, "batch", TARGET, "-d", str(DOCS),
         "--config", str(config), "--store", f"sqlite:///{tmp_path / 'batch.db'}",
         "--run-id", batch_id, "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


@pytest.mark.parametrize(("sig", "expected"), [
    # Ctrl-C cancels the items in flight; one stopped before it took its run's lease is
    # interrupted (nothing executes it, and it never recorded its cancellation).
    (signal.SIGINT, {"cancelled", "interrupted"}),
    (signal.SIGKILL, {"interrupted"}),  # its executor is gone
], ids=["ctrl-c", "killed"])
def test_items_in_flight_when_the_batch_stopped_are_not_running(
        app: typer.Typer, tmp_path: Path, sig: signal.Signals, expected: set[str]) -> None:
    with SimProcess("--latency", "60") as sim:
        proc = _start_batch(tmp_path, _config(tmp_path, sim), "bx")
        try:
            _items_started(tmp_path / "batch.db", "bx", ITEMS)
            proc.send_signal(sig)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    store = f"sqlite:///{tmp_path / 'batch.db'}"
    report = json.loads(_invoke(app, "runs", "--batch", "bx", "--store", store,
                                "--json").stdout)
    assert set(report["counts"]) <= expected, report
    assert sum(report["counts"].values()) == ITEMS
    if sig == signal.SIGINT:
        assert report["counts"].get("cancelled", 0) >= 1, report
    table = _invoke(app, "runs", "--batch", "bx", "--store", store).stdout
    assert "running" not in table and "pending" not in table, table
    shown = json.loads(_invoke(app, "show", "bx", "--store", store, "--json").stdout)
    assert {s["status"] for s in shown["steps"]} <= expected
    assert len(shown["redo"]) == ITEMS  # a resume runs them all again


def test_a_partly_failed_batch_says_a_resume_redoes_it(app: typer.Typer,
                                                        tmp_path: Path) -> None:
    """In the HTML report, a batch with a failed item showed "replay" for a resume,
    because a resume's redo list names items (``item/N``), not the batch's one node."""
    (tmp_path / "work.py").write_text(
        "async def shout(text):\n"
        "    if text == 'bad':\n"
        "        raise ValueError('this input is refused')\n"
        "    return text.upper()\n")
    store = f"sqlite:///{tmp_path / 'batch.db'}"
    ran = _invoke(app, "batch", f"{tmp_path / 'work.py'}:shout", "ok", "bad",
                  "--store", store, "--run-id", "b2", "--no-progress")
    assert ran.exit_code == 1, ran.output  # one item failed
    html = tmp_path / "b2.html"
    assert _invoke(app, "show", "b2", "--store", store, "--html", str(html)).exit_code == 0
    raw = html.read_text().split('id="shoal-data">', 1)[1].split("</script>", 1)[0]
    nodes = json.loads(raw)["nodes"]
    assert [n["status"] for n in nodes] == ["failed"]
    assert nodes[0]["resume"] == "redo"
