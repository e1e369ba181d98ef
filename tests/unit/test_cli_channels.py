"""`shoal channels`: each channel's family, protocol, endpoint, key variable (set or
unset, never the value) and limits; a bad config exits 2 with the message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from shoal.cli.channels_cmd import register


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    return app


def test_channels_lists_family_and_key_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "shoal.toml"
    toml.write_text(
        '[channels.deepseek-direct]\nprotocol = "openai"\n'
        'base_url = "https://api.deepseek.com/v1"\napi_key_env = "DS_DIRECT_KEY"\n'
        "max_concurrency = 3\nrpm = 60\n"
    )
    monkeypatch.setenv("DS_DIRECT_KEY", "sk-direct-0123456789")
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    out = CliRunner().invoke(_app(), ["channels", "--config", str(toml), "--json"])
    assert out.exit_code == 0, out.stdout
    rows = {r["channel"]: r for r in json.loads(out.stdout)}
    assert rows["deepseek-direct"] == {
        "channel": "deepseek-direct", "family": "deepseek", "protocol": "openai",
        "base_url": "https://api.deepseek.com/v1", "key": "DS_DIRECT_KEY (set)",
        "limits": "3 at once, 60 rpm",
    }
    assert rows["gemini"]["key"] == "GEMINI_API_KEY (unset)"
    table = CliRunner().invoke(_app(), ["channels", "--config", str(toml)])
    assert "deepseek-direct" in table.stdout and "sk-direct" not in table.stdout


def test_a_bad_config_exits_2_with_the_message(tmp_path: Path) -> None:
    toml = tmp_path / "shoal.toml"
    toml.write_text('[channels.x]\nprotocol = "openai"\nbase_url = "not a url"\n')
    out = CliRunner().invoke(_app(), ["channels", "--config", str(toml)])
    assert out.exit_code == 2
    assert "[channels.x] base_url 'not a url'" in out.output
