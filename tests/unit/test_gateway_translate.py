"""The gateway's request translation, on the bodies the official SDKs send."""

from __future__ import annotations

import pytest

from shoal.gateway.errors import BadInput
from shoal.gateway.translate_anthropic import parse_messages
from shoal.gateway.translate_openai import parse_chat
from shoal.types import CacheControl

TWO_PARTS = [{"type": "text", "text": "First paragraph."},
             {"type": "text", "text": "Second paragraph."}]


def test_text_blocks_and_parts_are_never_run_together() -> None:
    """Several text blocks (a Claude Code system reminder before the question) or
    content parts become one message with the pieces a line apart: not run together,
    and not a run of user messages, which strict chat templates refuse."""
    anthropic = parse_messages({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": TWO_PARTS}]}).request
    openai = parse_chat({"model": "m", "messages": [{"role": "user", "content": TWO_PARTS}]}
                        ).request
    for request in (anthropic, openai):
        assert [m.content for m in request.messages] == ["First paragraph.\nSecond paragraph."]
    result = parse_messages({"model": "m", "max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": TWO_PARTS}]}]}).request
    assert result.messages[-1].content == "First paragraph.\nSecond paragraph."


def test_every_reasoning_effort_the_sdk_sends_is_taken() -> None:
    """The SDK's efforts on shoal's three: minimal as low, xhigh as high (was a 400)."""
    for sent, taken in (("minimal", "low"), ("low", "low"), ("medium", "medium"),
                        ("high", "high"), ("xhigh", "high")):
        thinking = parse_chat({"model": "m", "reasoning_effort": sent, "messages": [
            {"role": "user", "content": "hi"}]}).request.thinking
        assert thinking is not None and thinking.effort == taken, sent
    off = parse_chat({"model": "m", "reasoning_effort": "none",
                      "messages": [{"role": "user", "content": "hi"}]}).request.thinking
    assert off is not None and not off.enabled


def test_openai_only_fields_go_through_to_openai_channels() -> None:
    parsed = parse_chat({"model": "m", "verbosity": "low", "safety_identifier": "u-1",
                         "prompt_cache_retention": "24h",
                         "messages": [{"role": "user", "content": "hi"}]})
    assert parsed.passthrough == {"verbosity": "low", "safety_identifier": "u-1",
                                  "prompt_cache_retention": "24h"}


def test_a_tool_keeps_its_strict_flag_in_both_protocols() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    openai = parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                         "tools": [{"type": "function", "function": {
                             "name": "f", "parameters": schema, "strict": True}}]}).request
    anthropic = parse_messages({"model": "m", "max_tokens": 5,
                                "messages": [{"role": "user", "content": "hi"}],
                                "tools": [{"name": "f", "input_schema": schema,
                                           "strict": True}]}).request
    plain = parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                        "tools": [{"type": "function", "function": {
                            "name": "f", "parameters": schema}}]}).request
    assert openai.tools[0].strict and anthropic.tools[0].strict
    assert not plain.tools[0].strict


HI = [{"role": "user", "content": "hi"}]


def test_response_format_keeps_the_clients_strict_and_json_mode() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}

    def request(fmt: object) -> tuple[object, bool, bool]:
        r = parse_chat({"model": "m", "messages": HI, "response_format": fmt}).request
        return r.output_schema, r.output_strict, r.json_mode

    named = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    assert request(named) == (schema, False, False)  # OpenAI's default: non-strict
    assert request({"type": "json_schema", "json_schema": {
        "name": "a", "schema": schema, "strict": True}}) == (schema, True, False)
    assert request({"type": "json_object"}) == (None, True, True)  # JSON mode, no schema
    # An Anthropic client's structured output is constrained decoding: strict.
    parsed = parse_messages({"model": "m", "max_tokens": 5, "messages": HI, "output_config": {
        "format": {"type": "json_schema", "schema": schema}}}).request
    assert parsed.output_strict and not parsed.json_mode


def test_logprobs_and_top_logprobs() -> None:
    def logprobs(**fields: object) -> int | None:
        return parse_chat({"model": "m", "messages": HI, **fields}).request.logprobs

    assert logprobs() is None and logprobs(logprobs=False) is None
    assert logprobs(logprobs=True) == 0
    assert logprobs(logprobs=True, top_logprobs=5) == 5
    for bad in ({"top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21}):
        with pytest.raises(BadInput) as caught:
            parse_chat({"model": "m", "messages": HI, **bad})
        assert caught.value.param == "top_logprobs"


def test_top_level_cache_control_is_the_requests() -> None:
    request = parse_messages({"model": "m", "max_tokens": 5, "messages": HI,
                              "cache_control": {"type": "ephemeral", "ttl": "1h"}}).request
    assert request.cache_control == CacheControl("ephemeral", "1h")
    plain = parse_messages({"model": "m", "max_tokens": 5, "messages": HI}).request
    assert plain.cache_control is None
