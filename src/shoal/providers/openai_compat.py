"""OpenAI-compatible Chat Completions adapter (OpenAI, DeepSeek, Kimi, GLM, MiniMax,
Gemini's compat endpoint, vLLM, Ollama, llama.cpp).

Sending is shaped by :mod:`shoal.providers.quirks`; parsing tolerates every variant
listed in PROVIDERS.md: usage on a ``choices: []`` chunk, inside ``choices[0]`` or on
the last content chunk; tool-call fragments with null or repeated indices; whole
arguments in one chunk; ``reasoning_content``/``reasoning``; blank lines and
``: keep-alive`` comments; an unterminated ``[DONE]``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from shoal.errors import MalformedResponse, StreamInterrupted
from shoal.providers.failures import (
    error_from_stream_payload,
)
from shoal.providers.http import HttpProvider
from shoal.providers.quirks import Quirks, quirks_for
from shoal.types import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    Message,
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

__all__ = ["OpenAICompatProvider"]

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "sensitive": "content_filter",
    "end_turn": "stop",
}


def finish_reason(raw: str | None, has_tool_calls: bool) -> FinishReason:
    """Decide from what arrived: accumulated tool calls win over the provider's label."""
    if has_tool_calls:
        return "tool_calls"
    if raw is None:
        return "stop"
    return _FINISH.get(raw, "other")


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    details = raw.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    if not cached:
        cached = int(raw.get("prompt_cache_hit_tokens") or 0)  # DeepSeek
    cdetails = raw.get("completion_tokens_details") or {}
    reasoning = int(cdetails.get("reasoning_tokens") or 0) if isinstance(cdetails, dict) else 0
    return Usage(prompt, completion, cached, reasoning)


class OpenAICompatProvider(HttpProvider):
    """Chat Completions over one pooled aiohttp session."""

    default_provider = "openai"

    def _endpoint(self, base_url: str) -> str:
        return base_url + "/chat/completions"

    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @property
    def quirks(self) -> Quirks:
        return quirks_for(self.provider)

    # -- request ------------------------------------------------------------------------

    def _message(self, m: Message) -> dict[str, Any]:
        if m.role == "tool":
            return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
        out: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.role == "assistant":
            if m.tool_calls:
                out["tool_calls"] = [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments}}
                    for c in m.tool_calls
                ]
                if not m.content:
                    out["content"] = None
            send_back = self.quirks.send_reasoning_back
            if m.reasoning and (
                send_back == "always" or (send_back == "tool_turns" and m.tool_calls)
            ):
                out[self.quirks.reasoning_field] = m.reasoning
        return out

    def payload(self, request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
        q = self.quirks
        messages = [self._message(m) for m in request.messages]
        if q.single_system:
            systems = [m["content"] for m in messages if m["role"] == "system"]
            if len(systems) > 1:
                rest = [m for m in messages if m["role"] != "system"]
                messages = [{"role": "system", "content": "\n\n".join(systems)}, *rest]
        body: dict[str, Any] = {"model": model, "messages": messages}
        if request.tools:
            body["tools"] = [
                {"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in request.tools
            ]
            if request.tool_choice and q.tool_choice:
                choice = request.tool_choice
                body["tool_choice"] = (
                    choice if choice in ("auto", "none", "required")
                    else {"type": "function", "function": {"name": choice}}
                )
        if request.output_schema is not None:
            if q.json_mode == "json_schema":
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": request.output_schema_name, "schema": request.output_schema}}
            elif q.json_mode == "json_object_schema":
                body["response_format"] = {"type": "json_object",
                                           "schema": request.output_schema}
            else:
                body["response_format"] = {"type": "json_object"}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            body[q.max_tokens_field] = request.max_tokens
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        if stream:
            body["stream"] = True
            if q.stream_usage_option:
                body["stream_options"] = {"include_usage": True}
        return body

    # -- complete -----------------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, model: str) -> ChatResponse:
        started = time.perf_counter()
        body, raw = await self._post_json(request, self.payload(request, model, stream=False))
        return self.parse(body, raw, time.perf_counter() - started)

    def parse(self, body: Any, raw: bytes, latency: float) -> ChatResponse:
        if not isinstance(body, dict) or "error" in body or (
            isinstance(body.get("base_resp"), dict) and body["base_resp"].get("status_code")
        ):
            raise self._fail(200, raw.decode("utf-8", "replace"), {})
        try:
            choice = body["choices"][0]
            msg = choice["message"]
            calls = [
                ToolCall(
                    id=c.get("id") or f"call_{i}",
                    name=c["function"]["name"],
                    arguments=_arguments(c["function"].get("arguments")),
                )
                for i, c in enumerate(msg.get("tool_calls") or [])
            ]
            raw_finish = choice.get("finish_reason")
            usage = _usage(body.get("usage")) or _usage(choice.get("usage")) or Usage()
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            return ChatResponse(
                text=msg.get("content") or "",
                tool_calls=calls,
                finish_reason=finish_reason(raw_finish, bool(calls)),
                usage=usage,
                provider=self.provider,
                model=str(body.get("model", "")),
                latency_s=latency,
                raw_finish_reason=raw_finish,
                reasoning=reasoning or None,
                id=str(body.get("id", "")),
                channel=self.name,
            )
        except (KeyError, IndexError, TypeError) as exc:
            raise MalformedResponse(
                f"{self.name} returned JSON without the chat.completion shape ({exc!r})",
                status=200, provider=self.name, body=raw.decode("utf-8", "replace"),
            ) from None

    # -- stream -------------------------------------------------------------------------

    async def stream(self, request: ChatRequest, *, model: str) -> AsyncIterator[StreamEvent]:
        started = time.perf_counter()
        acc = _Accumulator()
        done = False
        payload = self.payload(request, model, stream=True)
        async with contextlib.aclosing(self._sse(request, payload)) as events:
            async for event, data in events:
                if data.startswith("[DONE]"):
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise MalformedResponse(
                        f"{self.name} sent a stream chunk that is not JSON", status=200,
                        provider=self.name, body=data,
                    ) from None
                if event == "error" or (isinstance(chunk, dict) and chunk.get("error")):
                    raise error_from_stream_payload(chunk, provider=self.name, raw=data)
                for out in acc.feed(chunk):
                    yield out
        if not done:
            raise StreamInterrupted(
                f"stream from {self.name} ended without its end marker ([DONE])",
                status=200, provider=self.name,
            )
        if acc.usage is not None:
            yield UsageEvent(acc.usage)
        yield StreamEnd(acc.response(self, time.perf_counter() - started))


def _arguments(raw: Any) -> str:
    if raw is None:
        return "{}"
    if isinstance(raw, str):
        return raw or "{}"
    return json.dumps(raw)  # some servers send an object instead of a JSON string


class _Accumulator:
    """Builds the final answer from chunks, tolerating every known tool-call variant."""

    __slots__ = ("calls", "finish", "id", "last_index", "model", "reasoning", "text", "usage")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, list[str]] = {}  # index -> [id, name, args...]
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.id = ""
        self.model = ""
        self.last_index = -1

    def feed(self, chunk: Any) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if not isinstance(chunk, dict):
            return out
        if not self.id:
            self.id = str(chunk.get("id") or "")
            self.model = str(chunk.get("model") or "")
        usage = _usage(chunk.get("usage"))
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            usage = usage or _usage(choice.get("usage"))  # Moonshot puts it in the choice
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.text.append(content)
                out.append(TextDelta(content))
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                self.reasoning.append(reasoning)
                out.append(ReasoningDelta(reasoning))
            for frag in delta.get("tool_calls") or ():
                out.append(self._tool_fragment(frag))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        if usage is not None:
            self.usage = usage
        return out

    def _tool_fragment(self, frag: dict[str, Any]) -> ToolCallDelta:
        fn = frag.get("function") or {}
        call_id = frag.get("id")
        index = frag.get("index")
        if index is None or (call_id and index in self.calls and self.calls[index][0]
                             and self.calls[index][0] != call_id):
            # Null index (Moonshot/Gemini) or index 0 reused for a new call: a new id opens
            # a new slot; a fragment without id continues the last one.
            index = (max(self.calls) + 1 if self.calls else 0) if call_id else self.last_index
            index = max(index, 0)
        slot = self.calls.setdefault(index, ["", ""])
        if call_id and not slot[0]:
            slot[0] = call_id
        name = fn.get("name")
        if name and not slot[1]:
            slot[1] = name
        args = _arguments(fn["arguments"]) if isinstance(fn.get("arguments"), dict) else (
            fn.get("arguments") or "")
        if args:
            slot.append(args)
        self.last_index = index
        return ToolCallDelta(index=index, id=call_id, name=name, arguments=args)

    def response(self, provider: OpenAICompatProvider, latency: float) -> ChatResponse:
        calls = [
            ToolCall(id=slot[0] or f"call_{i}", name=slot[1], arguments="".join(slot[2:]) or "{}")
            for i, slot in sorted(self.calls.items())
        ]
        return ChatResponse(
            text="".join(self.text),
            tool_calls=calls,
            finish_reason=finish_reason(self.finish, bool(calls)),
            usage=self.usage or Usage(),
            provider=provider.provider,
            model=self.model,
            latency_s=latency,
            raw_finish_reason=self.finish,
            reasoning="".join(self.reasoning) or None,
            id=self.id,
            channel=provider.name,
        )
