"""A store that fails in the middle of a journaled ``shoal run`` (a newcomer's finding):
the run ended with one error line, without the table of what had finished and without
the ``shoal resume`` command, so the user had no idea what was saved. Now it prints the
steps as they stood, which were saved in the journal before the store failed, which
one's result was not saved, and the command that continues the run once the store is
back; exit status 1 (README, "Exit statuses": a store that could not be reached later).

Two ways a SQLite store fails mid-run, both from inside the run (a step of the flow
does it, so it happens at one known point): its directory is removed (SQLite went on
writing into the removed file: the run said "journaled" and exited 0 while nothing was
kept), or another connection holds its write lock (every write times out). The command
runs in this process against the simulator in its own process.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from sim_cli_kit import invoke, run_and_runs_cli, write_sim_toml

from shoal.sim import SimProcess

MODULE = "leftover_breaking_flow"
BREAKING_FLOW = textwrap.dedent("""
    import os
    import shutil
    import sqlite3

    from shoal.agents import Agent
    from shoal.flows.flow import Flow

    held: list[sqlite3.Connection] = []


    async def breaker(researcher: str) -> str:
        how, path = os.environ["LEFTOVER_BREAK"].split(":", 1)
        if how == "removed":
            shutil.rmtree(os.path.dirname(path))
        else:  # another connection holds the store's write lock from here on
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            held.append(conn)
        return researcher.upper()


    flow = Flow("brk")
    flow.add(Agent("researcher", model="m", instructions="Facts.", max_tokens=40))
    flow.add(breaker, after="researcher")
    flow.add(Agent("writer", model="m", instructions="Write.", max_tokens=40),
             after="breaker")
""")


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    with SimProcess() as s:
        yield s


@pytest.fixture
def app() -> typer.Typer:
    return run_and_runs_cli()


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("SHOAL_CONFIG", "SHOAL_STORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    yield
    module = sys.modules.pop(MODULE, None)
    for conn in getattr(module, "held", []):
        conn.close()


def _rows(text: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(
        r"^\s*(researcher|breaker|writer)\s+(not saved|not run|\w+)", text, re.M)}


@pytest.mark.parametrize("how", ["removed", "locked"])
def test_a_store_failing_mid_run_prints_what_was_saved_and_how_to_continue(
        app: typer.Typer, sim: SimProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        how: str) -> None:
    cfg = write_sim_toml(sim.url, tmp_path / "shoal.toml")
    (tmp_path / f"{MODULE}.py").write_text(BREAKING_FLOW)
    db = tmp_path / "store" / "runs.db"
    monkeypatch.setenv("LEFTOVER_BREAK", f"{how}:{db}")
    # A locked store gives up quickly: 20 ms per try, 2 tries.
    store = f"sqlite:///{db}" + ("?busy_timeout_ms=20&retry_attempts=2" if how == "locked"
                                 else "")
    out = invoke(app, "run", f"{tmp_path / MODULE}.py:flow", "tides", "-c", str(cfg),
                 "--store", store, "--run-id", "s1", "--no-progress",
                 "--json", str(tmp_path / "out.json"))
    text = " ".join(out.output.split())
    assert out.exit_code == 1, out.output  # README: a store not reached later is 1
    assert "error: could not" in text  # the store's own error, as before
    assert _rows(out.output) == {"researcher": "succeeded", "breaker": "not saved",
                                 "writer": "not run"}, out.output
    assert "brk · run s1 · store failed" in text
    assert ("the store failed during the run: saved in its journal before that: "
            "researcher; not saved: breaker (it finished, but its result was not written: "
            "a resume runs it again); not run: writer") in text
    assert "once the store is back, continue with: shoal resume s1 --store" in text
    assert "journaled as run s1" not in text  # nothing claims the run was kept

    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["status"] == "failed" and doc["run_id"] == "s1"
    assert doc["not_saved"] == ["breaker"]
    assert {s["step"]: s["status"] for s in doc["steps"]} == {
        "researcher": "succeeded", "breaker": "not saved", "writer": "not run"}
    assert sim.tags().count("researcher") == 1 and "writer" not in sim.tags()

    if how == "locked":  # the store is back: the table told the truth
        for conn in sys.modules[MODULE].held:
            conn.close()
        monkeypatch.setenv("LEFTOVER_BREAK", f"locked:{tmp_path / 'elsewhere.db'}")
        again = invoke(app, "resume", "s1", "--store", store, "--no-progress")
        assert again.exit_code == 0, again.output
        done = {m[1]: m[2] for m in re.finditer(  # step, model, status
            r"^\s*(researcher|breaker|writer)\s+\S+\s+(\w+)", again.output, re.M)}
        assert done == {"researcher": "replayed", "breaker": "succeeded",
                        "writer": "succeeded"}, again.output
        assert sim.tags().count("researcher") == 1  # saved: replayed, not paid again
