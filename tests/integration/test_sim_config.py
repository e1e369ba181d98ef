"""SimConfig / ModelProfile / Faults: validation, profile lookup, dict and TOML loading."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.errors import ConfigError
from shoal.sim import Faults, ModelProfile, SimConfig
from shoal.sim.config import check_fault


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Faults(error_rate=1.5), "Faults.error_rate must be between 0 and 1"),
        (lambda: Faults(error_rate=0.6, cut_rate=0.6), "add up to at most 1"),
        (lambda: Faults(error_status=404), "must be a 5xx status"),
        (lambda: ModelProfile(latency_s=-1), "ModelProfile.latency_s must be >= 0"),
        (lambda: ModelProfile(tokens_per_s=0), "ModelProfile.tokens_per_s must be > 0"),
        (lambda: ModelProfile(output_tokens=0), "output_tokens must be >= 1"),
        (lambda: SimConfig(max_concurrency=0), "SimConfig.max_concurrency must be >= 1"),
        (lambda: SimConfig(style="bedrock"), "SimConfig.style must be one of openai"),
        (lambda: SimConfig(rate_window_s=0), "rate_window_s must be > 0"),
        (lambda: SimConfig.from_dict({"rpn": 3}), "unknown simulator setting(s) rpn"),
        (lambda: SimConfig.from_dict({"faults": {"eror_rate": 1}}), "unknown fault setting"),
        (lambda: SimConfig.from_dict({"models": {"*": {"latency": 1}}}), "profile setting"),
        (lambda: SimConfig.from_dict({"models": {"*": {"latency_s": "x"}}}), "bad model"),
    ],
)
def test_bad_values_raise_config_error_naming_the_field(
    build: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()


def test_profile_lookup_exact_then_glob_then_default() -> None:
    exact, glob, default = ModelProfile(latency_s=1), ModelProfile(latency_s=2), ModelProfile()
    config = SimConfig(models={"*": default, "gpt-4o": exact, "gpt-*": glob})
    assert config.profile("gpt-4o") is exact
    assert config.profile("gpt-5") is glob
    assert config.profile("claude") is default
    assert SimConfig(models={}).profile("x") == ModelProfile()


def test_first_token_defaults_to_latency() -> None:
    assert ModelProfile(latency_s=0.5).first_token_s == 0.5
    assert ModelProfile(latency_s=0.5, ttft_s=0.1).first_token_s == 0.1


def test_replace_merges_fault_fields_and_keeps_the_rest() -> None:
    base = SimConfig(seed=4, faults=Faults(cut_rate=0.1))
    changed = base.replace(faults={"error_rate": 0.2}, rpm=10)
    assert changed.faults == Faults(cut_rate=0.1, error_rate=0.2)
    assert (changed.seed, changed.rpm) == (4, 10)
    assert base.rpm is None


def test_from_toml_scenario(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(
        'seed = 3\nstyle = "zhipu"\nmax_concurrency = 3\nrpm = 60\n'
        "[faults]\nerror_rate = 0.1\nerror_status = 503\n"
        '[models."*"]\nlatency_s = 0.05\n'
        '[models."glm-*"]\nttft_s = 0.2\ntokens_per_s = 50\ncontext_window = 8000\n'
    )
    config = SimConfig.from_toml(path)
    assert (config.seed, config.style, config.max_concurrency, config.rpm) == (3, "zhipu", 3, 60)
    assert config.faults == Faults(error_rate=0.1, error_status=503)
    glm = ModelProfile(ttft_s=0.2, tokens_per_s=50, context_window=8000)
    assert config.profile("glm-4.6") == glm
    assert config.profile("other").latency_s == 0.05


def test_from_toml_reports_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read simulator scenario"):
        SimConfig.from_toml(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("seed = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SimConfig.from_toml(broken)


def test_to_dict_hides_api_keys() -> None:
    data = SimConfig(api_keys=("sk-secret-1234",)).to_dict()
    assert data["api_keys"] == ["***"]
    assert "sk-secret" not in repr(data)


@pytest.mark.parametrize("name", ["ok", "hang", "cut", "429", "503", "529", "401", "delay:1.5"])
def test_known_faults(name: str) -> None:
    assert check_fault(name) == name


@pytest.mark.parametrize("name", ["", "200", "999", "delay:", "delay:x", "Hang"])
def test_unknown_faults(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown simulator fault"):
        check_fault(name)
