"""Anthropic Messages adapter.

The system prompt is split out; tool calls become ``tool_use`` blocks and tool
results ``tool_result`` blocks in a user turn; a requested output schema becomes
a forced tool whose input is the JSON answer (returned as ``text``). Usage folds
cache reads and writes into ``input_tokens`` (Anthropic counts them apart).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, cast

from shoal import fastjson
from shoal.errors import (
    BadRequest,
    MalformedResponse,
    ProviderError,
    RequestRefused,
    StreamInterrupted,
)
from shoal.providers.anthropic_answer import (
    StreamState,
    finish_of,
    refusal_of,
    safe_usage,
    text_or_none,
    tool_arguments,
    usage_of,
)
from shoal.providers.anthropic_long import cut_error, fold_events, streams_whole
from shoal.providers.base import Prepared
from shoal.providers.caching import enter_gate, gate_key, plan_anthropic
from shoal.providers.claude_models import (
    check_claude_request,
    check_output_tool_schema,
    check_thinking_body,
    check_tool_schemas,
    thinking_on,
)
from shoal.providers.failures import (
    error_from_stream_payload,
    error_from_transport,
    is_error_body,
    transport_errors,
)
from shoal.providers.foreign_turns import unsigned_tool_turn
from shoal.providers.http import HttpProvider, answer_events, hand_off
from shoal.providers.profiles import ProviderProfile, profile_for, thinking_fields
from shoal.providers.sse import JSON_BODY, iter_sse
from shoal.types import (
    ChatRequest,
    ChatResponse,
    Message,
    ReasoningPart,
    StreamEnd,
    StreamEvent,
    ToolCall,
    UsageEvent,
)

__all__ = ["AnthropicProvider"]

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
# Anthropic has no JSON mode. What JSON mode promises is one JSON object of any shape,
# and an open object schema through Anthropic's structured output (the output tool, or
# output_config where forcing a tool is refused) promises exactly that, no more: the
# faithful translation of a json_mode request (OpenAI's json_object).
OPEN_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}


def _empty(index: int, what: str) -> BadRequest:
    return BadRequest(f"messages[{index}]: {what}", code="invalid_request",
                      param=f"messages[{index}]")


def _schema_for_json_mode(request: ChatRequest) -> ChatRequest:
    if request.json_mode and request.output_schema is None:
        return dataclasses.replace(request, output_schema=dict(OPEN_OBJECT))
    return request


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
        for i, m in enumerate(messages):
            if m.role == "system":
                if m.cache_control is not None and not m.content:
                    raise _empty(i, "an empty system message cannot carry cache_control")
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
                if not blocks:
                    # An empty turn (a model that ended without text, replayed by an
                    # agent): Anthropic refuses empty content, and leaving the turn out
                    # says the same, the user turns around it merged.
                    continue
            else:
                if not m.content:
                    raise _empty(i, "a user message needs text (Anthropic refuses empty "
                                    "content); drop it or give it text")
                role, blocks = "user", [{"type": "text", "text": m.content}]
            if m.cache_control is not None and blocks:  # the breakpoint ends the message
                blocks[-1] = {**blocks[-1], "cache_control": m.cache_control.wire()}
            if out and out[-1]["role"] == role:
                out[-1]["content"].extend(blocks)  # the API wants alternating roles
            else:
                out.append({"role": role, "content": blocks})
        if not out:
            raise BadRequest(
                "Anthropic needs a user message besides the system prompt; add one "
                "(Message.user(...))", code="invalid_request", param="messages")
        if any(m.cache_control is not None for m in system):  # blocks keep the breakpoints
            return [{"type": "text", "text": m.content}
                    | ({"cache_control": m.cache_control.wire()} if m.cache_control else {})
                    for m in system], out
        return "\n\n".join(m.content for m in system), out

    def payload(self, request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
        p = self.profile
        if request.logprobs is not None:
            raise RequestRefused(
                "Anthropic's Messages API returns no log probabilities; leave logprobs unset "
                "for Claude models, or use a model served by a provider that returns them",
                param="logprobs")
        request = _schema_for_json_mode(request)
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
        # Thinking asked for in extra (merged last) is as on as Thinking's own.
        thinks = thinking_on(thinking) or thinking_on(request.extra)
        if thinks and unsigned_tool_turn(messages):
            # A tool loop begun without thinking (another provider's turn, or thinking
            # off then): Anthropic refuses thinking here (providers/foreign_turns.py).
            thinking, thinks = {}, False
        tools = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            | ({"strict": True} if t.strict else {})
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
                    p.force_tool_with_thinking or not thinks):
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
        if request.cache_control is not None:  # automatic mode: shoal places none of its own
            body["cache_control"] = request.cache_control.wire()
        if stream:
            body["stream"] = True
        if request.extra:
            body.update(request.extra)  # last, like the SDKs' extra_body
        check_thinking_body(model, body)  # however thinking was asked for
        plan_anthropic(body, model, request)  # cache breakpoints (providers/caching.py)
        return body

    # -- complete -----------------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, model: str) -> ChatResponse:
        return await self.complete_then(request, model=model, received=None)

    def prepare(self, request: ChatRequest, *, model: str) -> Prepared:
        request = _schema_for_json_mode(request)
        payload = self.payload(request, model, stream=False)
        if streams_whole(model, payload.get("max_tokens")):
            payload["stream"] = True  # too long to wait for whole (providers/anthropic_long.py)
        return self._prepared(request, model, payload)

    async def send(self, prepared: Prepared, *,
                   received: Callable[[], object] | None) -> ChatResponse:
        started = time.perf_counter()
        if prepared.payload is None or prepared.data is None:  # not made by our prepare()
            prepared = self.prepare(prepared.request, model=prepared.model)
        request = prepared.request
        schema_tool = request.output_schema_name if request.output_schema is not None else None
        if prepared.payload is not None and prepared.payload.get("stream") is True:
            return await self._send_streamed(prepared, received, started, schema_tool)
        prepared, body, raw = await self._post_json(prepared, received)
        return self.parse(body, raw, started, schema_tool)

    async def _send_streamed(self, prepared: Prepared, received: Callable[[], object] | None,
                             started: float, schema_tool: str | None) -> ChatResponse:
        """``send`` of a long answer asked for whole (:mod:`.anthropic_long`): POSTed with
        ``stream: true``, its events read to the end, then ``received()`` (the answer is
        read), then folded into the answer the whole body would have given. Errors are the
        non-stream path's: an error status is the same error; after the 200, a cut body is
        a ``MalformedResponse`` and an ``error`` event the error it names, each carrying
        what was billed."""
        sent = (prepared.payload or {}).get("max_tokens")
        max_tokens = sent if isinstance(sent, int) else DEFAULT_MAX_TOKENS
        events: list[tuple[str, str]] = []
        turn = await enter_gate(self, self._clock, prepared.gate)
        status = 0
        try:
            async with self._pool.session().post(
                self._url, data=prepared.data or fastjson.dumps(prepared.payload),
                headers=self._headers_for(prepared.request, stream=True),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                if not 200 <= status < 300:
                    text = (await resp.read()).decode("utf-8", "replace")
                    raise self._fail(status, text, resp.headers)
                kind = resp.headers.get("Content-Type", "")
                sse_events = cast(AsyncGenerator[tuple[str, str], None],  # it is one
                                  iter_sse(resp.content.iter_any(), whole_json="json" in kind,
                                           provider=self.name, content_type=kind,
                                           status=status))
                async with contextlib.aclosing(sse_events) as sse:
                    async for event, data in sse:
                        turn.began()  # an answer: the prefix is cached, waiters may go
                        events.append((event, data))
                        if event in ("message_stop", "error"):
                            break
        except transport_errors() as exc:
            err = error_from_transport(exc, provider=self.name, url=self._url, status=status)
            if not 200 <= status < 300:
                raise err from exc
            raise cut_error(err, events, provider=self.name, schema_tool=schema_tool,
                            max_tokens=max_tokens) from exc
        finally:
            turn.end(ok=False)
        await hand_off(received)  # as _post_json: the next call's request first
        if events and events[0][0] == JSON_BODY:  # a whole answer (a proxy ignored stream)
            data = events[0][1]
            return self.parse(self._whole_body(data), data.encode(), started, schema_tool)
        st = fold_events(events, schema_tool=schema_tool, provider=self.name,
                         max_tokens=max_tokens)
        return st.response(provider=self.provider, channel=self.name,
                           latency_s=time.perf_counter() - started)

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
                text="".join(text), tool_calls=calls, finish_reason=finish_of(stop, calls),
                usage=usage_of(body.get("usage")), provider=self.provider,
                model=str(body.get("model", "")), latency_s=time.perf_counter() - started,
                raw_finish_reason=stop, reasoning="".join(reasoning) or None,
                id=str(body.get("id", "")), channel=self.name, reasoning_parts=tuple(parts),
                stop_sequence=text_or_none(body.get("stop_sequence")),
                refusal=refusal_of(stop, "".join(text)),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            # The provider may still have billed it: keep a usage it reported.
            billed = safe_usage(body.get("usage")) if isinstance(body, dict) else None
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
        request = _schema_for_json_mode(request)
        schema_tool = request.output_schema_name if request.output_schema is not None else None
        st = StreamState(schema_tool)
        payload = self.payload(request, model, stream=True)
        turn = await enter_gate(self, self._clock,  # one cache writer per shared prefix
                                gate_key(payload, request, self.cache_protocol))
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
            if not st.stopped and st.stop is None:
                # Without message_stop a stream is whole once message_delta said why it
                # ended (with the final usage); without either it was cut.
                raise StreamInterrupted(
                    f"stream from {self.name} ended without a stop_reason or message_stop",
                    status=200, provider=self.name,
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
        yield StreamEnd(st.response(provider=self.provider, channel=self.name,
                                    latency_s=time.perf_counter() - started))


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
