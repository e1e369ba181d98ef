"""The library's warnings after a store failed, as the command line shows them (a finding
left by the last session): ``run 's1': could not release its lease (<the store's whole
error again>); it lapses within 30s`` came through Python's logging, on stderr, before
the command's own table and stop message (and, in a batch, one such line per item plus
one per item whose outcome was not recorded). Now each kind is one line in the CLI's
style (``warning: ...``), after the command's own output and before its ``error:``
line, naming the runs and what follows for them, without repeating the store's error.

``shoal`` runs as a process (its stdout and stderr merged, as a terminal shows them) on
the in-process simulator; a step of the flow makes the store fail at one known point:
its directory removed, or its write lock held by another connection.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest
from sim_cli_kit import clean_env, shoal_argv

BREAKING_FLOW = textwrap.dedent("""
    import os
    import shutil
    import sqlite3

    from shoal.agents import Agent
    from shoal.flows.flow import Flow

    held = []


    async def breaker(researcher: str) -> str:
        how, path = os.environ["LEFTOVER_BREAK"].split(":", 1)
        if how == "removed":
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        elif not held:  # another connection holds the store's write lock from here on
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            held.append(conn)
        return researcher.upper()


    flow = Flow("brk")
    flow.add(Agent("researcher", model="gpt-4o-mini", instructions="Facts.", max_tokens=40))
    flow.add(breaker, after="researcher")
    flow.add(Agent("writer", model="gpt-4o-mini", instructions="Write.", max_tokens=40),
             after="breaker")
""")


def _shoal(tmp_path: Path, how: str, *args: str) -> tuple[int, list[str]]:
    """``shoal ARGS`` on the breaking flow, its store at tmp_path/store/runs.db (``how``
    it fails); its exit status and its output lines, stdout and stderr as they came."""
    (tmp_path / "brk.py").write_text(BREAKING_FLOW)
    db = tmp_path / "store" / "runs.db"
    db.parent.mkdir()
    # A locked store gives up quickly: 20 ms per try, 2 tries.
    store = f"sqlite:///{db}" + ("?busy_timeout_ms=20&retry_attempts=2" if how == "locked"
                                 else "")
    proc = subprocess.run(
        shoal_argv(*[store if a == "STORE" else a for a in args]), cwd=tmp_path,
        env=clean_env(LEFTOVER_BREAK=f"{how}:{db}"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=120, check=False)
    return proc.returncode, proc.stdout.splitlines()


def _index(lines: list[str], text: str) -> int:
    found = [i for i, line in enumerate(lines) if text in line]
    assert len(found) == 1, (text, "\n".join(lines))
    return found[0]


@pytest.mark.parametrize("how", ["removed", "locked"])
def test_an_unreleased_lease_is_one_warning_line_after_the_stop_message(
        tmp_path: Path, how: str) -> None:
    code, lines = _shoal(tmp_path, how, "run", "brk.py:flow", "tides", "--sim", "--store",
                         "STORE", "--run-id", "s1", "--no-progress")
    out = "\n".join(lines)
    assert code == 1, out
    assert "WARNING" not in out and "Traceback" not in out, out
    assert "could not release its lease" not in out, out  # the logging record's own text
    warning = _index(lines, "warning:")
    assert lines[warning] == (
        "warning: run s1's lease could not be released (the store failed); it lapses "
        "within 30s, and a `shoal resume` on this machine takes it over at once"), out
    # after the command's own table and stop message, before its error
    assert _index(lines, "brk · run s1 · store failed") < warning
    assert _index(lines, "once the store is back, continue with: shoal resume s1") < warning
    assert warning < _index(lines, "error: could not save step 'breaker'")
    assert lines[warning + 1].startswith("error: "), out


def test_a_batch_whose_store_failed_warns_once_per_kind(tmp_path: Path) -> None:
    code, lines = _shoal(tmp_path, "removed", "batch", "brk.py:flow", "a", "b", "c",
                         "--sim", "--store", "STORE", "--run-id", "b1", "--no-progress")
    out = "\n".join(lines)
    assert code == 1, out
    assert "WARNING" not in out and "Traceback" not in out, out
    assert "could not release its lease" not in out, out
    assert "finished but its outcome was not recorded" not in out, out
    warnings = [line for line in lines if line.startswith("warning: ")]
    leases = [w for w in warnings if "lease" in w]
    assert leases == [
        "warning: the leases of 3 runs (b1-0, b1-1, b1-2) could not be released (the "
        "store failed); they lapse within 30s, and a `shoal resume` on this machine takes "
        "them over at once"], out
    outcomes = [w for w in warnings if "outcome" in w]
    assert len(outcomes) == 1 and outcomes[0].startswith("warning: batch b1: the outcome"), out
    assert re.fullmatch(
        r"warning: batch b1: (the outcome of item \d was not recorded \(the store failed\); "
        r"`shoal resume b1` runs it again \(what its journal holds replays\)|the outcomes "
        r"of [23] items \([\d, ]+\) were not recorded \(the store failed\); `shoal resume "
        r"b1` runs them again \(what their journals hold replays\))", outcomes[0]), out
    assert len(warnings) == 2, out
    first = min(lines.index(w) for w in warnings)
    assert all(line.startswith(("warning: ", "error: ")) for line in lines[first:]), out
