"""Which request field a refusal made before any upstream request is about, for the
error envelope's ``param``.

The providers' adapters refuse, before sending, what their provider would answer with a
400, and some of these refusals are ``ConfigError``\\s that name no field: the request's
thinking (:func:`shoal.providers.profiles.thinking_fields`: a temperature or a forced
tool while thinking on Anthropic, too few tokens for a thinking budget, reasoning asked
of a model that does not reason) and, on Anthropic, a tool's or the output's schema that
is not an object (:mod:`shoal.providers.claude_models`). OpenAI's envelope names the
field at fault in ``param``, as OpenAI's own 400s do. :func:`refused_field` finds it by
asking the same checks again, with one field changed (thinking) or one tool alone
(schemas), so it follows the adapters' rules instead of a copy of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from shoal.errors import ConfigError
from shoal.providers.claude_models import check_output_tool_schema, check_tool_schemas
from shoal.providers.profiles import thinking_fields

if TYPE_CHECKING:
    from shoal.providers.profiles import ProviderProfile
    from shoal.types import ChatRequest

__all__ = ["refused_field"]

# (field, the change that lifts its rule, whether that change must make the request
# pass): in thinking_fields' order. A temperature or tool_choice refusal names the value
# it refuses, so another rule's refusal does not change with it; a budget refusal quotes
# max_tokens, so only a pass says max_tokens was the field at fault.
_THINKING_PROBES: tuple[tuple[str, dict[str, Any], bool], ...] = (
    ("temperature", {"temperature": None}, False),
    ("tool_choice", {"tool_choice": None}, False),
    ("max_tokens", {"max_tokens": 1 << 20}, True),
)


def _thinking_refusal(profile: ProviderProfile, request: ChatRequest, model: str) -> str | None:
    try:
        thinking_fields(profile, request, model)
    except ConfigError as exc:
        return str(exc)
    return None


def _thinking_field(profile: ProviderProfile, request: ChatRequest, model: str,
                    message: str) -> str | None:
    if _thinking_refusal(profile, request, model) != message:
        return None
    for field, change, must_pass in _THINKING_PROBES:
        after = _thinking_refusal(profile, dataclasses.replace(request, **change), model)
        if after is None or (not must_pass and after != message):
            return field
    return "thinking"


def _says(check: Any, request: ChatRequest, message: str) -> bool:
    try:
        check(request)
    except ConfigError as exc:
        return str(exc) == message
    return False


def _schema_field(request: ChatRequest, message: str) -> str | None:
    for i, tool in enumerate(request.tools):
        if _says(check_tool_schemas, dataclasses.replace(request, tools=[tool]), message):
            return f"tools[{i}]"
    if _says(check_output_tool_schema, request, message):
        return "output_schema"
    return None


def refused_field(message: str, request: ChatRequest,
                  channels: Iterable[tuple[ProviderProfile, str]]) -> str | None:
    """The neutral field a refusal with ``message`` is about: ``tools[i]`` (its
    schema), ``output_schema``, or for thinking ``temperature``, ``tool_choice``,
    ``max_tokens`` or ``thinking`` itself; None when it is none of these checks'.
    ``channels``: (profile, wire model id) of each channel that may serve the call."""
    field = _schema_field(request, message)
    if field is not None or request.thinking is None:
        return field
    for profile, model in channels:
        field = _thinking_field(profile, request, model, message)
        if field is not None:
            return field
    return None
