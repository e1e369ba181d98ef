"""Provider-neutral core types: messages, requests, responses, usage and stream events.

These are plain slotted dataclasses, not pydantic models: they are built on the
hot path of every call (thousands per second), and a dataclass costs a fraction
of a validated model to build and to import (see docs/DECISIONS.md). Validation
of *user* input happens at the edges (config, agent output types).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CacheControl",
    "ChatRequest",
    "ChatResponse",
    "FinishReason",
    "Message",
    "ReasoningDelta",
    "ReasoningPart",
    "Role",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "Thinking",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "ToolSpec",
    "Usage",
    "UsageEvent",
]

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "other"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's request to call a tool. ``arguments`` is the raw JSON text the model wrote.

    ``signature`` is an opaque token the provider attached to the call and wants back on
    the next turn (Gemini's ``thought_signature``)."""

    id: str
    name: str
    arguments: str = "{}"
    signature: str | None = None

    def parsed_arguments(self) -> Any:
        """The arguments as JSON; raises ``ValueError`` when the model wrote invalid JSON."""
        return json.loads(self.arguments or "{}")


@dataclass(frozen=True, slots=True)
class CacheControl:
    """A prompt-cache breakpoint (Anthropic's ``cache_control``): the prompt up to and
    including the marked part is cached for ``ttl`` (``"5m"``, ``"1h"``; None: the
    provider's default). Sent by the Anthropic adapter, ignored where caching is
    automatic."""

    type: str = "ephemeral"
    ttl: str | None = None

    def wire(self) -> dict[str, str]:
        return {"type": self.type} if self.ttl is None else {"type": self.type, "ttl": self.ttl}


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One output token's log probability (OpenAI's ``logprobs.content[]`` entry):
    ``bytes`` its UTF-8 bytes where the provider gives them, ``top`` the most likely
    alternatives at that position (each with an empty ``top``)."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: its name, what it is for, and a JSON schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    # A prompt-cache breakpoint after this tool (Anthropic ``cache_control``); adapters
    # of providers without explicit caching ignore it.
    cache_control: CacheControl | None = None
    # Ask the provider to hold the call's arguments to ``parameters`` exactly (OpenAI's
    # and Anthropic's tool ``strict``); sent where the provider documents it and, for
    # OpenAI, only when the schema fits strict mode (else the tool goes non-strict).
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ReasoningPart:
    """One block of a model's reasoning as the provider returned it, kept to be sent back:
    Anthropic ``thinking`` (``text`` + ``signature``) or ``redacted_thinking``
    (``redacted`` holds its opaque ``data``)."""

    text: str = ""
    signature: str | None = None
    redacted: str | None = None


@dataclass(frozen=True, slots=True)
class Thinking:
    """Ask the model to reason before answering, provider-neutrally.

    ``budget_tokens`` caps the reasoning (Anthropic ``budget_tokens``: at least 1024 and
    below ``max_tokens``; Gemini ``thinking_budget``; Qwen ``thinking_budget``);
    ``effort`` is the coarse knob (OpenAI/DeepSeek/Gemini ``reasoning_effort``). Each
    adapter maps what its provider understands (docs/agents.md, "Thinking");
    ``Thinking(enabled=False)`` turns it off where the provider allows that.
    """

    enabled: bool = True
    budget_tokens: int | None = None
    effort: Literal["low", "medium", "high"] | None = None

    def __post_init__(self) -> None:
        from shoal.errors import ConfigError

        if self.budget_tokens is not None and (
            not isinstance(self.budget_tokens, int) or self.budget_tokens < 1
        ):
            raise ConfigError(
                f"Thinking(budget_tokens={self.budget_tokens!r}): give a positive number of "
                "tokens (Anthropic needs at least 1024), or None"
            )
        if self.effort not in (None, "low", "medium", "high"):
            raise ConfigError(
                f"Thinking(effort={self.effort!r}): use 'low', 'medium', 'high' or None"
            )


@dataclass(frozen=True, slots=True)
class Message:
    """One conversation message.

    Use the constructors: ``Message.system(...)``, ``Message.user(...)``,
    ``Message.assistant(text, tool_calls)``, ``Message.tool(call_id, content)``.
    ``reasoning`` carries a provider's reasoning text (DeepSeek ``reasoning_content``)
    and ``reasoning_parts`` its signed blocks (Anthropic thinking), so they can be sent
    back where the provider requires it. ``is_error`` on a tool result is sent when set
    (True or False); None leaves it out. ``cache_control`` marks a prompt-cache
    breakpoint at the end of this message (Anthropic's block field; other protocols
    ignore it).
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None
    is_error: bool | None = None
    reasoning_parts: tuple[ReasoningPart, ...] = ()
    cache_control: CacheControl | None = None

    @classmethod
    def system(cls, content: str) -> Message:
        return cls("system", content)

    @classmethod
    def user(cls, content: str) -> Message:
        return cls("user", content)

    @classmethod
    def assistant(
        cls, content: str = "", tool_calls: tuple[ToolCall, ...] | list[ToolCall] = (),
        reasoning: str | None = None, reasoning_parts: tuple[ReasoningPart, ...] = (),
    ) -> Message:
        return cls("assistant", content, tuple(tool_calls), reasoning=reasoning,
                   reasoning_parts=tuple(reasoning_parts))

    @classmethod
    def tool(
        cls, tool_call_id: str, content: str, *, name: str | None = None,
        is_error: bool | None = None,
    ) -> Message:
        return cls("tool", content, tool_call_id=tool_call_id, name=name, is_error=is_error)


@dataclass(slots=True)
class ChatRequest:
    """One model call, independent of any provider's wire format.

    ``model`` is a catalog name or alias; the router resolves it to channels.
    ``output_schema`` asks for JSON matching a JSON schema, sent the way the channel's
    provider profile says (native ``json_schema``, ``json_object`` with the schema in the
    prompt, or an output tool: :mod:`shoal.providers.profiles`). ``thinking`` asks for
    reasoning; ``extra`` is merged last into the wire body, like the SDKs' ``extra_body``.
    ``parallel_tool_calls=False`` asks for at most one tool call per answer (OpenAI
    ``parallel_tool_calls``, Anthropic ``disable_parallel_tool_use``; sent only to the
    providers that document it); None keeps the provider's default.

    ``output_strict=False`` sends ``output_schema`` non-strict (OpenAI's json_schema
    ``strict``); the default asks for strict mode where the provider takes it and the
    schema fits. ``json_mode`` asks for any JSON object without a schema (OpenAI's
    ``json_object``) when ``output_schema`` is None: sent as JSON mode where the provider
    has one, as a loose object schema where it has none (Anthropic). ``logprobs`` asks
    for each output token's log probability with that many alternatives (0-20; OpenAI's
    ``logprobs``/``top_logprobs``), answered in ``ChatResponse.logprobs`` and on
    ``TextDelta``; a provider without them refuses it with a ConfigError before any
    request. ``cache_control`` is Anthropic's top-level automatic caching (one breakpoint
    that moves forward with the conversation); providers that cache on their own
    ignore it.
    """

    model: str
    messages: list[Message]
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: Literal["auto", "none", "required"] | str | None = None
    output_schema: dict[str, Any] | None = None
    output_schema_name: str = "output"
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    thinking: Thinking | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    parallel_tool_calls: bool | None = None
    output_strict: bool = True
    json_mode: bool = False
    logprobs: int | None = None
    cache_control: CacheControl | None = None


@dataclass(slots=True)
class Usage:
    """Token counts of one or more calls.

    ``input_tokens`` is the *total* prompt size, cached tokens included (OpenAI's
    convention; Anthropic's separate cache counts are folded in by its adapter).
    ``cached_input_tokens`` ⊂ input (cache reads), ``cache_write_tokens`` ⊂ input
    (Anthropic cache creation, all TTLs), ``cache_write_1h_tokens`` ⊂
    ``cache_write_tokens`` (the part written with a 1-hour TTL, billed at 2× input
    instead of 1.25×), ``reasoning_tokens`` ⊂ output. So the uncached, fresh part of
    the prompt is :attr:`fresh_input_tokens`. Prices: :mod:`shoal.pricing`.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    @property
    def fresh_input_tokens(self) -> int:
        """Prompt tokens neither read from nor written to a cache (billed at the base rate)."""
        return max(0, self.input_tokens - self.cached_input_tokens - self.cache_write_tokens)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
        )


@dataclass(slots=True)
class ChatResponse:
    """A normalized model answer.

    ``finish_reason`` is decided from what arrived (tool calls accumulated → ``tool_calls``),
    not only from the provider's label; the label is kept in ``raw_finish_reason``.
    ``cost_usd`` is filled by the router from the catalog's prices (0 when unknown).
    """

    text: str
    tool_calls: list[ToolCall]
    finish_reason: FinishReason
    usage: Usage
    provider: str
    model: str
    latency_s: float = 0.0
    raw_finish_reason: str | None = None
    reasoning: str | None = None
    id: str = ""
    # The stop sequence the answer ended at, where the provider says (Anthropic).
    stop_sequence: str | None = None
    # The model declined, in its own words (finish_reason ``content_filter``): OpenAI's
    # ``message.refusal`` (``text`` is then empty), Anthropic's text of a stop_reason
    # ``refusal`` answer (also in ``text``).
    refusal: str | None = None
    cost_usd: float = 0.0
    channel: str = ""
    # The model id the provider says it served (``gpt-4o-2024-08-06``); ``model`` holds
    # the catalog name the call was routed as.
    served_model: str = ""
    # Answers the provider billed but shoal discarded on the way to this one (a cut
    # stream, a malformed body): charged to budgets, reported as waste, not in ``usage``.
    wasted: Usage | None = None
    wasted_cost_usd: float = 0.0
    # Signed reasoning blocks to send back on the next turn (Anthropic thinking).
    reasoning_parts: tuple[ReasoningPart, ...] = ()
    # The output tokens' log probabilities, when the request asked for them and the
    # provider returned them (else None).
    logprobs: tuple[TokenLogprob, ...] | None = None
    # How the Router got this answer (for the run report's timeline): seconds queued in
    # channel limiters over all attempts, attempts made, and the whole call's span
    # (queue + failed attempts + backoff + ``latency_s``); 0 when no Router timed it.
    queue_s: float = 0.0
    attempts: int = 1
    call_s: float = 0.0

    def message(self) -> Message:
        """This answer as an assistant message, to append to the conversation."""
        return Message.assistant(self.text, tuple(self.tool_calls), reasoning=self.reasoning,
                                 reasoning_parts=self.reasoning_parts)


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text; ``logprobs`` are its tokens' log probabilities when
    the request asked for them (``ChatRequest.logprobs``)."""

    text: str
    type: Literal["text"] = "text"
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of reasoning. A ``signature`` (Anthropic's ``signature_delta``, with empty
    ``text``) ends a signed thinking block; ``redacted`` (empty ``text``) is a whole
    ``redacted_thinking`` block's opaque data. The gateway relays both to streaming
    clients, which send them back with the turn."""

    text: str
    type: Literal["reasoning"] = "reasoning"
    signature: str | None = None
    redacted: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call. ``id``/``name`` come with the first piece of an index."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True)
class UsageEvent:
    usage: Usage
    type: Literal["usage"] = "usage"


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of every successful stream: the whole answer, normalized."""

    response: ChatResponse
    type: Literal["end"] = "end"


StreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | UsageEvent | StreamEnd
