"""What thinking rules out, refused before sending, however thinking was asked for.

Anthropic ("Feature compatibility", platform.claude.com/docs/en/build-with-claude/
extended-thinking): with ``thinking`` enabled or adaptive, a temperature other than 1,
any ``top_k``, a ``top_p`` outside 0.95-1, forced tool use and a pre-filled answer are a
400, and so is a budget outside ``1024 <= budget_tokens < max_tokens``. Gemini's
OpenAI-compatible endpoint (ai.google.dev/gemini-api/docs/openai): ``reasoning_effort``
and a ``thinking_budget``/``thinking_level`` "can't be used at the same time". Each is a
``RequestRefused`` naming the field to change, whether thinking came from
:class:`~shoal.types.Thinking` or from ``ChatRequest.extra``; the allowed neighbours
still go out. The simulator's side: tests/integration/test_thinking_refusals_sim.py."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.errors import ConfigError, RequestRefused
from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.types import ChatRequest, Message, Thinking, ToolSpec

LOOKUP = ToolSpec("lookup", "Look something up.",
                  {"type": "object", "properties": {"q": {"type": "string"}}})
BUDGET = Thinking(budget_tokens=1024)
ENABLED: dict[str, Any] = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
ADAPTIVE: dict[str, Any] = {"thinking": {"type": "adaptive"}}
PREFILLED = [Message.user("Name a colour."), Message.assistant("The colour is")]
HAIKU = "claude-haiku-4-5"  # a manual budget only
SONNET = "claude-sonnet-4-6"  # adaptive (and a deprecated manual budget)


def req(**kw: Any) -> ChatRequest:
    kw.setdefault("messages", [Message.user("What is the weather in Paris?")])
    kw.setdefault("max_tokens", 2048)
    return ChatRequest("m", **kw)


def an() -> AnthropicProvider:
    return AnthropicProvider(base_url="http://127.0.0.1:9", provider="anthropic")


def gemini() -> OpenAICompatProvider:
    return OpenAICompatProvider(base_url="http://127.0.0.1:9/v1", provider="gemini")


def google(**config: Any) -> dict[str, Any]:
    """Gemini's own options, under the literal ``extra_body`` key its endpoint reads."""
    return {"extra_body": {"google": {"thinking_config": config}}}


# (case, provider, wire model, request, the field named)
REFUSED: list[tuple[str, AnthropicProvider | OpenAICompatProvider, str, ChatRequest, str]] = [
    ("top_p under 0.95 with Thinking", an(), HAIKU, req(thinking=BUDGET, top_p=0.9), "top_p"),
    ("top_p under 0.95, adaptive", an(), SONNET, req(thinking=Thinking(), top_p=0.5), "top_p"),
    ("top_k from extra with Thinking", an(), HAIKU,
     req(thinking=BUDGET, extra={"top_k": 40}), "top_k"),
    ("top_k with adaptive thinking from extra", an(), SONNET,
     req(extra={**ADAPTIVE, "top_k": 40}), "top_k"),
    ("a temperature with thinking from extra", an(), HAIKU,
     req(temperature=0.3, extra=ENABLED), "temperature"),
    ("a forced tool with thinking from extra", an(), HAIKU,
     req(tools=[LOOKUP], tool_choice="required", extra=ENABLED), "tool_choice"),
    ("a named tool with adaptive thinking from extra", an(), SONNET,
     req(tools=[LOOKUP], tool_choice="lookup", extra=ADAPTIVE), "tool_choice"),
    ("a pre-filled answer with Thinking", an(), HAIKU,
     req(thinking=BUDGET, messages=PREFILLED), "messages"),
    ("a pre-filled answer with thinking from extra", an(), HAIKU,
     req(messages=PREFILLED, extra=ENABLED), "messages"),
    ("a budget under 1024 from extra", an(), HAIKU,
     req(extra={"thinking": {"type": "enabled", "budget_tokens": 512}}), "thinking"),
    ("a budget at max_tokens from extra", an(), HAIKU,
     req(extra={"thinking": {"type": "enabled", "budget_tokens": 2048}}), "max_tokens"),
    ("an enabled thinking without a budget from extra", an(), HAIKU,
     req(extra={"thinking": {"type": "enabled"}}), "thinking"),
    ("Gemini: an effort and a budget", gemini(), "gemini-2.5-flash",
     req(thinking=Thinking(effort="low"), extra=google(thinking_budget=1024)), "thinking"),
    ("Gemini: a budget and an effort from extra", gemini(), "gemini-2.5-flash",
     req(thinking=Thinking(budget_tokens=2000), extra={"reasoning_effort": "high"}),
     "thinking"),
    ("Gemini: both from extra, a level", gemini(), "gemini-3-flash-preview",
     req(extra={"reasoning_effort": "low", **google(thinking_level="low")}), "extra"),
    ("Gemini: thinking off and a budget", gemini(), "gemini-2.5-flash",
     req(thinking=Thinking(enabled=False), extra=google(thinking_budget=0)), "thinking"),
]


@pytest.mark.parametrize(("case", "provider", "model", "request_", "param"), REFUSED,
                         ids=[c[0] for c in REFUSED])
def test_refused_before_sending_naming_the_field(
        case: str, provider: AnthropicProvider | OpenAICompatProvider, model: str,
        request_: ChatRequest, param: str) -> None:
    with pytest.raises(RequestRefused) as info:
        provider.prepare(request_, model=model)
    assert info.value.param == param, str(info.value)
    assert isinstance(info.value, ConfigError) and not info.value.retryable
    assert "thinking" in str(info.value) or "reasoning_effort" in str(info.value)


# (case, provider, wire model, request): each goes out as asked
ALLOWED: list[tuple[str, AnthropicProvider | OpenAICompatProvider, str, ChatRequest]] = [
    ("top_p 0.95 with Thinking", an(), HAIKU, req(thinking=BUDGET, top_p=0.95)),
    ("top_p 1 with adaptive thinking", an(), SONNET, req(thinking=Thinking(), top_p=1.0)),
    ("temperature 1 with Thinking", an(), HAIKU, req(thinking=BUDGET, temperature=1.0)),
    ("temperature 1 with thinking from extra", an(), HAIKU, req(temperature=1, extra=ENABLED)),
    ("tool_choice auto with thinking from extra", an(), HAIKU,
     req(tools=[LOOKUP], tool_choice="auto", extra=ENABLED)),
    ("top_k without thinking", an(), HAIKU, req(extra={"top_k": 40})),
    ("top_k with thinking disabled", an(), HAIKU,
     req(extra={"top_k": 40, "thinking": {"type": "disabled"}})),
    ("top_p 0.5 without thinking", an(), HAIKU, req(top_p=0.5)),
    ("a pre-filled answer without thinking", an(), HAIKU, req(messages=PREFILLED)),
    ("Gemini: an effort and include_thoughts", gemini(), "gemini-2.5-flash",
     req(thinking=Thinking(effort="low"), extra=google(include_thoughts=True))),
    ("Gemini: a budget alone", gemini(), "gemini-2.5-flash",
     req(thinking=Thinking(budget_tokens=2000))),
    ("Gemini: a level alone", gemini(), "gemini-3-flash-preview",
     req(extra=google(thinking_level="low", include_thoughts=True))),
]


@pytest.mark.parametrize(("case", "provider", "model", "request_"), ALLOWED,
                         ids=[c[0] for c in ALLOWED])
def test_the_allowed_neighbour_goes_out(
        case: str, provider: AnthropicProvider | OpenAICompatProvider, model: str,
        request_: ChatRequest) -> None:
    prepared = provider.prepare(request_, model=model)
    assert prepared.payload is not None and prepared.data is not None
    for key in ("top_p", "temperature", "top_k"):
        if key in request_.extra or getattr(request_, key, None) is not None:
            sent = request_.extra.get(key, getattr(request_, key, None))
            assert prepared.payload[key] == sent, key


def test_thinking_from_extra_offers_the_output_tool_instead_of_forcing_it() -> None:
    """Anthropic refuses a forced tool with thinking on: thinking asked for in ``extra``
    is as on as Thinking's own, so a typed answer is offered (auto), not forced."""
    for extra in (ENABLED, ADAPTIVE):
        body = an().payload(req(output_schema={"type": "object"}, extra=extra),
                            HAIKU if extra is ENABLED else SONNET, stream=False)
        assert body["tool_choice"] == {"type": "auto"}, extra
        assert body["thinking"] == extra["thinking"]
    body = an().payload(req(output_schema={"type": "object"}), HAIKU, stream=False)
    assert body["tool_choice"] == {"type": "tool", "name": "output"}  # thinking off: forced
