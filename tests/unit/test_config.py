from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from shoal.config import OFFLINE_MODEL, ChannelConfig, Config
from shoal.errors import ConfigError

REQUIRED = [
    "deepseek-chat", "deepseek-reasoner", "claude-opus-4-6", "claude-sonnet-4-5", "gpt-4o",
    "gpt-4o-mini", "gpt-4.1", "o3-mini", "kimi-k2.5", "glm-5", "MiniMax-M2.5",
    "gemini-2.5-flash", OFFLINE_MODEL,
]


def test_catalog_covers_the_models_users_name() -> None:
    cfg = Config.from_dict({})
    for name in REQUIRED:
        info = cfg.model(name)
        assert info.context_window > 0 and info.max_output > 0
        assert cfg.channels_for(info), name


def test_aliases_resolve_case_insensitively() -> None:
    cfg = Config.from_dict({})
    assert cfg.model("Opus").name == "claude-opus-4-6"
    assert cfg.model("deepseek-v3.2").name == "deepseek-chat"


def test_unknown_model_lists_close_matches() -> None:
    cfg = Config.from_dict({})
    with pytest.raises(ConfigError) as exc:
        cfg.model("claude-opus-4.6")
    assert "claude-opus-4-6" in str(exc.value)
    assert "shoal.toml" in str(exc.value)


def test_user_config_adds_channels_and_overrides_models(tmp_path: Path) -> None:
    toml = tmp_path / "shoal.toml"
    toml.write_text(
        """
[channels.agg]
protocol = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "AGG_KEY"
max_concurrency = 3
rpm = 60

[models."deepseek-chat"]
channels = ["deepseek", "agg"]
fallbacks = ["gpt-4o-mini"]
input = 0.5
"""
    )
    cfg = Config.load(toml)
    info = cfg.model("deepseek-chat")
    assert info.channels == ["deepseek", "agg"]
    assert info.fallbacks == ["gpt-4o-mini"]
    assert info.input == 0.5 and info.output == 0.42  # untouched fields keep catalog values
    agg = cfg.channels["agg"]
    assert agg.max_concurrency == 3 and agg.rpm == 60


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ConfigError) as exc:
        Config.from_dict({"channels": {"x": {"protocol": "grpc", "base_url": "http://h"}}})
    assert "channels.x" in str(exc.value) and "protocol" in str(exc.value)
    with pytest.raises(ConfigError, match=r"undefined|not defined"):
        Config.from_dict({"models": {"m": {"channels": ["nope"]}}})
    with pytest.raises(ConfigError, match="unknown top-level"):
        Config.from_dict({"chanels": {}})


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "shoal.toml"
    bad.write_text("[channels.x\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(bad)


def test_cost_uses_cached_price() -> None:
    info = Config.from_dict({}).model("gpt-4o")
    # 1M prompt tokens of which 400k cached, 100k output
    cost = info.cost(1_000_000, 100_000, cached_input_tokens=400_000)
    assert cost == pytest.approx(0.6 * 2.5 + 0.4 * 1.25 + 0.1 * 10.0)


def test_secret_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    ch = ChannelConfig(name="c", protocol="openai", base_url="http://h",
                       api_key=SecretStr("sk-secret123456"))
    assert "sk-secret123456" not in repr(ch)
    assert "sk-secret123456" not in str(ch.model_dump())
    assert ch.key() == "sk-secret123456"


def test_default_model_is_offline_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config.from_dict({})
    for ch in cfg.channels.values():
        if ch.api_key_env:
            monkeypatch.delenv(ch.api_key_env, raising=False)
    assert cfg.default_model() == OFFLINE_MODEL
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-x")
    assert cfg.default_model() != OFFLINE_MODEL
