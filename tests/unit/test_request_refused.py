"""Every refusal an adapter makes before sending names the field at fault.

What the provider would answer with a 400 is refused locally as a
:class:`~shoal.errors.RequestRefused` (a ``ConfigError``: never retried) whose ``param``
is the :class:`~shoal.types.ChatRequest` field to change. The gateway maps that neutral
name to the caller's (``thinking`` → ``reasoning_effort``, ``tools[1]`` →
``tools[1].function.parameters``); nothing has to guess it afterwards."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from shoal.errors import ConfigError, RequestRefused
from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.types import ChatRequest, Message, Thinking, ToolSpec

LOOKUP = ToolSpec("lookup", "Look something up.",
                  {"type": "object", "properties": {"q": {"type": "string"}}})
TAGS = ToolSpec("tags", "A list of tags.", {"type": "array", "items": {"type": "string"}})
LIST: dict[str, Any] = {"type": "array", "items": {"type": "string"}}


def req(**kw: Any) -> ChatRequest:
    kw.setdefault("messages", [Message.user("What is the weather in Paris?")])
    return ChatRequest("m", **kw)


def oa(family: str) -> OpenAICompatProvider:
    return OpenAICompatProvider(base_url="http://127.0.0.1:9/v1", provider=family)


def an() -> AnthropicProvider:
    return AnthropicProvider(base_url="http://127.0.0.1:9", provider="anthropic")


# Each: (case, provider, wire model, request, the neutral field at fault).
CASES: list[tuple[str, OpenAICompatProvider | AnthropicProvider, str, ChatRequest, str]] = [
    ("thinking with a temperature (Anthropic)", an(), "claude-sonnet-4-20250514",
     req(thinking=Thinking(), temperature=0.2), "temperature"),
    ("thinking with a temperature and a forced tool: the first rule's",
     an(), "claude-sonnet-4-20250514",
     req(thinking=Thinking(), temperature=0.2, tools=[LOOKUP], tool_choice="required"),
     "temperature"),
    ("thinking with a forced tool (Anthropic)", an(), "claude-sonnet-4-20250514",
     req(thinking=Thinking(), tools=[LOOKUP], tool_choice="lookup"), "tool_choice"),
    ("thinking in too few max_tokens (Anthropic)", an(), "claude-sonnet-4-20250514",
     req(thinking=Thinking(effort="low"), max_tokens=500), "max_tokens"),
    ("a budget at or over max_tokens (Anthropic)", an(), "claude-sonnet-4-20250514",
     req(thinking=Thinking(budget_tokens=3000), max_tokens=3000), "max_tokens"),
    ("a budget under Anthropic's minimum", an(), "claude-sonnet-4-20250514",
     req(thinking=Thinking(budget_tokens=512), max_tokens=3000), "thinking"),
    ("a manual budget to an adaptive-only Claude", an(), "claude-opus-4-7",
     req(thinking=Thinking(budget_tokens=2048), max_tokens=8000), "thinking"),
    ("reasoning asked of a model that does not reason", oa("openai"), "gpt-4o",
     req(thinking=Thinking(effort="high")), "thinking"),
    ("thinking where shoal knows no switch", oa("ollama"), "llama3",
     req(thinking=Thinking()), "thinking"),
    ("a tool schema that is not an object (Anthropic)", an(), "claude-sonnet-4-20250514",
     req(tools=[LOOKUP, TAGS]), "tools[1]"),
    ("an output schema that is not an object (Anthropic)", an(), "claude-sonnet-4-20250514",
     req(tools=[LOOKUP], output_schema=LIST), "output_schema"),
    ("a temperature to Claude 5", an(), "claude-sonnet-5", req(temperature=0.3),
     "temperature"),
    ("a top_p to Claude 5", an(), "claude-sonnet-5", req(top_p=0.5), "top_p"),
    ("a forced tool to Claude 5.5", an(), "claude-sonnet-5-5",
     req(tools=[LOOKUP], tool_choice="required"), "tool_choice"),
    ("a forced tool to Zhipu (auto only)", oa("zhipu"), "glm-4.6",
     req(tools=[LOOKUP], tool_choice="required"), "tool_choice"),
    ("a temperature to an OpenAI reasoning model", oa("openai"), "o3-mini",
     req(temperature=0.2), "temperature"),
    ("a top_p to an OpenAI reasoning model", oa("openai"), "gpt-5", req(top_p=0.5), "top_p"),
    ("a temperature Kimi K2.5 pins", oa("moonshot"), "kimi-k2.5", req(temperature=0.3),
     "temperature"),
    ("logprobs where the provider returns none", oa("zhipu"), "glm-4.6", req(logprobs=2),
     "logprobs"),
    ("logprobs from DeepSeek in thinking mode", oa("deepseek"), "deepseek-reasoner",
     req(logprobs=0), "logprobs"),
    ("logprobs from Anthropic", an(), "claude-sonnet-4-20250514", req(logprobs=0),
     "logprobs"),
]


@pytest.mark.parametrize(("case", "provider", "model", "request_", "param"), CASES,
                         ids=[c[0] for c in CASES])
def test_a_refusal_before_sending_names_its_field(
        case: str, provider: OpenAICompatProvider | AnthropicProvider, model: str,
        request_: ChatRequest, param: str) -> None:
    with pytest.raises(RequestRefused) as info:
        provider.prepare(request_, model=model)
    assert info.value.param == param, str(info.value)
    assert isinstance(info.value, ConfigError)  # never retried, as before
    assert not info.value.retryable


def test_a_refusal_keeps_its_field_across_processes() -> None:
    with pytest.raises(RequestRefused) as info:
        an().prepare(req(thinking=Thinking(), temperature=0.2),
                     model="claude-sonnet-4-20250514")
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is RequestRefused
    assert again.param == "temperature" and str(again) == str(info.value)
