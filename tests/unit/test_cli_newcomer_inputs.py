"""A newcomer's bad input, refused before anything runs with exit 2 and a message saying
what is wrong and how to fix it, never a traceback: ``--budget-usd`` 0, negative or
not finite; a ``.jsonl`` line that is not JSON; files that are not UTF-8 text; a config
path that is a directory; a ``file.py:object`` target whose module raises on import; a
channel ``base_url`` carrying ``user:password@``. Also ``-c`` for ``--config`` on every
command that reads a config, and usage lines naming TARGET / TOPIC / RUN_ID."""

from __future__ import annotations

import gc
import textwrap
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from shoal.cli import (
    channels_cmd,
    cost_cmd,
    demo_cmd,
    gateway_cmd,
    models_cmd,
    run_cmd,
    runs_cmd,
)
from shoal.config import Config
from shoal.errors import ConfigError

SPEC = textwrap.dedent("""
    [flow]
    name = "tiny"

    [steps.a]
    model = "gpt-4o-mini"
    instructions = "Answer."
    max_tokens = 20
""")


def _app() -> typer.Typer:
    app = typer.Typer()
    for module in (channels_cmd, cost_cmd, demo_cmd, gateway_cmd, models_cmd, run_cmd,
                   runs_cmd):
        module.register(app)
    return app


def _invoke(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(_app(), list(args), catch_exceptions=False)
    return out.exit_code, " ".join(out.output.split())  # rich's wrapping undone


@pytest.fixture(autouse=True)
def _plain_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("SHOAL_CONFIG", "SHOAL_STORE", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "200")


def _spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC)
    return path


# -- --budget-usd ----------------------------------------------------------------------

@pytest.mark.parametrize("budget", ["0", "-1", "nan", "inf"])
def test_run_refuses_a_budget_that_is_not_a_positive_number(tmp_path: Path,
                                                            budget: str) -> None:
    # Before: 0 and nan ran with no budget at all (exit 0), the run journaled.
    store = tmp_path / "runs.db"
    code, text = _invoke("run", str(_spec(tmp_path)), "hi", "--sim", "--no-progress",
                         "--budget-usd", budget, "--store", f"sqlite:///{store}")
    assert code == 2, text
    assert "--budget-usd" in text and "is not a budget" in text
    assert "positive number of dollars" in text and "leave --budget-usd out" in text
    assert not store.exists()  # refused before anything ran


@pytest.mark.parametrize("budget", ["0", "nan"])
def test_resume_refuses_a_budget_that_is_not_a_positive_number(budget: str) -> None:
    # Before: `--budget-usd 0` removed the budget the run was started with.
    code, text = _invoke("resume", "some-run", "--budget-usd", budget)
    assert code == 2, text
    assert "is not a budget" in text and "keep the run's own budget" in text


def test_run_with_a_positive_budget_runs() -> None:
    code, text = _invoke("run", str(_spec(Path.cwd())), "hi", "--sim", "--no-progress",
                         "--budget-usd", "0.5")
    assert code == 0, text
    assert "succeeded" in text


# -- input files -----------------------------------------------------------------------

def test_a_jsonl_line_that_is_not_json_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('"first"\nnot json\n')
    code, text = _invoke("run", str(_spec(tmp_path)), "-f", "in.jsonl", "--sim")
    assert code == 2, text
    assert "in.jsonl line 2 is not JSON" in text
    assert "one JSON value per line" in text
    assert "Traceback" not in text


def test_an_input_file_that_is_not_utf8_text_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    code, text = _invoke("run", str(_spec(tmp_path)), "-f", "bin.txt", "--sim")
    assert code == 2, text
    assert "input file bin.txt is not UTF-8 text" in text


def test_a_flow_spec_that_is_not_utf8_text_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "a2.toml").write_bytes(b"\xff\xfe")
    code, text = _invoke("run", "a2.toml", "x", "--sim")
    assert code == 2, text
    assert "flow spec a2.toml is not UTF-8 text" in text


def test_a_config_file_that_is_not_utf8_text_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00bad")
    code, text = _invoke("run", str(_spec(tmp_path)), "x", "--sim", "-c", "bin.toml")
    assert code == 2, text
    assert "config file bin.toml is not UTF-8 text" in text


def test_a_config_path_that_is_a_directory_is_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    code, text = _invoke("models", "--config", "conf")
    assert code == 2, text
    assert "config file conf is a directory" in text
    monkeypatch.setenv("SHOAL_CONFIG", str(tmp_path / "conf"))
    code, text = _invoke("channels")
    assert code == 2, text
    assert "is a directory" in text and "$SHOAL_CONFIG" in text


# -- a file.py:object target that raises on import --------------------------------------

SCRIPT = '''
import asyncio

from shoal.agents import Agent
from shoal.flows.flow import Flow

flow = Flow("report")
flow.add(Agent("writer", model="gpt-4o-mini", instructions="Write."))


async def main() -> None:
    await flow.run("x")


asyncio.run(main())
'''


@pytest.mark.parametrize(("source", "said"), [
    (SCRIPT, "RuntimeError: asyncio.run() cannot be called from a running event loop"),
    ("def broken(:\n", "SyntaxError: invalid syntax"),
    ("import no_such_module_here_at_all\n",
     "ModuleNotFoundError: No module named 'no_such_module_here_at_all'"),
    ("raise ValueError('the setting is off')\n", "ValueError: the setting is off"),
])
@pytest.mark.filterwarnings("ignore:coroutine 'main' was never awaited:RuntimeWarning")
def test_a_target_file_raising_on_import_is_a_usage_error(
        tmp_path: Path, source: str, said: str) -> None:
    # Before: a traceback (exit 1) for everything but a `module:object` ImportError.
    name = f"target_{abs(hash(source)) % 10**8}.py"
    (tmp_path / name).write_text(source)
    code, text = _invoke("run", f"{name}:flow", "x", "--sim", "--no-progress")
    gc.collect()  # the script's unawaited main() goes here, under this test's filter
    assert code == 2, text
    assert f"error: importing {name} failed: {said}" in text
    assert "Traceback" not in text
    if said.startswith("RuntimeError"):  # how to fix a script's entry point
        assert 'if __name__ == "__main__":' in text


# -- base_url with credentials --------------------------------------------------------

def test_a_base_url_with_user_and_password_is_refused_without_echoing_it() -> None:
    # Before: accepted (and masked), then every call failed with aiohttp's ValueError.
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"channels": {"openai": {
            "base_url": "http://u:Basalt-Quill-7734@127.0.0.1:8102/v1",
            "api_key": "sk-test-000000000000"}}})
    said = str(info.value)
    assert "Basalt-Quill" not in said
    assert "[channels.openai] base_url http://u:***@127.0.0.1:8102/v1" in said
    assert "credentials don't belong in base_url" in said
    assert "api_key" in said and "headers" in said


def test_channels_refuses_a_base_url_with_credentials(tmp_path: Path) -> None:
    (tmp_path / "leak.toml").write_text(
        '[channels.openai]\nbase_url = "http://u:Cobalt-Fennel-2291@127.0.0.1:8102/v1"\n'
        'api_key = "mysupersecretkey-0123456789"\n')
    code, text = _invoke("channels", "-c", "leak.toml")
    assert code == 2, text
    assert "credentials don't belong in base_url" in text
    assert "Cobalt-Fennel" not in text and "mysupersecretkey" not in text


# -- -c on every command with --config -------------------------------------------------

MODEL_TOML = '[models.newcomer-model]\nprovider = "openai"\ninput = 1.0\noutput = 2.0\n'


@pytest.mark.parametrize("command", [["models"], ["channels"]])
def test_c_is_config_on_the_listing_commands(tmp_path: Path, command: list[str]) -> None:
    # Before: "No such option: -c".
    (tmp_path / "nc.toml").write_text(
        MODEL_TOML + '[channels.newcomer-proxy]\nprotocol = "openai"\n'
                     'base_url = "http://127.0.0.1:9/v1"\n')
    code, text = _invoke(*command, "-c", "nc.toml")
    assert code == 0, text
    assert ("newcomer-model" if command == ["models"] else "newcomer-proxy") in text


@pytest.mark.parametrize("command", [
    ["demo", "x", "--no-progress"],
    ["gateway"],
    ["cost", "--requests-per-day", "10", "--input-tokens", "10", "--output-tokens", "10",
     "--models", "gpt-4o"],
])
def test_c_is_config_on_demo_gateway_and_cost(command: list[str]) -> None:
    # Each reads the file -c names (here one that is not there) instead of refusing -c.
    code, text = _invoke(*command, "-c", "missing.toml")
    assert code == 2, text
    assert "config file missing.toml does not exist" in text
    assert "No such option" not in text


# -- usage lines -------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "shown"), [
    ("run", "TARGET"), ("batch", "TARGET"), ("demo", "TOPIC"), ("resume", "RUN_ID")])
def test_usage_lines_name_the_arguments_as_the_docs_do(command: str, shown: str) -> None:
    code, text = _invoke(command, "--help")
    assert code == 0, text
    usage = text.split("Usage:", 1)[1][:80]
    assert shown in usage and shown.lower() not in usage
