"""validate_request rejects what every provider would refuse, before any request, with a
message saying what is wrong and how to fix it; timeouts must be > 0 or None."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.agents import tool
from shoal.config import ModelInfo
from shoal.errors import BadRequest, ConfigError, ContextOverflow
from shoal.flows.flow import Flow
from shoal.tokens import estimate_prompt_tokens
from shoal.types import ChatRequest, Message, ToolCall, ToolSpec
from shoal.validate import validate_request

HI = [Message.user("hi")]
LOOKUP = ToolSpec("lookup", "find a thing")


def req(**kw: Any) -> ChatRequest:
    kw.setdefault("messages", HI)
    return ChatRequest(model="m", **kw)


def test_a_plain_request_passes() -> None:
    validate_request(req(max_tokens=10, temperature=0.0, top_p=1.0))
    validate_request(req(temperature=2.0, tools=[LOOKUP], tool_choice="required"))
    validate_request(req(tools=[LOOKUP], tool_choice="lookup"))
    validate_request(req(tool_choice="auto"))
    validate_request(req(tool_choice="none"))
    validate_request(req(tools=[ToolSpec("get-weather_2", "")],
                         output_schema={"type": "object"}, output_schema_name="Answer-1"))


@pytest.mark.parametrize(
    ("request_kw", "says"),
    [
        ({"messages": []}, "no messages"),
        ({"max_tokens": 0}, "max_tokens must be a positive integer, got 0"),
        ({"max_tokens": -5}, "max_tokens must be a positive integer, got -5"),
        ({"temperature": 9.0}, "temperature must be a number from 0 to 2, got 9.0"),
        ({"temperature": -0.1}, "temperature must be a number from 0 to 2"),
        ({"top_p": 1.5}, "top_p must be a number from 0 to 1"),
        ({"logprobs": 21}, "logprobs must be an integer from 0 to 20"),
        ({"logprobs": -1}, "logprobs must be an integer from 0 to 20"),
        ({"logprobs": True}, "got True; or None not to ask for them"),
        ({"tool_choice": "required"}, 'tool_choice="required" but the request has no tools'),
        ({"tool_choice": "lookup"}, "tool_choice names tool 'lookup', which is not among"),
        ({"tool_choice": "search", "tools": [LOOKUP]}, "(lookup)"),
        ({"tools": [ToolSpec("my tool", "")]},
         "a tool name must be 1-64 letters, digits, '_' or '-' (what OpenAI and Anthropic "
         "accept), got 'my tool'; rename it, e.g. 'my_tool'"),
        ({"tools": [LOOKUP, ToolSpec("x" * 65, "")]}, "a tool name must be 1-64"),
        ({"output_schema": {"type": "object"}, "output_schema_name": "My Answer"},
         "the output schema's name must be 1-64 letters, digits, '_' or '-'"),
    ],
)
def test_bad_requests_are_refused_with_the_fix(request_kw: dict[str, Any], says: str) -> None:
    with pytest.raises(BadRequest) as exc:
        validate_request(req(**request_kw))
    assert says in str(exc.value)
    assert not exc.value.retryable


def test_a_tool_result_must_answer_an_earlier_call() -> None:
    call = ToolCall("call_1", "lookup", "{}")
    good = [Message.user("q"), Message.assistant("", [call]), Message.tool("call_1", "42")]
    validate_request(req(messages=good, tools=[LOOKUP]))
    orphan = [Message.user("q"), Message.tool("call_9", "42")]
    with pytest.raises(BadRequest, match=r"messages\[1\] is a tool result for call id 'call_9'"):
        validate_request(req(messages=orphan))
    early = [Message.user("q"), Message.tool("call_1", "42"), Message.assistant("", [call])]
    with pytest.raises(BadRequest, match="no earlier assistant message"):
        validate_request(req(messages=early))


def test_every_tool_call_is_answered_before_the_conversation_goes_on() -> None:
    a, b = ToolCall("call_a", "lookup", "{}"), ToolCall("call_b", "lookup", "{}")
    answered = [Message.user("q"), Message.assistant("", [a, b]), Message.tool("call_b", "2"),
                Message.tool("call_a", "1"), Message.user("and?")]
    validate_request(req(messages=answered, tools=[LOOKUP]))  # any order, all answered
    half = [Message.user("q"), Message.assistant("", [a, b]), Message.tool("call_a", "1"),
            Message.user("and?")]
    with pytest.raises(BadRequest) as exc:
        validate_request(req(messages=half, tools=[LOOKUP]))
    assert "messages[1] makes tool call(s) 'call_b'" in str(exc.value)
    assert "before messages[3]" in str(exc.value) and exc.value.param == "messages[1]"
    skipped = [Message.user("q"), Message.assistant("", [a]), Message.assistant("well")]
    with pytest.raises(BadRequest, match=r"'call_a' that no tool result answers"):
        validate_request(req(messages=skipped, tools=[LOOKUP]))
    # a conversation that ends on its calls (the results are still to come) is not refused
    validate_request(req(messages=[Message.user("q"), Message.assistant("", [a])],
                         tools=[LOOKUP]))


def test_the_prompt_must_fit_the_context_window() -> None:
    info = ModelInfo(name="tiny", context_window=50, encoding="approx")
    long = req(messages=[Message.user("word " * 200)])
    with pytest.raises(ContextOverflow) as exc:
        validate_request(long, info)
    estimate = estimate_prompt_tokens(long, "approx")
    assert f"~{estimate} tokens" in str(exc.value) and "window of 50" in str(exc.value)
    assert isinstance(exc.value, BadRequest)
    validate_request(req(), info)  # "hi" fits
    with pytest.raises(ContextOverflow, match="max_tokens 45"):
        validate_request(req(max_tokens=45), info)
    validate_request(req(max_tokens=45), info, prompt_tokens=5)  # the caller's estimate


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_tool_timeouts_must_be_positive(bad: float) -> None:
    def f() -> int:
        return 1

    with pytest.raises(ConfigError, match="timeout_s must be a number of seconds > 0"):
        tool(timeout_s=bad)(f)
    assert tool(timeout_s=None)(f).timeout_s is None
    assert tool(timeout_s=0.5)(f).timeout_s == 0.5


def test_step_timeouts_must_be_positive() -> None:
    def f() -> int:
        return 1

    flow = Flow("x")
    with pytest.raises(ConfigError, match=r"step 'f': timeout_s .* got -1"):
        flow.add(f, timeout_s=-1)
    assert flow.add(f, timeout_s=2).timeout_s == 2
