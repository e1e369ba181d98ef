"""Anthropic Messages adapter.

The system prompt is split out; tool calls become ``tool_use`` blocks and tool
results ``tool_result`` blocks in a user turn; a requested output schema becomes
a forced tool whose input is the JSON answer (returned as ``text``). Usage folds
cache reads and writes into ``input_tokens`` (Anthropic counts them apart).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from shoal import fastjson
from shoal.errors import MalformedResponse, ProviderError, StreamInterrupted
from shoal.providers.caching import gate_turn, plan_anthropic
from shoal.providers.claude_models import (
    check_claude_request,
    check_output_tool_schema,
    check_tool_schemas,
)
from shoal.providers.failures import (
    error_from_stream_payload,
    is_error_body,
)
from shoal.providers.foreign_turns import unsigned_tool_turn
from shoal.providers.http import HttpProvider, answer_events
from shoal.providers.profiles import ProviderProfile, profile_for, thinking_fields
from shoal.providers.sse import JSON_BODY
from shoal.types import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    Message,
    ReasoningDelta,
    ReasoningPart,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

__all__ = ["AnthropicProvider"]

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _usage(raw: Any, base: Usage | None = None) -> Usage:
    """Anthropic usage → shoal usage; values present in ``raw`` overwrite ``base``
    (message_delta usage is cumulative, not additive). Anthropic's ``input_tokens`` is
    the uncached part only: shoal's input is it + cache reads + cache writes, and
    ``cache_creation.ephemeral_1h_input_tokens`` is the 1-hour part of the writes."""
    u = Usage() if base is None else Usage(
        base.input_tokens, base.output_tokens, base.cached_input_tokens, 0,
        base.cache_write_tokens, base.cache_write_1h_tokens,
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
    return u


def _safe_usage(raw: Any) -> Usage | None:
    """The usage a malformed answer still reported, or None."""
    if not isinstance(raw, dict):
        return None
    try:
        return _usage(raw)
    except (TypeError, ValueError):
        return None


class AnthropicProvider(HttpProvider):
    """Messages API over one pooled aiohttp session."""

    default_provider = "anthropic"

    def _endpoint(self, base_url: str) -> str:
        return base_url + ("/messages" if base_url.endswith("/v1") else "/v1/messages")

    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        auth = {"anthropic-version": API_VERSION}
        if api_key:
            auth["x-api-key"] = api_key
        return auth

    # -- request ------------------------------------------------------------------------

    @property
    def profile(self) -> ProviderProfile:
        return profile_for(self.provider, "anthropic")

    @staticmethod
    def _messages(messages: list[Message], p: ProviderProfile
                  ) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
        system: list[Message] = []
        out: list[dict[str, Any]] = []
        for m in messages:
            if m.role == "system":
                system.append(m)
                continue
            if m.role == "tool":
                block: dict[str, Any] = {
                    "type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content,
                }
                if m.is_error is not None:
                    block["is_error"] = m.is_error  # False too, when the caller set it
                role, blocks = "user", [block]
            elif m.role == "assistant":
                role = "assistant"
                # Signed thinking blocks go back first, as they came (required on tool
                # turns while thinking is on; unsigned reasoning from another provider
                # cannot be sent, Anthropic would refuse it).
                blocks = _thinking_blocks(m) if p.reasoning_return == "signed_blocks" else []
                if m.content:
                    blocks.append({"type": "text", "text": m.content})
                for c in m.tool_calls:
                    try:
                        args = json.loads(c.arguments or "{}")
                    except ValueError:
                        args = {"_raw": c.arguments}
                    blocks.append({"type": "tool_use", "id": c.id, "name": c.name,
                                   "input": args})
            else:
                role, blocks = "user", [{"type": "text", "text": m.content}]
            if m.cache_control is not None and blocks:  # the breakpoint ends the message
                blocks[-1] = {**blocks[-1], "cache_control": m.cache_control.wire()}
            if out and out[-1]["role"] == role:
                out[-1]["content"].extend(blocks)  # the API wants alternating roles
            else:
                out.append({"role": role, "content": blocks})
        if any(m.cache_control is not None for m in system):  # blocks keep the breakpoints
            return [{"type": "text", "text": m.content}
                    | ({"cache_control": m.cache_control.wire()} if m.cache_control else {})
                    for m in system], out
        return "\n\n".join(m.content for m in system), out

    def payload(self, request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
        p = self.profile
        system, messages = self._messages(request.messages, p)
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            # Required by the API (PROVIDERS.md §2): a default when the caller set none.
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if system:
            body["system"] = system
        thinking = thinking_fields(p, request, model) if request.thinking is not None else {}
        thinking_on = thinking.get("thinking", {}).get("type") in ("enabled", "adaptive")
        if thinking_on and unsigned_tool_turn(messages):
            # A tool loop begun without thinking (another provider's turn, or thinking
            # off then): Anthropic refuses thinking here (providers/foreign_turns.py).
            thinking, thinking_on = {}, False
        tools = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            | ({"cache_control": t.cache_control.wire()} if t.cache_control else {})
            for t in request.tools
        ]
        choice = request.tool_choice
        forcing = check_claude_request(model, request)
        check_tool_schemas(request)
        if request.output_schema is not None and not forcing and (
                not request.tools or choice == "none"):
            # Nothing else may be called and the model refuses a forced output tool: the
            # native JSON-schema output instead (a JSON text answer, validated as usual).
            body["output_config"] = {"format": {"type": "json_schema",
                                                "schema": request.output_schema}}
            if request.tools:
                body["tool_choice"] = {"type": "none"}
        elif request.output_schema is not None:
            check_output_tool_schema(request)
            # The output tool is offered next to the caller's tools, so the model may call
            # those first. It is forced only when nothing else may be called (no tools, or
            # tool_choice "none": answer now), never while thinking (Anthropic refuses it).
            name = request.output_schema_name
            tools.append({
                "name": name,
                "description": "Give the final answer as this tool's input. Call it once "
                               "you have everything you need.",
                "input_schema": request.output_schema,
            })
            if (not request.tools or choice == "none") and (
                    p.force_tool_with_thinking or not thinking_on):
                body["tool_choice"] = {"type": "tool", "name": name}
            else:
                # With thinking on, "answer now" is tool_choice none: a JSON text answer,
                # validated locally like every other provider's.
                body["tool_choice"] = _tool_choice(choice or "auto")
        elif choice and request.tools:
            body["tool_choice"] = _tool_choice(choice)
        if tools:
            body["tools"] = tools
            if request.parallel_tool_calls is False:  # at most one call per answer
                picked = body.setdefault("tool_choice", {"type": "auto"})
                if picked["type"] != "none":  # none takes no other field
                    body["tool_choice"] = {**picked, "disable_parallel_tool_use": True}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = request.stop
        if "user_id" in request.metadata:
            body["metadata"] = {"user_id": request.metadata["user_id"]}
        config = thinking.pop("output_config", None)  # effort, next to a format
        body.update(thinking)
        if config is not None:
            body["output_config"] = {**body.get("output_config", {}), **config}
        if stream:
            body["stream"] = True
        if request.extra:
            body.update(request.extra)  # last, like the SDKs' extra_body
        plan_anthropic(body, model, request)  # cache breakpoints (providers/caching.py)
        return body

    # -- complete -----------------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, model: str) -> ChatResponse:
        return await self.complete_then(request, model=model, received=None)

    async def complete_then(self, request: ChatRequest, *, model: str,
                            received: Callable[[], None] | None) -> ChatResponse:
        started = time.perf_counter()
        payload = self.payload(request, model, stream=False)
        turn = await gate_turn(self, self._clock, payload, request)  # one cache writer
        try:
            body, raw = await self._post_json(request, payload, received)
            turn.began()
        finally:
            turn.end(ok=False)
        schema_tool = request.output_schema_name if request.output_schema is not None else None
        return self.parse(body, raw, started, schema_tool)

    def parse(self, body: Any, raw: bytes, started: float,
              schema_tool: str | None) -> ChatResponse:
        """A whole Messages answer (``started`` is its ``perf_counter`` start)."""
        if is_error_body(body):
            raise self._fail(200, raw.decode("utf-8", "replace"), {})
        try:
            text: list[str] = []
            reasoning: list[str] = []
            parts: list[ReasoningPart] = []
            calls: list[ToolCall] = []
            for block in body["content"]:
                kind = block.get("type")
                if kind == "text":
                    text.append(block.get("text", ""))
                elif kind == "tool_use":
                    args = tool_arguments(block.get("input"))
                    if block.get("name") == schema_tool:
                        text.append(args)
                    else:
                        calls.append(ToolCall(block["id"], block["name"], args))
                elif kind == "thinking":
                    reasoning.append(block.get("thinking", ""))
                    parts.append(ReasoningPart(block.get("thinking", ""),
                                               block.get("signature") or None))
                elif kind == "redacted_thinking":
                    parts.append(ReasoningPart(redacted=str(block.get("data", ""))))
            stop = body.get("stop_reason")
            return ChatResponse(
                text="".join(text), tool_calls=calls, finish_reason=_finish(stop, calls),
                usage=_usage(body.get("usage")), provider=self.provider,
                model=str(body.get("model", "")), latency_s=time.perf_counter() - started,
                raw_finish_reason=stop, reasoning="".join(reasoning) or None,
                id=str(body.get("id", "")), channel=self.name, reasoning_parts=tuple(parts),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            # The provider may still have billed it: keep a usage it reported.
            billed = _safe_usage(body.get("usage")) if isinstance(body, dict) else None
            raise MalformedResponse(
                f"{self.name} returned JSON without the message shape ({exc!r})", status=200,
                provider=self.name, body=raw.decode("utf-8", "replace"), usage=billed,
            ) from None

    # -- stream -------------------------------------------------------------------------

    async def stream(self, request: ChatRequest, *, model: str) -> AsyncIterator[StreamEvent]:
        """Deltas as they arrive. An ``error`` event (or any failure) before any output
        raises the provider's mapped error (``overloaded_error`` → Overloaded); after
        output began, a StreamInterrupted ``from`` it with the partial output. ``usage``
        on either is what message_start/message_delta reported before the failure."""
        started = time.perf_counter()
        schema_tool = request.output_schema_name if request.output_schema is not None else None
        st = _StreamState(schema_tool)
        payload = self.payload(request, model, stream=True)
        turn = await gate_turn(self, self._clock, payload, request)  # one cache writer
        try:
            async with contextlib.aclosing(self._sse(request, payload)) as events:
                async for event, data in events:
                    turn.began()
                    if event == JSON_BODY:  # a whole answer (a proxy ignored stream: true)
                        answer = self.parse(self._whole_body(data), data.encode(), started,
                                            schema_tool)
                        for out in answer_events(answer):
                            yield out
                        return
                    try:
                        obj = fastjson.loads(data)
                    except ValueError:
                        raise MalformedResponse(
                            f"{self.name} sent a stream event that is not JSON", status=200,
                            provider=self.name, body=data,
                        ) from None
                    kind = obj.get("type", event) if isinstance(obj, dict) else event
                    if kind == "error":
                        raise error_from_stream_payload(obj, provider=self.name, raw=data)
                    try:
                        outs = st.feed(kind, obj)
                    except (KeyError, TypeError, AttributeError, ValueError) as e:
                        raise MalformedResponse(
                            f"{self.name} sent a {kind or 'stream'} event of the wrong shape "
                            f"({e!r})", status=200, provider=self.name, body=data,
                        ) from None
                    for out in outs:
                        yield out
                    if st.stopped:
                        break
            if not st.stopped:
                raise StreamInterrupted(
                    f"stream from {self.name} ended without message_stop", status=200,
                    provider=self.name,
                )
        except ProviderError as exc:
            err = self._broken(exc, output_began=st.began(), partial_output=st.partial(),
                               usage=st.usage if st.usage_seen else None)
            if err is exc:
                raise
            raise err from exc
        finally:
            turn.end(ok=False)
        yield UsageEvent(st.usage)
        calls = [ToolCall(b[0], b[1], _same_as_whole(b[2:])) for b in st.tools.values()]
        yield StreamEnd(ChatResponse(
            text=st.final_text(), tool_calls=calls, finish_reason=_finish(st.stop, calls),
            usage=st.usage,
            provider=self.provider, model=st.model, latency_s=time.perf_counter() - started,
            raw_finish_reason=st.stop, reasoning="".join(st.reasoning) or None, id=st.id,
            channel=self.name, reasoning_parts=st.reasoning_parts(),
        ))


def _tool_choice(choice: str) -> dict[str, Any]:
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    return {"type": "tool", "name": choice}


def _thinking_blocks(m: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in m.reasoning_parts:
        if part.redacted is not None:
            blocks.append({"type": "redacted_thinking", "data": part.redacted})
        elif part.signature:
            blocks.append({"type": "thinking", "thinking": part.text,
                           "signature": part.signature})
    return blocks


def _finish(stop: str | None, calls: list[ToolCall]) -> FinishReason:
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


def _same_as_whole(pieces: list[str]) -> str:
    """Streamed ``partial_json`` pieces as the non-stream path would write them (kept as
    received when they are not JSON: the tool's validation reports that to the model)."""
    joined = "".join(pieces) or "{}"
    try:
        return tool_arguments(json.loads(joined))
    except ValueError:
        return joined


class _StreamState:
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
            self.usage = _usage(msg.get("usage"))
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
            self.usage = _usage(obj.get("usage"), self.usage)
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

    def final_text(self) -> str:
        """The answer's text, an output-tool answer written as the non-stream path would."""
        text = "".join(self.text)
        if not self.schema_pieces:
            return text
        raw = "".join(self.schema_pieces)
        return text.replace(raw, _same_as_whole(self.schema_pieces), 1)
