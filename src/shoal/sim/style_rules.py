"""What the OpenAI-compatible provider styles refuse (PROVIDERS.md §1, §3, §4, §6).

:func:`openai_request` checks a Chat Completions body and raises
:class:`~shoal.sim.styles.Refusal` with the provider's status, code and wording (the
``permissive`` style skips it all). It also sets the parts of the
:class:`~shoal.sim.content.Ask` a style decides (DeepSeek thinking mode, Zhipu ignoring
``max_completion_tokens``). Anthropic's rules are in :mod:`shoal.sim.anthropic_rules`,
Gemini's in :mod:`shoal.sim.gemini_rules`.
"""

from __future__ import annotations

import re
from typing import Any

from shoal.sim.content import Ask
from shoal.sim.gemini_rules import gemini_request, gemini_signed_call
from shoal.sim.styles import Refusal

__all__ = [
    "deepseek_thinking",
    "gemini_signed_call",
    "openai_request",
    "strict_schema_problem",
]

# Fields of a chat completions request the official SDK knows (openai-python 3.x
# completion_create_params), plus ``stream``. Real OpenAI answers any other with 400.
_OPENAI_FIELDS = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "messages", "metadata", "modalities", "model",
    "moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty",
    "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
    "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
    "verbosity", "web_search_options",
})  # fmt: skip
# messages[].role values (chat_completion_message_param.py; "function" is deprecated).
_OPENAI_ROLES = frozenset({"developer", "system", "user", "assistant", "tool", "function"})
# o-series and gpt-5 reasoning models (not gpt-5-chat): max_tokens, and temperature or
# top_p other than the default, refused.
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5(?!-chat))")
# Chat models that do not reason (gpt-3.5, gpt-4, gpt-4o, gpt-4.1, gpt-4.5): a
# reasoning_effort is an "Unsupported parameter" there.
_NO_REASONING_MODEL = re.compile(r"^(?:chatgpt-4o|gpt-3\.5|gpt-4(?:o|\.1|\.5|-|$))")
_MAX_STOP = 4  # "stop: Up to 4 sequences" (the API reference); a fifth is a 400
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def openai_request(body: dict[str, Any], style: str, ask: Ask) -> None:
    """Refuse what *style*'s provider refuses; adjust *ask* to what it honours."""
    if style == "permissive":
        return
    if style == "openai":
        _openai(body, ask)
    elif style == "deepseek":
        _deepseek(body, ask)
    elif style == "zhipu":
        _zhipu(body, ask)
    elif style == "moonshot":
        _moonshot(body, ask)
    elif style == "minimax":
        systems = sum(1 for m in body["messages"] if m.get("role") == "system")
        if systems > 1:
            raise Refusal("invalid params, invalid chat setting (2013)", "messages")
    elif style == "gemini":
        gemini_request(body)


# -- OpenAI ------------------------------------------------------------------------------


def _openai(body: dict[str, Any], ask: Ask) -> None:
    for key in body:
        if key not in _OPENAI_FIELDS:
            raise Refusal(f"Unrecognized request argument supplied: {key}")
    model = str(body["model"])
    if _REASONING_MODEL.match(model):
        if "max_tokens" in body:
            raise Refusal(
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "max_tokens", code="unsupported_parameter",
            )  # fmt: skip
        for name in ("temperature", "top_p"):
            value = body.get(name)
            if value is not None and value != 1:
                raise Refusal(
                    f"Unsupported value: '{name}' does not support {value} with this "
                    "model. Only the default (1) value is supported.",
                    name, code="unsupported_value",
                )  # fmt: skip
    elif _NO_REASONING_MODEL.match(model.lower()) and "reasoning_effort" in body:
        raise Refusal(
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
            "reasoning_effort", code="unsupported_parameter",
        )  # fmt: skip
    if "stream_options" in body and not body.get("stream"):
        raise Refusal(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options", code="invalid_value",
        )  # fmt: skip
    for i, msg in enumerate(body["messages"]):
        if msg.get("role") not in _OPENAI_ROLES:
            raise Refusal(
                f"Invalid value: '{msg.get('role')}'. Supported values are: 'system', "
                "'assistant', 'user', 'function', 'tool', and 'developer'.",
                f"messages[{i}].role", code="invalid_value",
            )  # fmt: skip
        if msg.get("content") is None and not (
            msg.get("role") == "assistant" and (msg.get("tool_calls") or msg.get("function_call"))
        ):
            raise Refusal(
                "Invalid value for 'content': expected a string, got null.",
                f"messages.[{i}].content", code="invalid_value",
            )  # fmt: skip
    for name, top in (("temperature", 2), ("top_p", 1)):
        value = body.get(name)
        if isinstance(value, int | float) and not 0 <= value <= top:
            above = value > top
            raise Refusal(
                f"Invalid '{name}': decimal {'above maximum' if above else 'below minimum'} "
                f"value. Expected a value {f'<= {top}' if above else '>= 0'}, but got {value} "
                "instead.",
                name,
                code="decimal_above_max_value" if above else "decimal_below_min_value",
            )
    stop = body.get("stop")
    if isinstance(stop, list) and len(stop) > _MAX_STOP:
        raise Refusal(
            f"Invalid 'stop': array too long. Expected an array with maximum length "
            f"{_MAX_STOP}, but got an array with length {len(stop)} instead.",
            "stop", code="array_above_max_length",
        )  # fmt: skip
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise Refusal(
            f"Invalid type for 'tools': expected an array, but got {type(tools).__name__} "
            "instead.", "tools", code="invalid_type",
        )  # fmt: skip
    if tools == []:
        raise Refusal(
            "Invalid 'tools': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.", "tools", code="empty_array",
        )  # fmt: skip
    choice = body.get("tool_choice")
    if isinstance(choice, str) and choice not in ("none", "auto", "required"):
        raise Refusal(
            f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and "
            "'required'.", "tool_choice", code="invalid_value",
        )  # fmt: skip
    if "tool_choice" in body and not tools:
        raise Refusal(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.", "tool_choice",
        )  # fmt: skip
    for i, tool in enumerate(tools or ()):
        fn = (tool.get("function") if isinstance(tool, dict) else None) or {}
        _tool_name(str(fn.get("name", "")), f"tools[{i}].function.name")
        if fn.get("strict") is True:
            problem = strict_schema_problem(fn.get("parameters") or {})
            if problem:
                raise Refusal(
                    f"Invalid schema for function '{fn.get('name')}': {problem}",
                    f"tools[{i}].function.parameters", code="invalid_function_parameters",
                )  # fmt: skip
    _response_format(body)
    _tool_turns(body["messages"], check_arguments=True)


def _tool_name(name: str, param: str) -> None:
    """OpenAI's function names: ``^[a-zA-Z0-9_-]+$``, 1 to 64 characters."""
    if len(name) > 64:
        raise Refusal(
            f"Invalid '{param}': string too long. Expected a string with maximum length 64, "
            f"but got a string with length {len(name)} instead.",
            param, code="string_above_max_length",
        )  # fmt: skip
    if not _SCHEMA_NAME.fullmatch(name):
        raise Refusal(
            f"Invalid '{param}': string does not match pattern. Expected a string that "
            "matches the pattern '^[a-zA-Z0-9_-]+$'.", param, code="invalid_value",
        )  # fmt: skip


def _response_format(body: dict[str, Any]) -> None:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return
    if fmt.get("type") == "json_object" and not _mentions_json(body["messages"], None):
        raise Refusal(
            "'messages' must contain the word 'json' in some form, to use "
            "'response_format' of type 'json_object'.", "messages",
        )  # fmt: skip
    if fmt.get("type") != "json_schema":
        return
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or "name" not in spec:
        raise Refusal(
            "Missing required parameter: 'response_format.json_schema.name'.",
            "response_format.json_schema.name", code="missing_required_parameter",
        )  # fmt: skip
    name = str(spec["name"])
    if not _SCHEMA_NAME.fullmatch(name):
        raise Refusal(
            f"Invalid 'response_format.json_schema.name': string does not match pattern. "
            f"Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$', got {name!r}.",
            "response_format.json_schema.name", code="invalid_value",
        )  # fmt: skip
    if spec.get("strict") is True:
        problem = strict_schema_problem(spec.get("schema") or {})
        if problem:
            raise Refusal(
                f"Invalid schema for response_format '{name}': {problem}", "response_format"
            )


def _mentions_json(messages: list[Any], roles: tuple[str, ...] | None) -> bool:
    """Whether the word "json" (any case) is in the text of *messages* of *roles* (all
    roles when None): what JSON mode asks of the prompt."""
    for msg in messages:
        if roles is not None and msg.get("role") not in roles:
            continue
        content = msg.get("content")
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            text = part.get("text") if isinstance(part, dict) else part
            if isinstance(text, str) and "json" in text.lower():
                return True
    return False


def strict_schema_problem(schema: Any) -> str | None:
    """What breaks OpenAI's strict-mode subset in *schema*, or None.

    Strict mode needs an object at the root, and every object with
    ``additionalProperties: false`` and every property listed in ``required``.
    """
    if not isinstance(schema, dict):
        return "schema must be a JSON Schema object."
    if schema.get("type") != "object":
        return (
            "schema must be a JSON Schema of 'type: \"object\"', "
            f"got 'type: \"{schema.get('type')}\"'."
        )
    return _strict(schema, ())


def _strict(schema: Any, where: tuple[str, ...]) -> str | None:
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            problem = _strict(item, (*where, str(i)))
            if problem:
                return problem
        return None
    if not isinstance(schema, dict):
        return None
    context = f"In context=({', '.join(repr(w) for w in where)}{',' if len(where) == 1 else ''})"
    kind = schema.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if is_object or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"{context}, 'additionalProperties' is required to be supplied and to be false."
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        missing = [k for k in props if k not in required]
        if missing or not isinstance(required, list):
            return (
                f"{context}, 'required' is required to be supplied and to be an array "
                f"including every key in properties. Missing '{missing[0] if missing else ''}'."
            )
        for key, sub in props.items():
            problem = _strict(sub, (*where, "properties", key))
            if problem:
                return problem
    for key in ("items", "anyOf", "allOf", "$defs", "definitions"):
        sub = schema.get(key)
        if isinstance(sub, dict) and key in ("$defs", "definitions"):
            for name, part in sub.items():
                problem = _strict(part, (*where, key, name))
                if problem:
                    return problem
        elif sub is not None:
            problem = _strict(sub, (*where, key))
            if problem:
                return problem
    return None


def _tool_turns(messages: list[Any], *, check_arguments: bool) -> None:
    """Tool messages must answer the preceding assistant's tool_calls, and each call
    must be answered before the conversation moves on."""
    pending: dict[str, int] = {}
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if call_id not in pending:
                raise Refusal(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.", f"messages.[{i}].role",
                )  # fmt: skip
            del pending[call_id]
            continue
        if pending:
            at = min(pending.values())
            raise Refusal(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(pending)}", f"messages.[{at}].role",
            )  # fmt: skip
        if role == "assistant":
            for j, call in enumerate(msg.get("tool_calls") or ()):
                if not isinstance(call, dict):
                    raise Refusal(
                        f"Invalid type for 'messages[{i}].tool_calls[{j}]': expected an object.",
                        f"messages[{i}].tool_calls[{j}]", code="invalid_type",
                    )  # fmt: skip
                fn = call.get("function")
                args = fn.get("arguments") if isinstance(fn, dict) else None
                if check_arguments and not isinstance(args, str):
                    got = "an object" if isinstance(args, dict) else type(args).__name__
                    raise Refusal(
                        f"Invalid type for 'messages[{i}].tool_calls[{j}].function.arguments': "
                        f"expected a string, but got {got} instead.",
                        f"messages[{i}].tool_calls[{j}].function.arguments",
                        code="invalid_type",
                    )  # fmt: skip
                pending[str(call.get("id"))] = i
    # Calls left pending at the end are fine: the model is being asked to continue.


# -- DeepSeek ----------------------------------------------------------------------------


def deepseek_thinking(body: dict[str, Any]) -> bool:
    """Whether a DeepSeek request runs in thinking mode: ``thinking.type`` decides when
    given, else the model (``*reasoner*`` and the V4 models think by default)."""
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
        return bool(thinking["type"] == "enabled")
    model = str(body.get("model", ""))
    return "reasoner" in model or model.startswith("deepseek-v4")


# The roles DeepSeek's request parser knows; any other is a 400 from its deserializer
# ("unknown variant `developer`, expected one of ...", decolua/9router#773; trap 10).
_DEEPSEEK_ROLES = ("system", "user", "assistant", "tool", "latest_reminder")


def _deepseek(body: dict[str, Any], ask: Ask) -> None:
    for i, msg in enumerate(body["messages"]):
        role = msg.get("role")
        if role not in _DEEPSEEK_ROLES:
            expected = ", ".join(f"`{r}`" for r in _DEEPSEEK_ROLES)
            raise Refusal(
                "Failed to deserialize the JSON body into the target type: "
                f"messages[{i}].role: unknown variant `{role}`, expected one of {expected}",
                code="invalid_request_error",
            )  # fmt: skip
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text", "json_object"):
        raise Refusal("This response_format type is unavailable now", code="invalid_request_error")
    # JSON Output wants the word "json" in the system or user prompt, any case
    # (api-docs.deepseek.com/guides/json_mode; the 400's wording: vercel/ai#7913).
    if isinstance(fmt, dict) and fmt.get("type") == "json_object" and not _mentions_json(
            body["messages"], ("system", "user")):
        raise Refusal(
            "Prompt must contain the word 'json' in some form to use 'response_format' of "
            "type 'json_object'.", code="invalid_request_error",
        )  # fmt: skip
    thinking = deepseek_thinking(body)
    ask.reasoning = thinking
    if thinking and (body.get("logprobs") or body.get("top_logprobs") is not None):
        # "设置logprobs、top_logprobs会报错" (api-docs.deepseek.com/zh-cn/guides/reasoning_model);
        # the status is documented, the wording is ours.
        raise Refusal("logprobs and top_logprobs are not supported in thinking mode",
                      code="invalid_request_error")
    if thinking:
        for i, msg in enumerate(body["messages"]):
            if (
                msg.get("role") == "assistant" and msg.get("tool_calls")
                and not isinstance(msg.get("reasoning_content"), str)
            ):  # fmt: skip
                raise Refusal(
                    f"Missing `reasoning_content` field in the assistant message at message "
                    f"index {i}. For more information, please refer to "
                    "https://api-docs.deepseek.com/guides/thinking_mode#tool-calls",
                    code="invalid_request_error",
                )  # fmt: skip
    _tool_turns(body["messages"], check_arguments=False)


# -- Moonshot ----------------------------------------------------------------------------

# Kimi K2.5 and later (platform.kimi.ai/docs/api/models-overview, "Parameter Comparison"):
# temperature, top_p, n and both penalties "cannot be modified"; another value is a 400
# ("invalid temperature: only 1 is allowed for this model"). Thinking is on by default
# (temperature 1.0; 0.6 with thinking disabled). kimi-k2-thinking always thinks.
_KIMI_PINNED = re.compile(r"^kimi-k(?:2\.[5-9]|[3-9])")


def _moonshot(body: dict[str, Any], ask: Ask) -> None:
    model = str(body["model"])
    thinking = body.get("thinking")
    off = isinstance(thinking, dict) and thinking.get("type") == "disabled"
    pinned = _KIMI_PINNED.match(model) is not None
    ask.reasoning = "thinking" in model or (pinned and not off)
    if not pinned:
        return
    fixed = {"temperature": 0.6 if off else 1.0, "top_p": 0.95, "n": 1,
             "presence_penalty": 0, "frequency_penalty": 0}
    for name, value in fixed.items():
        sent = body.get(name)
        if sent is not None and sent != value:
            raise Refusal(f"invalid {name}: only {value:g} is allowed for this model",
                          name, code="invalid_request_error")


# -- Zhipu -------------------------------------------------------------------------------


_GLM_TOOL_STREAM = re.compile(r"^glm-(?:4\.(?:[6-9]|\d\d)|[5-9])")


def _zhipu(body: dict[str, Any], ask: Ask) -> None:
    for i, msg in enumerate(body["messages"]):
        if msg.get("role") not in ("system", "user", "assistant", "tool"):
            raise Refusal(
                f"messages[{i}].role: '{msg.get('role')}' is not a valid role; use system, "
                "user, assistant or tool.", "messages", code="1214",
            )  # fmt: skip
    choice = body.get("tool_choice")
    if choice is not None and choice != "auto":
        raise Refusal("tool_choice: only 'auto' is supported.", "tool_choice", code="1214")
    # Zhipu caps output with max_tokens only; max_completion_tokens is ignored.
    limit = body.get("max_tokens")
    ask.max_tokens = limit if isinstance(limit, int) and limit > 0 else None
    # Tool arguments stream in pieces only with tool_stream: true, on GLM-4.6 and later
    # (docs.bigmodel.cn/cn/guide/capabilities/stream-tool); otherwise each call whole.
    ask.tool_stream = body.get("tool_stream") is True and _GLM_TOOL_STREAM.match(
        str(body["model"]).lower()) is not None
    # reasoning_content comes with thinking {"type": "enabled"} (PROVIDERS.md §3)
    thinking = body.get("thinking")
    ask.reasoning = isinstance(thinking, dict) and thinking.get("type") == "enabled"
