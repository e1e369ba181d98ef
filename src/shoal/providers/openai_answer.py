"""What an OpenAI Chat Completions answer becomes in shoal's types: usage (every
provider's cache counts), the finish reason decided from what arrived, tool arguments,
Gemini's thought signatures, token log probabilities, and a stream's chunks folded into
one answer (:class:`StreamState`, tolerating every tool-call variant of PROVIDERS.md
trap 3). The adapter (:mod:`shoal.providers.openai_compat`) speaks the wire."""

from __future__ import annotations

import json
from typing import Any

from shoal.types import (
    ChatResponse,
    FinishReason,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = ["StreamState", "finish_reason", "logprobs_of", "thought_signature",
           "tool_arguments", "usage_of"]

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


def usage_of(raw: Any) -> Usage | None:
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
        if not prompt:  # hit + miss = prompt (a miss-only prompt is billed too)
            prompt = hit + _count(raw.get("prompt_cache_miss_tokens"))
    cached = min(cached, prompt) if prompt else cached
    cdetails = raw.get("completion_tokens_details") or {}
    reasoning = _count(cdetails.get("reasoning_tokens")) if isinstance(cdetails, dict) else 0
    return Usage(prompt, completion, cached, reasoning)


def thought_signature(obj: Any) -> str | None:
    """Gemini's ``extra_content.google.thought_signature`` on a tool call or delta."""
    extra = obj.get("extra_content") if isinstance(obj, dict) else None
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def tool_arguments(raw: Any) -> str:
    if raw is None:
        return "{}"
    if isinstance(raw, str):
        return raw or "{}"
    return json.dumps(raw)  # some servers send an object instead of a JSON string


def _token(raw: Any, top: bool) -> TokenLogprob | None:
    if not isinstance(raw, dict):
        return None
    token, logprob = raw.get("token"), raw.get("logprob")
    if not isinstance(token, str) or isinstance(logprob, bool) or not isinstance(
            logprob, int | float):
        return None
    data = raw.get("bytes")
    alternatives: tuple[TokenLogprob, ...] = ()
    if top:
        found = (_token(t, False) for t in raw.get("top_logprobs") or ())
        alternatives = tuple(t for t in found if t is not None)
    return TokenLogprob(token, float(logprob),
                        tuple(data) if isinstance(data, list) else None, alternatives)


def logprobs_of(raw: Any) -> tuple[TokenLogprob, ...] | None:
    """A choice's ``logprobs.content`` (None when the provider sent none); entries
    without a token and a number are skipped."""
    content = raw.get("content") if isinstance(raw, dict) else None
    if not isinstance(content, list):
        return None
    found = (_token(t, True) for t in content)
    return tuple(t for t in found if t is not None)


class StreamState:
    """Builds the final answer from chunks, tolerating every known tool-call variant."""

    __slots__ = ("calls", "finish", "id", "last_index", "logprobs", "model", "reasoning",
                 "refusal", "signatures", "text", "usage")

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
        self.logprobs: list[TokenLogprob] | None = None  # once a chunk carried some

    def feed(self, chunk: Any) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if not isinstance(chunk, dict):
            return out
        if not self.id:
            self.id = str(chunk.get("id") or "")
            self.model = str(chunk.get("model") or "")
        usage = usage_of(chunk.get("usage"))
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            usage = usage or usage_of(choice.get("usage"))  # Moonshot puts it in the choice
            delta = choice.get("delta") or {}
            content = delta.get("content")
            logprobs = logprobs_of(choice.get("logprobs"))
            if logprobs is not None:  # kept for the answer, and sent with their text
                if self.logprobs is None:
                    self.logprobs = []
                self.logprobs.extend(logprobs)
            if content and isinstance(content, str):
                self.text.append(content)
                out.append(TextDelta(content, logprobs=logprobs or ()))
            refusal = delta.get("refusal")
            if refusal and isinstance(refusal, str):  # kept for the answer, not a delta
                self.refusal.append(refusal)
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                self.reasoning.append(reasoning)
                out.append(ReasoningDelta(reasoning))
            for frag in delta.get("tool_calls") or ():
                out.append(self._tool_fragment(frag))
            signature = thought_signature(delta)  # Gemini sometimes puts it on the delta
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
            tool_arguments(raw_args) if raw_args is not None else "")
        if args:
            slot.append(args)
        signature = thought_signature(frag)
        if signature:
            self.signatures[index] = signature
        self.last_index = index
        return ToolCallDelta(index=index, id=call_id, name=name, arguments=args)

    def response(self, provider: str, channel: str, latency: float) -> ChatResponse:
        """The whole answer, as ``provider`` (the family) on ``channel``."""
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
            provider=provider,
            model=self.model,
            latency_s=latency,
            raw_finish_reason=self.finish,
            reasoning="".join(self.reasoning) or None,
            id=self.id,
            channel=channel,
            logprobs=None if self.logprobs is None else tuple(self.logprobs),
        )
