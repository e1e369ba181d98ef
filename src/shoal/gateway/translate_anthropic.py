"""An Anthropic Messages request body → shoal's neutral :class:`ChatRequest`.

``system`` (a string or text blocks), ``tool_use``/``tool_result`` blocks, ``thinking``
(and signed thinking blocks sent back) and ``cache_control`` map onto the neutral
types. A block carrying ``cache_control`` ends its neutral message, so the breakpoint
lands on the same block when the channel speaks Anthropic (the adapter merges
consecutive same-role messages back into one); the top-level ``cache_control``
(automatic caching) becomes ``ChatRequest.cache_control``. Other protocols ignore both:
OpenAI-style providers cache prefixes on their own. Images and
documents are refused with a 400: shoal's neutral messages carry text.
"""

from __future__ import annotations

import json
from typing import Any

from shoal.gateway.errors import BadInput
from shoal.gateway.translate_common import Fields, Parsed, type_name
from shoal.types import (
    CacheControl,
    ChatRequest,
    Message,
    ReasoningPart,
    Thinking,
    ToolCall,
    ToolSpec,
)

__all__ = ["parse_messages", "parse_messages_body"]

PASSTHROUGH = ("top_k", "service_tier")


def _blocks(value: Any, path: str) -> list[Fields]:
    if isinstance(value, str):
        return [Fields({"type": "text", "text": value}, path)]
    if not isinstance(value, list):
        raise BadInput(f"{path}: expected a string or an array of content blocks, got "
                       f"{type_name(value)}", param=path)
    return [Fields(b, f"{path}[{i}]") for i, b in enumerate(value)]


def _cache(b: Fields) -> CacheControl | None:
    """A block's ``cache_control``, checked: ``{"type": "ephemeral"[, "ttl": "5m"|"1h"]}``."""
    c = b.obj("cache_control")
    if c is None:
        return None
    return CacheControl(c.string("type") or "ephemeral", c.string("ttl"))


def _unsupported(b: Fields, kind: str | None) -> BadInput:
    return BadInput(f"{b.path}: content block type {kind!r} is not supported by the gateway "
                    "(shoal's messages carry text, tool use and thinking)", param=b.path)


def _tool_result_text(b: Fields) -> str:
    content = b.data.get("content")
    if content is None:
        return ""
    parts: list[str] = []
    for inner in _blocks(content, b.where("content")):
        kind = inner.string("type", required=True)
        if kind != "text":
            raise _unsupported(inner, kind)
        parts.append(inner.string("text", required=True) or "")
    return "\n".join(parts)  # separate blocks stay apart (not "First.Second.")


def _user(f: Fields, out: list[Message]) -> None:
    text: list[str] = []

    def flush(cache: CacheControl | None = None) -> None:
        if text or cache is not None:
            # One message, the blocks a line apart: not run together ("First.Second."),
            # and no run of user messages, which strict chat templates refuse.
            out.append(Message(role="user", content="\n".join(text), cache_control=cache))
            text.clear()

    for b in _blocks(f.need("content"), f.where("content")):
        kind = b.string("type", required=True)
        cache = _cache(b)
        if kind == "text":
            text.append(b.string("text", required=True) or "")
            if cache is not None:
                flush(cache)
        elif kind == "tool_result":
            flush()
            out.append(Message(role="tool", content=_tool_result_text(b),
                               tool_call_id=b.string("tool_use_id", required=True),
                               is_error=b.boolean("is_error"), cache_control=cache))
        else:
            raise _unsupported(b, kind)
    flush()


def _assistant(f: Fields) -> Message:
    text: list[str] = []
    reasoning: list[str] = []
    parts: list[ReasoningPart] = []
    calls: list[ToolCall] = []
    cache: CacheControl | None = None
    for b in _blocks(f.need("content"), f.where("content")):
        kind = b.string("type", required=True)
        cache = _cache(b) or cache
        if kind == "text":
            text.append(b.string("text", required=True) or "")
        elif kind == "tool_use":
            args = b.data.get("input")
            calls.append(ToolCall(b.string("id", required=True) or "",
                                  b.string("name", required=True) or "",
                                  json.dumps(args if args is not None else {},
                                             ensure_ascii=False, separators=(",", ":"))))
        elif kind == "thinking":
            piece = b.string("thinking") or ""
            reasoning.append(piece)
            parts.append(ReasoningPart(piece, b.string("signature") or None))
        elif kind == "redacted_thinking":
            parts.append(ReasoningPart(redacted=b.string("data") or ""))
        else:
            raise _unsupported(b, kind)
    return Message(role="assistant", content="".join(text), tool_calls=tuple(calls),
                   reasoning="".join(reasoning) or None, reasoning_parts=tuple(parts),
                   cache_control=cache)


def _system(f: Fields) -> list[Message]:
    raw = f.data.get("system")
    if raw is None:
        return []
    out: list[Message] = []
    for b in _blocks(raw, "system"):
        kind = b.string("type", required=True)
        if kind != "text":
            raise BadInput(f"{b.path}: system blocks must be text, got {kind!r}", param=b.path)
        out.append(Message(role="system", content=b.string("text", required=True) or "",
                           cache_control=_cache(b)))
    return out


def _tools(f: Fields) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    for i, raw in enumerate(f.array("tools") or []):
        t = Fields(raw, f"tools[{i}]")
        kind = t.string("type")
        if kind not in (None, "custom"):
            raise BadInput(f"{t.path}: server tools ({kind!r}) are not supported by the "
                           "gateway; define client tools with name and input_schema",
                           param=t.path)
        tools.append(ToolSpec(name=t.string("name", required=True) or "",
                              description=t.string("description") or "",
                              parameters=t.mapping("input_schema") or {"type": "object",
                                                                    "properties": {}},
                              cache_control=_cache(t), strict=bool(t.boolean("strict"))))
    return tools


def _tool_choice(f: Fields) -> tuple[str | None, bool | None]:
    """``tool_choice`` as shoal's choice, and ``parallel_tool_calls`` (False when it
    sets ``disable_parallel_tool_use``; None leaves the provider's default)."""
    choice = f.obj("tool_choice")
    if choice is None:
        return None, None
    kind = choice.string("type", required=True)
    one_call = False if choice.boolean("disable_parallel_tool_use") else None
    if kind in ("auto", "none"):
        return kind, one_call
    if kind == "any":
        return "required", one_call
    if kind == "tool":
        return choice.string("name", required=True), one_call
    raise BadInput(f"tool_choice.type: expected auto, any, tool or none, got {kind!r}",
                   param="tool_choice.type")


def _thinking(f: Fields) -> Thinking | None:
    t = f.obj("thinking")
    if t is None:
        return None
    kind = t.string("type", required=True)
    if kind == "disabled":
        return Thinking(enabled=False)
    if kind in ("enabled", "adaptive"):
        budget = t.integer("budget_tokens")
        if budget is not None and budget < 1:
            raise BadInput("thinking.budget_tokens: must be a positive integer",
                           param="thinking.budget_tokens")
        return Thinking(budget_tokens=budget)
    raise BadInput(f"thinking.type: expected enabled, adaptive or disabled, got {kind!r}",
                   param="thinking.type")


_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def _output_config(f: Fields, thinking: Thinking | None
                   ) -> tuple[dict[str, Any] | None, Thinking | None]:
    """``output_config``: its ``format`` (structured output, what the SDK's
    ``messages.parse`` sends) becomes the output schema; its ``effort`` tunes thinking
    when thinking is on (xhigh and max as shoal's high), and is not forwarded otherwise."""
    config = f.obj("output_config")
    if config is None:
        return None, thinking
    schema = None
    fmt = config.obj("format")
    if fmt is not None:
        kind = fmt.string("type", required=True)
        if kind != "json_schema":
            raise BadInput(f"output_config.format.type: expected json_schema, got {kind!r}",
                           param="output_config.format.type")
        schema = fmt.mapping("schema")
        if schema is None:
            raise BadInput("output_config.format.schema: required with type json_schema",
                           param="output_config.format.schema")
    effort = config.string("effort")
    if effort is not None and effort not in _EFFORTS:
        raise BadInput(f"output_config.effort: expected one of {', '.join(_EFFORTS)}, got "
                       f"{effort!r}", param="output_config.effort")
    if effort is not None and thinking is not None and thinking.enabled:
        thinking = Thinking(budget_tokens=thinking.budget_tokens,
                            effort=_EFFORTS[effort])  # type: ignore[arg-type]
    return schema, thinking


def parse_messages_body(body: Any, *, need_max_tokens: bool) -> tuple[Fields, ChatRequest]:
    """The neutral request of a Messages (or count_tokens) body."""
    f = Fields(body, "")
    model = f.string("model", required=True) or ""
    max_tokens = f.integer("max_tokens", required=need_max_tokens)
    raw_messages = f.array("messages", required=True) or []
    if not raw_messages:
        raise BadInput("messages: must hold at least one message", param="messages")
    messages = _system(f)
    for i, raw in enumerate(raw_messages):
        m = Fields(raw, f"messages[{i}]")
        role = m.string("role", required=True)
        if role == "user":
            _user(m, messages)
        elif role == "assistant":
            messages.append(_assistant(m))
        else:
            raise BadInput(f"{m.where('role')}: expected user or assistant, got {role!r} "
                           "(the system prompt goes in the top-level system field)",
                           param=m.where("role"))
    meta = f.obj("metadata")
    user_id = meta.string("user_id") if meta is not None else None
    schema, thinking = _output_config(f, _thinking(f))
    choice, parallel = _tool_choice(f)
    request = ChatRequest(
        model=model, messages=messages, tools=_tools(f), tool_choice=choice,
        temperature=f.number("temperature"), top_p=f.number("top_p"), max_tokens=max_tokens,
        stop=f.str_list("stop_sequences"), thinking=thinking, output_schema=schema,
        metadata={"user_id": user_id} if user_id else {},
        parallel_tool_calls=parallel, cache_control=_cache(f),
    )
    return f, request


def parse_messages(body: Any) -> Parsed:
    """Raises :class:`BadInput` naming the first field that is wrong."""
    f, request = parse_messages_body(body, need_max_tokens=True)
    passthrough = {k: f.data[k] for k in PASSTHROUGH if f.data.get(k) is not None}
    budget = request.thinking is not None and request.thinking.budget_tokens is not None
    return Parsed(request, stream=bool(f.boolean("stream")), include_usage=True,
                  passthrough=passthrough, names=_NAMES_BUDGET if budget else _NAMES)


# The fields of a Messages request that a refusal of a neutral field names (Parsed.names;
# Anthropic's error envelope has no param, so they only keep the Failure exact).
_NAMES = {"tools[]": "tools[{}].input_schema", "output_schema": "output_config.format.schema"}
_NAMES_BUDGET = {**_NAMES, "thinking": "thinking.budget_tokens"}
