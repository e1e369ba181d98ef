"""An OpenAI Chat Completions request body → shoal's neutral :class:`ChatRequest`.

``response_format`` becomes ``output_schema`` with the client's own ``strict`` (only
``strict: true`` is sent strict), or ``json_mode`` for ``json_object`` (JSON mode, no
schema), so every channel's provider gets it in the form its profile says (native
schema, JSON mode, an output tool on Anthropic). ``logprobs``/``top_logprobs`` become
``ChatRequest.logprobs``. Content parts other than text (images, audio, files) are
refused with a 400: shoal's neutral messages carry text.
"""

from __future__ import annotations

from typing import Any

from shoal.gateway.errors import BadInput
from shoal.gateway.translate_common import Fields, Parsed, type_name
from shoal.types import ChatRequest, Message, Thinking, ToolCall, ToolSpec

__all__ = ["parse_chat"]

# Sent to the channel as they came when every channel speaks OpenAI (else dropped).
PASSTHROUGH = ("presence_penalty", "frequency_penalty", "logit_bias", "user",
               "service_tier", "metadata", "store", "prompt_cache_key", "verbosity",
               "safety_identifier", "prompt_cache_retention")
_PASSTHROUGH = frozenset(PASSTHROUGH)
ANY_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
# The SDK's reasoning_effort values on shoal's three (minimal as low, xhigh as high).
_EFFORT = {"low": "low", "minimal": "low", "medium": "medium", "high": "high",
           "xhigh": "high"}


def _text(value: Any, path: str, *, allow_null: bool = False) -> str:
    """A message's ``content``: a string, or text parts joined."""
    if isinstance(value, str):
        return value
    if value is None and allow_null:
        return ""
    if not isinstance(value, list):
        raise BadInput(f"{path}: expected a string or an array of content parts, got "
                       f"{type_name(value)}", param=path)
    out: list[str] = []
    for i, part in enumerate(value):
        f = Fields(part, f"{path}[{i}]")
        kind = f.string("type", required=True)
        if kind in ("text", "refusal"):
            out.append(f.string(kind, required=True) or "")
        else:
            raise BadInput(f"{f.path}: content part type {kind!r} is not supported by the "
                           "gateway (shoal's messages carry text); send text parts",
                           param=f.path)
    return "\n".join(out)  # separate parts stay apart (not "First.Second.")


def _tool_calls(f: Fields) -> tuple[ToolCall, ...]:
    calls: list[ToolCall] = []
    for i, raw in enumerate(f.array("tool_calls") or []):
        c = Fields(raw, f"{f.where('tool_calls')}[{i}]")
        fn = c.obj("function")
        if fn is None:
            raise BadInput(f"{c.where('function')} is required", param=c.where("function"))
        calls.append(ToolCall(id=c.string("id", required=True) or "",
                              name=fn.string("name", required=True) or "",
                              arguments=fn.string("arguments") or "{}"))
    return tuple(calls)


def _plain_message(raw: Any, i: int) -> Message:
    """The common messages (system, developer or user, with string content) read
    directly; any other message, and any error, through :func:`_message`."""
    if type(raw) is dict:
        role = raw.get("role")
        content = raw.get("content")
        if type(content) is str:
            if role == "user":
                name = raw.get("name")
                if name is None:  # positional only: a keyword costs a frozen __init__ more
                    return Message("user", content)
                if type(name) is str:
                    return Message("user", content, name=name)
            elif role in ("system", "developer"):
                return Message("system", content)
    return _message(raw, f"messages[{i}]")


def _message(raw: Any, path: str) -> Message:
    f = Fields(raw, path)
    role = f.string("role", required=True)
    if role in ("system", "developer"):
        return Message.system(_text(f.need("content"), f.where("content")))
    if role == "user":
        return Message(role="user", content=_text(f.need("content"), f.where("content")),
                       name=f.string("name"))
    if role == "assistant":
        return Message.assistant(
            _text(f.data.get("content"), f.where("content"), allow_null=True),
            _tool_calls(f), reasoning=f.string("reasoning_content"))
    if role == "tool":
        return Message.tool(f.string("tool_call_id", required=True) or "",
                            _text(f.need("content"), f.where("content")))
    raise BadInput(f"{f.where('role')}: unknown role {role!r}; use system, developer, user, "
                   "assistant or tool", param=f.where("role"))


def _tools(f: Fields) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    for i, raw in enumerate(f.array("tools") or []):
        t = Fields(raw, f"tools[{i}]")
        kind = t.string("type") or "function"
        fn = t.obj("function")
        if kind != "function" or fn is None:
            raise BadInput(f"{t.path}: only function tools are supported "
                           '({"type": "function", "function": {...}})', param=t.path)
        tools.append(ToolSpec(name=fn.string("name", required=True) or "",
                              description=fn.string("description") or "",
                              parameters=fn.mapping("parameters") or {"type": "object",
                                                                    "properties": {}},
                              strict=bool(fn.boolean("strict"))))
    return tools


def _tool_choice(f: Fields) -> str | None:
    raw = f.data.get("tool_choice")
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict):
        fn = Fields(raw, "tool_choice").obj("function")
        if fn is not None:
            return fn.string("name", required=True)
    raise BadInput('tool_choice: expected "auto", "none", "required" or '
                   '{"type": "function", "function": {"name": ...}}', param="tool_choice")


def _output(f: Fields) -> dict[str, Any]:
    """``response_format`` as the ChatRequest's output fields."""
    fmt = f.obj("response_format")
    if fmt is None:
        return {}
    kind = fmt.string("type", required=True)
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_mode": True, "output_schema_name": "json_object"}
    if kind == "json_schema":
        spec = fmt.obj("json_schema")
        if spec is None:
            raise BadInput("response_format.json_schema is required with type json_schema",
                           param="response_format.json_schema")
        return {"output_schema": spec.mapping("schema") or dict(ANY_OBJECT),
                "output_schema_name": spec.string("name") or "output",
                # OpenAI's default is non-strict: strict only when the client asked.
                "output_strict": spec.boolean("strict") is True}
    raise BadInput(f"response_format.type: expected text, json_object or json_schema, got "
                   f"{kind!r}", param="response_format.type")


def _thinking(f: Fields) -> Thinking | None:
    effort = f.string("reasoning_effort")
    if effort is None:
        return None
    if effort == "none":
        return Thinking(enabled=False)
    if effort not in _EFFORT:
        raise BadInput("reasoning_effort: expected none, minimal, low, medium, high or xhigh, "
                       f"got {effort!r}", param="reasoning_effort")
    return Thinking(effort=_EFFORT[effort])  # type: ignore[arg-type]


def _logprobs(f: Fields) -> int | None:
    """``logprobs`` and ``top_logprobs`` as ChatRequest.logprobs (the alternatives per
    token; None: not asked). OpenAI refuses top_logprobs without logprobs, and so does
    the gateway."""
    top = f.integer("top_logprobs")
    if top is not None and not 0 <= top <= 20:
        raise BadInput(f"top_logprobs: expected an integer from 0 to 20, got {top}",
                       param="top_logprobs")
    if not f.boolean("logprobs"):
        if top is not None:
            raise BadInput("top_logprobs: set logprobs to true to use top_logprobs",
                           param="top_logprobs")
        return None
    return top or 0


def parse_chat(body: Any) -> Parsed:
    """Raises :class:`BadInput` naming the first field that is wrong."""
    f = Fields(body, "")
    # Each reader below is called only for a field that is there and not null: every one
    # reads such a field as None, so skipping it changes nothing but the calls (a plain
    # request holds three or four of the ~20 fields read here).
    get = f.data.get
    model = f.string("model", required=True) or ""
    raw_messages = f.array("messages", required=True) or []
    if not raw_messages:
        raise BadInput("messages: must hold at least one message", param="messages")
    if get("n") is not None and f.integer("n") != 1:
        raise BadInput("n: the gateway returns one choice; leave n unset or 1", param="n")
    completion = get("max_completion_tokens") is not None
    max_tokens = f.integer("max_completion_tokens") if completion else None
    if max_tokens is None and get("max_tokens") is not None:
        max_tokens = f.integer("max_tokens")
    if get("metadata") is not None:
        f.metadata("metadata")  # checked; it travels as a pass-through field, not as shoal's
    user = f.string("user") if get("user") is not None else None  # request metadata
    metadata = {"user_id": user} if user else {}  # (whose keys steer shoal's caching)
    request = ChatRequest(
        model=model,
        messages=[_plain_message(m, i) for i, m in enumerate(raw_messages)],
        tools=_tools(f) if get("tools") is not None else [],
        tool_choice=_tool_choice(f) if get("tool_choice") is not None else None,
        temperature=f.number("temperature") if get("temperature") is not None else None,
        top_p=f.number("top_p") if get("top_p") is not None else None,
        max_tokens=max_tokens,
        stop=f.str_list("stop") if get("stop") is not None else None,
        seed=f.integer("seed") if get("seed") is not None else None, metadata=metadata,
        thinking=_thinking(f) if get("reasoning_effort") is not None else None,
        parallel_tool_calls=(f.boolean("parallel_tool_calls")
                             if get("parallel_tool_calls") is not None else None),
        logprobs=(_logprobs(f) if get("logprobs") is not None or
                  get("top_logprobs") is not None else None),
        **(_output(f) if get("response_format") is not None else {}),
    )
    stream = get("stream") is not None and bool(f.boolean("stream"))
    options = f.obj("stream_options") if get("stream_options") is not None else None
    if options is not None and not stream:  # OpenAI answers this 400 too
        raise BadInput("stream_options: only allowed when stream is true; set stream: true "
                       "or leave stream_options out", param="stream_options")
    include_usage = bool(options.boolean("include_usage")) if options is not None else False
    passthrough = ({k: f.data[k] for k in PASSTHROUGH if get(k) is not None}
                   if not _PASSTHROUGH.isdisjoint(f.data) else {})
    return Parsed(request, stream=stream, include_usage=include_usage,
                  passthrough=passthrough, names=_NAMES_COMPLETION if completion else _NAMES)


# The fields of an OpenAI request that a refusal of a neutral field names (Parsed.names).
_NAMES = {"thinking": "reasoning_effort", "tools[]": "tools[{}].function.parameters",
          "output_schema": "response_format.json_schema.schema"}
_NAMES_COMPLETION = {**_NAMES, "max_tokens": "max_completion_tokens"}
