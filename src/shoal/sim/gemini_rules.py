"""What Gemini's OpenAI-compatible endpoint refuses (PROVIDERS.md §4).

:func:`gemini_request` raises :class:`~shoal.sim.styles.Refusal` (400, which the
``gemini`` style answers with Google's error array, ``INVALID_ARGUMENT``) for: a Gemini 3
tool-call step whose first call lost its thought signature, a field the endpoint does
not document, and ``reasoning_effort`` together with a ``thinking_budget`` or
``thinking_level`` in ``extra_body.google.thinking_config`` (two ways of asking for the
same thing). :func:`gemini_signed_call` signs the tool calls of Gemini 3's answers.
"""

from __future__ import annotations

import hashlib
from typing import Any

from shoal.sim.styles import Refusal

__all__ = ["gemini_request", "gemini_signed_call"]

# What Gemini's OpenAI-compatible endpoint documents (ai.google.dev/gemini-api/docs/openai);
# Google's proto parser rejects any other name ("Unknown name ...: Cannot find field").
_GEMINI_FIELDS = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "n", "stop", "tools", "tool_choice", "response_format",
    "reasoning_effort", "seed", "presence_penalty", "frequency_penalty", "extra_body",
    "modalities", "audio", "logprobs", "top_logprobs",
})  # fmt: skip
# The thinking_config fields reasoning_effort overlaps ("reasoning_effort and
# thinking_level/thinking_budget overlap functionality, so they can't be used at the same
# time": ai.google.dev/gemini-api/docs/openai). include_thoughts goes with either.
_OVERLAPPING = ("thinking_budget", "thinking_level")


def gemini_request(body: dict[str, Any]) -> None:
    """Refuse what Gemini's OpenAI-compatible endpoint refuses."""
    _gemini_signatures(body)
    unknown = [k for k in body if k not in _GEMINI_FIELDS]
    if unknown:
        violations = [f'Invalid JSON payload received. Unknown name "{k}": Cannot find field.'
                      for k in unknown]  # fmt: skip
        exc = Refusal("\n".join(violations))
        exc.extra["violations"] = violations
        raise exc
    _thinking_overlap(body)


def _thinking_config(body: dict[str, Any]) -> dict[str, Any]:
    extra = body.get("extra_body")
    google = extra.get("google") if isinstance(extra, dict) else None
    config = google.get("thinking_config") if isinstance(google, dict) else None
    return config if isinstance(config, dict) else {}


def _thinking_overlap(body: dict[str, Any]) -> None:
    """``reasoning_effort`` with a thinking budget or level: documented as not usable at
    the same time (the 400 is documented, the wording is the simulator's own)."""
    if body.get("reasoning_effort") is None:
        return
    config = _thinking_config(body)
    both = [k for k in _OVERLAPPING if config.get(k) is not None]
    if both:
        raise Refusal(
            f"reasoning_effort and extra_body.google.thinking_config.{both[0]} cannot be "
            "used at the same time: they overlap functionality. Set only one of them. "
            "Please refer to https://ai.google.dev/gemini-api/docs/openai"
        )


def _gemini_thinks(model: str) -> bool:
    return model.removeprefix("models/").startswith("gemini-3")


def gemini_signed_call(style: str, model: str, index: int, call: dict[str, Any]) -> dict[str, Any]:
    """Add Gemini 3's ``extra_content.google.thought_signature`` to the first tool call
    of an answer (Gemini signs the first call of each step); returns *call*."""
    if style == "gemini" and index == 0 and _gemini_thinks(model):
        digest = hashlib.sha256(str(call.get("id")).encode()).hexdigest()[:24]
        call["extra_content"] = {"google": {"thought_signature": f"sim-thought-{digest}"}}
    return call


def _gemini_signatures(body: dict[str, Any]) -> None:
    """Gemini 3 refuses a current-turn tool-call step whose first call lost its
    thought signature (ai.google.dev/gemini-api/docs/thought-signatures)."""
    if not _gemini_thinks(str(body["model"])):
        return
    messages = body["messages"]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    for i in range(users[-1] + 1 if users else 0, len(messages)):
        calls = messages[i].get("tool_calls") if messages[i].get("role") == "assistant" else None
        if not calls or not isinstance(calls[0], dict):
            continue
        extra = calls[0].get("extra_content")
        google = extra.get("google") if isinstance(extra, dict) else None
        signature = google.get("thought_signature") if isinstance(google, dict) else None
        if not isinstance(signature, str) or not signature:
            name = (calls[0].get("function") or {}).get("name")
            raise Refusal(
                "Function call is missing a thought_signature in functionCall parts. This is "
                "required for tools to work correctly, and missing thought_signature may lead "
                f"to degraded model performance. Additional data, function call "
                f"`default_api:{name}` , position {i + 1}. Please refer to "
                "https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
            )
