"""OpenAI-compatible Chat Completions adapter (OpenAI, DeepSeek, Kimi, GLM, MiniMax,
Gemini's compat endpoint, vLLM, Ollama, llama.cpp).

Sending is shaped by the channel's :mod:`shoal.providers.profiles` entry; parsing
tolerates every variant listed in PROVIDERS.md: usage on a ``choices: []`` chunk,
inside ``choices[0]`` or on the last content chunk; tool-call fragments with null or
repeated indices; whole arguments in one chunk; ``reasoning_content``/``reasoning``; blank lines and
``: keep-alive`` comments; an unterminated ``[DONE]``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from shoal import fastjson
from shoal.errors import MalformedResponse, ProviderError, StreamInterrupted
from shoal.providers.caching import gate_turn, plan_openai
from shoal.providers.failures import (
    error_from_stream_payload,
    is_error_body,
)
from shoal.providers.foreign_turns import (
    FOREIGN_REASONING,
    GEMINI_SKIP_SIGNATURE,
    demands_reasoning,
)
from shoal.providers.http import HttpProvider, answer_events
from shoal.providers.profiles import (
    ProviderProfile,
    check_sampling,
    profile_for,
    schema_instructions,
    strict_schema,
    thinking_fields,
)
from shoal.providers.sse import JSON_BODY
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
    ToolSpec,
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


def finish_reason(raw: str | None, has_tool_calls: bool,
                  refused: bool = False) -> FinishReason:
    """Decide from what arrived: accumulated tool calls win over the provider's label,
    except a cut ("length"): the calls' arguments may then be incomplete. A refusal
    (``message.refusal``) without calls is ``content_filter``."""
    if refused and not has_tool_calls:
        return "content_filter"
    mapped = "stop" if raw is None else _FINISH.get(raw, "other")
    if has_tool_calls and mapped != "length":
        return "tool_calls"
    return mapped


def _count(raw: Any) -> int:
    try:
        return int(raw or 0)
    except (TypeError, ValueError):
        return 0


def _usage(raw: Any) -> Usage | None:
    """Chat Completions usage → shoal usage. Cache reads come as OpenAI's
    ``prompt_tokens_details.cached_tokens`` (⊂ prompt), DeepSeek's
    ``prompt_cache_hit_tokens`` (hit + miss = prompt) or Gemini's cached-content count."""
    if not isinstance(raw, dict):
        return None
    prompt = _count(raw.get("prompt_tokens"))
    completion = _count(raw.get("completion_tokens"))
    details = raw.get("prompt_tokens_details") or {}
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    if not cached:
        hit = _count(raw.get("prompt_cache_hit_tokens"))  # DeepSeek
        cached = hit or _count(raw.get("cached_content_token_count")
                               or raw.get("cachedContentTokenCount"))  # Gemini, native names
        if not prompt and hit:
            prompt = hit + _count(raw.get("prompt_cache_miss_tokens"))
    cached = min(cached, prompt) if prompt else cached
    cdetails = raw.get("completion_tokens_details") or {}
    reasoning = _count(cdetails.get("reasoning_tokens")) if isinstance(cdetails, dict) else 0
    return Usage(prompt, completion, cached, reasoning)


class OpenAICompatProvider(HttpProvider):
    """Chat Completions over one pooled aiohttp session."""

    default_provider = "openai"

    def _endpoint(self, base_url: str) -> str:
        return base_url + "/chat/completions"

    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @property
    def profile(self) -> ProviderProfile:
        return profile_for(self.provider, "openai")

    # -- request ------------------------------------------------------------------------

    def _message(self, m: Message, p: ProviderProfile, demanded: bool) -> dict[str, Any]:
        """``demanded``: the request runs where tool turns must carry their reasoning or
        signature (providers/foreign_turns.py fills in what another provider's lack)."""
        if m.role == "tool":
            return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
        out: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.role == "assistant":
            if m.tool_calls:
                calls = out["tool_calls"] = [_wire_call(c, p) for c in m.tool_calls]
                if not m.content and p.tool_turn_content == "null":
                    out["content"] = None  # else "": see ProviderProfile.tool_turn_content
                if demanded and p.reasoning_return == "thought_signatures" and \
                        "extra_content" not in calls[0]:
                    calls[0]["extra_content"] = {
                        "google": {"thought_signature": GEMINI_SKIP_SIGNATURE}}
            if m.tool_calls and p.reasoning_return == "tool_turns" and (
                    m.reasoning or demanded):
                out[p.reasoning_field] = m.reasoning or FOREIGN_REASONING
        return out

    def payload(self, request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
        p = self.profile
        demanded = demands_reasoning(p, model, request)
        messages = [self._message(m, p, demanded) for m in request.messages]
        schema = request.output_schema
        if schema is not None and p.output_mode in ("json_object", "prompt"):
            messages = _with_schema_prompt(messages, schema)
        if p.single_system:
            systems = [m["content"] for m in messages if m["role"] == "system"]
            if len(systems) > 1:
                rest = [m for m in messages if m["role"] != "system"]
                messages = [{"role": "system", "content": "\n\n".join(systems)}, *rest]
        body: dict[str, Any] = {"model": model, "messages": messages}
        if request.tools:
            body["tools"] = [_wire_tool(t, p) for t in request.tools]
            choice = request.tool_choice
            if choice and (p.tool_choice == "all"
                           or (p.tool_choice == "auto_only" and choice == "auto")):
                body["tool_choice"] = (
                    choice if choice in ("auto", "none", "required")
                    else {"type": "function", "function": {"name": choice}}
                )
            if request.parallel_tool_calls is not None and p.parallel_switch:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        if schema is not None:
            fmt = _response_format(p, request.output_schema_name, schema)
            if fmt is not None:
                body["response_format"] = fmt
        check_sampling(p, model, request)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        elif p.default_temperature is not None:
            body["temperature"] = p.default_temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            body[p.max_tokens_field] = request.max_tokens
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        if request.thinking is not None:
            body.update(thinking_fields(p, request))
        if stream:
            body["stream"] = True
            if p.stream_usage_option:
                body["stream_options"] = {"include_usage": True}
        if request.extra:
            body.update(request.extra)  # last, like the SDKs' extra_body
        plan_openai(body, request, self.provider)  # prompt_cache_key (providers/caching.py)
        return body

    # -- complete -----------------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, model: str) -> ChatResponse:
        return await self.complete_then(request, model=model, received=None)

    async def complete_then(self, request: ChatRequest, *, model: str,
                            received: Callable[[], None] | None) -> ChatResponse:
        started = time.perf_counter()
        payload = self.payload(request, model, stream=False)
        turn = await gate_turn(self, self._clock, payload, request, "openai")  # one writer
        try:
            body, raw = await self._post_json(request, payload, received)
            turn.began()
        finally:
            turn.end(ok=False)
        return self.parse(body, raw, time.perf_counter() - started)

    def parse(self, body: Any, raw: bytes, latency: float) -> ChatResponse:
        if is_error_body(body):
            raise self._fail(200, raw.decode("utf-8", "replace"), {})
        try:
            choice = body["choices"][0]
            msg = choice["message"]
            calls = [
                ToolCall(
                    id=c.get("id") or f"call_{i}",
                    name=c["function"]["name"],
                    arguments=_arguments(c["function"].get("arguments")),
                    signature=_thought_signature(c),
                )
                for i, c in enumerate(msg.get("tool_calls") or [])
            ]
            raw_finish = choice.get("finish_reason")
            usage = _usage(body.get("usage")) or _usage(choice.get("usage")) or Usage()
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            refusal = msg.get("refusal") if isinstance(msg.get("refusal"), str) else None
            return ChatResponse(
                text=msg.get("content") or "",
                tool_calls=calls,
                finish_reason=finish_reason(raw_finish, bool(calls), bool(refusal)),
                refusal=refusal or None,
                usage=usage,
                provider=self.provider,
                model=str(body.get("model", "")),
                latency_s=latency,
                raw_finish_reason=raw_finish,
                reasoning=reasoning or None,
                id=str(body.get("id", "")),
                channel=self.name,
            )
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            # The provider may still have billed it: keep a usage it reported.
            billed = _usage(body.get("usage")) if isinstance(body, dict) else None
            raise MalformedResponse(
                f"{self.name} returned JSON without the chat.completion shape ({exc!r})",
                status=200, provider=self.name, body=raw.decode("utf-8", "replace"),
                usage=billed,
            ) from None

    # -- stream -------------------------------------------------------------------------

    async def stream(self, request: ChatRequest, *, model: str) -> AsyncIterator[StreamEvent]:
        """Deltas as they arrive. An error before any output raises the provider's mapped
        error; after output began, a StreamInterrupted (``from`` that error) with the
        partial output; ``usage`` on either is what the provider reported before it."""
        started = time.perf_counter()
        acc = _Accumulator()
        done = False
        payload = self.payload(request, model, stream=True)
        turn = await gate_turn(self, self._clock, payload, request, "openai")  # one writer
        try:
            async with contextlib.aclosing(self._sse(request, payload)) as events:
                async for event, data in events:
                    turn.began()
                    if event == JSON_BODY:  # a whole answer (a proxy ignored stream: true)
                        body = self._whole_body(data)
                        answer = self.parse(body, data.encode(), time.perf_counter() - started)
                        for out in answer_events(answer):
                            yield out
                        return
                    if data.startswith("[DONE]"):
                        done = True
                        break
                    try:
                        chunk = fastjson.loads(data)
                    except ValueError:
                        if event == "error":  # old llama.cpp `error:` line with plain text
                            raise error_from_stream_payload(
                                {"error": {"message": data}}, provider=self.name, raw=data,
                            ) from None
                        raise MalformedResponse(
                            f"{self.name} sent a stream chunk that is not JSON", status=200,
                            provider=self.name, body=data,
                        ) from None
                    if event == "error" or is_error_body(chunk):  # §6.6, §6.7 envelopes
                        raise error_from_stream_payload(chunk, provider=self.name, raw=data)
                    try:
                        outs = acc.feed(chunk)
                    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
                        raise MalformedResponse(
                            f"{self.name} sent a stream chunk of the wrong shape ({e!r})",
                            status=200, provider=self.name, body=data,
                        ) from None
                    for out in outs:
                        yield out
            if not done:
                raise StreamInterrupted(
                    f"stream from {self.name} ended without its end marker ([DONE])",
                    status=200, provider=self.name,
                )
        except ProviderError as exc:
            err = self._broken(exc, output_began=acc.began(), partial_output=acc.partial(),
                               usage=acc.usage)
            if err is exc:
                raise
            raise err from exc
        finally:
            turn.end(ok=False)
        if acc.usage is not None:
            yield UsageEvent(acc.usage)
        yield StreamEnd(acc.response(self, time.perf_counter() - started))


def _wire_tool(tool: ToolSpec, p: ProviderProfile) -> dict[str, Any]:
    """A tool definition; ``strict`` where the profile takes it (OpenAI) and the schema
    fits strict mode, with ``additionalProperties: false`` added where it is missing."""
    fn: dict[str, Any] = {"name": tool.name, "description": tool.description,
                          "parameters": tool.parameters}
    if tool.strict and p.strict_schema:
        fixed = strict_schema(tool.parameters)
        if fixed is not None:
            fn["parameters"], fn["strict"] = fixed, True
    return {"type": "function", "function": fn}


def _wire_call(call: ToolCall, p: ProviderProfile) -> dict[str, Any]:
    out: dict[str, Any] = {"id": call.id, "type": "function",
                           "function": {"name": call.name, "arguments": call.arguments}}
    if call.signature and p.reasoning_return == "thought_signatures":
        out["extra_content"] = {"google": {"thought_signature": call.signature}}
    return out


def _response_format(p: ProviderProfile, name: str, schema: dict[str, Any]
                     ) -> dict[str, Any] | None:
    mode = p.output_mode
    if mode == "json_schema":
        strict = strict_schema(schema) if p.strict_schema else None
        spec: dict[str, Any] = {"name": name, "schema": schema if strict is None else strict}
        if strict is not None:
            spec["strict"] = True
        return {"type": "json_schema", "json_schema": spec}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": schema}
    if mode == "json_object":
        return {"type": "json_object"}
    return None  # "prompt": the schema is in the prompt only


def _with_schema_prompt(messages: list[dict[str, Any]], schema: dict[str, Any]
                        ) -> list[dict[str, Any]]:
    """State the schema in the system prompt unless it is there already (agents put it
    there): JSON mode needs the word "json" and the shape in the prompt (trap 12)."""
    note = schema_instructions(schema)
    if any(m["role"] == "system" and note in (m["content"] or "") for m in messages):
        return messages
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{note}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def _thought_signature(obj: Any) -> str | None:
    """Gemini's ``extra_content.google.thought_signature`` on a tool call or delta."""
    extra = obj.get("extra_content") if isinstance(obj, dict) else None
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def _arguments(raw: Any) -> str:
    if raw is None:
        return "{}"
    if isinstance(raw, str):
        return raw or "{}"
    return json.dumps(raw)  # some servers send an object instead of a JSON string


class _Accumulator:
    """Builds the final answer from chunks, tolerating every known tool-call variant."""

    __slots__ = ("calls", "finish", "id", "last_index", "model", "reasoning", "refusal",
                 "signatures", "text", "usage")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []  # OpenAI's delta.refusal pieces
        self.calls: dict[int, list[str]] = {}  # index -> [id, name, args...]
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.id = ""
        self.model = ""
        self.last_index = -1
        self.signatures: dict[int, str] = {}  # index -> Gemini thought_signature

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
            if content and isinstance(content, str):
                self.text.append(content)
                out.append(TextDelta(content))
            refusal = delta.get("refusal")
            if refusal and isinstance(refusal, str):  # kept for the answer, not a delta
                self.refusal.append(refusal)
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                self.reasoning.append(reasoning)
                out.append(ReasoningDelta(reasoning))
            for frag in delta.get("tool_calls") or ():
                out.append(self._tool_fragment(frag))
            signature = _thought_signature(delta)  # Gemini sometimes puts it on the delta
            if signature and self.last_index >= 0:
                self.signatures.setdefault(self.last_index, signature)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        if usage is not None:
            self.usage = usage
        return out

    def began(self) -> bool:
        """Whether any output (text, reasoning, a tool call) was yielded."""
        return bool(self.text or self.reasoning or self.calls)

    def partial(self) -> str:
        """The output received so far: text, reasoning and tool-argument text."""
        args = "".join("".join(slot[2:]) for slot in self.calls.values())
        return "".join(self.text) + "".join(self.reasoning) + args

    def _tool_fragment(self, frag: dict[str, Any]) -> ToolCallDelta:
        fn = frag.get("function") or {}
        call_id = frag.get("id")
        index = frag.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = None  # only an integer index places a fragment
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
        raw_args = fn.get("arguments")
        args = raw_args if isinstance(raw_args, str) else (
            _arguments(raw_args) if raw_args is not None else "")
        if args:
            slot.append(args)
        signature = _thought_signature(frag)
        if signature:
            self.signatures[index] = signature
        self.last_index = index
        return ToolCallDelta(index=index, id=call_id, name=name, arguments=args)

    def response(self, provider: OpenAICompatProvider, latency: float) -> ChatResponse:
        calls = [
            ToolCall(id=slot[0] or f"call_{i}", name=slot[1], arguments="".join(slot[2:]) or "{}",
                     signature=self.signatures.get(i))
            for i, slot in sorted(self.calls.items())
        ]
        refusal = "".join(self.refusal) or None
        return ChatResponse(
            text="".join(self.text),
            tool_calls=calls,
            finish_reason=finish_reason(self.finish, bool(calls), refusal is not None),
            refusal=refusal,
            usage=self.usage or Usage(),
            provider=provider.provider,
            model=self.model,
            latency_s=latency,
            raw_finish_reason=self.finish,
            reasoning="".join(self.reasoning) or None,
            id=self.id,
            channel=provider.name,
        )
