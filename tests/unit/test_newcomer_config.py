"""A newcomer's shoal.toml mistakes: each fails on load, saying what to write instead."""

from __future__ import annotations

import pytest

from shoal import Config
from shoal.errors import ConfigError


def test_a_misspelt_channel_field_names_the_field_it_meant() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"channels": {"mine": {
            "protocol": "openai", "base_url": "http://127.0.0.1:8100/v1",
            "max_concurency": 3}}})
    assert "[channels.mine]" in str(err.value)
    assert "max_concurency: unknown field; did you mean: max_concurrency?" in str(err.value)


def test_a_misspelt_model_field_names_the_field_it_meant() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"models": {"m": {"provider": "openai", "context_windw": 8}}})
    assert "context_windw: unknown field; did you mean: context_window?" in str(err.value)


def test_an_unknown_field_with_no_close_match_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"models": {"m": {"provider": "openai", "zzz": 1}}})
    assert "zzz: unknown field; known fields: aliases," in str(err.value)
    assert ", name," not in str(err.value)  # set by the table's name, not a field to write


def test_a_misspelt_top_level_table_names_the_one_it_meant_alerts_included() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"channel": {}})
    assert "[alerts]" in str(err.value)
    assert "Did you mean: channels?" in str(err.value)
    with pytest.raises(ConfigError, match="Did you mean: alerts"):
        Config.from_dict({"alert": {}})


def test_a_fallback_naming_no_model_fails_on_load_not_in_the_outage() -> None:
    # Before: accepted on load; the typo surfaced only when the model's own channels had
    # failed and the Router reached for the fallback.
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"models": {"gpt-4o": {"fallbacks": ["gpt-4o-mni"]}}})
    text = str(err.value)
    assert "[models.'gpt-4o'] fallbacks names 'gpt-4o-mni'" in text
    assert "Did you mean: gpt-4o-mini" in text


def test_fallbacks_by_alias_or_any_case_still_load() -> None:
    cfg = Config.from_dict({"models": {"gpt-4o": {"fallbacks": ["GPT-4O-MINI", "sonnet"]}}})
    assert cfg.model("gpt-4o").fallbacks == ["GPT-4O-MINI", "sonnet"]


def test_a_fallback_defined_in_the_same_file_loads() -> None:
    cfg = Config.from_dict({"models": {
        "a": {"provider": "openai", "fallbacks": ["b"]},
        "b": {"provider": "openai"}}})
    assert cfg.model("a").fallbacks == ["b"]
