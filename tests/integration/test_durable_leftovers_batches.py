"""Batches, as a newcomer left them (findings of the last session):

- ``shoal batch`` stopped with Ctrl-C printed nothing and wrote no ``--json``: now the
  items' summary (succeeded / failed / interrupted), the command that continues the batch
  and the ``--json`` file, exit 130; journaled or not;
- an item cancelled while it took its run's lease stayed ``running`` in the store for
  ever (its run was created, then nothing recorded its end): now ``cancelled``. The
  command is stopped at that moment by the store's own seam (``take_lease``), not by
  timing;
- a batch journaled before its items' outcomes carried their totals showed 0 tokens and
  $0 in ``shoal runs`` (and, older still, in ``shoal show``): now its items' journals'
  totals, or ``unknown`` when an item's journal is gone too.

The commands run as a user runs them: ``shoal`` processes stopped with SIGINT, or the
Typer app in this process, on the in-process simulator (``--sim``), journaled in SQLite
under tmp_path.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import typer
from sim_cli_kit import (
    clean_env,
    ctrl_c,
    invoke,
    item_outcomes,
    journal_as_before_totals,
    run_and_runs_cli,
    shoal_argv,
)

ROOT = Path(__file__).resolve().parents[2]
SUMMARIZER = f"{ROOT / 'examples' / 'batch_folder.py'}:summarizer"
DOCS = ROOT / "examples" / "docs"
ITEMS = len(list(DOCS.iterdir()))

# A batch target: "slow..." inputs wait for ever (once the three quick ones are done,
# they say so in a file), "bad" is refused, the rest come back upper-cased.
WORK = textwrap.dedent("""
    import asyncio
    import os
    from pathlib import Path

    quick_done = asyncio.Event()
    count = [0]


    async def work(text):
        if text.startswith("slow"):
            await quick_done.wait()
            Path(os.environ["LEFTOVER_MARK"], text).touch()
            await asyncio.Event().wait()
        count[0] += 1
        if count[0] == 3:
            quick_done.set()
        if text == "bad":
            raise ValueError("this input is refused")
        return text.upper()
""")
INPUTS = ["a", "b", "bad", "slow1", "slow2"]
LABELS = [f"arg{i}" for i in range(len(INPUTS))]  # how `shoal batch` names argument inputs
STATUSES = ["succeeded", "succeeded", "failed", "interrupted", "interrupted"]


@pytest.fixture
def app() -> typer.Typer:
    return run_and_runs_cli()


@pytest.mark.parametrize("journaled", [True, False], ids=["journaled", "not-journaled"])
def test_ctrl_c_on_a_batch_prints_its_items_and_writes_the_json(
        tmp_path: Path, journaled: bool) -> None:
    (tmp_path / "work.py").write_text(WORK)
    db = tmp_path / "runs.db"
    store = f"sqlite:///{db}"
    args = ["batch", "work.py:work", *INPUTS, "--json", "out.json", "--no-progress"]
    if journaled:  # the three quick outcomes are in the store: Ctrl-C then
        args += ["--store", store, "--run-id", "bi"]
        ready = lambda: len(item_outcomes(db, "bi")) == 3  # noqa: E731
    else:  # the slow items started once the quick ones had finished
        ready = lambda: all((tmp_path / s).exists() for s in ("slow1", "slow2"))  # noqa: E731
    code, out, err = ctrl_c(args, tmp_path, ready, env=clean_env(LEFTOVER_MARK=str(tmp_path)))
    text = " ".join(out.split())
    assert code == 130, (out, err)
    assert "Traceback" not in err, err
    title = "batch bi" if journaled else "batch"
    assert f"{title} · interrupted: 2 succeeded, 1 failed, 2 interrupted" in text, out
    for item, status in zip(LABELS, STATUSES, strict=True):
        assert f" {item} {status} " in text, (item, out)
    if journaled:
        assert (f"interrupted: batch bi journaled in {store}; continue with: shoal resume "
                f"bi --store {store} (runs its 3 unfinished items again)") in text
    else:
        assert "the batch was not journaled: with --store sqlite:///.shoal/runs.db" in text

    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["status"] == "interrupted"
    assert (doc["succeeded"], doc["failed"], doc["interrupted"]) == (2, 1, 2)
    assert [(i["input"], i["status"]) for i in doc["items"]] == list(zip(
        LABELS, STATUSES, strict=True))
    assert doc["items"][0]["output"] == "A"
    assert "ValueError: this input is refused" in doc["items"][2]["error"]
    if journaled:
        assert doc["batch_id"] == "bi"


# -- an item cancelled while it takes its run's lease -------------------------------------

# Ctrl-C reaches the command while item LEFTOVER_STOP_AT takes its lease; the store then
# completes the take its caller stopped waiting for (as a write in flight does).
STOP_AT_LEASE = textwrap.dedent("""
    import asyncio, os, signal
    from shoal.stores.sqlite import SQLiteStore

    _take = SQLiteStore.take_lease
    _late = set()

    async def take_lease(self, run_id, owner, lease_s, **kw):
        if run_id != os.environ["LEFTOVER_STOP_AT"]:
            return await _take(self, run_id, owner, lease_s, **kw)
        os.kill(os.getpid(), signal.SIGINT)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            _late.add(asyncio.ensure_future(_take(self, run_id, owner, lease_s, **kw)))
            raise

    SQLiteStore.take_lease = take_lease
""")
FLOW = textwrap.dedent("""
    from shoal.agents import Agent
    from shoal.flows.flow import Flow

    flow = Flow("sum")
    flow.add(Agent("summarize", model="gpt-4o-mini", instructions="Two sentences.",
                   max_tokens=40))
""")


@pytest.mark.parametrize("target", ["agent", "flow"])
def test_an_item_cancelled_while_taking_its_lease_is_not_left_running(
        app: typer.Typer, tmp_path: Path, target: str) -> None:
    (tmp_path / "sumflow.py").write_text(FLOW)
    spec = SUMMARIZER if target == "agent" else "sumflow.py:flow"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    proc = subprocess.run(
        shoal_argv("batch", spec, "one", "two", "three", "--sim", "--store", store,
                   "--run-id", "bl", "--no-progress", prelude=STOP_AT_LEASE),
        cwd=tmp_path, env=clean_env(LEFTOVER_STOP_AT="bl-1"), capture_output=True,
        text=True, timeout=120, check=False)
    assert proc.returncode == 130, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr

    shown = json.loads(invoke(app, "show", "bl-1", "--store", store, "--json").stdout)
    assert shown["status"] == "cancelled", shown  # it said running, for ever
    listed = json.loads(invoke(app, "runs", "--store", store, "--json").stdout)
    assert [r["status"] for r in listed if r["run_id"] == "bl-1"] == ["cancelled"]
    report = json.loads(invoke(app, "runs", "--batch", "bl", "--store", store,
                               "--json").stdout)
    assert "running" not in report["counts"], report
    assert [r["status"] for r in report["rows"] if r["run_id"] == "bl-1"] == ["cancelled"]

    # Nothing holds it: a resume runs the unfinished items (this one included) to the end.
    again = invoke(app, "resume", "bl", "--store", store, "--no-progress")
    assert again.exit_code == 0, again.output
    report = json.loads(invoke(app, "runs", "--batch", "bl", "--store", store,
                               "--json").stdout)
    assert report["counts"] == {"succeeded": 3}


# -- old batches: their tokens and cost ---------------------------------------------------


@pytest.mark.parametrize("spend", [True, False], ids=["outcomes-with-usage", "bare-outcomes"])
def test_an_old_batch_shows_its_items_totals(app: typer.Typer, tmp_path: Path,
                                             spend: bool) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    done = invoke(app, "batch", SUMMARIZER, "-d", str(DOCS), "--sim", "--store", store,
                  "--run-id", "old", "--no-progress")
    assert done.exit_code == 0, done.output
    fresh = json.loads(invoke(app, "runs", "--batch", "old", "--store", store,
                              "--json").stdout)
    assert fresh["tokens"] > 0
    asyncio.run(journal_as_before_totals(store, "old", spend=spend))

    listed = json.loads(invoke(app, "runs", "--store", store, "--json").stdout)
    batch = next(r for r in listed if r["run_id"] == "old")
    assert batch["tokens"] == fresh["tokens"], batch  # it said 0
    assert batch["cost_usd"] == pytest.approx(fresh["cost_usd"])
    table = invoke(app, "runs", "--store", store).stdout
    row = next(line for line in table.splitlines() if line.split()[:1] == ["old"])
    assert f" {fresh['tokens']} " in row and f"{fresh['cost_usd']:.6f}" in row, row

    shown = json.loads(invoke(app, "show", "old", "--store", store, "--json").stdout)
    assert shown["tokens"] == fresh["tokens"]
    assert shown["cost_usd"] == pytest.approx(fresh["cost_usd"])
    assert sum(s["tokens"] for s in shown["steps"]) == fresh["tokens"]
    text = " ".join(invoke(app, "show", "old", "--store", store).stdout.split())
    assert f"{fresh['tokens']} tokens · ${fresh['cost_usd']:.6f}" in text
    report = json.loads(invoke(app, "runs", "--batch", "old", "--store", store,
                               "--json").stdout)
    assert report["tokens"] == fresh["tokens"]
    assert report["cost_usd"] == pytest.approx(fresh["cost_usd"])


def test_an_old_batch_whose_item_journal_is_gone_says_unknown(app: typer.Typer,
                                                               tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    done = invoke(app, "batch", SUMMARIZER, "-d", str(DOCS), "--sim", "--store", store,
                  "--run-id", "old", "--no-progress")
    assert done.exit_code == 0, done.output
    asyncio.run(journal_as_before_totals(store, "old", spend=False))
    assert invoke(app, "delete", "old-0", "--store", store).exit_code == 0

    listed = json.loads(invoke(app, "runs", "--store", store, "--json").stdout)
    batch = next(r for r in listed if r["run_id"] == "old")
    assert batch["tokens"] is None and batch["cost_usd"] is None, batch  # not a false 0
    table = invoke(app, "runs", "--store", store).stdout
    row = next(line for line in table.splitlines() if line.split()[:1] == ["old"])
    assert row.split()[3:5] == ["unknown", "unknown"], row
    shown = json.loads(invoke(app, "show", "old", "--store", store, "--json").stdout)
    assert shown["tokens"] is None and shown["cost_usd"] is None
    assert shown["unknown_spend"] == ["old-0"]
    assert [s["tokens"] is None for s in shown["steps"]] == [True] + [False] * (ITEMS - 1)
    text = " ".join(invoke(app, "show", "old", "--store", store).stdout.split())
    assert "tokens and cost unknown (item old-0: its journal is gone)" in text, text
    report = json.loads(invoke(app, "runs", "--batch", "old", "--store", store,
                               "--json").stdout)
    assert report["tokens"] is None and report["cost_usd"] is None
