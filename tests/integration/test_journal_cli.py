"""`shoal runs`, `shoal show`, `shoal resume` and `shoal prune` on a journaled run made
against the simulator (in its own process), through the commands' own entry points."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from sim_cli_kit import invoke, runs_cli

from shoal.agents import StepFailed
from shoal.cli.run_cmd import load_target
from shoal.cli.runs_cmd import journal_meta, parse_duration
from shoal.config import Config
from shoal.errors import ConfigError
from shoal.flows.resume import as_flow, run_durable
from shoal.sim import SimProcess
from shoal.traffic.router import Router

FLOW_MODULE = textwrap.dedent("""
    from shoal.agents import Agent
    from shoal.flows.flow import Flow

    flow = Flow("report")
    flow.add(Agent("researcher", model="m", instructions="Collect the key facts."))
    flow.add(Agent("analyzer", model="m", instructions="Analyse."), after="researcher")
    flow.add(Agent("writer", model="m", instructions="Write a report."), after="analyzer")
""")


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    s = SimProcess()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def cli() -> typer.Typer:
    return runs_cli()


def test_runs_show_resume_prune(sim: SimProcess, cli: typer.Typer, tmp_path: Path) -> None:
    (tmp_path / "flowmod.py").write_text(FLOW_MODULE)
    toml = tmp_path / "shoal.toml"
    toml.write_text(textwrap.dedent(f"""
        [channels.sim]
        protocol = "openai"
        base_url = "{sim.url}/v1"
        api_key = "sk-test"
        provider = "openai"
        max_concurrency = 4

        [models.m]
        channels = ["sim"]
        input = 1.0
        output = 2.0
    """))
    target = f"{tmp_path / 'flowmod.py'}:flow"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    sim.script(["ok", "401"])  # the analyzer's key is refused: never retried

    async def first_run() -> None:
        async with Router(Config.load(toml)) as router:
            await run_durable(as_flow(load_target(target)), "open-weight LLM economics",
                              store=store, run_id="cli-1", client=router,
                              meta=journal_meta(target, config=toml))

    with pytest.raises(StepFailed):
        asyncio.run(first_run())
    assert sim.tags() == ["researcher", "analyzer"]

    listed = invoke(cli, "runs", "--store", store)
    assert listed.exit_code == 0
    assert "cli-1" in listed.stdout and "report" in listed.stdout and "failed" in listed.stdout

    shown = invoke(cli, "show", "cli-1", "--store", store)
    assert shown.exit_code == 0, shown.stdout
    out = shown.stdout
    assert "run cli-1" in out and "flow report" in out
    assert "input: open-weight LLM economics" in out
    assert f"target: {target}" in out
    assert "AuthError" in out
    assert "resume would replay 1 step(s) with zero calls and run 2: analyzer, writer" in out
    doc = json.loads(invoke(cli, "show", "cli-1", "--store", store, "--json").stdout)
    steps = {s["step"]: s for s in doc["steps"]}
    assert steps["researcher"]["status"] == "succeeded"
    assert steps["researcher"]["turns"] == 1 and steps["researcher"]["tokens"] > 0
    assert steps["analyzer"]["status"] == "failed"
    assert "AuthError" in steps["analyzer"]["error"]
    assert (doc["replay"], doc["redo"]) == (["researcher"], ["analyzer", "writer"])

    sim.reset()
    result_file = tmp_path / "result.json"
    resumed = invoke(cli, "resume", "cli-1", "--store", store, "--json", str(result_file))
    assert resumed.exit_code == 0, resumed.stdout
    assert sim.tags() == ["analyzer", "writer"]  # zero calls for the researcher
    summary = json.loads(result_file.read_text())
    assert summary["status"] == "succeeded"
    assert [s["status"] for s in summary["steps"]] == ["replayed", "succeeded", "succeeded"]
    assert "succeeded" in invoke(cli, "runs", "--store", store, "--status", "succeeded").stdout
    again = invoke(cli, "show", "cli-1", "--store", store)
    assert "resume: nothing to redo; all 3 steps replay with zero calls" in again.stdout

    kept = invoke(cli, "prune", "--store", store, "--older-than", "30d")
    assert kept.stdout.startswith("deleted 0 run(s) not written for 30d")
    gone = invoke(cli, "prune", "--store", store, "--older-than", "0s")
    assert gone.stdout.startswith("deleted 1 run(s) not written for 0s")
    missing = invoke(cli, "show", "cli-1", "--store", store)
    assert missing.exit_code == 2  # a usage error: no such run
    assert "no run 'cli-1'" in missing.stderr


def test_resume_without_a_recorded_target_asks_for_one(cli: typer.Typer,
                                                       tmp_path: Path) -> None:
    from shoal.stores import RunRecord, open_store

    store = f"sqlite:///{tmp_path / 'runs.db'}"

    async def make() -> None:
        async with open_store(store) as s:
            await s.create_run(RunRecord("py-1", flow="report"))

    asyncio.run(make())
    res = invoke(cli, "resume", "py-1", "--store", store)
    assert res.exit_code == 2
    assert "does not record how to rebuild its flow" in res.stderr
    assert "--target module:object" in res.stderr


def test_durations() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("1d12h") == 36 * 3600
    assert parse_duration("90m") == 5400
    assert parse_duration(" 2w ") == 14 * 86400
    assert parse_duration("1.5h") == 5400
    for bad in ("30", "d", "30x", "-1d", "30 days"):
        with pytest.raises(ConfigError, match="cannot read the duration"):
            parse_duration(bad)


def test_a_bad_duration_is_a_usage_error(cli: typer.Typer, tmp_path: Path) -> None:
    res = invoke(cli, "prune", "--store", f"sqlite:///{tmp_path / 'r.db'}",
                 "--older-than", "a month")
    assert res.exit_code == 2
    assert "cannot read the duration 'a month'" in res.stderr


def test_reading_commands_make_no_store_and_say_so(tmp_path: Path, cli: typer.Typer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`shoal runs`, `show`, `resume` and `delete` on a store that does not exist: no empty
    file left behind, and a mistyped --store is not shown as an empty store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHOAL_STORE", raising=False)
    app = cli
    res = invoke(app, "runs")
    assert res.exit_code == 0 and "no runs yet" in res.stdout
    typo = f"sqlite:///{tmp_path / 'typo.db'}"
    for args in (["runs", "--store", typo], ["show", "r1", "--store", typo],
                 ["resume", "r1", "--store", typo], ["delete", "r1", "--store", typo],
                 ["show", "r1"]):
        res = invoke(app, *args)
        assert res.exit_code == 2 and "no store at" in res.stderr, (args, res.output)
    assert not (tmp_path / "typo.db").exists() and not (tmp_path / ".shoal").exists()
