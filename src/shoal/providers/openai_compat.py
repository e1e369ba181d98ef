"""OpenAI-compatible Chat Completions adapter (OpenAI, DeepSeek, Kimi, GLM, MiniMax,
Gemini's compat endpoint, vLLM, Ollama, llama.cpp).

Sending is shaped by the channel's :mod:`shoal.providers.profiles` entry; parsing
(:mod:`shoal.providers.openai_answer`) tolerates every variant listed in PROVIDERS.md:
usage on a ``choices: []`` chunk, inside ``choices[0]`` or on the last content chunk;
tool-call fragments with null or repeated indices; whole arguments in one chunk;
``reasoning_content``/``reasoning``; blank lines and ``: keep-alive`` comments; an
unterminated ``[DONE]``, or none after the finish_reason. Finish reasons that end no
answer (DeepSeek's ``insufficient_system_resource``, Zhipu's ``network_error``) raise
the error they stand for (:func:`shoal.providers.failures.error_from_finish`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from shoal import fastjson
from shoal.errors import (
    BadRequest,
    MalformedResponse,
    ProviderError,
    RequestRefused,
    StreamInterrupted,
)
from shoal.providers.base import Prepared
from shoal.providers.caching import enter_gate, gate_key, plan_openai
from shoal.providers.failures import (
    error_from_finish,
    error_from_stream_payload,
    is_error_body,
)
from shoal.providers.foreign_turns import (
    FOREIGN_REASONING,
    GEMINI_SKIP_SIGNATURE,
    demands_reasoning,
)
from shoal.providers.http import HttpProvider, answer_events
from shoal.providers.openai_answer import (
    StreamState,
    finish_reason,
    logprobs_of,
    thought_signature,
    tool_arguments,
    usage_of,
)
from shoal.providers.profiles import (
    ProviderProfile,
    check_gemini_thinking,
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
    Message,
    StreamEnd,
    StreamEvent,
    ToolCall,
    ToolSpec,
    Usage,
    UsageEvent,
)

__all__ = ["OpenAICompatProvider"]

# JSON mode without a schema where the provider has no JSON mode on the wire (MiniMax):
# the prompt is all there is to carry it.
# OpenAI's API reference: "stop: up to 4 sequences"; a fifth is a 400 ("array too long").
OPENAI_MAX_STOP = 4
JSON_NOTE = "Give your final answer as a single JSON object, with no other text."


class OpenAICompatProvider(HttpProvider):
    """Chat Completions over one pooled aiohttp session."""

    default_provider = "openai"
    cache_protocol = "openai"

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
            content = m.content
            if m.is_error and not content.lstrip().lower().startswith("error"):
                # OpenAI has no is_error: the result says it failed (an Anthropic client's
                # tool_result with is_error), so the model does not take it as data.
                content = "Error: " + content
            return {"role": "tool", "tool_call_id": m.tool_call_id, "content": content}
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
        json_mode = schema is None and request.json_mode
        if schema is not None and p.output_mode in ("json_object", "prompt"):
            messages = _with_note(messages, schema_instructions(schema))
        elif json_mode and p.output_mode == "prompt":
            messages = _with_note(messages, JSON_NOTE)
        if p.single_system:
            systems = [m["content"] for m in messages if m["role"] == "system"]
            if len(systems) > 1:
                rest = [m for m in messages if m["role"] != "system"]
                messages = [{"role": "system", "content": "\n\n".join(systems)}, *rest]
        body: dict[str, Any] = {"model": model, "messages": messages}
        if request.tools and _offers_tools(p, request.tool_choice):
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
            fmt = _response_format(p, request.output_schema_name, schema,
                                   strict=request.output_strict)
            if fmt is not None:
                body["response_format"] = fmt
        elif json_mode and p.output_mode != "prompt":
            # JSON mode as asked, without a schema: every OpenAI-style JSON mode takes
            # it (DeepSeek's is the only structured output it has; llama.cpp's grammar
            # then allows any object). Like OpenAI, most want "json" in the prompt: the
            # caller's to write, as it would be calling the provider directly; where the
            # provider refuses it without, refused here first.
            _check_json_word(p, messages)
            body["response_format"] = {"type": "json_object"}
        check_sampling(p, model, request)
        if request.logprobs is not None:
            body.update(_logprobs(p, request.logprobs, thinking=demanded))
        if request.temperature is not None:
            body["temperature"] = request.temperature
        elif p.default_temperature is not None:
            body["temperature"] = p.default_temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            body[p.max_tokens_field] = request.max_tokens
        if request.stop:
            if p.family == "openai" and len(request.stop) > OPENAI_MAX_STOP:
                raise BadRequest(
                    f"OpenAI takes at most {OPENAI_MAX_STOP} stop sequences, got "
                    f"{len(request.stop)} (stop, or stop_sequences from an Anthropic "
                    f"client); send {OPENAI_MAX_STOP} or fewer", code="invalid_request",
                    param="stop")
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        if request.thinking is not None:
            body.update(thinking_fields(p, request, model))
        if stream:
            body["stream"] = True
            if p.stream_usage_option:
                body["stream_options"] = {"include_usage": True}
        if request.extra:
            body.update(request.extra)  # last, like the SDKs' extra_body
        check_gemini_thinking(p, body, request)  # however thinking was asked for
        plan_openai(body, request, self.provider)  # prompt_cache_key (providers/caching.py)
        return body

    # -- complete -----------------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, model: str) -> ChatResponse:
        return await self.complete_then(request, model=model, received=None)

    def prepare(self, request: ChatRequest, *, model: str) -> Prepared:
        payload = self.payload(request, model, stream=False)
        return self._prepared(request, model, payload)

    async def send(self, prepared: Prepared, *,
                   received: Callable[[], object] | None) -> ChatResponse:
        started = time.perf_counter()
        _, body, raw = await self._post_json(prepared, received)
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
                    arguments=tool_arguments(c["function"].get("arguments")),
                    signature=thought_signature(c),
                )
                for i, c in enumerate(msg.get("tool_calls") or [])
            ]
            raw_finish = choice.get("finish_reason")
            usage = usage_of(body.get("usage")) or usage_of(choice.get("usage")) or Usage()
            failed = error_from_finish(raw_finish, provider=self.name, usage=usage,
                                       body=raw.decode("utf-8", "replace"))
            if failed is not None:
                raise failed
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
                logprobs=logprobs_of(choice.get("logprobs")),
            )
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            # The provider may still have billed it: keep a usage it reported.
            billed = usage_of(body.get("usage")) if isinstance(body, dict) else None
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
        acc = StreamState()
        done = False
        payload = self.payload(request, model, stream=True)
        turn = await enter_gate(self, self._clock,  # one cache writer per shared prefix
                                gate_key(payload, request, self.cache_protocol))
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
            if not done and acc.finish is None:
                # Without [DONE] a stream is whole once a finish_reason came (the SDKs
                # read to the end of the body, [DONE] or not); without either it was cut.
                raise StreamInterrupted(
                    f"stream from {self.name} ended without a finish_reason or its end "
                    "marker ([DONE])", status=200, provider=self.name,
                )
            failed = error_from_finish(acc.finish, provider=self.name, usage=acc.usage)
            if failed is not None:
                raise failed
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
        yield StreamEnd(acc.response(self.provider, self.name,
                                     time.perf_counter() - started))


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


def _response_format(p: ProviderProfile, name: str, schema: dict[str, Any], *,
                     strict: bool) -> dict[str, Any] | None:
    """``strict``: strict mode where the profile takes it and the schema fits (False:
    the schema goes as it is, non-strict, as a caller that said ``strict: false``
    asked)."""
    mode = p.output_mode
    if mode == "json_schema":
        fixed = strict_schema(schema) if strict and p.strict_schema else None
        spec: dict[str, Any] = {"name": name, "schema": schema if fixed is None else fixed}
        if fixed is not None:
            spec["strict"] = True
        return {"type": "json_schema", "json_schema": spec}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": schema}
    if mode == "json_object":
        return {"type": "json_object"}
    return None  # "prompt": the schema is in the prompt only


def _offers_tools(p: ProviderProfile, choice: str | None) -> bool:
    """Whether the request's tools go out: not for tool_choice "none" where the provider
    takes no tool_choice (offering them there lets the model call one anyway); a choice
    such a provider cannot honour (a required or named tool) is a RequestRefused first."""
    if p.tool_choice == "all" or choice in (None, "auto"):
        return True
    if choice == "none":
        return False
    takes = "only tool_choice='auto'" if p.tool_choice == "auto_only" else "no tool_choice"
    raise RequestRefused(
        f"provider family {p.family!r} takes {takes}, so it cannot be made to call "
        f"{'a tool' if choice == 'required' else f'tool {choice!r}'} (tool_choice="
        f"{choice!r}); leave tool_choice unset (or 'auto'), or use a model served by a "
        "provider that can force a tool call (OpenAI, Anthropic, DeepSeek, Gemini)",
        param="tool_choice")


def _check_json_word(p: ProviderProfile, messages: list[dict[str, Any]]) -> None:
    """JSON mode where the provider wants the word "json" in the prompt: a BadRequest
    here when it is missing, not the provider's 400 after a round trip."""
    if not p.json_word:
        return
    roles = ("system", "user") if p.json_word == "prompt" else None
    for m in messages:
        if roles is not None and m.get("role") not in roles:
            continue
        content = m.get("content")
        for part in content if isinstance(content, list) else [content]:
            text = part.get("text") if isinstance(part, dict) else part
            if isinstance(text, str) and "json" in text.lower():
                return
    where = "a system or user message" if roles else "the messages"
    raise BadRequest(
        f"JSON mode (json_mode=True) on {p.family} needs the word \"json\" in {where}; "
        f"the provider refuses it otherwise. Say it in the prompt, e.g. \"Answer in JSON "
        f"with the keys ...\", or pass an output schema", code="invalid_request",
        param="messages")


def _logprobs(p: ProviderProfile, top: int, *, thinking: bool) -> dict[str, Any]:
    """``logprobs`` (and ``top_logprobs`` alternatives when ``top`` > 0), or a
    RequestRefused before any request where the provider returns none (``thinking``: the
    request runs in the provider's thinking mode)."""
    if thinking and p.family == "deepseek":  # its reasoning-model guide: "会报错" (a 400)
        raise RequestRefused(
            "DeepSeek refuses logprobs and top_logprobs in thinking mode (the default on "
            "deepseek-reasoner and deepseek-v4 models); switch thinking off with "
            "thinking=Thinking(enabled=False), or leave logprobs unset", param="logprobs")
    if not p.logprobs:
        raise RequestRefused(
            f"provider family {p.family!r} does not return log probabilities (logprobs); "
            "leave logprobs unset for it, or use a model served by a provider that returns "
            "them (OpenAI, DeepSeek, Gemini, OpenRouter, vLLM, llama.cpp)", param="logprobs")
    return {"logprobs": True, "top_logprobs": top} if top else {"logprobs": True}


def _with_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    """State ``note`` (the schema, or JSON mode) in the system prompt unless it is there
    already (agents put it there): JSON mode needs the word "json" and the shape in the
    prompt (trap 12)."""
    if any(m["role"] == "system" and note in (m["content"] or "") for m in messages):
        return messages
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{note}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]
