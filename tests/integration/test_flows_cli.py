"""``shoal run``: flow specs, module:object targets, batches over a folder, JSON results,
against the in-process simulator (``--sim``) over real HTTP."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from shoal.cli import run_cmd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    run_cmd.register(app)

    @app.command("noop")
    def noop() -> None:  # a second command keeps typer from flattening `run`
        return None

    return app


def test_flow_spec_with_json_results(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    res = CliRunner().invoke(app, ["run", str(EXAMPLES / "report_flow.toml"), "LLM economics",
                                   "--sim", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["status"] == "succeeded"
    assert [s["step"] for s in data["steps"]] == ["researcher", "analyzer", "writer"]
    assert [s["model"] for s in data["steps"]] == ["deepseek-chat", "claude-opus-4-6", "gpt-4o"]
    assert all(s["tokens_out"] > 0 for s in data["steps"])
    assert data["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in data["steps"]), abs=1e-5)
    assert "researcher" in res.output
    assert "succeeded" in res.output


def test_batch_over_a_folder_with_a_module_object(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "batch.json"
    target = f"{EXAMPLES / 'batch_folder.py'}:summarizer"
    res = CliRunner().invoke(app, ["run", target, "-d", str(EXAMPLES / "docs"), "--glob",
                                   "*.txt", "--sim", "--concurrency", "3", "--json", str(out),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    files = sorted((EXAMPLES / "docs").glob("*.txt"))
    assert [Path(i["input"]).name for i in data["items"]] == [p.name for p in files]
    assert data["succeeded"] == len(files)
    assert data["failed"] == 0
    assert all(i["output"] for i in data["items"])


def test_agent_target_with_model_override(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "agent.json"
    target = f"{EXAMPLES / 'batch_folder.py'}:summarizer"
    res = CliRunner().invoke(app, ["run", target, "one short document", "--sim", "-m",
                                   "deepseek-chat", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["status"] == "succeeded"
    assert data["turns"] == 1
    assert "deepseek-chat" in res.output


def test_clear_errors(app: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(EXAMPLES / "report_flow.toml"), "--sim"])
    assert res.exit_code == 2
    assert "give an input" in res.output
    res = runner.invoke(app, ["run", "no_such_module_xyz:thing", "x", "--sim"])
    assert res.exit_code == 2
    assert "cannot import 'no_such_module_xyz'" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[steps.a]\nafter = "b"\n')
    res = runner.invoke(app, ["run", str(bad), "x", "--sim"])
    assert res.exit_code == 2
    assert "depend on unknown steps" in res.output
    spec = tmp_path / "flow.yaml"
    spec.write_text("steps:\n  a:\n    model: deepseek-chat\n")
    res = runner.invoke(app, ["run", str(spec), "x", "--sim"])
    if importlib.util.find_spec("yaml") is None:
        assert res.exit_code == 2
        assert "pip install pyyaml" in res.output
    else:
        assert res.exit_code == 0, res.output
