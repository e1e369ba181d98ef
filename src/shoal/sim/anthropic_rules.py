"""What Anthropic's Messages API refuses (PROVIDERS.md §2, §6 traps 9 and 10).

:func:`anthropic_request` raises :class:`~shoal.sim.styles.Refusal` (400
``invalid_request_error``) for: unknown top-level fields, a custom tool whose name is
not ``[a-zA-Z0-9_-]{1,128}`` or without an object ``input_schema``, a ``tool_choice`` of
another tag or with fields its tag does not take, empty text blocks and empty messages,
a thinking budget out of bounds, a thinking form the model does not take (adaptive on
4.5 and older, a manual budget on Opus 4.7 and Claude 5), sampling on Claude 5 and
forced tools on Claude 5.5, ``temperature`` and ``top_p`` together from Opus 4.1 and the
4.5 models on, either outside 0-1; with thinking on, a ``temperature`` other than 1, any
``top_k``, a ``top_p`` under 0.95, a forced tool, or a pre-filled answer (a final assistant
message); unpaired ``tool_use``/``tool_result`` blocks, and a tool turn without its signed
thinking block (signatures from :func:`sign_thinking` cover the thinking text).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from shoal.sim.styles import Refusal

__all__ = ["anthropic_request", "sign_thinking"]

_THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
_CONSIDERATIONS = "#important-considerations-when-using-extended-thinking"
_MIN_TOP_P = 0.95  # with thinking on, top_p takes 0.95-1 (above 1 is refused anyway)
# Top-level fields of a Messages request (anthropic-sdk-python MessageCreateParams, the
# sampling fields and the beta output_format); the API refuses any other name.
_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
    "container", "context_management", "mcp_servers", "output_config", "output_format",
    "cache_control", "inference_geo", "speed", "diagnostics", "user_profile_id",
    "workspace_id",
})  # fmt: skip


def sign_thinking(request_id: str, thinking: str) -> str:
    """The simulator's signature of a thinking block: the request id and a digest of the
    text, so a changed or re-signed block is caught when it comes back."""
    digest = hashlib.sha256(thinking.encode()).hexdigest()[:24]
    return f"sim-signature-{request_id}.{digest}"


def _signature_ok(signature: str, thinking: str) -> bool:
    _, _, digest = signature.rpartition(".")
    return digest == hashlib.sha256(thinking.encode()).hexdigest()[:24]


# Which thinking forms a Claude model takes (platform.claude.com "Adaptive thinking", and
# AWS Bedrock's copy of it): Sonnet/Opus/Haiku 4.5 and older take only a manual budget;
# Opus 4.7, Mythos, Fable and the Claude 5 models only the adaptive form (a manual
# budget is a 400 there); Opus and Sonnet 4.6 take both (the budget is deprecated).
_BUDGET_ONLY = re.compile(r"claude-(?:3|(?:sonnet|opus|haiku)-4(?:-[0-5])?(?:-\d{8})?$)")
_ADAPTIVE_ONLY = re.compile(r"claude-(?:opus-4-[7-9]|mythos|fable|[a-z]+-[5-9](?:$|-))")
_EFFORTS = ("low", "medium", "high", "xhigh", "max")
# Claude 5 refuses non-default sampling; Claude 5.5 refuses forced tool use (the models'
# overview pages on platform.claude.com).
_NO_SAMPLING = re.compile(r"claude-[a-z]+-[5-9](?:$|-)")
_NO_FORCING = re.compile(r"claude-[a-z]+-(?:5-[5-9]|[6-9])(?:$|-)")
# From Opus 4.1 and the 4.5 models on, temperature and top_p together are a 400 (integrators'
# reports with request ids: langfuse/langfuse#9882, SalesforceAIResearch/MCP-Universe#49,
# open-webui/pipelines#546); Sonnet and Opus 4 still take both.
_ONE_SAMPLER = re.compile(
    r"claude-(?:opus-4-(?:[1-9]|\d\d)(?!\d)|(?:sonnet|haiku)-4-(?:[5-9]|\d\d)(?!\d))")
# The 4.6 models and every Claude 5 refuse a pre-filled answer, thinking or not (the 4.6
# migration guide, platform.claude.com/docs/en/about-claude/models/migration-guide).
_NO_PREFILL = re.compile(
    r"claude-(?:(?:opus|sonnet|haiku)-4-(?:[6-9]|\d\d)(?!\d)|[a-z]+-(?:[5-9]|\d\d)(?:$|[-.]))")


def _sampling(body: dict[str, Any]) -> None:
    """``temperature`` and ``top_p`` from 0 to 1 (Anthropic's range, not OpenAI's 0-2)."""
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 1:
            raise Refusal(f"{key}: Input should be less than or equal to 1")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise Refusal(f"{key}: Input should be greater than or equal to 0")


def _claude5(body: dict[str, Any]) -> None:
    model = str(body.get("model", "")).lower()
    messages = body.get("messages")
    if _NO_PREFILL.match(model) and isinstance(messages, list) and messages and \
            isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        # the 4.6 migration guide; the wording integrators quote (strands-agents/
        # sdk-python#1694, livekit/agents#4907)
        raise Refusal("This model does not support assistant message prefill. The "
                      "conversation must end with a user message.")
    if _ONE_SAMPLER.match(model) and body.get("temperature") is not None and \
            body.get("top_p") is not None:
        raise Refusal("`temperature` and `top_p` cannot both be specified for this model. "
                      "Please use only one.")
    if _NO_SAMPLING.match(model):
        for key, default in (("temperature", 1), ("top_p", 1), ("top_k", None)):
            if key in body and body[key] != default:
                raise Refusal(f"{key}: {model} does not support setting {key}; remove it")
    choice = body.get("tool_choice")
    if _NO_FORCING.match(model) and isinstance(choice, dict) and choice.get("type") in (
            "any", "tool"):
        raise Refusal(f"tool_choice: forced tool use is not supported on {model}; use "
                      "'auto' or 'none'")


def _thinking_form(body: dict[str, Any], kind: str) -> None:
    """The thinking form (``kind``) the body's model refuses, and a bad
    ``output_config.effort``."""
    model = str(body.get("model", "")).lower()
    if kind == "adaptive" and _BUDGET_ONLY.match(model):
        raise Refusal(f"adaptive thinking is not supported on {model}; use thinking.type "
                      "'enabled' with budget_tokens")
    if kind == "enabled" and _ADAPTIVE_ONLY.match(model):
        raise Refusal(f"thinking.type 'enabled' is not supported on {model}; use "
                      "thinking.type 'adaptive' with output_config.effort")
    config = body.get("output_config")
    if isinstance(config, dict) and "effort" in config and config["effort"] not in _EFFORTS:
        raise Refusal(f"output_config.effort: Input should be {', '.join(map(repr, _EFFORTS))}")


def anthropic_request(body: dict[str, Any], style: str) -> None:
    """Anthropic's refusals: thinking budget and its incompatibilities, tool_use /
    tool_result pairing, and thinking blocks (with valid signatures) on tool turns."""
    if style == "permissive":
        return
    for key in body:
        if key not in _FIELDS:
            raise Refusal(f"{key}: Extra inputs are not permitted")
    _tools(body)
    _sampling(body)
    _claude5(body)
    max_tokens = int(body["max_tokens"])
    thinking = body.get("thinking")
    enabled = False
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind not in ("enabled", "disabled", "adaptive"):
            raise Refusal(
                "thinking: Input tag "
                f"'{kind}' found using 'type' does not match any of the expected tags: "
                "'enabled', 'disabled', 'adaptive'"
            )
        _thinking_form(body, kind)
        enabled = kind in ("enabled", "adaptive")
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or isinstance(budget, bool):
                raise Refusal("thinking.enabled.budget_tokens: Field required")
            if budget < 1024:
                raise Refusal(
                    "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
                )
            if budget >= max_tokens:
                raise Refusal(
                    "`max_tokens` must be greater than `thinking.budget_tokens`. Please "
                    f"consult our documentation at {_THINKING_DOCS}"
                    "#max-tokens-and-context-window-size"
                )
    if enabled:
        _with_thinking(body)
    _anthropic_turns(body["messages"], enabled)


def _with_thinking(body: dict[str, Any]) -> None:
    """What thinking rules out ("Feature compatibility" in the extended-thinking guide):
    a temperature other than 1, any top_k, a top_p under 0.95, forced tool use. The
    wordings are the API's (integrators' reports: the top_k one quarkiverse/
    quarkus-langchain4j#1812, the top_p one QuantumNous/new-api#3124). A pre-filled
    answer is refused in :func:`_anthropic_turns`."""
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise Refusal(
            "`temperature` may only be set to 1 when thinking is enabled. Please "
            f"consult our documentation at {_THINKING_DOCS}#feature-compatibility"
        )
    if body.get("top_k") is not None:
        raise Refusal(
            "`top_k` must be unset when thinking is enabled. Please consult our "
            f"documentation at {_THINKING_DOCS}{_CONSIDERATIONS}"
        )
    top_p = body.get("top_p")
    if isinstance(top_p, int | float) and not isinstance(top_p, bool) and top_p < _MIN_TOP_P:
        raise Refusal(
            f"`top_p` must be greater than or equal to {_MIN_TOP_P} or unset when thinking "
            f"is enabled. Please consult our documentation at {_THINKING_DOCS}"
            f"{_CONSIDERATIONS}"
        )
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise Refusal("Thinking may not be enabled when tool_choice forces tool use.")


_CHOICES = ("auto", "any", "tool", "none")
# A custom tool's name, as the API's validation error quotes it.
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def _tools(body: dict[str, Any]) -> None:
    """A custom tool's name matches ``_TOOL_NAME``; its ``input_schema`` is required and
    must be an object schema;
    ``tool_choice`` is one of its four tags, and ``none`` takes no other field
    (PROVIDERS.md §2). Server tools (a ``type`` such as ``web_search_20250305``) have
    no input schema."""
    tools = body.get("tools") or []
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
            continue
        name = tool.get("name")
        if name is None:
            raise Refusal(f"tools.{i}.custom.name: Field required")
        if not isinstance(name, str):
            raise Refusal(f"tools.{i}.custom.name: Input should be a valid string")
        if not _TOOL_NAME.fullmatch(name):
            raise Refusal(f"tools.{i}.custom.name: String should match pattern "
                          f"'{_TOOL_NAME.pattern}'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise Refusal(f"tools.{i}.custom.input_schema: Field required")
        if schema.get("type") != "object":
            raise Refusal(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in _CHOICES:
        raise Refusal(f"tool_choice: Input tag '{kind}' found using 'type' does not match any "
                      "of the expected tags: " + ", ".join(f"'{c}'" for c in _CHOICES))
    for key in choice:
        if key != "type" and not (key == "disable_parallel_tool_use" and kind != "none") and \
                not (key == "name" and kind == "tool"):
            raise Refusal(f"tool_choice.{kind}.{key}: Extra inputs are not permitted")


def _blocks(msg: dict[str, Any]) -> list[dict[str, Any]]:
    content = msg.get("content")
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _anthropic_turns(messages: list[Any], thinking: bool) -> None:
    last_assistant = -1
    for i, msg in enumerate(messages):
        blocks = _blocks(msg)
        content = msg.get("content")
        if content in ("", []) and not (
            i == len(messages) - 1 and msg.get("role") == "assistant"
        ):
            raise Refusal(
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        if any(b.get("type") == "text" and not b.get("text") for b in blocks):
            raise Refusal("messages: text content blocks must be non-empty")
        for j, block in enumerate(blocks):
            if block.get("type") == "thinking":
                signature = block.get("signature")
                if not isinstance(signature, str) or not signature:
                    raise Refusal(f"messages.{i}.content.{j}.thinking.signature: Field required")
                if not _signature_ok(signature, str(block.get("thinking", ""))):
                    raise Refusal(
                        f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
                    )
        uses = [str(b.get("id")) for b in blocks if b.get("type") == "tool_use"]
        if msg.get("role") == "assistant":
            last_assistant = i
            if uses and i + 1 < len(messages):
                answered = {
                    str(b.get("tool_use_id"))
                    for b in _blocks(messages[i + 1])
                    if b.get("type") == "tool_result"
                }
                missing = [u for u in uses if u not in answered]
                if messages[i + 1].get("role") != "user" or missing:
                    raise Refusal(
                        f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                        f"immediately after: {', '.join(missing or uses)}. Each `tool_use` "
                        "block must have a corresponding `tool_result` block in the next "
                        "message."
                    )
        else:
            before = _blocks(messages[i - 1]) if i > 0 else []
            known = {str(b.get("id")) for b in before if b.get("type") == "tool_use"}
            for j, block in enumerate(blocks):
                answers = str(block.get("tool_use_id"))
                if block.get("type") == "tool_result" and answers not in known:
                    raise Refusal(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block.get('tool_use_id')}. Each `tool_result` "
                        "block must have a corresponding `tool_use` block in the previous "
                        "message."
                    )
    prefill = bool(messages) and messages[-1].get("role") == "assistant"
    if thinking and last_assistant >= 0:
        blocks = _blocks(messages[last_assistant])
        # A pre-filled answer (a final assistant message) is refused with thinking on
        # ("You can't pre-fill responses when thinking is enabled"); one that does not
        # start with thinking gets the API's words for it (n8n-io/n8n#22550).
        if any(b.get("type") == "tool_use" for b in blocks) or prefill:
            first = blocks[0].get("type") if blocks else "text"
            if first not in ("thinking", "redacted_thinking"):
                raise Refusal(
                    f"messages.{last_assistant}.content.0.type: Expected `thinking` or "
                    f"`redacted_thinking`, but found `{first}`. When `thinking` is enabled, a "
                    "final `assistant` message must start with a thinking block (preceeding "
                    "the lastmost set of `tool_use` and `tool_result` blocks). We recommend "
                    "you include thinking blocks from previous turns. To avoid this "
                    f"requirement, disable `thinking`. Please consult our documentation at "
                    f"{_THINKING_DOCS}"
                )
    if thinking and prefill:  # the simulator's words: the API's for this case are unknown
        raise Refusal(
            f"messages.{len(messages) - 1}: pre-filling the assistant response is not "
            "supported when thinking is enabled; end the conversation with a user message. "
            f"Please consult our documentation at {_THINKING_DOCS}#feature-compatibility"
        )
