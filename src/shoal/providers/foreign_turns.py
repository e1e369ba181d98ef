"""Tool turns another provider answered, made acceptable to the one answering next.

Failover and fallback models hand a conversation from one provider to another in the
middle of a tool loop. The reasoning each provider demands back on tool turns (trap 9 of
PROVIDERS.md) was never produced for a turn another provider answered, and sending the
history as it is gets a 400 from three of them:

- **DeepSeek thinking mode** ("Missing `reasoning_content` field in the assistant message
  at message index N") and Kimi's thinking models: a tool-call turn without reasoning
  gets :data:`FOREIGN_REASONING`, a short note saying none was recorded (non-empty, so it
  is a field with a value whichever way the provider checks it);
- **Gemini 3** ("Function call is missing a thought_signature"): the first call of such
  a turn gets :data:`GEMINI_SKIP_SIGNATURE`, the placeholder Google documents for
  "a conversation trace from another model" (ai.google.dev/gemini-api/docs/
  thought-signatures, FAQ);
- **Anthropic with thinking on** ("a final `assistant` message must start with a thinking
  block ... To avoid this requirement, disable `thinking`"): while the last assistant
  message calls tools without a thinking block, thinking is left off for that request
  (Anthropic keeps one thinking setting per assistant turn; the next turn thinks again).

Turns the same provider answered keep their own reasoning and signatures untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.providers.profiles import KIMI_PINNED

if TYPE_CHECKING:
    from shoal.providers.profiles import ProviderProfile
    from shoal.types import ChatRequest

__all__ = ["FOREIGN_REASONING", "GEMINI_SKIP_SIGNATURE", "demands_reasoning",
           "unsigned_tool_turn"]

FOREIGN_REASONING = "(no reasoning was recorded for this turn)"
GEMINI_SKIP_SIGNATURE = "skip_thought_signature_validator"


def demands_reasoning(profile: ProviderProfile, model: str, request: ChatRequest) -> bool:
    """Whether this request runs where a tool-call turn must carry its reasoning
    (``tool_turns`` providers) or its first call a thought signature (Gemini 3)."""
    kind = profile.reasoning_return
    if kind not in ("thought_signatures", "tool_turns"):
        return False  # most calls: nothing to fill in, decided before any string work
    model = model.lower().removeprefix("models/")
    thinking = request.thinking
    if kind == "thought_signatures":
        return model.startswith("gemini-3")  # signatures are checked at every level
    if thinking is not None:
        return thinking.enabled
    if profile.family == "deepseek":  # thinking mode by default on these models
        return "reasoner" in model or model.startswith("deepseek-v4")
    # Kimi: the thinking models, and K2.5 and later, which think unless switched off
    return "thinking" in model or KIMI_PINNED.match(model) is not None


def unsigned_tool_turn(messages: list[dict[str, Any]]) -> bool:
    """Whether the last assistant message of an Anthropic request calls tools without
    starting with a thinking block: a tool loop in progress that began without thinking."""
    for message in reversed(messages):
        if message["role"] == "assistant":
            blocks = message["content"]
            return any(b.get("type") == "tool_use" for b in blocks) and (
                blocks[0].get("type") not in ("thinking", "redacted_thinking"))
    return False
