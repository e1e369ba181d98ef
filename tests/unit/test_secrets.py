"""Secrets are masked by value (whatever their shape) and by shape, in every error,
stored record, event and tool error; channel keys are registered when read."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator

import pytest

from shoal.agents import RunContext, Runner, Tool
from shoal.agents.testing import ScriptedClient
from shoal.clock import VirtualClock
from shoal.config import ChannelConfig, Config
from shoal.errors import AuthError, ConfigError, StepFailed
from shoal.observe.events import Event, EventBus
from shoal.secrets import (
    MASK,
    forget_secret,
    key_rejected_hint,
    redact,
    redact_values,
    register_secret,
)
from shoal.stores import codec
from shoal.stores.records import RunRecord, StepRecord

GEMINI = "AIzaSyD4x9Qk2LmN8pR7sT1uV5wX3yZ6aB0cDeF"
ZHIPU = "5f2c9a7e1b3d4f6a8c0e2b4d6f8a0c1e.Qw3rTy7UiOp9AsDf"
ODD = "proxy~Zq8xW3vK9pL2mN"  # a key of no known shape: only the registry can catch it


@pytest.fixture
def odd_key() -> Iterator[str]:
    register_secret(ODD)
    yield ODD
    forget_secret(ODD)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"API key not valid: {GEMINI}", GEMINI),
        (f"invalid api key {ZHIPU} (code 1000)", ZHIPU),
        ("Authorization: Bearer abcdefghijklmnop", "abcdefghijklmnop"),
        ("Incorrect API key provided: sk-proj-abcdef123456", "sk-proj-abcdef123456"),
        ('{"x-api-key": "ant-0123456789abcdef"}', "ant-0123456789abcdef"),
        ("GET https://h/v1/models?alt=json&key=s3cr3tvalue99 failed", "s3cr3tvalue99"),
        ("api_key=hunter2hunter2", "hunter2hunter2"),
        ("token eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.c2lnbmF0dXJlMTIz", "eyJhbGciOiJIUzI1"),
    ],
)
def test_shapes_are_masked_without_registration(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert MASK in out


def test_shapes_keep_their_labels_and_ordinary_text() -> None:
    assert redact("Authorization: Bearer abcdefghijklmnop") == "Authorization: Bearer ***"
    assert redact("see https://h/v1?alt=json&key=abcdef") == "see https://h/v1?alt=json&key=***"
    plain = "Connect to api.deepseek.com failed: HTTP 503 after 3 attempts (sha 3f2a…)"
    assert redact(plain) == plain


def test_registered_values_are_masked_whatever_their_shape(odd_key: str) -> None:
    text = f"upstream said: bad credentials {odd_key}"
    assert redact(text) == "upstream said: bad credentials ***"
    assert redact_values(json.dumps({"k": odd_key})) == '{"k": "***"}'
    forget_secret(odd_key)
    assert odd_key in redact(text)  # no shape catches it: only the registry did


def test_short_values_are_not_registered() -> None:
    register_secret("test")
    assert redact("a test message") == "a test message"


def test_a_channel_key_is_registered_when_read(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "zz-" + ODD[::-1]
    monkeypatch.setenv("SHOAL_TEST_ODD_KEY", key)
    ch = ChannelConfig(name="c", protocol="openai", base_url="http://h/v1",
                       api_key_env="SHOAL_TEST_ODD_KEY")
    assert key in redact(f"echo {key}")  # not read yet: shoal has not seen it
    assert ch.key() == key
    assert redact(f"echo {key}") == f"echo {MASK}"
    forget_secret(key)


def test_an_inline_api_key_is_registered_on_construction() -> None:
    key = "inline" + ODD
    Config.from_dict({"channels": {"c": {"protocol": "openai", "base_url": "http://h/v1",
                                         "api_key": key}}})
    assert MASK in redact(key)
    forget_secret(key)


def test_errors_never_show_a_registered_key(odd_key: str) -> None:
    err = AuthError(f"rejected {odd_key}", status=401, provider="p",
                    body=json.dumps({"error": {"message": f"bad key {odd_key} / {GEMINI}"}}))
    for text in (str(err), repr(err), err.body, err.message, *map(str, err.args)):
        assert odd_key not in text and GEMINI not in text
    again = pickle.loads(pickle.dumps(err))
    assert odd_key not in repr(again) and again.status == 401
    plain = ConfigError(f"could not use {odd_key}")
    assert odd_key not in str(plain) and odd_key not in repr(plain)
    assert odd_key not in str(StepFailed(f"step x failed: {ZHIPU}", step="x"))


def test_a_key_registered_after_the_error_was_made_is_masked_when_printed() -> None:
    key = "late" + ODD
    err = ConfigError(f"value {key}")
    register_secret(key)
    assert key not in str(err)
    forget_secret(key)


def test_the_store_codec_masks_before_writing(odd_key: str) -> None:
    run = RunRecord(run_id="r1", flow="f", flow_hash="h", input={"q": f"use {odd_key}"},
                    error=f"AuthError: bad {GEMINI}")
    row = codec.encode_run(run, created_at=1.0, updated_at=1.0)
    step = codec.encode_step("r1", StepRecord(step_id="s", status="failed",
                                              result={"text": odd_key},
                                              error=f"AuthError: bad key {ZHIPU}"))
    for payload in (row.head, row.state, step.payload):
        assert odd_key not in payload and GEMINI not in payload and ZHIPU not in payload
    decoded = codec.decode_step("r1", step, "test")  # the checksum covers the masked text
    assert decoded.result == {"text": MASK}
    assert decoded.error == f"AuthError: bad key {MASK}"


def test_results_get_value_masking_only() -> None:
    # A result that merely looks like a key is user data: only registered values go.
    step = codec.encode_step("r1", StepRecord(step_id="s", status="succeeded",
                                              result="use header Bearer abcdefghijkl"))
    assert "Bearer abcdefghijkl" in step.payload


def test_events_carry_no_key(odd_key: str) -> None:
    bus = EventBus(VirtualClock())
    seen: list[Event] = []
    bus.subscribe(seen.append)
    bus.emit("retry", channel="c", error=f"AuthError: {odd_key}", attempt=1)
    assert seen[0].data["error"] == f"AuthError: {MASK}" and seen[0].data["attempt"] == 1


async def test_a_tool_error_sent_to_the_model_carries_no_key(odd_key: str) -> None:
    def search(query: str) -> str:
        raise RuntimeError(f"GET https://api.example.com/s?q={query}&key={odd_key}: 403 "
                           f"for {odd_key} / {GEMINI}")

    ctx = RunContext(run_id="r1", step_id="s", agent="a", runner=Runner(ScriptedClient()))
    outcome = await Tool(search, retries=0).invoke('{"query": "x"}', ctx, clock=VirtualClock())
    assert outcome.is_error
    assert odd_key not in outcome.content and GEMINI not in outcome.content
    assert "RuntimeError" in outcome.content


def test_key_rejected_hint_names_the_variable_not_the_key() -> None:
    hint = key_rejected_hint("deepseek-direct", "DEEPSEEK_API_KEY")
    assert "DEEPSEEK_API_KEY" in hint and "rejected" in hint and "deepseek-direct" in hint
    assert "api_key" in key_rejected_hint("c", None)


def test_a_virtual_keys_display_prefix_stays_readable() -> None:
    # "sk-shoal-" and 6 characters, then "…": the gateway names a key this way (its
    # revoked-key 401, `shoal keys list`); it is not the key, and the key is still masked
    shown = "the virtual key 'team-a' (sk-shoal-AKtwiT…) was revoked"
    assert redact(shown) == shown
    hint = "send it as Authorization: Bearer sk-shoal-… or as x-api-key"
    assert redact(hint) == hint
    key = "sk-shoal-AKtwiTq8Zr0bD5nYc3LwVx"
    assert key not in redact(f"Authorization: Bearer {key}")
    assert key not in redact(f"the key {key} was revoked")
    assert "AKtwiTq" not in redact("sk-shoal-AKtwiTq…")  # longer than a display prefix
