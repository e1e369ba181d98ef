"""Checks that reject a bad call before any request is sent.

:func:`validate_request` is the Router's first step in ``complete()`` and ``stream()``:
a request every provider would refuse (no messages, ``max_tokens <= 0``, a temperature
out of range, a tool or output-schema name outside ``[A-Za-z0-9_-]{1,64}``,
``tool_choice`` naming tools that are not there, a tool result answering no call, a
prompt longer than the model's window) fails here with a
:class:`~shoal.errors.BadRequest` that says what is wrong and how to fix it, instead
of costing a round trip, a retry budget or a breaker trip.

:func:`check_timeout` is the one rule for ``timeout_s`` settings (tools, flow steps).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from shoal.errors import BadRequest, ConfigError, ContextOverflow
from shoal.types import ChatRequest

if TYPE_CHECKING:
    from shoal.config import ModelInfo

__all__ = ["TEMPERATURE_RANGE", "check_timeout", "validate_request"]

TEMPERATURE_RANGE = (0.0, 2.0)  # the widest any provider accepts (OpenAI-compatible)
_NO_TOOL_NEEDED = frozenset({"auto", "none"})
# Tool and output-schema names: OpenAI's pattern for both (Anthropic takes names up to
# 128 characters of the same alphabet); the stricter one, so a call can fail over.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _bad(message: str, param: str) -> BadRequest:
    return BadRequest(message, code="invalid_request", param=param)


def validate_request(
    request: ChatRequest, info: ModelInfo | None = None, *, prompt_tokens: int | None = None
) -> None:
    """Raise :class:`BadRequest` (or :class:`ContextOverflow`) if no provider would accept
    ``request``. With ``info``, the prompt is also checked against the model's context
    window: ``prompt_tokens`` when the caller has estimated it already, else estimated
    here with :func:`shoal.tokens.estimate_prompt_tokens`."""
    model = request.model
    if not request.messages:
        raise _bad(
            f"the request for {model!r} has no messages; add at least one "
            "(Message.user(...))", "messages"
        )
    max_tokens = request.max_tokens
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0
    ):
        raise _bad(
            f"max_tokens must be a positive integer, got {max_tokens!r}; "
            "set it to the most output tokens you want, or leave it unset (None) for the "
            "model's default", "max_tokens"
        )
    _check_range("temperature", request.temperature, *TEMPERATURE_RANGE)
    _check_range("top_p", request.top_p, 0.0, 1.0)
    logprobs = request.logprobs
    if logprobs is not None and (
        isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= 20
    ):
        raise _bad(
            f"logprobs must be an integer from 0 to 20 (the alternatives returned per token; "
            f"0 for the chosen tokens only), got {logprobs!r}; or None not to ask for them",
            "logprobs"
        )
    if request.tools:
        for i, tool in enumerate(request.tools):
            _check_name(tool.name, f"tools[{i}].name", "a tool name")
    if request.output_schema is not None:
        _check_name(request.output_schema_name, "output_schema_name",
                    "the output schema's name")
    _check_tool_choice(request)
    _check_tool_results(request)
    if info is not None:
        _check_window(request, info, prompt_tokens)


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        low <= value <= high
    ):
        raise _bad(
            f"{name} must be a number from {low:g} to {high:g}, got {value!r}; "
            "pick one in range, or leave it unset (None) for the provider's default", name
        )


_NAMES_OK: set[str] = set()  # names seen valid: an agent sends its tools on every turn


def _check_name(name: str, param: str, what: str) -> None:
    if name in _NAMES_OK:
        return
    if _NAME.fullmatch(name):
        if len(_NAMES_OK) < 4096:
            _NAMES_OK.add(name)
        return
    raise _bad(
        f"{what} must be 1-64 letters, digits, '_' or '-' (what OpenAI and Anthropic "
        f"accept), got {name!r}; rename it, e.g. {_suggest(name)!r}", param)


def _suggest(name: str) -> str:
    return (re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "answer")[:64]


def _check_tool_choice(request: ChatRequest) -> None:
    choice = request.tool_choice
    if choice is None or choice in _NO_TOOL_NEEDED:
        return
    names = [t.name for t in request.tools]
    if choice == "required":
        if not names:
            raise _bad(
                'tool_choice="required" but the request has no tools; pass tools=[...] '
                'or use tool_choice="auto"/None', "tool_choice"
            )
        return
    if choice not in names:
        offered = ", ".join(names) if names else "none"
        raise _bad(
            f"tool_choice names tool {choice!r}, which is not among the request's tools "
            f"({offered}); add that tool to tools=[...] or name one of them", "tool_choice"
        )


def _check_tool_results(request: ChatRequest) -> None:
    """Tool results answer calls an earlier assistant message made, and every call is
    answered before the next user or assistant message: OpenAI refuses the rest ("An
    assistant message with 'tool_calls' must be followed by tool messages responding to
    each 'tool_call_id'"), Anthropic too ("tool_use ids were found without tool_result
    blocks immediately after"). A conversation that ends on the calls is left alone."""
    called: set[str] = set()
    unanswered: dict[str, int] = {}  # call id → the assistant message that made it
    for index, message in enumerate(request.messages):
        if message.role == "tool":
            if message.tool_call_id not in called:
                raise _bad(
                    f"messages[{index}] is a tool result for call id "
                    f"{message.tool_call_id!r}, but no earlier assistant message made that "
                    "call; a tool result must follow the assistant message whose tool_calls "
                    "contain its id (Message.tool(call.id, ...))", f"messages[{index}]"
                )
            unanswered.pop(message.tool_call_id, None)
            continue
        if unanswered:
            at = min(unanswered.values())
            raise _bad(
                f"messages[{at}] makes tool call(s) {', '.join(map(repr, unanswered))} that "
                f"no tool result answers before messages[{index}]; answer each call with "
                "Message.tool(call.id, ...) right after the assistant message that made it "
                "(a tool that failed answers too, with is_error=True)", f"messages[{at}]"
            )
        if message.role == "assistant":
            for call in message.tool_calls:
                called.add(call.id)
                unanswered[call.id] = index


def _check_window(request: ChatRequest, info: ModelInfo, prompt_tokens: int | None) -> None:
    if prompt_tokens is None:
        from shoal.tokens import estimate_prompt_tokens

        prompt_tokens = estimate_prompt_tokens(request, info.encoding)
    window = info.context_window
    output = request.max_tokens or 0
    if prompt_tokens + output <= window:
        return
    asked = f" + max_tokens {output}" if output else ""
    raise ContextOverflow(
        f"the prompt for {info.name!r} is ~{prompt_tokens} tokens{asked}, over its context "
        f"window of {window}; shorten the messages (an Agent's context policy trims them), "
        "lower max_tokens, or use a model with a larger window",
        code="context_length_exceeded",
    )


def check_timeout(value: float | None, what: str) -> None:
    """ConfigError unless ``value`` is None (no limit) or a finite number of seconds > 0."""
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or math.isnan(value) or value <= 0):
        raise ConfigError(
            f"{what} timeout_s must be a number of seconds > 0, or None for no limit; "
            f"got {value!r}"
        )
