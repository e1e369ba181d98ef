"""`shoal cost` and `shoal models` through the installed `shoal` command and the commands'
own entry points: the projection table equals the catalog's prices × the volume, in
``--json`` and in the printed table; a journaled run (made against the simulator) and a
batch are priced from their journal, with caching and without."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from shoal.agents import Agent
from shoal.agents.recorder import response_to_json
from shoal.cli import cost_cmd, models_cmd, run_cmd, runs_cmd
from shoal.config import Config
from shoal.flows.flow import Flow, FlowResult
from shoal.flows.resume import run_durable
from shoal.sim import SimConfig, SimServer, config_for_sim
from shoal.stores import open_store
from shoal.stores.records import RunRecord, StepRecord
from shoal.traffic.router import Router
from shoal.types import ChatResponse, Usage

MUST_SHOW = ["cost", "--requests-per-day", "10000", "--input-tokens", "3000",
             "--output-tokens", "800", "--models", "deepseek-chat,gpt-4.1,claude-sonnet-4-6"]
# The figures by hand at the catalog's list prices ($ per million tokens, input/output):
# deepseek-chat 0.28/0.42, gpt-4.1 2/8, claude-sonnet-4-6 3/15; 30-day month, 365-day year.
BY_HAND = {
    "deepseek-chat": (11.76, 352.80, 4292.40),
    "gpt-4.1": (124.00, 3720.00, 45260.00),
    "claude-sonnet-4-6": (210.00, 6300.00, 76650.00),
}


def shoal(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("shoal")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, check=False)


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CACHE_LINE = re.compile(r"^cache: [\d,]+ of [\d,]+ prompt tokens read from cache \(\d+%\)"
                        r".*; saved \$-?\d+\.\d{6} by caching$", re.MULTILINE)


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    cost_cmd.register(app)
    models_cmd.register(app)
    run_cmd.register(app)
    runs_cmd.register(app)
    return app


def invoke(app: typer.Typer, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_must_show_table_is_catalog_prices_times_volume() -> None:
    out = shoal(*MUST_SHOW, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    cfg = Config.from_dict({})
    rows = {r["model"]: r for r in data["models"]}
    assert list(rows) == ["deepseek-chat", "gpt-4.1", "claude-sonnet-4-6"]
    for name, (day, month, year) in BY_HAND.items():
        info = cfg.model(name)
        one = (3000 * info.input + 800 * info.output) / 1e6
        row = rows[name]
        assert row["per_request_usd"] == pytest.approx(one, rel=1e-12)
        assert (row["daily_usd"], row["monthly_usd"], row["yearly_usd"]) == pytest.approx(
            (one * 10_000, one * 10_000 * 30, one * 10_000 * 365), rel=1e-12)
        assert (row["daily_usd"], row["monthly_usd"], row["yearly_usd"]) == pytest.approx(
            (day, month, year), rel=1e-12)
        assert row["prices"]["input"] == info.input and row["prices"]["output"] == info.output

    table = shoal(*MUST_SHOW)
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line.split() for line in table.stdout.splitlines()
             if line.split() and line.split()[0] in BY_HAND}
    for name, (day, month, year) in BY_HAND.items():
        assert lines[name][1:] == [f"{day / 10_000:.6f}", f"{day:,.2f}", f"{month:,.2f}",
                                   f"{year:,.2f}"], table.stdout
    assert "month = 30 days, year = 365 days" in table.stdout


def test_cache_hit_rate_reads_part_of_each_prompt_at_the_cached_price(
        cli: typer.Typer) -> None:
    out = invoke(cli, *MUST_SHOW, "--cache-hit-rate", "0.8", "--json")
    assert out.exit_code == 0, out.output
    rows = {r["model"]: r for r in json.loads(out.stdout)["models"]}
    # claude-sonnet-4-6: 600 fresh × $3 + 2,400 read × $0.30 + 800 out × $15
    claude = rows["claude-sonnet-4-6"]
    assert claude["daily_usd"] == pytest.approx((600 * 3 + 2400 * 0.3 + 800 * 15) / 1e6 * 1e4)
    assert claude["uncached_monthly_usd"] == pytest.approx(6300.0)
    assert claude["saved_monthly_usd"] == pytest.approx(6300.0 - 4356.0)
    text = invoke(cli, *MUST_SHOW, "--cache-hit-rate", "0.8")
    assert "saved $/month" in text.stdout and "1,944.00" in text.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--models", "gpt-4.2"], "unknown model 'gpt-4.2'"),
    (["--models", "gpt-4.1", "--cache-hit-rate", "1.5"], "not a fraction"),
])
def test_bad_options_exit_2_with_what_to_fix(
        cli: typer.Typer, args: list[str], message: str) -> None:
    out = CliRunner().invoke(cli, ["cost", "--requests-per-day", "10", "--input-tokens", "1",
                                   "--output-tokens", "1", *args])
    assert out.exit_code == 2
    assert message in " ".join(out.output.split())


def test_volume_needs_all_three_numbers(cli: typer.Typer) -> None:
    out = CliRunner().invoke(cli, ["cost", "--requests-per-day", "10"])
    assert out.exit_code == 2
    assert "--input-tokens, --output-tokens" in " ".join(out.output.split())


def test_models_lists_prices_and_key_state_never_the_key(
        cli: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-0123456789")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = invoke(cli, "models", "--json")
    assert out.exit_code == 0, out.output
    rows = {r["model"]: r for r in json.loads(out.stdout)}
    assert rows["claude-sonnet-4-6"] | {"aliases": []} == {
        "model": "claude-sonnet-4-6", "provider": "anthropic", "aliases": [],
        "context_window": 200000, "max_output": 128000, "input": 3.0, "output": 15.0,
        "cache_read": 0.3, "cache_write": 3.75, "cache_write_1h": 6.0,
        "channels": ["anthropic"], "key": "set", "retires": None, "replaced_by": None}
    retiring = rows["claude-sonnet-4-5"]
    assert (retiring["retires"], retiring["replaced_by"]) == ("2026-11-30", "claude-sonnet-4-6")
    assert rows["gpt-4.1"]["key"] == "unset: OPENAI_API_KEY"
    assert rows["gpt-4.1"]["cache_write_1h"] is None  # no 1-hour TTL to price
    text = invoke(cli, "models")
    assert "sk-ant-secret" not in text.stdout + out.stdout
    assert "claude-sonnet-4-6" in text.stdout and "3.75" in text.stdout
    assert "claude-sonnet-4-5 (retires 2026-11-30)" in text.stdout


def test_a_journaled_run_is_priced_from_its_journal(
        cli: typer.Typer, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    flow = Flow("pair")
    flow.add(Agent("a", model="claude-sonnet-4-6", instructions="Say something."))
    flow.add(Agent("b", model="gpt-4.1", instructions="Answer it."), after="a")

    async def journaled() -> FlowResult:
        async with SimServer(SimConfig()) as sim, Router(config_for_sim(sim.url)) as router:
            return await run_durable(flow, "go", store=store, client=router, run_id="r1")

    result = asyncio.run(journaled())
    assert result.status == "succeeded" and result.cost_usd > 0

    out = invoke(cli, "cost", "--run", "r1", "--store", store, "--runs-per-day", "100",
                 "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["recorded_usd"] == pytest.approx(result.cost_usd)
    assert set(data["by_model"]) == {"claude-sonnet-4-6", "gpt-4.1"}
    as_run = data["models"][0]
    assert as_run["model"] == "claude-sonnet-4-6 + gpt-4.1"
    assert as_run["run_usd"] == pytest.approx(result.cost_usd)  # each at its own price
    assert as_run["monthly_usd"] == pytest.approx(result.cost_usd * 100 * 30)

    on = invoke(cli, "cost", "--run", "r1", "--store", store, "--runs-per-day", "100",
                "--models", "deepseek-chat", "--json")
    row = json.loads(on.stdout)["models"][0]
    u = result.usage
    assert row["run_uncached_usd"] == pytest.approx(
        (u.input_tokens * 0.28 + u.output_tokens * 0.42) / 1e6)
    text = invoke(cli, "cost", "--run", "r1", "--store", store, "--runs-per-day", "100")
    assert f"this run cost ${result.cost_usd:.6f}; at 100/day that is $" in text.stdout
    shown = invoke(cli, "show", "r1", "--store", store)
    assert shown.exit_code == 0 and CACHE_LINE.search(shown.stdout), shown.stdout


@pytest.mark.parametrize("inputs", [["one short document"],
                                    ["-d", str(EXAMPLES / "docs"), "--glob", "*.txt"]])
def test_run_tables_end_with_the_cache_line(cli: typer.Typer, inputs: list[str]) -> None:
    """An agent's turns table and a batch table (a flow's: test above, via show)."""
    out = invoke(cli, "run", f"{EXAMPLES / 'batch_folder.py'}:summarizer", *inputs, "--sim",
                 "--no-progress")
    assert out.exit_code == 0, out.output
    assert CACHE_LINE.search(out.stdout), out.stdout


def test_a_batch_with_cache_hits_shows_what_caching_saves(
        cli: typer.Typer, tmp_path: Path) -> None:
    """Two batch items (RUN-0, RUN-1) journaled as the Router journals a turn: one wrote
    the shared prefix, the other read it back."""
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    sonnet = Config.from_dict({}).model("claude-sonnet-4-6")
    turns = [Usage(3100, 200, 0, 0, 3000), Usage(3100, 200, 3000)]

    async def journal() -> None:
        async with open_store(store) as s:
            for i, usage in enumerate(turns):
                run_id = f"b7-{i}"
                await s.create_run(RunRecord(run_id, "agent"))
                answer = ChatResponse("ok", [], "stop", usage, "anthropic", sonnet.name,
                                      cost_usd=sonnet.cost(usage))
                await s.complete_step(run_id, StepRecord(
                    "agent#1", "succeeded", result=response_to_json(answer),
                    tokens=usage.total_tokens, cost_usd=answer.cost_usd,
                    meta={"kind": "turn", "step": "agent", "turn": 1}))

    asyncio.run(journal())
    out = invoke(cli, "cost", "--run", "b7", "--store", store, "--runs-per-day", "10",
                 "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert sorted(data["run_ids"]) == ["b7-0", "b7-1"]
    with_cache = (100 * 3 + 3000 * 3.75 + 200 * 15 + 100 * 3 + 3000 * 0.3 + 200 * 15) / 1e6
    without = (6200 * 3 + 400 * 15) / 1e6
    row = data["models"][0]
    assert data["recorded_usd"] == pytest.approx(with_cache)
    assert (row["run_usd"], row["run_uncached_usd"]) == pytest.approx((with_cache, without))
    assert row["saved_monthly_usd"] == pytest.approx((without - with_cache) * 10 * 30)
    text = invoke(cli, "cost", "--run", "b7", "--store", store, "--runs-per-day", "10")
    assert "this batch cost" in text.stdout and "3,000 read from cache" in text.stdout
