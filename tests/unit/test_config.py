from __future__ import annotations

import datetime
import tomllib
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


def test_a_retiring_model_is_callable_but_never_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Anthropic retires claude-sonnet-4-5 on 2026-11-30 (its SDK says so): with only an
    Anthropic key the default is the cheapest Claude that is not retiring, and the
    ``sonnet`` alias points past the retiring one."""
    cfg = Config.from_dict({})
    for ch in cfg.channels.values():
        if ch.api_key_env:
            monkeypatch.delenv(ch.api_key_env, raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    old = cfg.model("claude-sonnet-4-5")
    assert old.retires == datetime.date(2026, 11, 30) and cfg.usable(old)
    assert old.replaced_by == "claude-sonnet-4-6"
    assert cfg.default_model() == "claude-sonnet-4-6"
    assert cfg.model("sonnet").name == cfg.model("claude-sonnet").name == "claude-sonnet-4-6"


def test_a_retirement_date_is_checked_when_the_config_loads() -> None:
    """``retires`` is a date (ISO text or a TOML date) and ``replaced_by`` a model that
    exists: a typo in either fails at load, naming the field, not on the day."""
    openai = {"provider": "openai"}
    with pytest.raises(ConfigError, match=r"\[models.'x'\]: retires: Input should be a valid"):
        Config.from_dict({"models": {"x": {**openai, "retires": "30/11/2026"}}})
    with pytest.raises(ConfigError, match="replaced_by = 'gpt-5o' names no model"):
        Config.from_dict({"models": {"x": {**openai, "replaced_by": "gpt-5o"}}})
    toml = Config.from_dict(tomllib.loads(
        '[models.x]\nprovider = "openai"\nretires = 2027-01-01\nreplaced_by = "GPT-4o"\n'))
    assert toml.model("x").retires == datetime.date(2027, 1, 1)
    # the catalog's date can be moved by the user (a provider that extends a retirement)
    later = Config.from_dict({"models": {"claude-sonnet-4-5": {"retires": "2027-03-01"}}})
    assert later.model("claude-sonnet-4-5").retires == datetime.date(2027, 3, 1)


# -- provider families and endpoint validation ------------------------------------------


def _channel(**raw: object) -> ChannelConfig:
    fields: dict[str, object] = {"protocol": "openai", "api_key_env": "X_KEY", **raw}
    name = str(fields.pop("name", "c"))
    return Config.from_dict({"channels": {name: fields}}).channels[name]


@pytest.mark.parametrize(
    ("name", "base_url", "family"),
    [
        ("deepseek-direct", "https://api.deepseek.com/v1", "deepseek"),
        ("claude", "https://api.anthropic.com", "anthropic"),
        ("oai", "https://api.openai.com/v1", "openai"),
        ("kimi", "https://api.moonshot.cn/v1", "moonshot"),
        ("kimi-intl", "https://api.moonshot.ai/v1", "moonshot"),
        ("glm", "https://open.bigmodel.cn/api/paas/v4", "zhipu"),
        ("glm-intl", "https://api.z.ai/api/paas/v4", "zhipu"),
        ("mm", "https://api.minimax.io/v1", "minimax"),
        ("mm-cn", "https://api.minimaxi.com/v1", "minimax"),
        ("g", "https://generativelanguage.googleapis.com/v1beta/openai", "gemini"),
        ("q", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "qwen"),
        ("or", "https://openrouter.ai/api/v1", "openrouter"),
        ("gpu-box", "http://127.0.0.1:8000/v1", "generic"),
        ("vllm", "http://10.0.0.5:8000/v1", "vllm"),  # a family name, an unknown host
        ("box", "http://localhost:11434/v1", "generic"),
        ("zhipu", "http://127.0.0.1:8000/v1", "zhipu"),  # a local URL says nothing: the name
        ("agg", "https://llm-gateway.example.com/v1", "generic"),
    ],
)
def test_the_family_is_inferred_from_the_url_then_the_name(
    name: str, base_url: str, family: str
) -> None:
    assert _channel(name=name, base_url=base_url).provider == family


def test_an_explicit_provider_wins_and_is_validated() -> None:
    assert _channel(base_url="https://api.deepseek.com/v1", provider="generic").provider == (
        "generic")
    with pytest.raises(ConfigError) as exc:
        _channel(base_url="http://h/v1", provider="deepsek")
    text = str(exc.value)
    assert "[channels.c]" in text and "'deepsek'" in text and "Did you mean: deepseek?" in text
    with pytest.raises(ConfigError, match="not a known provider family"):
        ChannelConfig(name="p", protocol="openai", base_url="http://h", provider="bench")


def test_overriding_a_catalog_channel_url_infers_the_family_again() -> None:
    cfg = Config.from_dict({"channels": {
        "openai": {"base_url": "https://openrouter.ai/api/v1"},
        "deepseek": {"base_url": "http://127.0.0.1:9/v1"},  # a simulator: still deepseek
        "zhipu": {"max_concurrency": 2},
    }})
    assert cfg.channels["openai"].provider == "openrouter"
    assert cfg.channels["deepseek"].provider == "deepseek"
    assert cfg.channels["zhipu"].provider == "zhipu"


@pytest.mark.parametrize("url", ["not a url", "api.deepseek.com/v1", "ftp://h/v1", "http://",
                                 "http://h:port/v1", "local://"])
def test_base_url_must_be_an_endpoint(url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _channel(base_url=url)
    assert f"base_url {url!r} is not an endpoint URL" in str(exc.value)
    assert "http(s)://host" in str(exc.value) and "[channels.c]" in str(exc.value)


def test_base_url_from_a_toml_file_is_checked_on_load(tmp_path: Path) -> None:
    toml = tmp_path / "shoal.toml"
    toml.write_text('[channels.x]\nprotocol = "openai"\nbase_url = "not a url"\n')
    with pytest.raises(ConfigError, match="not an endpoint URL"):
        Config.load(toml)


def test_every_family_has_a_profile_and_every_profile_a_family() -> None:
    from shoal.families import FAMILIES
    from shoal.providers.profiles import PROFILES

    assert set(PROFILES) == set(FAMILIES)
