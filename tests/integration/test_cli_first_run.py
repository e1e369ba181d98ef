"""What a first-time user meets on the command line: exit codes (0 done, 1 the run
failed, 2 usage/config), messages printed as written (no markup swallowed, no doubled
full stops, no duplicate suggestions), unknown models caught before anything runs, the
step table of a failed run, live progress, ``shoal delete`` and ``shoal demo --sim``."""

from __future__ import annotations

import asyncio
import io
import re
import sqlite3
import textwrap
import uuid
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer.testing import CliRunner

from conftest import drop_pg_schema
from shoal.agents import Agent
from shoal.agents.recorder import NullRecorder
from shoal.agents.testing import ScriptedClient, reply
from shoal.cli import demo_cmd, run_cmd, runs_cmd
from shoal.cli.live import live_progress
from shoal.flows.flow import Flow
from shoal.flows.progress import RunProgress

SPEC = textwrap.dedent("""
    [flow]
    name = "report"

    [steps.researcher]
    model = "deepseek-chat"
    instructions = "List facts."
    max_tokens = 60

    [steps.writer]
    model = "gpt-4o"
    instructions = "Write."
    after = ["researcher"]
    max_tokens = 60
""")

FAILING_FLOW = textwrap.dedent("""
    from shoal.agents import Agent
    from shoal.flows.flow import Flow


    def publish(researcher: str) -> str:
        raise RuntimeError("the publisher refused it.")


    flow = Flow("pub")
    flow.add(Agent("researcher", model="deepseek-chat", instructions="Facts.", max_tokens=40))
    flow.add(publish, after="researcher")
""")


def app() -> typer.Typer:
    cli = typer.Typer()
    run_cmd.register(cli)
    runs_cmd.register(cli)
    demo_cmd.register(cli)
    return cli


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app(), list(args), catch_exceptions=False)


def no_double_stops(text: str) -> bool:
    return re.search(r"(?<![.])\.\.(?![.])", text) is None


def test_an_unknown_model_is_a_config_error_before_anything_runs(tmp_path: Path) -> None:
    spec = tmp_path / "flow.toml"
    spec.write_text(SPEC)
    res = invoke("run", str(spec), "topic", "--sim", "-m", "claude-sonet-4-5")
    assert res.exit_code == 2
    assert "-m/--model: unknown model 'claude-sonet-4-5'" in res.stderr
    assert "Add it under [models.'claude-sonet-4-5'] in shoal.toml" in res.stderr  # as written
    hint = re.search(r"Did you mean: ([^?]*)\?", res.stderr)
    assert hint is not None
    names = hint.group(1).split(", ")  # each alias used to bring its model once more
    assert names == ["claude-sonnet-4-5", "claude-sonnet-4-6", "claude-opus-4-6"]
    assert no_double_stops(res.stderr)
    assert "succeeded" not in res.stdout  # nothing ran

    later = tmp_path / "later.toml"
    later.write_text(SPEC.replace('model = "gpt-4o"', 'model = "no-such-model"'))
    res = invoke("run", str(later), "topic", "--sim")
    assert res.exit_code == 2
    assert "step 'writer': unknown model 'no-such-model'" in res.stderr
    assert "researcher" not in res.stdout  # not reported only when the writer was reached


def test_a_failed_run_exits_1_and_prints_what_it_spent(tmp_path: Path) -> None:
    (tmp_path / "pubflow.py").write_text(FAILING_FLOW)
    res = invoke("run", f"{tmp_path / 'pubflow.py'}:flow", "topic", "--sim", "--no-progress")
    assert res.exit_code == 1
    rows = {line.split()[0]: line for line in res.stdout.splitlines()
            if line.split() and line.split()[0] in ("researcher", "publish", "total")}
    assert "succeeded" in rows["researcher"] and "deepseek-chat" in rows["researcher"]
    assert "failed" in rows["publish"]
    assert rows["total"].split()[-1] != "0.000000"  # the researcher's spend is shown
    assert "step 'publish' of flow 'pub' failed: RuntimeError: the publisher refused it." \
        in res.stderr
    assert no_double_stops(res.stderr)
    # Advice for the command line, not for a Python caller (run_id=..., a journal).
    err = " ".join(res.stderr.split())
    assert "run_id=" not in err and "--store sqlite:///" in err and "shoal resume" in err


def test_a_journaled_failed_run_says_how_to_resume_and_delete_removes_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "pubflow.py").write_text(FAILING_FLOW)
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    res = invoke("run", f"{tmp_path / 'pubflow.py'}:flow", "topic", "--sim", "--store", store,
                 "--run-id", "r1", "--no-progress")
    assert res.exit_code == 1
    # the command as printed reaches the run's store (not the default one)
    assert f"shoal resume r1 --store {store}" in " ".join(res.stdout.split())
    assert "run_id=" not in res.stderr and "Run with --store" not in res.stderr

    raw = sqlite3.connect(tmp_path / "runs.db")
    with raw:
        raw.execute("UPDATE steps SET payload = replace(payload, 'deepseek', 'deepseak') "
                    "WHERE step_id = 'researcher'")
    raw.close()
    shown = invoke("show", "r1", "--store", store)
    assert shown.exit_code == 1
    assert "is corrupt" in shown.stderr and "shoal delete r1" in shown.stderr

    gone = invoke("delete", "r1", "--store", store)
    assert gone.exit_code == 0 and gone.stdout.strip() == "deleted run r1"
    again = invoke("delete", "r1", "--store", store)
    assert again.exit_code == 2 and "no run 'r1'" in again.stderr
    assert invoke("show", "r1", "--store", store).exit_code == 2


def test_a_single_run_reports_each_step_as_it_goes_when_not_a_terminal(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "flow.toml"
    spec.write_text(SPEC)
    res = invoke("run", str(spec), "topic", "--sim")
    assert res.exit_code == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("step ")]
    assert lines[0] == "step researcher: running"
    assert re.fullmatch(r"step researcher: succeeded · 1 turn\(s\) · \d+ tokens · "
                        r"\$0\.\d{6} · \d+\.\d\ds", lines[1])
    assert lines[2] == "step writer: running"
    assert lines[3].startswith("step writer: succeeded · 1 turn(s)")


def test_the_live_table_follows_the_steps_on_a_terminal() -> None:
    flow = Flow("two")
    flow.add(Agent("a", model="m"))
    flow.add(Agent("b", model="m"), after="a")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)

    async def main() -> RunProgress:
        with live_progress(console, flow) as watch:
            assert watch is not None
            await flow.run("x", client=ScriptedClient(handler=lambda req: reply("fine")),
                           recorder=watch.watch(NullRecorder()))
            return watch

    done = asyncio.run(main())
    assert [s.status for s in done.steps.values()] == ["succeeded", "succeeded"]
    assert [s.turns for s in done.steps.values()] == [1, 1]
    assert done.tokens > 0
    drawn = out.getvalue()
    assert "\x1b[" in drawn  # drawn live with terminal codes, not as plain lines
    assert "step a: running" not in drawn
    assert "tokens" in drawn and "cost $" in drawn


def test_the_progress_of_a_run_while_it_runs() -> None:
    flow = Flow("two")
    flow.add(Agent("a", model="m"))
    flow.add(Agent("b", model="m"), after="a")
    snapshots: list[list[tuple[str, str, int]]] = []
    progress = RunProgress(flow)

    def answer(req: Any) -> object:
        snapshots.append([(s.name, s.status, s.turns) for s in progress.steps.values()])
        return reply("fine")

    asyncio.run(flow.run("x", client=ScriptedClient(handler=answer),
                         recorder=progress.watch(NullRecorder())))
    assert snapshots == [[("a", "running", 0), ("b", "waiting", 0)],
                         [("a", "succeeded", 1), ("b", "running", 0)]]


def test_demo_runs_on_the_simulator_without_keys() -> None:
    res = invoke("demo", "open-weight LLM economics", "--sim")
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert "report" in out
    for step, model in (("researcher", "deepseek-chat"), ("analyzer", "claude-opus-4-6"),
                        ("writer", "gpt-4o")):
        row = next(ln for ln in out.splitlines() if ln.split()[:1] == [step])
        assert model in row and "succeeded" in row
        assert f"step {step}: succeeded" in out
    assert "is not set" not in out  # no key needed
    # The demo journals nothing: it names no run id that `shoal show` could not find.
    assert "not journaled" in " ".join(out.split())
    assert not re.search(r"\brun [0-9a-f]{16}\b", out)


def test_config_for_sim_has_a_public_home() -> None:
    import shoal.examples_builtin
    import shoal.sim

    config = shoal.sim.config_for_sim("http://127.0.0.1:9")
    assert config.model("gpt-4o").channels == ["sim"]
    assert config.channels["sim"].base_url == "http://127.0.0.1:9/v1"
    assert shoal.examples_builtin.config_for_sim is shoal.sim.config_for_sim  # old name works


def test_delete_of_a_missing_run_names_the_store_without_its_password(pg_dsn: str) -> None:
    schema = "t_del_" + uuid.uuid4().hex[:8]
    url = pg_dsn.replace("postgres@", "postgres:Bassoon-Ochre-6612@", 1) + f"?schema={schema}"
    try:
        res = invoke("delete", "nonexist", "--store", url)
        assert res.exit_code == 2
        assert "no run 'nonexist' in postgresql://postgres:***@" in res.stderr
        assert "Bassoon" not in res.stderr + res.stdout
    finally:
        asyncio.run(drop_pg_schema(pg_dsn, schema))
