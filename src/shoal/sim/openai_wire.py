"""OpenAI Chat Completions on the wire (``POST /v1/chat/completions``), per provider style.

``style`` picks the provider imitated (PROVIDERS.md §1, §3, §4); what each refuses is
in :mod:`shoal.sim.style_rules`, its error envelopes in :mod:`shoal.sim.styles`. Shapes:
  * ``openai`` / ``permissive``: the reference behaviour;
  * ``deepseek``: ``reasoning_content`` in thinking mode, cache hit/miss usage fields,
    a ``: keep-alive`` comment opening each stream and blank lines before a whole
    answer's JSON, 402 for an empty balance, no ``x-ratelimit-*`` headers;
  * ``moonshot``: errors as ``{"error":{"message","type"}}`` (overload as a 429
    ``engine_overloaded_error``), stream usage inside ``choices[0].usage`` of the
    finishing chunk, tool-call fragments with ``"index": null``;
  * ``zhipu``: errors as ``{"error":{"code":"1302","message"}}`` with business codes
    (overload as a 429 ``1305``), usage on the finishing chunk, tool calls streamed
    whole (in pieces with ``tool_stream: true`` on GLM-4.6+), no rate-limit or
    Retry-After headers;
  * ``minimax``: ``"role":""`` in stream deltas; errors in MiniMax's envelope, an empty
    balance as ``base_resp`` inside an HTTP 200;
  * ``gemini``: errors as a JSON array; tool calls streamed whole without ``index``, and
    a stream's ``finish_reason`` is ``stop`` even after tool calls.

``logprobs: true`` (with ``top_logprobs``) adds ``choices[0].logprobs`` to the answer and
to each content chunk, for the styles whose providers return them
(:mod:`shoal.sim.logprobs`); without it the bytes are the templates' as they were.
"""

from __future__ import annotations

import json
from typing import Any

from shoal.sim import styles
from shoal.sim.caching import prefix_plan
from shoal.sim.content import Answer, Ask, BadInput
from shoal.sim.logprobs import LogprobAsk, chunk_json, refusal_words, requested, whole_json
from shoal.sim.schema import schema_in_text
from shoal.sim.style_rules import gemini_signed_call, openai_request

__all__ = ["error_body", "parse", "render", "render_stream"]

_DUMPS = json.JSONEncoder(separators=(",", ":")).encode
DONE = b"data: [DONE]\n\n"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def parse(body: Any, style: str) -> Ask:
    """The decisive parts of a chat completions request; ``BadInput`` when it is invalid."""
    if not isinstance(body, dict):
        raise BadInput("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadInput("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadInput("'messages' must be a non-empty array of messages.", "messages")
    chars = 0
    last_text = ""
    for msg in messages:
        if not isinstance(msg, dict) or "role" not in msg:
            raise BadInput("Each message must be an object with a 'role'.", "messages")
        text = _text_of(msg.get("content"))
        chars += len(text)
        for call in msg.get("tool_calls") or ():
            fn = call.get("function") or {} if isinstance(call, dict) else {}
            chars += len(str(fn.get("name", ""))) + len(str(fn.get("arguments", "")))
        if msg["role"] == "user":
            last_text = text
    top = requested(body, style)  # log probabilities: None when not asked (or not given)
    if top is None:
        ask = Ask(model=model, stream=bool(body.get("stream")), last_text=last_text)
    else:
        ask = LogprobAsk(model=model, stream=bool(body.get("stream")), last_text=last_text,
                         top_logprobs=top)
    ask.after_tool_result = messages[-1].get("role") == "tool"
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        chars += len(_DUMPS(tools))
        for tool in tools:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or not fn.get("name"):
                raise BadInput(
                    "Each tool must be {type: 'function', function: {name, ...}}.", "tools"
                )
            ask.tools.append((str(fn["name"]), fn.get("parameters") or {"type": "object"}))
        choice = body.get("tool_choice", "auto")
        if isinstance(choice, dict):
            ask.tool_mode = "named"
            ask.tool_name = (choice.get("function") or {}).get("name")
        elif choice in ("none", "required", "auto"):
            ask.tool_mode = choice
        ask.one_call = body.get("parallel_tool_calls") is False
    ask.prompt_chars = chars
    stop = body.get("stop")
    listed = stop if isinstance(stop, list) else []
    ask.stop = [stop] if isinstance(stop, str) else [str(x) for x in listed if x]
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema") or {}
            ask.schema = spec.get("schema") or {"type": "object"}
        elif fmt.get("type") == "json_object":
            ask.json_object = True
            # A model in JSON mode follows the shape its prompt states, if it states one.
            prompt = "\n".join(_text_of(m.get("content")) for m in messages if m["role"] != "tool")
            ask.schema = schema_in_text(prompt)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise BadInput("max_tokens must be a positive integer.", "max_tokens")
        ask.max_tokens = limit
    options = body.get("stream_options")
    if ask.stream and isinstance(options, dict):
        ask.include_usage = bool(options.get("include_usage"))
    meta = body.get("metadata")
    ask.metadata = meta if isinstance(meta, dict) else None
    openai_request(body, style, ask)  # the style's refusals (and DeepSeek thinking mode)
    if chars >= 256:  # at least one 64-token cache unit: automatic prefix caching
        ask.cache = prefix_plan(body, style)
    return ask


def _usage_json(answer: Answer, style: str) -> str:
    # Built as text: this is on every request's path and a template is ~5x faster
    # than encoding the nested dicts.
    p, c, hit = answer.prompt_tokens, answer.completion_tokens, answer.cache_read
    extra = (
        f',"prompt_cache_hit_tokens":{hit},"prompt_cache_miss_tokens":{p - hit}'
        if style == "deepseek"
        else ""
    )
    return (
        f'{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{p + c},'
        f'"prompt_tokens_details":{{"cached_tokens":{hit},"audio_tokens":0}},'
        f'"completion_tokens_details":{{"reasoning_tokens":{len(answer.reasoning)},'
        '"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}'
        f"{extra}}}"
    )


def render(rid: str, created: int, ask: Ask, answer: Answer, style: str) -> bytes:
    """The non-streamed ``chat.completion`` body."""
    if answer.tools or answer.reasoning or answer.refusal:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if answer.refusal or (answer.tools and not answer.pieces)
            else answer.text,
            "refusal": answer.refusal,
            "annotations": [],
        }
        if answer.reasoning:
            message["reasoning_content"] = answer.reasoning_text
        if answer.tools:
            message["tool_calls"] = [
                gemini_signed_call(style, ask.model, i, {
                    "id": t.id, "type": "function",
                    "function": {"name": t.name, "arguments": t.arguments}})
                for i, t in enumerate(answer.tools)
            ]  # fmt: skip
        message_json = _DUMPS(message)
    else:
        message_json = (
            f'{{"role":"assistant","content":{_DUMPS(answer.text)},'
            '"refusal":null,"annotations":[]}'
        )
    logprobs = whole_json(answer, ask.top_logprobs) if isinstance(ask, LogprobAsk) else "null"
    # DeepSeek keeps a waiting non-streamed request alive with blank lines before the
    # JSON (api-docs.deepseek.com/quick_start/rate_limit; trap 11).
    keep_alive = "\n\n" if style == "deepseek" else ""
    return (
        f'{keep_alive}{{"id":"{rid}","object":"chat.completion","created":{created},'
        f'"model":{_DUMPS(ask.model)},"choices":[{{"index":0,"message":{message_json},'
        f'"logprobs":{logprobs},"finish_reason":"{answer.provider_finish or answer.finish}"}}],'
        f'"usage":{_usage_json(answer, style)},"service_tier":"default",'
        '"system_fingerprint":"fp_shoal_sim"}'
    ).encode()


def render_stream(
    rid: str, created: int, ask: Ask, answer: Answer, style: str
) -> tuple[list[bytes], list[bool]]:
    """SSE events of the stream, and for each whether it carries a token (for pacing/cuts).

    The last event is always the end marker ``data: [DONE]``.
    """
    opening = (
        f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
        f'"model":{_DUMPS(ask.model)},"system_fingerprint":"fp_shoal_sim",'
    )
    head = opening + '"choices":[{"index":0,"delta":'
    usage_null = ask.include_usage and style not in ("moonshot", "zhipu")
    after = ',"finish_reason":null}]' + (',"usage":null' if usage_null else "") + "}\n\n"
    tail = ',"logprobs":null' + after
    events: list[bytes] = []
    tokens: list[bool] = []
    top = ask.top_logprobs if isinstance(ask, LogprobAsk) else None

    def add(delta: str, is_token: bool) -> None:
        events.append((head + delta + tail).encode())
        tokens.append(is_token)

    def add_logprobs(delta: str, logprobs: str) -> None:  # a token with its logprobs
        events.append((head + delta + ',"logprobs":' + logprobs + after).encode())
        tokens.append(True)

    if style == "deepseek":
        events.append(b": keep-alive\n\n")
        tokens.append(False)
    first = '{"role":"assistant","content":' + ("null" if answer.reasoning else '""')
    add(first + ',"refusal":null}', False)
    role = '"role":"",' if style == "minimax" else ""  # MiniMax sends an empty role
    for piece in answer.reasoning:
        add("{" + role + '"content":null,"reasoning_content":' + _DUMPS(piece) + "}", True)
    if top is None:
        for piece in answer.pieces:
            add("{" + role + '"content":' + _DUMPS(piece) + "}", True)
    else:
        for i, piece in enumerate(answer.pieces):
            add_logprobs("{" + role + '"content":' + _DUMPS(piece) + "}", chunk_json(piece, i, top))
    if answer.refusal:  # OpenAI streams a refusal in delta.refusal, content null
        for i, piece in enumerate(refusal_words(answer.refusal)):
            delta = "{" + role + '"content":null,"refusal":' + _DUMPS(piece) + "}"
            if top is None:
                add(delta, True)
            else:
                add_logprobs(delta, chunk_json(piece, i, top, refusal=True))
    # Each call in one chunk: Gemini (without index), Zhipu unless asked for tool_stream.
    whole = style == "gemini" or (style == "zhipu" and not ask.tool_stream)
    for index, tool in enumerate(answer.tools):
        # Moonshot sends a null index on every fragment (vercel/ai#19727): a new id
        # opens the next call, fragments without one continue it.
        wire_index = "null" if style == "moonshot" else str(index)
        call_start: dict[str, Any] = {} if style == "gemini" else {
            "index": None if style == "moonshot" else index}
        call_start.update(
            id=tool.id, type="function",
            function={"name": tool.name, "arguments": tool.arguments if whole else ""},
        )  # fmt: skip
        gemini_signed_call(style, ask.model, index, call_start)
        add('{"tool_calls":[' + _DUMPS(call_start) + "]}", whole)
        if not whole:
            for piece in tool.pieces:
                frag = f'{{"index":{wire_index},"function":{{"arguments":{_DUMPS(piece)}}}}}'
                add('{"tool_calls":[' + frag + "]}", True)
    usage = _usage_json(answer, style)
    # Moonshot puts usage inside the finishing choice, Zhipu on the finishing chunk.
    in_choice = f',"usage":{usage}' if style == "moonshot" else ""
    on_chunk = f',"usage":{usage}' if style == "zhipu" else ',"usage":null' if usage_null else ""
    # Gemini's streams end with "stop" even after tool calls (non-streamed: tool_calls).
    finish: str = "stop" if style == "gemini" and answer.finish == "tool_calls" else answer.finish
    finish = answer.provider_finish or finish  # a finish:<reason> fault
    final = (
        f'{head}{{}},"logprobs":null,"finish_reason":"{finish}"{in_choice}}}]'
        f"{on_chunk}}}\n\n"
    )
    events.append(final.encode())
    tokens.append(False)
    if usage_null:
        events.append(f'{opening}"choices":[],"usage":{usage}}}\n\n'.encode())
        tokens.append(False)
    events.append(DONE)
    tokens.append(False)
    return events, tokens


def stream_error_event(style: str) -> bytes:
    """An error inside a 200 stream, as OpenAI and vLLM send it (``{"error":{...}}``)."""
    _, body = error_body("openai" if styles.own_envelope(style) else style, "server", 500)
    return b"data: " + body + b"\n\n"


def error_body(style: str, kind: str, status: int, **ctx: Any) -> tuple[int, bytes]:
    """(status, JSON body) of an error in *style*.

    kinds: ``rate_limit`` (ctx: reason cap/rpm/tpm/fault, limit), ``quota``, ``auth``,
    ``server``, ``bad_request`` (ctx: message, param), ``context_overflow`` (ctx:
    window, prompt), ``status`` (any other scripted status).
    """
    message, etype, code, zcode = _describe(style, kind, status, ctx)
    if styles.own_envelope(style):  # Gemini's array, MiniMax's envelope and base_resp
        return styles.error_body(style, kind, status, message, ctx)
    if kind == "quota" and style == "deepseek":
        status = 402
    if style in ("moonshot", "zhipu") and status in (503, 529):
        status = 429  # their overload (engine_overloaded_error, 1305) comes as HTTP 429
    err: dict[str, Any]
    if style == "moonshot":
        mtype = _MOONSHOT_TYPES.get(kind) or _MOONSHOT_STATUS_TYPES.get(status, etype)
        err = {"message": message, "type": mtype}
    elif style == "zhipu":
        err = {"code": zcode, "message": message}
    else:
        err = {"message": message, "type": etype, "param": ctx.get("param"), "code": code}
    return status, _DUMPS({"error": err}).encode()


# Moonshot's error types by status for the scripted statuses (platform.moonshot.cn
# api-reference, PROVIDERS.md §3).
_MOONSHOT_STATUS_TYPES = {
    401: "invalid_authentication_error", 403: "permission_denied_error",
    404: "resource_not_found_error",
}  # fmt: skip
_MOONSHOT_TYPES = {
    "rate_limit": "rate_limit_reached_error",
    "quota": "exceeded_current_quota_error",
    "auth": "invalid_authentication_error",
    "bad_request": "invalid_request_error",
    "context_overflow": "invalid_request_error",
}


def _describe(style: str, kind: str, status: int, ctx: dict[str, Any]) -> tuple[str, str, Any, str]:
    """(message, type, code, zhipu code) for an error."""
    if kind == "rate_limit":
        reason = ctx.get("reason", "fault")
        limit = ctx.get("limit")
        if reason == "cap":
            msg = f"Too many concurrent requests: this organization allows {limit} at a time."
            return msg, "requests", "rate_limit_exceeded", "1302"
        if reason == "tpm":
            msg = f"Rate limit reached for tokens per min (TPM): Limit {limit}. Try again later."
            return msg, "tokens", "rate_limit_exceeded", "1303"
        msg = (
            f"Rate limit reached for requests per min (RPM): Limit {limit}. Please try again later."
            if reason == "rpm"
            else "Rate limit reached. Please try again later."
        )
        return msg, "requests", "rate_limit_exceeded", "1303"
    if kind == "quota":
        if style == "deepseek":
            return "Insufficient Balance", "unknown_error", "invalid_request_error", "1113"
        msg = (
            "You exceeded your current quota, please check your plan and billing details."
        )
        return msg, "insufficient_quota", "insufficient_quota", "1113"
    if kind == "auth":
        return "Incorrect API key provided.", "invalid_request_error", "invalid_api_key", "1000"
    if kind == "context_overflow" and style == "moonshot":  # MoonshotAI/kimi-cli#2011
        msg = (
            f"Invalid request: Your request exceeded model token limit: {ctx.get('window')} "
            f"(requested: {ctx.get('prompt')})"
        )
        return msg, "invalid_request_error", None, "1261"
    if kind == "context_overflow":
        msg = (
            f"This model's maximum context length is {ctx.get('window')} tokens. However, your "
            f"messages resulted in {ctx.get('prompt')} tokens. Please reduce the length of the "
            "messages."
        )
        return msg, "invalid_request_error", "context_length_exceeded", "1261"
    if kind == "bad_request":
        code = ctx.get("code")
        zcode = code if isinstance(code, str) and code.isdigit() else "1214"
        return str(ctx.get("message")), "invalid_request_error", code, zcode
    if status in (503, 529):
        msg = "The engine is currently overloaded, please try again later."
        etype = "engine_overloaded_error" if style == "moonshot" else "server_error"
        return msg, etype, None, "1305"
    if status >= 500:
        msg = "The server had an error while processing your request. Sorry about that!"
        return msg, "server_error", None, "500"
    msg = f"The simulator was told to answer {status}."
    return msg, "invalid_request_error", None, str(status)
