"""Provider profiles: what each provider family accepts on the wire, kept as data.

After pydantic-ai's ``profiles``: the wire adapters speak a *protocol* (Chat Completions
or Messages); a :class:`ProviderProfile`, looked up by the channel's provider family
(:mod:`shoal.families`), says what that provider takes — how to ask for structured
output, which max-tokens field, whether ``tool_choice`` may be sent, how reasoning is
switched on and what of it must be sent back. Parsing stays tolerant of every variant
whatever the profile, so profiles only shape what is *sent*. Sources for each flag:
PROVIDERS.md (§1-5, traps 9, 10, 12) and docs/providers.md's profiles table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from shoal.errors import RequestRefused
from shoal.providers.claude_models import adaptive_claude, adaptive_only_claude
from shoal.types import ChatRequest, Thinking

__all__ = [
    "KIMI_PINNED",
    "PROFILES",
    "OutputMode",
    "ProviderProfile",
    "check_gemini_thinking",
    "check_sampling",
    "profile_for",
    "schema_instructions",
    "strict_schema",
    "thinking_fields",
]

OutputMode = Literal["json_schema", "json_object", "json_object_schema", "prompt", "tool"]
"""How structured output is asked for:

- ``json_schema``: ``response_format: {type: json_schema, json_schema: {name, schema}}``
  (``strict: true`` too when the profile allows it and the schema is strict-compatible);
- ``json_object``: ``response_format: {type: json_object}`` with the schema stated in the
  prompt (DeepSeek rejects json_schema with 400; JSON mode there wants the word "json");
- ``json_object_schema``: llama.cpp's ``{type: json_object, schema}`` (grammar-constrained);
- ``prompt``: nothing on the wire, the schema in the prompt only;
- ``tool``: an output tool offered next to the caller's tools (Anthropic).

In every mode the answer is validated locally and re-asked when invalid (agents do).
"""

ReasoningReturn = Literal["none", "tool_turns", "signed_blocks", "thought_signatures"]
ThinkingStyle = Literal["none", "effort", "anthropic", "deepseek", "zhipu", "qwen", "gemini"]
ToolChoiceSupport = Literal["all", "auto_only", "never"]

# Anthropic-style budgets for an effort when no budget was given (clamped below max_tokens).
_EFFORT_BUDGET = {"low": 1024, "medium": 2048, "high": 8192}
ANTHROPIC_MIN_BUDGET = 1024


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    """What one provider family accepts. Every field is a capability, read by an adapter."""

    family: str
    protocol: Literal["openai", "anthropic"] = "openai"
    output_mode: OutputMode = "json_schema"
    # Send json_schema with strict:true when the schema meets the strict subset (OpenAI).
    strict_schema: bool = False
    # Field that caps output: OpenAI reasoning models reject max_tokens; Zhipu takes only it.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Anthropic rejects a request without max_tokens: the adapter always sends one.
    max_tokens_required: bool = False
    # Ask for a usage chunk when streaming (stream_options.include_usage).
    stream_usage_option: bool = True
    # Field holding reasoning text in assistant history (Ollama calls it "reasoning").
    reasoning_field: str = "reasoning_content"
    # What reasoning must go back on later turns (trap 9): DeepSeek thinking mode needs
    # reasoning_content on assistant turns with tool calls; Anthropic its signed thinking
    # blocks; Gemini 3 the thought_signature of each tool call.
    reasoning_return: ReasoningReturn = "none"
    # How ChatRequest.thinking becomes request fields (see thinking_fields).
    thinking: ThinkingStyle = "none"
    # tool_choice: every value, only "auto" (Zhipu), or never sent (Ollama, llama.cpp).
    tool_choice: ToolChoiceSupport = "all"
    # Anthropic refuses tool_choice any/tool while thinking is on: offer, never force.
    force_tool_with_thinking: bool = True
    # Merge several system messages into one (MiniMax rejects more than one).
    single_system: bool = False
    # Assistant tool-call turns without text: "" or null. Both are legal per the OpenAI
    # spec (content is optional with tool_calls), but null is refused by servers that
    # type content as a string (LM Studio/llama.cpp, Gemini's compat endpoint:
    # "Value is not a string: null") while "" is accepted by OpenAI and DeepSeek;
    # omitting the key is refused by vLLM/SGLang. Hence "" by default.
    tool_turn_content: Literal["empty", "null"] = "empty"
    # The temperature sent when the request sets none (the offline model: llama.cpp's
    # 0.8 makes a 135M model ramble; callers keep theirs, and every other provider its
    # own default, which some models pin: OpenAI reasoning models, Claude 5).
    default_temperature: float | None = None
    # Takes parallel_tool_calls (OpenAI and the routers that document it); elsewhere
    # ChatRequest.parallel_tool_calls is not sent (compatible servers may refuse it).
    parallel_switch: bool = False
    # Returns token log probabilities (logprobs/top_logprobs): OpenAI and the servers
    # that document them. Elsewhere ChatRequest.logprobs is a RequestRefused before any
    # request: silently answering without them would look like a provider that has none.
    logprobs: bool = False
    # JSON mode (json_object) refused unless "json" is in the prompt: in any message
    # (OpenAI), in a system or user message (DeepSeek); "" where nothing is asked.
    json_word: Literal["", "any", "prompt"] = ""
    # Its TPM limit counts prompt + max_tokens, not the tokens generated (Moonshot):
    # a TPM reservation is settled no lower than that.
    tpm_counts_max_tokens: bool = False


PROFILES: dict[str, ProviderProfile] = {
    p.family: p
    for p in (
        ProviderProfile("openai", strict_schema=True, max_tokens_field="max_completion_tokens",
                        thinking="effort", parallel_switch=True, logprobs=True,
                        json_word="any"),
        ProviderProfile("anthropic", protocol="anthropic", output_mode="tool",
                        max_tokens_required=True, reasoning_return="signed_blocks",
                        thinking="anthropic", force_tool_with_thinking=False),
        ProviderProfile("deepseek", output_mode="json_object", reasoning_return="tool_turns",
                        thinking="deepseek", logprobs=True, json_word="prompt"),
        ProviderProfile("moonshot", output_mode="json_object",
                        max_tokens_field="max_completion_tokens",
                        reasoning_return="tool_turns", thinking="zhipu",
                        tpm_counts_max_tokens=True),
        ProviderProfile("zhipu", output_mode="json_object", tool_choice="auto_only",
                        thinking="zhipu"),
        ProviderProfile("minimax", output_mode="prompt", max_tokens_field="max_completion_tokens",
                        single_system=True, tool_choice="auto_only"),
        ProviderProfile("gemini", reasoning_return="thought_signatures", thinking="gemini",
                        logprobs=True),
        ProviderProfile("qwen", output_mode="json_object", thinking="qwen"),
        ProviderProfile("openrouter", parallel_switch=True, logprobs=True),
        ProviderProfile("ollama", tool_choice="never", reasoning_field="reasoning"),
        ProviderProfile("vllm", logprobs=True),
        # llama.cpp's server (also the offline model): grammar-constrained JSON.
        ProviderProfile("llamacpp", output_mode="json_object_schema", tool_choice="never",
                        logprobs=True),
        ProviderProfile("offline", output_mode="json_object_schema", tool_choice="never",
                        default_temperature=0.3),
        # Any other compatible server: the caller's logprobs go through, and the server
        # answers for itself (with them, without them, or with its own 400).
        ProviderProfile("generic", logprobs=True),
    )
}

_GENERIC: dict[str, ProviderProfile] = {
    "openai": PROFILES["generic"],
    "anthropic": ProviderProfile("generic", protocol="anthropic", output_mode="tool",
                                 max_tokens_required=True, reasoning_return="signed_blocks",
                                 thinking="anthropic", force_tool_with_thinking=False),
}


def profile_for(family: str, protocol: Literal["openai", "anthropic"] = "openai"
                ) -> ProviderProfile:
    """The profile of ``family`` on ``protocol``. An unknown family, or a family reached
    over the other protocol (DeepSeek's Anthropic-compatible endpoint), gets the
    protocol's generic rules."""
    profile = PROFILES.get(family)
    if profile is None or profile.protocol != protocol:
        return _GENERIC[protocol]
    return profile


# -- structured output ----------------------------------------------------------------------


# OpenAI's reasoning models (o-series, gpt-5 but not gpt-5-chat) refuse any temperature
# or top_p but the default with a 400 "Unsupported value".
_OPENAI_REASONING = re.compile(r"^(o\d|gpt-5(?!-chat))")


# OpenAI's chat models that do not reason (gpt-3.5, gpt-4, gpt-4o, gpt-4.1, gpt-4.5): a
# reasoning_effort is a 400 "Unsupported parameter" there.
_OPENAI_NO_REASONING = re.compile(r"^(?:chatgpt-4o|gpt-3\.5|gpt-4(?:o|\.1|\.5|-|$))")


# Kimi K2.5 and later pin their sampling (platform.kimi.ai, "Model Parameter Reference":
# temperature, top_p, n and the penalties "cannot be modified"; another value is a 400
# "invalid temperature: only 1 is allowed for this model"). Temperature is 1.0 while
# thinking (the default), 0.6 with thinking disabled; top_p 0.95.
KIMI_PINNED = re.compile(r"^kimi-k(?:2\.[5-9]|[3-9])")


def check_sampling(profile: ProviderProfile, model: str, request: ChatRequest) -> None:
    """RequestRefused, before any request, for sampling settings the model refuses."""
    family = profile.family
    if family == "moonshot" and KIMI_PINNED.match(model.lower()):
        off = request.thinking is not None and not request.thinking.enabled
        pinned = {"temperature": 0.6 if off else 1.0, "top_p": 0.95}
        for name, fixed in pinned.items():
            value = getattr(request, name)
            if value is not None and value != fixed:
                raise RequestRefused(
                    f"{model!r} pins {name} to {fixed:g} (Moonshot answers 400 \"only "
                    f"{fixed:g} is allowed for this model\"); leave {name} unset for it",
                    param=name)
        return
    if family != "openai" or not _OPENAI_REASONING.match(model):
        return
    for name in ("temperature", "top_p"):
        value = getattr(request, name)
        if value is not None and value != 1:
            raise RequestRefused(
                f"OpenAI reasoning model {model!r} refuses {name}={value} (only the default "
                f"1); leave {name} unset for it, or use a non-reasoning model such as gpt-4o",
                param=name)


# Gemini's compat endpoint: "reasoning_effort and thinking_level/thinking_budget overlap
# functionality, so they can't be used at the same time" (ai.google.dev/gemini-api/docs/
# openai); include_thoughts goes with either.
_GEMINI_OVERLAPPING = ("thinking_budget", "thinking_level")


def check_gemini_thinking(profile: ProviderProfile, body: dict[str, Any],
                          request: ChatRequest) -> None:
    """RequestRefused, before sending, for a Gemini body (as it will be sent, extra
    merged) asking for thinking twice: ``reasoning_effort`` and a budget or level in
    ``extra_body.google.thinking_config``. ``param`` is ``thinking`` when Thinking made
    one of them, else ``extra``."""
    if profile.family != "gemini" or body.get("reasoning_effort") is None:
        return
    extra = body.get("extra_body")
    google = extra.get("google") if isinstance(extra, dict) else None
    config = google.get("thinking_config") if isinstance(google, dict) else None
    both = [k for k in _GEMINI_OVERLAPPING
            if isinstance(config, dict) and config.get(k) is not None]
    if both:
        raise RequestRefused(
            f"Gemini refuses reasoning_effort ({body['reasoning_effort']!r}) together with "
            f"extra_body.google.thinking_config.{both[0]}: they overlap, and Google answers "
            "400 when both are set; ask once, with Thinking(effort=...) or "
            "Thinking(budget_tokens=...), and drop the other from ChatRequest.extra",
            param="thinking" if request.thinking is not None else "extra")


def schema_instructions(schema: dict[str, Any]) -> str:
    """The prompt line stating the schema: agents put it in the system prompt, and the
    json_object/prompt modes add it when a request lacks it (DeepSeek's JSON mode
    refuses a prompt without the word "json")."""
    return (
        "Give your final answer as a single JSON object matching this JSON schema, "
        "with no other text:\n" + json.dumps(schema, separators=(",", ":"))
    )


def strict_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """``schema`` made fit for OpenAI's ``strict: true``, or None when it cannot be.

    Strict mode wants an object at the root, every property required and
    ``additionalProperties: false`` on every object (a ``type`` list holding "object"
    included). This adds the latter where it is missing; a schema with another root, an
    optional property, a default, or open additional properties is sent non-strict
    instead (the answer is validated locally either way)."""
    if schema.get("type") != "object":
        return None  # OpenAI: "schema must be a JSON Schema of 'type: "object"'"
    ok = True

    def walk(node: Any) -> Any:
        nonlocal ok
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items()}
        if "default" in node:
            ok = False
        kind = node.get("type")
        if kind == "object" or (isinstance(kind, list) and "object" in kind) or \
                "properties" in node:
            props = node.get("properties") or {}
            if set(node.get("required") or ()) != set(props):
                ok = False
            extra = node.get("additionalProperties", False)
            if extra is not False:
                ok = False
            out["additionalProperties"] = False
        return out

    out = walk(schema)
    return out if ok else None


# -- thinking -------------------------------------------------------------------------------


def _effort(thinking: Thinking) -> str | None:
    if thinking.effort is not None:
        return thinking.effort
    budget = thinking.budget_tokens
    if budget is None:
        return None
    return "low" if budget < 2048 else "medium" if budget < 8192 else "high"


def anthropic_budget(thinking: Thinking, max_tokens: int) -> int:
    """The ``budget_tokens`` to send; a clear RequestRefused when Anthropic would refuse
    it (``param``: the budget itself when it is under the minimum, else max_tokens)."""
    budget = thinking.budget_tokens
    if budget is not None:
        if budget < ANTHROPIC_MIN_BUDGET or budget >= max_tokens:
            raise RequestRefused(
                f"Thinking(budget_tokens={budget}) with max_tokens={max_tokens}: Anthropic "
                f"needs {ANTHROPIC_MIN_BUDGET} <= budget_tokens < max_tokens; raise max_tokens "
                "or lower the budget",
                param="thinking" if budget < ANTHROPIC_MIN_BUDGET else "max_tokens")
        return budget
    budget = min(_EFFORT_BUDGET[thinking.effort or "medium"], max_tokens - 1)
    if budget < ANTHROPIC_MIN_BUDGET:
        raise RequestRefused(
            f"thinking on Anthropic needs max_tokens above {ANTHROPIC_MIN_BUDGET} "
            f"(budget_tokens must be at least {ANTHROPIC_MIN_BUDGET} and below max_tokens); "
            f"max_tokens is {max_tokens}", param="max_tokens")
    return budget


def thinking_fields(profile: ProviderProfile, request: ChatRequest,
                    model: str = "") -> dict[str, Any]:
    """The request fields that switch reasoning on or off for this provider (``model``:
    the wire id, which decides Anthropic's adaptive or budgeted form).

    Raises RequestRefused, naming the field at fault, when the request cannot be
    expressed (Anthropic's budget rules; forced tool use or a temperature while thinking;
    a provider with no known switch)."""
    thinking = request.thinking
    if thinking is None:
        return {}
    style = profile.thinking
    effort = _effort(thinking)
    if style == "anthropic":
        if not thinking.enabled:
            return {"thinking": {"type": "disabled"}}
        if request.temperature not in (None, 1, 1.0):
            raise RequestRefused(
                f"Anthropic refuses temperature={request.temperature} with thinking; "
                "leave temperature unset", param="temperature")
        if request.tool_choice not in (None, "auto", "none"):
            raise RequestRefused(
                f"Anthropic refuses tool_choice={request.tool_choice!r} with thinking (only "
                "auto or none); leave tool_choice unset", param="tool_choice")
        if thinking.budget_tokens is not None and adaptive_only_claude(model):
            raise RequestRefused(
                f"{model} thinks only adaptively: Anthropic refuses a manual budget "
                f"(budget_tokens={thinking.budget_tokens}) with a 400; leave budget_tokens "
                "unset and tune it with effort (Thinking(effort='low'|'medium'|'high'))",
                param="thinking")
        if thinking.budget_tokens is None and adaptive_claude(model):
            # Claude decides how much to think; the coarse knob is output_config.effort.
            adaptive: dict[str, Any] = {"thinking": {"type": "adaptive"}}
            if thinking.effort is not None:
                adaptive["output_config"] = {"effort": thinking.effort}
            return adaptive
        return {"thinking": {"type": "enabled", "budget_tokens": anthropic_budget(
            thinking, request.max_tokens or 4096)}}
    if style == "deepseek":
        fields: dict[str, Any] = {
            "thinking": {"type": "enabled" if thinking.enabled else "disabled"}}
        if thinking.enabled and effort is not None:
            fields["reasoning_effort"] = effort
        return fields
    if style == "zhipu":  # Zhipu GLM and Kimi K2.5+: the switch alone, no effort
        return {"thinking": {"type": "enabled" if thinking.enabled else "disabled"}}
    if style == "qwen":
        fields = {"enable_thinking": thinking.enabled}
        if thinking.enabled and thinking.budget_tokens is not None:
            fields["thinking_budget"] = thinking.budget_tokens
        return fields
    if style == "gemini":
        if not thinking.enabled:
            return {"reasoning_effort": "none"}
        if thinking.budget_tokens is not None:
            # Gemini's compat endpoint reads its own options from a literal "extra_body"
            # key (ai.google.dev/gemini-api/docs/openai); it refuses reasoning_effort with it.
            return {"extra_body": {"google": {"thinking_config": {
                "thinking_budget": thinking.budget_tokens, "include_thoughts": True}}}}
        return {"reasoning_effort": effort} if effort is not None else {}
    if style == "effort":
        if thinking.enabled and profile.family == "openai" and \
                _OPENAI_NO_REASONING.match(model.lower()):
            raise RequestRefused(
                f"OpenAI model {model!r} does not reason: OpenAI answers 400 for "
                "reasoning_effort on it; leave thinking (reasoning_effort) unset for it, or "
                "use a reasoning model (o-series, gpt-5)", param="thinking")
        # OpenAI reasoning models think by default and cannot be switched off everywhere.
        return {"reasoning_effort": effort} if thinking.enabled and effort is not None else {}
    if thinking.enabled:
        raise RequestRefused(
            f"shoal does not know how to ask provider family {profile.family!r} for thinking; "
            "use a model that reasons by default, or pass the provider's own field in "
            "ChatRequest.extra", param="thinking")
    return {}
