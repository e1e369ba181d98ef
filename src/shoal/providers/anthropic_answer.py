"""What an Anthropic Messages answer becomes in shoal's types: usage (cache reads and
writes folded into the input), the finish reason, tool arguments written the same way
from a whole answer and from a stream, and the stream's events folded into one answer
(:class:`StreamState`). The adapter (:mod:`shoal.providers.anthropic`) speaks the wire."""

from __future__ import annotations

import json
from typing import Any

from shoal.types import (
    ChatResponse,
    FinishReason,
    ReasoningDelta,
    ReasoningPart,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = ["StreamState", "finish_of", "refusal_of", "safe_usage", "same_as_whole", "text_or_none",
           "tool_arguments", "usage_of"]

_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    # Server tools (web search, code execution) paused a long turn: the caller is to send
    # the content back to continue it. Not an answer's end: "other", raw label kept.
    "pause_turn": "other",
}


def usage_of(raw: Any, base: Usage | None = None) -> Usage:
    """Anthropic usage → shoal usage; values present in ``raw`` overwrite ``base``
    (message_delta usage is cumulative, not additive). Anthropic's ``input_tokens`` is
    the uncached part only: shoal's input is it + cache reads + cache writes, and
    ``cache_creation.ephemeral_1h_input_tokens`` is the 1-hour part of the writes;
    ``output_tokens_details.thinking_tokens`` is the reasoning part of the output."""
    u = Usage() if base is None else Usage(
        base.input_tokens, base.output_tokens, base.cached_input_tokens,
        base.reasoning_tokens, base.cache_write_tokens, base.cache_write_1h_tokens,
    )
    if not isinstance(raw, dict):
        return u
    fresh = u.fresh_input_tokens
    if raw.get("input_tokens") is not None:
        fresh = int(raw["input_tokens"])
    if raw.get("cache_read_input_tokens") is not None:
        u.cached_input_tokens = int(raw["cache_read_input_tokens"])
    split = raw.get("cache_creation")
    if isinstance(split, dict):
        five = int(split.get("ephemeral_5m_input_tokens") or 0)
        u.cache_write_1h_tokens = int(split.get("ephemeral_1h_input_tokens") or 0)
        u.cache_write_tokens = five + u.cache_write_1h_tokens
    if raw.get("cache_creation_input_tokens") is not None:  # the total, when both are sent
        u.cache_write_tokens = int(raw["cache_creation_input_tokens"])
    u.cache_write_1h_tokens = min(u.cache_write_1h_tokens, u.cache_write_tokens)
    u.input_tokens = fresh + u.cached_input_tokens + u.cache_write_tokens
    if raw.get("output_tokens") is not None:
        u.output_tokens = int(raw["output_tokens"])
    details = raw.get("output_tokens_details")
    if isinstance(details, dict) and details.get("thinking_tokens") is not None:
        # The reasoning part of output_tokens ("always <= output_tokens",
        # types/output_tokens_details.py), cumulative like the rest of message_delta.
        u.reasoning_tokens = int(details["thinking_tokens"])
    u.reasoning_tokens = min(u.reasoning_tokens, u.output_tokens)
    return u


def safe_usage(raw: Any) -> Usage | None:
    """The usage a malformed answer still reported, or None."""
    if not isinstance(raw, dict):
        return None
    try:
        return usage_of(raw)
    except (TypeError, ValueError):
        return None


def text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def refusal_of(stop: str | None, text: str) -> str | None:
    """The model's words when it declined (stop_reason ``refusal``), else None."""
    return (text or "(refused)") if stop == "refusal" else None


def finish_of(stop: str | None, calls: list[ToolCall]) -> FinishReason:
    """What ended the answer: a cut (max_tokens) says so even with tool calls, whose
    arguments may then be incomplete; else the calls that arrived; else Anthropic's
    label (the output tool's ``tool_use`` is a finished answer)."""
    mapped = _STOP.get(stop or "end_turn", "other")
    if mapped == "length":
        return "length"
    if calls:
        return "tool_calls"
    return "stop" if stop == "tool_use" else mapped


def tool_arguments(value: Any) -> str:
    """A tool_use ``input`` as the ``arguments`` JSON text. The non-stream and the stream
    path both go through it, so one answer gives the same text either way (compact,
    non-ASCII kept as is, as the API itself writes ``partial_json``)."""
    return json.dumps(value if value is not None else {}, ensure_ascii=False,
                      separators=(",", ":"))


def same_as_whole(pieces: list[str]) -> str:
    """Streamed ``partial_json`` pieces as the non-stream path would write them (kept as
    received when they are not JSON: the tool's validation reports that to the model)."""
    joined = "".join(pieces) or "{}"
    try:
        return tool_arguments(json.loads(joined))
    except ValueError:
        return joined


class StreamState:
    """Anthropic's event sequence folded into one answer."""

    def __init__(self, schema_tool: str | None) -> None:
        self.schema_tool = schema_tool
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, list[str]] = {}  # block index -> [id, name, json pieces...]
        self.schema_blocks: set[int] = set()
        self.schema_pieces: list[str] = []
        # block index -> [thinking text, signature, redacted data] (sent back next turn)
        self.thinking: dict[int, list[str | None]] = {}
        self.usage = Usage()
        self.usage_seen = False  # the provider reported usage (it bills from message_start)
        self.stop: str | None = None
        self.stop_sequence: str | None = None
        self.stopped = False
        self.id = ""
        self.model = ""

    def feed(self, kind: str, obj: Any) -> list[StreamEvent]:
        if not isinstance(obj, dict):
            return []
        if kind == "message_start":
            msg = obj.get("message") or {}
            self.id = str(msg.get("id", ""))
            self.model = str(msg.get("model", ""))
            self.usage = usage_of(msg.get("usage"))
            self.usage_seen = self.usage_seen or isinstance(msg.get("usage"), dict)
        elif kind == "content_block_start":
            block = obj.get("content_block") or {}
            index = int(obj.get("index", 0))
            if block.get("type") == "thinking":
                self.thinking[index] = [str(block.get("thinking") or ""),
                                        block.get("signature") or None, None]
            elif block.get("type") == "redacted_thinking":
                data = str(block.get("data", ""))
                self.thinking[index] = ["", None, data]
                return [ReasoningDelta("", redacted=data)]  # whole at its start
            elif block.get("type") == "tool_use":
                if block.get("name") == self.schema_tool:
                    self.schema_blocks.add(index)
                else:
                    self.tools[index] = [str(block.get("id", "")), str(block.get("name", ""))]
                    return [ToolCallDelta(index=index, id=block.get("id"),
                                          name=block.get("name"))]
        elif kind == "content_block_delta":
            return self._delta(int(obj.get("index", 0)), obj.get("delta") or {})
        elif kind == "content_block_stop":
            index = int(obj.get("index", 0))
            pieces = self.tools.get(index)
            if pieces is not None and not "".join(pieces[2:]).strip():
                # A tool without arguments streams no input_json_delta: its deltas add up
                # to "{}", as the whole answer's do (not "", which is no JSON).
                pieces.append("{}")
                return [ToolCallDelta(index=index, arguments="{}")]
        elif kind == "message_delta":
            delta = obj.get("delta") or {}
            self.stop = delta.get("stop_reason") or self.stop
            self.stop_sequence = text_or_none(delta.get("stop_sequence")) or self.stop_sequence
            self.usage = usage_of(obj.get("usage"), self.usage)
            self.usage_seen = self.usage_seen or isinstance(obj.get("usage"), dict)
        elif kind == "message_stop":
            self.stopped = True
        return []

    def began(self) -> bool:
        """Whether any output (text, reasoning, a tool call) was yielded."""
        return bool(self.text or self.reasoning or self.tools)

    def partial(self) -> str:
        """The output received so far: text, reasoning and tool-argument text."""
        args = "".join("".join(b[2:]) for b in self.tools.values())
        return "".join(self.text) + "".join(self.reasoning) + args

    def _delta(self, index: int, delta: dict[str, Any]) -> list[StreamEvent]:
        dtype = delta.get("type")
        if dtype == "text_delta":
            piece = str(delta.get("text", ""))
            self.text.append(piece)
            return [TextDelta(piece)]
        if dtype == "input_json_delta":
            piece = str(delta.get("partial_json", ""))
            if index in self.schema_blocks:
                self.text.append(piece)
                self.schema_pieces.append(piece)
                return [TextDelta(piece)]
            if index in self.tools:
                self.tools[index].append(piece)
                return [ToolCallDelta(index=index, arguments=piece)]
        elif dtype == "thinking_delta":
            piece = str(delta.get("thinking", ""))
            self.reasoning.append(piece)
            block = self.thinking.setdefault(index, ["", None, None])
            block[0] = f"{block[0] or ''}{piece}"
            return [ReasoningDelta(piece)]
        elif dtype == "signature_delta":
            signature = str(delta.get("signature", "")) or None
            self.thinking.setdefault(index, ["", None, None])[1] = signature
            return [ReasoningDelta("", signature=signature)] if signature else []
        return []

    def reasoning_parts(self) -> tuple[ReasoningPart, ...]:
        return tuple(ReasoningPart(text or "", signature, redacted)
                     for text, signature, redacted in
                     (self.thinking[i] for i in sorted(self.thinking)))

    def response(self, *, provider: str, channel: str, latency_s: float) -> ChatResponse:
        """The whole answer the events made: what the non-stream path parses from the
        same answer's body (text, tool calls, reasoning with its signatures, stop reason,
        usage, model, id)."""
        calls = [ToolCall(b[0], b[1], same_as_whole(b[2:])) for b in self.tools.values()]
        text = self.final_text()
        return ChatResponse(
            text=text, tool_calls=calls, finish_reason=finish_of(self.stop, calls),
            usage=self.usage, provider=provider, model=self.model, latency_s=latency_s,
            raw_finish_reason=self.stop, reasoning="".join(self.reasoning) or None,
            id=self.id, stop_sequence=self.stop_sequence, refusal=refusal_of(self.stop, text),
            channel=channel, reasoning_parts=self.reasoning_parts(),
        )

    def final_text(self) -> str:
        """The answer's text, an output-tool answer written as the non-stream path would."""
        text = "".join(self.text)
        if not self.schema_pieces:
            return text
        raw = "".join(self.schema_pieces)
        return text.replace(raw, same_as_whole(self.schema_pieces), 1)
