"""A newcomer's command-line mistakes: refused before anything runs, with exit 2 and
what to fix, never a traceback, a silently different port or a journaled failed run."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from shoal.cli import run_cmd, sim_cmd


def _app() -> typer.Typer:
    app = typer.Typer()
    run_cmd.register(app)
    sim_cmd.register(app)
    return app


def _invoke(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(_app(), list(args))
    return out.exit_code, out.output


def test_sim_refuses_a_port_out_of_range_instead_of_wrapping_it() -> None:
    # Before: --port 99999 listened on 34463 (99999 mod 65536), exit 0.
    code, text = _invoke("sim", "--port", "99999")
    assert code == 2
    assert "--port" in text and "65535" in text


def test_run_refuses_a_metrics_port_out_of_range_before_running() -> None:
    # Before: the run started, then an OverflowError traceback from bind().
    code, text = _invoke("run", "nowhere:agent", "x", "--metrics-port", "70000")
    assert code == 2
    assert "--metrics-port" in text and "65535" in text


AGENT = '''
from shoal.agents import Agent

agent = Agent("writer", model="gpt-4o-mini", instructions="write")
helped = Agent("helped", model="gpt-4o-mini", fallbacks=["smollm2-135m"])
'''


def _agent_file(tmp_path: Path) -> Path:
    path = tmp_path / "keyless_agent.py"
    path.write_text(AGENT)
    return path


def test_run_with_no_key_for_the_model_is_a_config_error_before_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: the run was created and journaled, the step failed with ConfigError, exit 1
    # and a "shoal resume" hint for what is a missing environment variable.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("SHOAL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "runs.db"
    code, text = _invoke("run", f"{_agent_file(tmp_path)}:agent", "hi",
                         "--store", f"sqlite:///{store}", "--no-progress")
    assert code == 2, text
    assert "agent 'writer': no API key for 'gpt-4o-mini'" in text
    assert "$OPENAI_API_KEY" in text
    assert "Traceback" not in text
    assert not store.exists()  # no run was journaled


def test_run_with_a_keyed_fallback_is_not_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.cli.common import check_models
    from shoal.cli.run_cmd import load_target
    from shoal.config import Config

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    target = load_target(f"{_agent_file(tmp_path)}:helped")
    check_models(target, Config.from_dict({}))  # the offline fallback needs no key
