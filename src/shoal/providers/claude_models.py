"""What one Claude model takes that another refuses (platform.claude.com, the models'
overview pages and "Adaptive thinking"; ../shared/PROVIDERS.md §2): the thinking form,
sampling parameters and forced tool use, decided by the wire model id.
"""

from __future__ import annotations

import re
from typing import Any

from shoal.errors import BadRequest, RequestRefused
from shoal.types import ChatRequest

__all__ = ["adaptive_claude", "adaptive_only_claude", "check_claude_request",
           "check_output_tool_schema", "check_thinking_body", "check_tool_schemas",
           "thinking_on"]

# Claude models that think adaptively (platform.claude.com, "Adaptive thinking"): Opus and
# Sonnet 4.6 on (where a manual budget is deprecated), every Claude 5. Older ones (Sonnet
# and Opus 4.5, Haiku 4.5) take only a manual budget. A minor version is one or two digits
# and never runs into more (claude-sonnet-4-20250514 is Sonnet 4 of that date, not 4.20).
_ADAPTIVE_CLAUDE = re.compile(
    r"claude-(?:(?:opus|sonnet)-4-(?:[6-9]|\d\d)(?!\d)|mythos|[a-z]+-(?:[5-9]|\d\d)(?:$|[-.]))")


def adaptive_claude(model: str) -> bool:
    """True for a Claude model id that takes ``thinking: {"type": "adaptive"}``."""
    return _ADAPTIVE_CLAUDE.match(model.lower()) is not None


# Of those, the ones that take only the adaptive form (a manual budget is a 400 there):
# Opus 4.7 on, Mythos, Fable, every Claude 5. Opus and Sonnet 4.6 take both.
_ADAPTIVE_ONLY_CLAUDE = re.compile(
    r"claude-(?:opus-4-(?:[7-9]|\d\d)(?!\d)|mythos|fable|[a-z]+-(?:[5-9]|\d\d)(?:$|[-.]))")


def adaptive_only_claude(model: str) -> bool:
    """True for a Claude model id that refuses ``thinking: {"type": "enabled"}``."""
    return _ADAPTIVE_ONLY_CLAUDE.match(model.lower()) is not None


# From Claude Sonnet 5 on, non-default temperature/top_p/top_k are a 400; from Sonnet 5.5
# on, forced tool use is an error (platform.claude.com, the models' overview pages). The
# simulator keeps its own copy of these facts (sim/anthropic_rules.py) on purpose: it must
# not accept a request only because the adapter agrees with it.
_CLAUDE_5 = re.compile(r"claude-[a-z]+-(?:[5-9]|\d\d)(?:$|[-.])")
_CLAUDE_5_5 = re.compile(r"claude-[a-z]+-(?:5-[5-9]|[6-9]|\d\d)(?:$|[-.])")
# From the 4.6 models on (and every Claude 5), a pre-filled answer (the conversation ending
# with an assistant message) is a 400, thinking or not: "Prefilling assistant messages
# returns a 400 error on Claude 4.6 models" (platform.claude.com/docs/en/about-claude/
# models/migration-guide).
_NO_PREFILL = re.compile(
    r"claude-(?:(?:opus|sonnet|haiku)-4-(?:[6-9]|\d\d)(?!\d)|[a-z]+-(?:[5-9]|\d\d)(?:$|[-.]))")
# From Opus 4.1 and the 4.5 models on, temperature and top_p together are a 400
# ("`temperature` and `top_p` cannot both be specified for this model. Please use only
# one.": integrators' reports with request ids, langfuse/langfuse#9882,
# SalesforceAIResearch/MCP-Universe#49, open-webui/pipelines#546); Sonnet and Opus 4 take
# both. (Claude 5 refuses either one, below.)
_ONE_SAMPLER = re.compile(
    r"claude-(?:opus-4-(?:[1-9]|\d\d)(?!\d)|(?:sonnet|haiku)-4-(?:[5-9]|\d\d)(?!\d))")


def check_claude_request(model: str, request: ChatRequest) -> bool:
    """Refuse, before sending, what ``model`` would answer with a 400; return whether it
    takes a forced tool (the output tool's fallback is the native JSON-schema format)."""
    model_id = model.lower()
    forcing = _CLAUDE_5_5.match(model_id) is None
    choice = request.tool_choice
    if not forcing and request.tools and choice not in (None, "auto", "none"):
        raise RequestRefused(
            f"{model} refuses forced tool use (tool_choice={choice!r}): Anthropic returns an "
            "error from Claude 5.5 on; leave tool_choice unset (auto)", param="tool_choice")
    messages = request.messages
    if messages and messages[-1].role == "assistant" and _NO_PREFILL.match(model_id):
        raise RequestRefused(
            f"{model} refuses a pre-filled answer (Anthropic answers 400 \"This model does "
            "not support assistant message prefill\" from the 4.6 models on): end the "
            "conversation with a user message, or ask for the answer's start in it",
            param="messages")
    temperature = request.temperature
    if temperature is not None and not isinstance(temperature, bool) and temperature > 1:
        raise BadRequest(
            f"temperature must be a number from 0 to 1 for Anthropic's models, got "
            f"{temperature!r} (OpenAI-style models take up to 2); lower it, or leave it "
            "unset", code="invalid_request", param="temperature")
    if _ONE_SAMPLER.match(model_id) is not None and temperature is not None and \
            request.top_p is not None:
        raise RequestRefused(
            f"{model} takes temperature or top_p, not both (Anthropic answers 400 "
            "\"`temperature` and `top_p` cannot both be specified for this model\"); leave "
            "one of them unset", param="top_p")
    if _CLAUDE_5.match(model_id) is not None and (
            request.temperature not in (None, 1, 1.0) or request.top_p not in (None, 1, 1.0)):
        raise RequestRefused(
            f"{model} refuses temperature and top_p (Anthropic returns 400 for them from "
            "Claude 5 on); leave them unset",
            param="temperature" if request.temperature not in (None, 1, 1.0) else "top_p")
    return forcing


# Anthropic takes only an object schema as a tool's ``input_schema`` (PROVIDERS.md §2; a
# 400 "tools.N.custom.input_schema.type: Input should be 'object'"): the two checks below
# refuse another before sending, for the caller's tools and for the output tool.


def check_tool_schemas(request: ChatRequest) -> None:
    """The caller's tools: each takes an object of arguments."""
    for i, tool in enumerate(request.tools):
        if tool.parameters.get("type") != "object":
            raise RequestRefused(
                f"tool {tool.name!r}: Anthropic takes only an object schema as a tool's "
                f"parameters (got type {tool.parameters.get('type')!r}); put the arguments "
                "under properties of {\"type\": \"object\"}", param=f"tools[{i}]")


def check_output_tool_schema(request: ChatRequest) -> None:
    """The output schema, when a tool's input carries the typed answer."""
    schema = request.output_schema
    if schema is not None and schema.get("type") != "object":
        raise RequestRefused(
            f"output schema {request.output_schema_name!r}: Anthropic carries a typed answer "
            f"as a tool's input, which must be an object (got type {schema.get('type')!r}); "
            "wrap it: {\"type\": \"object\", \"properties\": {\"items\": <your schema>}, "
            "\"required\": [\"items\"]} (an Agent's output_type does this for you)",
            param="output_schema")


# What thinking rules out ("Feature compatibility" of
# https://platform.claude.com/docs/en/build-with-claude/extended-thinking): a temperature
# or top_k, a top_p outside 0.95-1, forced tool use, a pre-filled answer; and the budget
# bounds (1024 <= budget_tokens < max_tokens). Checked on the body as it will be sent, so
# thinking asked for through ChatRequest.extra (or a top_k the gateway passed through)
# is held to them too; the simulator keeps its own copy (sim/anthropic_rules.py).
TOP_P_WITH_THINKING = 0.95
MIN_THINKING_BUDGET = 1024


def thinking_on(body: dict[str, Any]) -> bool:
    """Whether a Messages body asks for thinking (``enabled`` or ``adaptive``)."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def check_thinking_body(model: str, body: dict[str, Any]) -> None:
    """RequestRefused, before sending, for what Anthropic refuses with thinking on;
    ``param`` names the ChatRequest field to change (``top_k`` comes only from
    ``extra``)."""
    if not thinking_on(body):
        return
    why = f"{model} with thinking on: Anthropic answers 400"
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise RequestRefused(
            f"{why} for temperature={temperature!r} (only 1); leave temperature unset, or "
            "switch thinking off", param="temperature")
    if body.get("top_k") is not None:
        raise RequestRefused(
            f"{why} for top_k ({body['top_k']!r}): top_k must be unset with thinking; drop "
            "it from extra, or switch thinking off", param="top_k")
    top_p = body.get("top_p")
    if isinstance(top_p, int | float) and not TOP_P_WITH_THINKING <= top_p <= 1:
        raise RequestRefused(
            f"{why} for top_p={top_p!r} (with thinking it takes {TOP_P_WITH_THINKING:g} to 1); "
            f"raise it to at least {TOP_P_WITH_THINKING:g}, leave it unset, or switch thinking "
            "off", param="top_p")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise RequestRefused(
            f"{why} for forced tool use (tool_choice {choice['type']!r}; only auto or none); "
            "leave tool_choice unset, or switch thinking off", param="tool_choice")
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict) and \
            messages[-1].get("role") == "assistant":
        raise RequestRefused(
            f"{why} for a pre-filled answer (the conversation ends with an assistant "
            "message); end it with a user message, or switch thinking off",
            param="messages")
    thinking = body["thinking"]
    budget = thinking.get("budget_tokens")
    if thinking.get("type") == "enabled" and not isinstance(budget, int):
        raise RequestRefused(
            "thinking {\"type\": \"enabled\"} needs an integer budget_tokens (Anthropic "
            "answers 400 \"Field required\"); give one, or use Thinking(...)",
            param="thinking")
    if thinking.get("type") == "enabled" and isinstance(budget, int):
        max_tokens = body.get("max_tokens")
        if budget < MIN_THINKING_BUDGET or (isinstance(max_tokens, int) and budget >= max_tokens):
            raise RequestRefused(
                f"thinking.budget_tokens={budget} with max_tokens={max_tokens}: Anthropic "
                f"needs {MIN_THINKING_BUDGET} <= budget_tokens < max_tokens; raise max_tokens "
                "or lower the budget",
                param="thinking" if budget < MIN_THINKING_BUDGET else "max_tokens")
