"""The Anthropic Messages wire, outbound: answers, stream events and errors.

A stream is ``message_start``, then content blocks opened and closed in order (text,
thinking, tool_use: each neutral delta opens a block of its kind when the open one is
of another), ``message_delta`` (stop reason, real usage) and ``message_stop``. The
input-token count in ``message_start`` is the gateway's estimate (an OpenAI-protocol
upstream reports usage only at the end); ``message_delta`` carries the real one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from shoal.fastjson import dumps, loads
from shoal.gateway.errors import Failure
from shoal.gateway.translate_anthropic import parse_messages
from shoal.gateway.translate_common import Parsed
from shoal.types import (
    ChatResponse,
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)

__all__ = ["AnthropicStream", "AnthropicWire", "models_body", "usage_json"]


_TYPES = {
    "invalid_request": "invalid_request_error", "authentication": "authentication_error",
    "permission": "permission_error", "not_found": "not_found_error",
    "too_large": "request_too_large", "rate_limit": "rate_limit_error",
    "quota": "rate_limit_error", "api_error": "api_error", "overloaded": "overloaded_error",
    "timeout": "timeout_error", "unavailable": "api_error",
}
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
         "content_filter": "refusal", "other": "end_turn"}
_TEXT_DELTA = b'"delta":{"type":"text_delta","text":'
_THINK_DELTA = b'"delta":{"type":"thinking_delta","thinking":'
_JSON_DELTA = b'"delta":{"type":"input_json_delta","partial_json":'
_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_SIGNATURE_DELTA = b'"delta":{"type":"signature_delta","signature":'


def usage_json(u: Usage) -> dict[str, Any]:
    """Anthropic's usage block: ``input_tokens`` without the cache reads and writes, and
    the writes split by TTL (``cache_creation``), as Anthropic sends it: a 1-hour write
    costs 2× input, a 5-minute one 1.25×, so a caller pricing the answer needs the split."""
    fresh = max(0, u.input_tokens - u.cached_input_tokens - u.cache_write_tokens)
    one_hour = min(u.cache_write_1h_tokens, u.cache_write_tokens)
    return {"input_tokens": fresh, "output_tokens": u.output_tokens,
            "cache_read_input_tokens": u.cached_input_tokens,
            "cache_creation_input_tokens": u.cache_write_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": u.cache_write_tokens - one_hour,
                               "ephemeral_1h_input_tokens": one_hour}}


def stop_reason(response: ChatResponse) -> str:
    if response.raw_finish_reason in ("stop_sequence", "pause_turn", "refusal"):
        return response.raw_finish_reason
    return _STOP.get(response.finish_reason, "end_turn")


def _event(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


def _tool_input(arguments: str) -> Any:
    try:
        return loads(arguments or "{}")
    except ValueError:
        return {"_raw": arguments}  # what the model wrote, kept rather than dropped


class AnthropicStream:
    """One stream's events, as bytes ready to write."""

    __slots__ = ("_index", "_kind", "_model", "_prompt", "_tools")

    def __init__(self, model: str, prompt_tokens: int) -> None:
        self._model = model
        self._prompt = prompt_tokens
        self._index = -1  # the open block's index
        self._kind = ""  # the open block's kind: text | thinking | tool:<upstream index>
        self._tools: dict[int, int] = {}  # upstream tool index -> block index

    def start(self) -> bytes:
        return _event(b"message_start", dumps({"type": "message_start", "message": {
            "id": "msg_" + os.urandom(12).hex(), "type": "message", "role": "assistant",
            "model": self._model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self._prompt, "output_tokens": 0}}}))

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._kind = kind
        return out + _event(b"content_block_start", dumps({
            "type": "content_block_start", "index": self._index,
            "content_block": block}))

    def _close(self) -> bytes:
        if not self._kind:
            return b""
        self._kind = ""
        return _event(b"content_block_stop", b'{"type":"content_block_stop","index":'
                      + str(self._index).encode() + b"}")

    def _delta(self, index: int, delta: bytes, piece: str) -> bytes:
        return b"".join((_DELTA_HEAD, str(index).encode(), b",", delta,
                         dumps(piece), b"}}\n\n"))

    def feed(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            head = b"" if self._kind == "text" else self._open(
                "text", {"type": "text", "text": ""})
            return head + self._delta(self._index, _TEXT_DELTA, event.text)
        if isinstance(event, ReasoningDelta):
            if event.redacted is not None:  # a whole block of its own, sent back as is
                return self._open("redacted_thinking", {"type": "redacted_thinking",
                                                        "data": event.redacted})
            if event.signature is not None:  # ends the open thinking block
                if self._kind != "thinking":
                    return b""
                return self._delta(self._index, _SIGNATURE_DELTA, event.signature)
            head = b"" if self._kind == "thinking" else self._open(
                "thinking", {"type": "thinking", "thinking": "", "signature": ""})
            return head + self._delta(self._index, _THINK_DELTA, event.text)
        if isinstance(event, ToolCallDelta):
            head = b""
            index = self._tools.get(event.index)
            if index is None:
                head = self._open(f"tool:{event.index}", {
                    "type": "tool_use", "id": event.id or f"toolu_{len(self._tools)}",
                    "name": event.name or "", "input": {}})
                index = self._tools[event.index] = self._index
            if not event.arguments:
                return head
            return head + self._delta(index, _JSON_DELTA, event.arguments)
        if isinstance(event, StreamEnd):
            return self.end(event.response)
        return b""

    def end(self, response: ChatResponse) -> bytes:
        head = b""
        if response.refusal and not response.text:  # an OpenAI refusal: its words
            head = self.feed(TextDelta(response.refusal))
        return (head + self._close() + _event(b"message_delta", dumps({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(response),
                      "stop_sequence": response.stop_sequence},
            "usage": usage_json(response.usage)}))
            + _event(b"message_stop", b'{"type":"message_stop"}'))

    @staticmethod
    def fail(failure: Failure) -> bytes:
        """The ``error`` event a broken stream ends with (never a ``message_stop``)."""
        return _event(b"error", error_body(failure))


def error_body(failure: Failure) -> bytes:
    return dumps({"type": "error", "error": {"type": _TYPES[failure.kind],
                                              "message": failure.message}})


def render(response: ChatResponse, model: str) -> bytes:
    content: list[dict[str, Any]] = []
    for part in response.reasoning_parts:
        if part.redacted is not None:
            content.append({"type": "redacted_thinking", "data": part.redacted})
        else:
            content.append({"type": "thinking", "thinking": part.text,
                            "signature": part.signature or ""})
    if not response.reasoning_parts and response.reasoning:
        content.append({"type": "thinking", "thinking": response.reasoning, "signature": ""})
    if response.text or not response.tool_calls:  # an OpenAI refusal: its words
        content.append({"type": "text", "text": response.text or response.refusal or ""})
    content.extend({"type": "tool_use", "id": c.id, "name": c.name,
                    "input": _tool_input(c.arguments)} for c in response.tool_calls)
    return dumps({
        "id": response.id if response.id.startswith("msg_") else "msg_" + os.urandom(12).hex(),
        "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason(response), "stop_sequence": response.stop_sequence,
        "usage": usage_json(response.usage),
    })


class AnthropicWire:
    """``POST /v1/messages`` as the gateway's core sees it."""

    name = "anthropic"
    route = "/v1/messages"

    @staticmethod
    def parse(body: Any) -> Parsed:
        return parse_messages(body)

    @staticmethod
    def render(response: ChatResponse, model: str) -> bytes:
        return render(response, model)

    @staticmethod
    def stream(model: str, prompt_tokens: Callable[[], int],
               include_usage: bool) -> AnthropicStream:
        return AnthropicStream(model, prompt_tokens())  # message_start reports it

    @staticmethod
    def error_body(failure: Failure) -> bytes:
        return error_body(failure)

    @staticmethod
    def error_status(failure: Failure) -> int:
        return failure.status  # 529 overloaded_error is Anthropic's own


def models_body(names: list[tuple[str, str]]) -> bytes:
    """``GET /v1/models`` in Anthropic's shape (asked with an ``anthropic-version``)."""
    data = [{"type": "model", "id": name, "display_name": name,
             "created_at": "1970-01-01T00:00:00Z"} for name, _ in names]
    return dumps({"data": data, "has_more": False,
                   "first_id": data[0]["id"] if data else None,
                   "last_id": data[-1]["id"] if data else None})
