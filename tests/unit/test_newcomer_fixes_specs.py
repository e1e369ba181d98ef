"""Flow-spec and ``[gateway]`` mistakes get the help shoal.toml's own tables give
(finding 21): a misspelt field names its close matches, and a dependency on a step the
spec does not have names that step, instead of "unknown steps or on each other"."""

from __future__ import annotations

import pytest

from shoal.config import Config
from shoal.errors import ConfigError
from shoal.flows.flow import Flow
from shoal.gateway.settings import GatewaySettings


def _error(spec: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        Flow.from_spec(spec)
    return str(info.value)


def test_a_misspelt_step_field_names_the_field_it_meant() -> None:
    message = _error({"steps": {"a": {"instructon": "hi", "model": "gpt-4o"}}})
    assert message == "[steps.a]: unknown field 'instructon'; did you mean: instructions?"
    # a step option, not only an agent setting
    assert "did you mean: on_failure," in _error({"steps": {"a": {"on_failur": "skip"}}})
    # nothing close: the known fields, so the reader can pick
    far = _error({"steps": {"a": {"colour": "red"}}})
    assert "unknown field 'colour'; known fields: instructions, model," in far
    assert "after" in far and "Agent.__init__" not in far


def test_a_misspelt_flow_option_names_the_option_it_meant() -> None:
    message = _error({"flow": {"budget_us": 1.0}, "steps": {"a": {}}})
    assert message.startswith("[flow]: unknown field 'budget_us'; did you mean: budget_usd")


def test_an_unknown_dependency_is_named() -> None:
    message = _error({"steps": {"a": {"after": ["b"]}}})
    assert message.startswith("step 'a' depends on 'b', which is not a step. The steps are: a;")
    assert "[steps.a]" in message and "cycle" not in message
    close = _error({"steps": {"researcher": {}, "writer": {"after": "resercher"}}})
    assert "step 'writer' depends on 'resercher', which is not a step (did you mean: " \
           "researcher?)" in close


def test_a_cycle_is_shown_as_one() -> None:
    message = _error({"steps": {"a": {"after": "c"}, "b": {"after": "a"},
                                "c": {"after": "b"}, "d": {}}})
    assert "steps a, c, b depend on each other" in message
    assert "a -> c -> b -> a" in message and "d, " not in message
    assert "depends on itself" in _error({"steps": {"a": {"after": "a"}}})


def test_a_step_that_is_not_a_table_or_a_bad_after_is_a_config_error() -> None:
    assert "[steps.a] must be a table" in _error({"steps": {"a": "write"}})
    assert "after must be a step name or a list" in _error({"steps": {"a": {"after": 3}}})


def test_a_valid_spec_still_builds_in_dependency_order() -> None:
    flow = Flow.from_spec({"steps": {
        "writer": {"instructions": "Write.", "after": ["analyzer"], "model": "m"},
        "researcher": {"instructions": "Research.", "model": "m", "max_tokens": 300},
        "analyzer": {"instructions": "Analyse.", "after": "researcher", "model": "m"}}})
    assert list(flow.steps) == ["researcher", "analyzer", "writer"]


def test_a_misspelt_gateway_setting_names_the_setting_it_meant() -> None:
    config = Config.from_dict({"gateway": {"prot": 8090}})
    with pytest.raises(ConfigError) as info:
        GatewaySettings.build(config.gateway)
    assert str(info.value) == "invalid [gateway] settings: prot: unknown field; did you " \
                              "mean: port?"
    with pytest.raises(ConfigError, match=r"workers: Input should be greater"):
        GatewaySettings.build({"workers": 0})
