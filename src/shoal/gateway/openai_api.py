"""The OpenAI Chat Completions wire, outbound: answers, stream chunks and errors.

The stream encoder pre-encodes everything constant in a chunk once per stream (id,
model, created, the JSON around a delta), so a text delta costs one ``dumps`` (orjson) of
its string and one bytes join.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from shoal.fastjson import dumps
from shoal.gateway.errors import Failure
from shoal.gateway.translate_common import Parsed
from shoal.gateway.translate_openai import parse_chat
from shoal.types import (
    ChatResponse,
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)

__all__ = ["OpenAIStream", "OpenAIWire", "usage_json"]


_TYPES = {
    "invalid_request": "invalid_request_error", "authentication": "authentication_error",
    "permission": "permission_error", "not_found": "invalid_request_error",
    "too_large": "invalid_request_error", "rate_limit": "rate_limit_error",
    "quota": "insufficient_quota", "api_error": "api_error",
    "overloaded": "service_unavailable_error",
    "timeout": "timeout", "unavailable": "api_error",
}
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
           "content_filter": "content_filter", "other": "stop"}
_OPEN = b',"finish_reason":null}]}\n\n'
_CLOSE = b"}" + _OPEN
DONE = b"data: [DONE]\n\n"


def usage_json(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def _token_json(t: TokenLogprob) -> dict[str, Any]:
    return {"token": t.token, "logprob": t.logprob,
            "bytes": None if t.bytes is None else list(t.bytes)}


def logprobs_json(tokens: tuple[TokenLogprob, ...] | None) -> dict[str, Any] | None:
    """A choice's ``logprobs`` (None: not asked, or the upstream sent none)."""
    if tokens is None:
        return None
    return {"content": [_token_json(t) | {"top_logprobs": [_token_json(a) for a in t.top]}
                        for t in tokens], "refusal": None}


def new_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


class OpenAIStream:
    """One stream's chunks, as bytes ready to write."""

    __slots__ = ("_head", "_include_usage", "_pre", "_reasoning", "_text", "_tools")

    def __init__(self, model: str, include_usage: bool) -> None:
        head = dumps({"id": new_id(), "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": model})[:-1]
        self._head = b"data: " + head
        self._pre = self._head + b',"choices":[{"index":0,"delta":'
        self._text = self._pre + b'{"content":'
        self._reasoning = self._pre + b'{"reasoning_content":'
        self._include_usage = include_usage
        self._tools: dict[int, int] = {}  # upstream tool index -> OpenAI index (0, 1, ...)

    def start(self) -> bytes:
        return self._pre + b'{"role":"assistant","content":""}' + _OPEN

    def feed(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):  # the hot path: one join, one dumps
            if event.logprobs:  # asked for: the chunk's choice carries its tokens'
                return b"".join((self._text, dumps(event.text), b'},"logprobs":',
                                 dumps(logprobs_json(event.logprobs)), _OPEN))
            return b"".join((self._text, dumps(event.text), _CLOSE))
        if isinstance(event, ReasoningDelta):
            if not event.text:  # a thinking block's signature: OpenAI has no place for it
                return b""
            return b"".join((self._reasoning, dumps(event.text), _CLOSE))
        if isinstance(event, ToolCallDelta):
            index = self._tools.get(event.index)
            call: dict[str, Any]
            if index is None:
                index = self._tools[event.index] = len(self._tools)
                call = {"index": index, "id": event.id or f"call_{index}", "type": "function",
                        "function": {"name": event.name or "", "arguments": event.arguments}}
            else:
                call = {"index": index, "function": {"arguments": event.arguments}}
            return self._pre + dumps({"tool_calls": [call]}) + _OPEN
        if isinstance(event, StreamEnd):
            return self.end(event.response)
        return b""  # UsageEvent: the usage goes out with the end

    def end(self, response: ChatResponse) -> bytes:
        out = b""
        if response.refusal:  # the refusal arrives whole at the end (as one delta)
            out = self._pre + dumps({"refusal": response.refusal}) + _OPEN
        finish = _finish(response)
        out += self._pre + b'{},"finish_reason":"' + finish.encode() + b'"}]}\n\n'
        if self._include_usage:
            out += (self._head + b',"choices":[],"usage":'
                    + dumps(usage_json(response.usage)) + b"}\n\n")
        return out + DONE

    @staticmethod
    def fail(failure: Failure) -> bytes:
        """The error chunk a broken stream ends with (never followed by ``[DONE]``)."""
        return b"data: " + error_body(failure) + b"\n\n"


def _finish(response: ChatResponse) -> str:
    """OpenAI's finish reason; a refusal ends plainly ("stop"), as OpenAI's do."""
    if response.refusal and not response.tool_calls:
        return "stop"
    return _FINISH.get(response.finish_reason, "stop")


def error_body(failure: Failure) -> bytes:
    return dumps({"error": {"message": failure.message, "type": _TYPES[failure.kind],
                             "param": failure.param, "code": failure.code}})


def error_status(failure: Failure) -> int:
    """The status OpenAI answers for ``failure``: an overload is its 503 (error-codes
    guide: ``service_unavailable_error``, code ``server_is_overloaded``; the openai SDK
    raises InternalServerError and retries it); 529 is Anthropic's status alone."""
    return 503 if failure.status == 529 else failure.status


def render(response: ChatResponse, model: str) -> bytes:
    refused = response.refusal is not None
    message: dict[str, Any] = {"role": "assistant",
                               "content": None if refused or (response.tool_calls and not
                                                              response.text)
                               else response.text}
    if response.refusal:  # the SDK's parse() reports it instead of failing on ""
        message["refusal"] = response.refusal
    if response.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}}
            for c in response.tool_calls]
    if response.reasoning:
        message["reasoning_content"] = response.reasoning
    return dumps({
        "id": response.id if response.id.startswith("chatcmpl") else new_id(),
        "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message,
                     "logprobs": logprobs_json(response.logprobs),
                     "finish_reason": _finish(response)}],
        "usage": usage_json(response.usage), "system_fingerprint": None,
    })


class OpenAIWire:
    """``POST /v1/chat/completions`` as the gateway's core sees it."""

    name = "openai"
    route = "/v1/chat/completions"

    @staticmethod
    def parse(body: Any) -> Parsed:
        return parse_chat(body)

    @staticmethod
    def render(response: ChatResponse, model: str) -> bytes:
        return render(response, model)

    @staticmethod
    def stream(model: str, prompt_tokens: Callable[[], int],
               include_usage: bool) -> OpenAIStream:
        return OpenAIStream(model, include_usage)

    @staticmethod
    def error_body(failure: Failure) -> bytes:
        return error_body(failure)

    @staticmethod
    def error_status(failure: Failure) -> int:
        return error_status(failure)


def models_body(names: list[tuple[str, str]]) -> bytes:
    """``GET /v1/models`` in OpenAI's shape: ``(name, provider)`` pairs."""
    return dumps({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": provider or "shoal"}
        for name, provider in names]})
