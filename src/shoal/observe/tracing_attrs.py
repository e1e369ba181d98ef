"""Span names and attributes for shoal's traces: the OpenTelemetry GenAI semantic
conventions where they name a thing, ``shoal.*`` where they do not.

Only chat spans carry ``gen_ai.usage.*`` (so a backend summing token usage over spans
counts each model call once); agent, step and run spans carry their totals as
``shoal.usage.*``. Message content is rendered only when tracing was asked to capture
it, and always passes through :func:`shoal.secrets.redact`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shoal.secrets import redact

if TYPE_CHECKING:
    from shoal.types import ChatRequest, ChatResponse, Message

__all__ = [
    "CHAT_END",
    "CONTENT_INPUT",
    "CONTENT_OUTPUT",
    "OPERATION",
    "TOKENS_GEN_AI",
    "TOKENS_SHOAL",
    "chat_kind",
    "input_messages",
    "output_messages",
    "token_attrs",
]

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
AGENT_NAME = "gen_ai.agent.name"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_TYPE = "gen_ai.tool.type"
ERROR_TYPE = "error.type"
CONTENT_INPUT = "gen_ai.input.messages"
CONTENT_OUTPUT = "gen_ai.output.messages"

# event token key → the convention's attribute (chat spans)
TOKENS_GEN_AI: Mapping[str, str] = {
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "cached_input_tokens": "gen_ai.usage.cache_read.input_tokens",
    "cache_write_tokens": "gen_ai.usage.cache_creation.input_tokens",
    "reasoning_tokens": "gen_ai.usage.reasoning.output_tokens",
}
# event token key → totals on agent, step and run spans
TOKENS_SHOAL: Mapping[str, str] = {k: f"shoal.usage.{k}" for k in TOKENS_GEN_AI}

# call_end data key → chat span attribute (besides tokens and errors)
CHAT_END: Mapping[str, str] = {
    "provider": PROVIDER,
    "served_model": RESPONSE_MODEL,
    "attempts": "shoal.attempts",
    "queue_s": "shoal.queue_s",
    "ttft_s": "shoal.ttft_s",
    "cost_usd": "shoal.cost_usd",
    "wasted_cost_usd": "shoal.wasted_cost_usd",
}


def token_attrs(data: Mapping[str, object], names: Mapping[str, str]) -> dict[str, int]:
    """The token counts of an event's data under ``names``; zero cache/reasoning counts
    are left out (most calls have none)."""
    out: dict[str, int] = {}
    for key, attr in names.items():
        value = data.get(key)
        if isinstance(value, int) and (value or key in ("input_tokens", "output_tokens")):
            out[attr] = value
    return out


def chat_kind(key: tuple[Any, ...]) -> tuple[str, dict[str, Any], str]:
    """What a chat span takes from the call_end fields every call of one kind shares,
    ``key`` = (request_model, the event's model, stream, provider, served_model, channel,
    error_type): its name, those attributes, and the error its status says ("" if none)."""
    asked, model, stream, provider, served, channel, error = key
    if asked and isinstance(asked, str):
        model = asked  # what was asked (a fallback's answer: not what served it)
    attrs: dict[str, Any] = {OPERATION: "chat", REQUEST_MODEL: model}
    if stream:
        attrs["shoal.stream"] = True
    if provider:
        attrs[PROVIDER] = provider
    if served:
        attrs[RESPONSE_MODEL] = served
    if channel:
        attrs["shoal.channel"] = channel
    if not isinstance(error, str):
        error = ""
    if error:
        attrs[ERROR_TYPE] = error
    return f"chat {model}", attrs, error


def _message(m: Message) -> dict[str, object]:
    parts: list[dict[str, object]] = []
    if m.role == "tool":
        parts.append({"type": "tool_call_response", "id": m.tool_call_id,
                      "response": m.content})
    elif m.content:
        parts.append({"type": "text", "content": m.content})
    parts.extend({"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments}
                 for c in m.tool_calls)
    return {"role": m.role, "parts": parts}


def input_messages(request: ChatRequest) -> str:
    """``gen_ai.input.messages``: the request's messages as the convention's JSON, redacted."""
    return redact(json.dumps([_message(m) for m in request.messages], ensure_ascii=False))


def output_messages(response: ChatResponse) -> str:
    """``gen_ai.output.messages``: the answer as the convention's JSON, redacted."""
    msg = _message(response.message())
    msg["finish_reason"] = response.finish_reason
    return redact(json.dumps([msg], ensure_ascii=False))
