"""`shoal resume` and the run lease, through the command's own entry point, against the
simulator in its own process: a run another process executes is refused with exit
status 3 and a message naming the holder; `shoal show` names the executor; `--force`
takes the run over; two `shoal resume` processes at once pay for each step once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from sim_cli_kit import invoke, runs_cli, write_sim_toml

from shoal.agents import StepFailed
from shoal.cli.common import EXIT_BUSY
from shoal.cli.run_cmd import load_target
from shoal.cli.runs_cmd import journal_meta
from shoal.config import Config
from shoal.flows.resume import as_flow, run_durable
from shoal.sim import SimProcess
from shoal.stores import open_store
from shoal.traffic.router import Router

FLOW_MODULE = textwrap.dedent("""
    from shoal.agents import Agent
    from shoal.flows.flow import Flow

    flow = Flow("report")
    flow.add(Agent("researcher", model="m", instructions="Collect the key facts."))
    flow.add(Agent("analyzer", model="m", instructions="Analyse."), after="researcher")
    flow.add(Agent("writer", model="m", instructions="Write a report."), after="analyzer")
""")
FOREIGN = "deadbeef@elsewhere:4242:cafef00d"


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    s = SimProcess("--latency", "0.3")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def cli() -> typer.Typer:
    return runs_cli()


def failed_run(sim: SimProcess, tmp_path: Path, run_id: str) -> str:
    """A run whose analyzer's key was refused: researcher journaled, 2 steps to redo."""
    (tmp_path / "flowmod.py").write_text(FLOW_MODULE)
    toml = write_sim_toml(sim.url, tmp_path / "shoal.toml")
    target = f"{tmp_path / 'flowmod.py'}:flow"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    sim.script(["ok", "401"])

    async def first_run() -> None:
        async with Router(Config.load(toml)) as router:
            await run_durable(as_flow(load_target(target)), "open-weight LLM economics",
                              store=store, run_id=run_id, client=router,
                              meta=journal_meta(target, config=toml))

    with pytest.raises(StepFailed):
        asyncio.run(first_run())
    assert sim.tags() == ["researcher", "analyzer"]
    sim.reset()
    return store


def test_a_run_another_process_holds_is_refused_with_exit_3_until_forced(
    sim: SimProcess, cli: typer.Typer, tmp_path: Path
) -> None:
    store = failed_run(sim, tmp_path, "cli-1")

    async def hold() -> None:  # a process on another machine executes it
        async with open_store(store) as s:
            await s.take_lease("cli-1", FOREIGN, 600.0)

    asyncio.run(hold())
    shown = invoke(cli, "show", "cli-1", "--store", store)
    assert shown.exit_code == 0
    assert "executing: deadbeef@elsewhere (pid 4242), its lease runs" in shown.stdout

    refused = invoke(cli, "resume", "cli-1", "--store", store, "--no-progress")
    assert refused.exit_code == EXIT_BUSY == 3
    err = " ".join(refused.stderr.split())
    assert "error: run 'cli-1'" in err and "is being executed by another process" in err
    assert "deadbeef@elsewhere (pid 4242) holds its lease until" in err
    assert "shoal resume cli-1 --force" in err
    assert sim.tags() == []  # refused before any request

    forced = invoke(cli, "resume", "cli-1", "--store", store, "--force", "--no-progress")
    assert forced.exit_code == 0, forced.stdout
    assert sim.tags() == ["analyzer", "writer"]
    after = invoke(cli, "show", "cli-1", "--store", store)
    assert "executing:" not in after.stdout and "last executor" not in after.stdout


def test_two_resume_processes_at_once_pay_for_each_step_once(
    sim: SimProcess, cli: typer.Typer, tmp_path: Path
) -> None:
    store = failed_run(sim, tmp_path, "cli-2")
    shoal = str(Path(sys.executable).parent / "shoal")
    first = subprocess.Popen([shoal, "resume", "cli-2", "--store", store, "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not sim.stats()["in_flight"]:  # the first process pays for the analyzer
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        second = invoke(cli, "resume", "cli-2", "--store", store, "--no-progress")
        assert second.exit_code == EXIT_BUSY, second.stdout
        assert f"(pid {first.pid}) holds its lease" in " ".join(second.stderr.split())
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err[-3000:]
    assert sim.tags() == ["analyzer", "writer"]  # once each, by the first process
