"""`shoal run --store ... --budget-usd B` SIGKILLed while a request is in flight at the
simulator, then `shoal resume RUN_ID`: the resume asks nothing journaled again, gives an
uninterrupted run's output, and keeps the run's dollar budget (a budget given on the
command line is part of the run, as its target and config are)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sim_cli_kit import write_sim_toml

from shoal.sim import SimProcess

pytestmark = pytest.mark.timeout(90)
SHOAL = [sys.executable, "-c", "from shoal.cli.main import main; main()"]
FLOW = textwrap.dedent("""
    from shoal import Agent, Flow

    flow = Flow("chain4")
    previous = []
    for name in ("a", "b", "c", "d"):
        flow.add(Agent(name, model="m", instructions=f"Step {name}: add one fact.",
                       max_tokens=40), after=previous)
        previous = [name]
""")


class Sim(SimProcess):
    def tag_counts(self) -> Counter[str]:
        return Counter(str(r["tag"]) for r in self.request_log())


@pytest.fixture
def sim() -> Iterator[Sim]:
    s = Sim("--seed", "5", "--latency", "0.2")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def files(sim: Sim, tmp_path: Path) -> tuple[str, Path]:
    (tmp_path / "chain4.py").write_text(FLOW)
    toml = write_sim_toml(sim.url, tmp_path / "shoal.toml")
    return f"{tmp_path / 'chain4.py'}:flow", toml


def shoal(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHOAL, *args, "--no-progress"], capture_output=True, text=True,
                          check=False,
                          timeout=60, cwd=cwd)


def killed_in_flight(sim: Sim, args: list[str], *, after: int, cwd: Path) -> None:
    """Start ``shoal run``, SIGKILL it while its request number ``after`` is in flight."""
    proc = subprocess.Popen([*SHOAL, *args, "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd)
    try:
        deadline = time.monotonic() + 30
        while int(sim.stats()["total_requests"]) < after and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None and sim.stats()["in_flight"] == 1
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


def test_shoal_run_killed_mid_request_resumes_with_its_output(
    sim: Sim, files: tuple[str, Path], tmp_path: Path,
) -> None:
    target, toml = files
    ref = shoal("run", target, "tidal power", "-c", str(toml), "-o", str(tmp_path / "ref.json"),
                cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    reference = json.loads((tmp_path / "ref.json").read_text())
    sim.reset()
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    killed_in_flight(sim, ["run", target, "tidal power", "-c", str(toml), "--store", store,
                           "--run-id", "cli-1"], after=3, cwd=tmp_path)
    first = sim.tag_counts()
    assert first == Counter({"a": 1, "b": 1, "c": 1})  # c was in flight
    sim.reset()
    out = tmp_path / "out.json"
    resumed = shoal("resume", "cli-1", "--store", store, "-o", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert sim.tag_counts() == Counter({"c": 1, "d": 1})  # a, b replayed; c was lost in flight
    summary = json.loads(out.read_text())
    assert summary["output"] == reference["output"]
    assert summary["cost_usd"] == pytest.approx(reference["cost_usd"])


def test_shoal_resume_keeps_the_budget_the_run_was_started_with(
    sim: Sim, files: tuple[str, Path], tmp_path: Path,
) -> None:
    """A run capped with --budget-usd, killed, and resumed by `shoal resume RUN_ID` stays
    capped: it stops where an uninterrupted run under that budget stops, instead of
    running on with no budget at all. `--budget-usd` on resume raises it."""
    target, toml = files
    ref = shoal("run", target, "tidal power", "-c", str(toml), "-o", str(tmp_path / "ref.json"),
                cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    total = json.loads((tmp_path / "ref.json").read_text())["cost_usd"]
    budget = f"{total * 0.6:.8f}"  # enough for two steps, not for four
    capped = shoal("run", target, "tidal power", "-c", str(toml), "--budget-usd", budget,
                   cwd=tmp_path)
    assert capped.returncode == 1 and "BudgetExceeded" in capped.stderr + capped.stdout
    sim.reset()
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    killed_in_flight(sim, ["run", target, "tidal power", "-c", str(toml), "--store", store,
                           "--run-id", "cli-2", "--budget-usd", budget], after=1, cwd=tmp_path)
    resumed = shoal("resume", "cli-2", "--store", store, cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stdout  # the budget still binds
    assert "BudgetExceeded" in resumed.stderr + resumed.stdout
    assert sim.tag_counts()["d"] == 0
    raised = shoal("resume", "cli-2", "--store", store, "--budget-usd", f"{total * 2:.8f}",
                   cwd=tmp_path)
    assert raised.returncode == 0, raised.stderr
    assert sim.tag_counts()["d"] == 1
