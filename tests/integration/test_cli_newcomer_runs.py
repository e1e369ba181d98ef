"""What a newcomer's runs end with, against the simulator: ``shoal demo --writer MODEL``
with no key for it is refused before any step is paid for; a demo whose writer failed
(no report) exits 1 and says failed; ``shoal run --json`` writes the failed run;
Ctrl-C on a journaled ``shoal run`` / ``shoal resume`` prints the steps and the command
that continues it (exit 130); and docs/durable.md's ``shoal resume rep-001 --target
report.py:flow`` works with the program it documents."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from sim_cli_kit import write_sim_toml
from typer.testing import CliRunner

from shoal.cli import demo_cmd, run_cmd, runs_cmd
from shoal.sim import SimProcess

ROOT = Path(__file__).resolve().parents[2]
SHOAL = str(Path(sys.executable).parent / "shoal")


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    with SimProcess() as s:
        yield s


@pytest.fixture(autouse=True)
def _plain_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("SHOAL_CONFIG", "SHOAL_STORE", "OPENAI_API_KEY", "DEEPSEEK_API_KEY",
                "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "200")


def _app() -> typer.Typer:
    app = typer.Typer()
    for module in (demo_cmd, run_cmd, runs_cmd):
        module.register(app)
    return app


def _invoke(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(_app(), list(args), catch_exceptions=False)
    return out.exit_code, " ".join(out.output.split())


# -- shoal demo ------------------------------------------------------------------------

def test_demo_refuses_a_writer_with_no_key_before_any_step_runs(
        sim: SimProcess, tmp_path: Path) -> None:
    # Before: the researcher and analyzer ran (paid for, with keys), then the writer
    # "fell back" to a note, and the demo said succeeded with exit 0.
    cfg = write_sim_toml(sim.url, tmp_path / "shoal.toml")
    code, text = _invoke("demo", "tides", "--config", str(cfg), "--no-progress",
                         "--researcher", "m", "--analyzer", "m", "--writer", "gpt-4o")
    assert code == 2, text
    assert "error: --writer gpt-4o: no API key for 'gpt-4o'" in text
    assert "$OPENAI_API_KEY" in text and "Nothing was run" in text
    assert sim.stats()["total_requests"] == 0


def test_a_demo_whose_writer_failed_says_failed_and_exits_1(
        sim: SimProcess, tmp_path: Path) -> None:
    cfg = write_sim_toml(sim.url, tmp_path / "shoal.toml")
    sim.script(["ok", "ok", "400", "400"])  # researcher, analyzer; the writer refused
    code, text = _invoke("demo", "tides", "--config", str(cfg), "--no-progress",
                         "--json", "demo.json",
                         "--researcher", "m", "--analyzer", "m", "--writer", "m")
    assert code == 1, text
    assert "(no report: the writer failed" in text
    assert "content-pipeline · failed" in text
    assert not re.search(r"total .*succeeded", text)
    doc = json.loads((tmp_path / "demo.json").read_text())
    assert doc["status"] == "failed"
    assert [s["status"] for s in doc["steps"]] == ["succeeded", "succeeded", "fallback"]


def test_a_demo_that_wrote_its_report_succeeds(sim: SimProcess, tmp_path: Path) -> None:
    cfg = write_sim_toml(sim.url, tmp_path / "shoal.toml")
    code, text = _invoke("demo", "tides", "--config", str(cfg), "--no-progress",
                         "--researcher", "m", "--analyzer", "m", "--writer", "m")
    assert code == 0, text
    assert "content-pipeline · succeeded" in text


# -- shoal run --json when the run fails -----------------------------------------------

SPEC = textwrap.dedent("""
    [flow]
    name = "report"

    [steps.researcher]
    model = "m"
    instructions = "List facts."
    max_tokens = 60

    [steps.writer]
    model = "m"
    instructions = "Write."
    after = ["researcher"]
    max_tokens = 60
""")


def test_run_json_holds_a_failed_single_run(sim: SimProcess, tmp_path: Path) -> None:
    # Before: exit 1 and no file at all.
    cfg = write_sim_toml(sim.url, tmp_path / "shoal.toml")
    (tmp_path / "report.toml").write_text(SPEC)
    sim.script(["ok", "400"])  # the writer is refused
    code, text = _invoke("run", "report.toml", "tides", "-c", str(cfg), "--no-progress",
                         "--json", "out.json", "--store", f"sqlite:///{tmp_path / 'r.db'}",
                         "--run-id", "json-1")
    assert code == 1, text
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["status"] == "failed"
    assert doc["run_id"] == "json-1" and doc["step"] == "writer"
    assert {s["step"]: s["status"] for s in doc["steps"]} == {
        "researcher": "succeeded", "writer": "failed"}
    assert "step 'writer' of flow 'report' failed" in doc["error"]
    assert doc["cost_usd"] > 0  # the researcher's call, paid before it failed


# -- Ctrl-C on a journaled run -----------------------------------------------------------

SLOW_FLOW = textwrap.dedent("""
    import asyncio

    from shoal.agents import Agent
    from shoal.flows.flow import Flow


    async def publish(researcher: str) -> str:
        await asyncio.Event().wait()  # until interrupted
        return researcher


    flow = Flow("pub")
    flow.add(Agent("researcher", model="m", instructions="Facts.", max_tokens=40))
    flow.add(publish, after="researcher")
""")


# `shoal ARGS` with Ctrl-C handled as in a terminal, even when this test process was
# started with SIGINT ignored (a background job), which a child would inherit.
CLI_WITH_CTRL_C = textwrap.dedent("""
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv[0] = "shoal"
    from shoal.cli.main import main

    main()
""")


def _interrupt_at(args: list[str], line: str, cwd: Path) -> tuple[int, str, str]:
    """Start ``shoal ARGS`` (progress lines: stdout is a pipe), wait for ``line`` on its
    stdout, then send SIGINT as Ctrl-C does; its exit status, stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env["COLUMNS"] = "200"
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI_WITH_CTRL_C, *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while line not in "".join(seen):
                assert sel.select(60), f"no {line!r} within 60s: {''.join(seen)}"
                got = proc.stdout.readline()
                assert got, f"ended before {line!r}: {''.join(seen)} {proc.stderr.read()}"
                seen.append(got)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(seen) + out, err


def test_ctrl_c_on_a_journaled_run_and_resume_prints_the_steps_and_how_to_continue(
        sim: SimProcess, tmp_path: Path) -> None:
    # Before: exit 130 with nothing printed after "step publish: running".
    cfg = write_sim_toml(sim.url, tmp_path / "shoal.toml")
    (tmp_path / "slow.py").write_text(SLOW_FLOW)
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = _interrupt_at(
        ["run", "slow.py:flow", "tides", "-c", str(cfg), "--store", store,
         "--run-id", "int-1"], "step publish: running", tmp_path)
    assert code == 130, (out, err)
    assert "Traceback" not in err
    rows = {m[1]: m[2] for m in re.finditer(r"^\s*(researcher|publish)\s+(\w+)", out, re.M)}
    assert rows == {"researcher": "succeeded", "publish": "interrupted"}, out
    assert "pub · run int-1 · interrupted" in out
    assert f"continue with: shoal resume int-1 --store {store}" in out

    code, out, err = _interrupt_at(["resume", "int-1", "--store", store],
                                   "step publish: running", tmp_path)
    assert code == 130, (out, err)
    assert "Traceback" not in err
    rows = {m[1]: m[2] for m in re.finditer(r"^\s*(researcher|publish)\s+(\w+)", out, re.M)}
    assert rows == {"researcher": "replayed", "publish": "interrupted"}, out
    assert f"continue with: shoal resume int-1 --store {store}" in out
    assert sim.tags().count("researcher") == 1  # the resume replayed it: paid once


# -- docs/durable.md: the program, then `shoal resume rep-001 --target report.py:flow` ------

def _first_python_block(doc: Path) -> str:
    found = re.search(r"```python\n(.*?)```", doc.read_text("utf-8"), re.S)
    assert found is not None
    return found[1]


def test_the_documented_resume_of_report_py_works(sim: SimProcess, tmp_path: Path) -> None:
    # Before: `shoal resume ... --target report.py:flow` imported report.py, whose
    # top-level asyncio.run(main()) raised inside shoal's loop: a traceback, exit 1.
    program = _first_python_block(ROOT / "docs" / "durable.md")
    assert "--target report.py:flow" in (ROOT / "docs" / "durable.md").read_text("utf-8")
    (tmp_path / "report.py").write_text(program)
    sim_toml = (ROOT / "docs" / "sim.toml").read_text("utf-8")
    (tmp_path / "sim.toml").write_text(sim_toml.replace("http://127.0.0.1:8100", sim.url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env["SHOAL_CONFIG"] = str(tmp_path / "sim.toml")
    first = subprocess.run([sys.executable, "report.py"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1] == "succeeded True"
    again = subprocess.run([SHOAL, "resume", "rep-001", "--target", "report.py:flow",
                            "--no-progress"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert re.search(r"researcher\s+deepseek-chat\s+replayed", again.stdout)
    assert re.search(r"writer\s+gpt-4o\s+replayed", again.stdout)


# -- retries are said while they happen, when no live progress is drawn -----------------


def test_no_progress_says_when_a_call_is_being_retried(sim: SimProcess,
                                                       tmp_path: Path) -> None:
    """With --no-progress, a provider answering 503 kept the screen silent until the
    call's deadline (two minutes), then one error (a newcomer's finding). Each retry is
    now a line on stderr (at most one per channel every 10 s); with live progress on,
    none is printed."""
    cfg = write_sim_toml(sim.url, tmp_path / "shoal.toml")
    (tmp_path / "one.toml").write_text(
        '[flow]\nname = "one"\n[steps.ask]\nmodel = "m"\ninstructions = "Say hi."\n'
        "max_tokens = 16\n")
    sim.script(["503", "ok"])
    code, text = _invoke("run", str(tmp_path / "one.toml"), "tides", "--config", str(cfg),
                         "--no-progress")
    assert code == 0, text
    assert "step ask: retrying on sim after ProviderUnavailable (attempt 1" in text
    sim.reset()
    sim.script(["503", "ok"])
    code, text = _invoke("run", str(tmp_path / "one.toml"), "tides", "--config", str(cfg))
    assert code == 0, text
    assert "retrying" not in text
