"""Anthropic Messages on the wire (``POST /v1/messages``): request parsing, the message
body, the SSE event sequence and the error envelope (PROVIDERS.md §2)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from shoal.sim.anthropic_rules import anthropic_request, sign_thinking
from shoal.sim.caching import anthropic_plan
from shoal.sim.content import Answer, Ask, BadInput

__all__ = ["error_body", "parse", "render", "render_stream", "stream_error_event"]

_DUMPS = json.JSONEncoder(separators=(",", ":")).encode
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def _text_of(content: Any) -> tuple[str, int, bool]:
    """(text of text blocks, characters counted, whether it holds a tool_result)."""
    if isinstance(content, str):
        return content, len(content), False
    if not isinstance(content, list):
        return "", 0, False
    text: list[str] = []
    chars = 0
    has_result = False
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            piece = str(block.get("text", ""))
            text.append(piece)
            chars += len(piece)
        elif kind == "tool_use":
            chars += len(str(block.get("name", ""))) + len(_DUMPS(block.get("input", {})))
        elif kind == "tool_result":
            has_result = True
            _, n, _ = _text_of(block.get("content", ""))
            chars += n
        elif kind == "thinking":
            chars += len(str(block.get("thinking", "")))
    return "".join(text), chars, has_result


def parse(body: Any, style: str = "anthropic") -> Ask:
    """The decisive parts of a Messages request; ``BadInput`` when it is invalid (or,
    unless *style* is ``permissive``, when Anthropic would refuse it)."""
    if not isinstance(body, dict):
        raise BadInput("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadInput("model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadInput("messages: Field required (a non-empty list)")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadInput("max_tokens: Field required (a positive integer)")
    system, chars, _ = _text_of(body.get("system", ""))
    last_text = ""
    has_result = False
    for msg in messages:
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise BadInput("messages: each message needs role 'user' or 'assistant'")
        text, n, has_result = _text_of(msg.get("content"))
        chars += n
        if msg["role"] == "user" and text:
            last_text = text
    ask = Ask(model=model, stream=bool(body.get("stream")), last_text=last_text or system)
    ask.after_tool_result = messages[-1].get("role") == "user" and has_result
    ask.max_tokens = max_tokens
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        chars += len(_DUMPS(tools))
        for tool in tools:
            if isinstance(tool, dict) and tool.get("name") and "input_schema" in tool:
                ask.tools.append((str(tool["name"]), tool["input_schema"]))
        choice = body.get("tool_choice")
        kind = choice.get("type") if isinstance(choice, dict) else "auto"
        if kind == "any":
            ask.tool_mode = "required"
        elif kind == "tool" and isinstance(choice, dict):
            ask.tool_mode = "named"
            ask.tool_name = choice.get("name")
        elif kind == "none":
            ask.tool_mode = "none"
        ask.one_call = isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True
    ask.prompt_chars = chars
    sequences = body.get("stop_sequences")
    ask.stop = [str(x) for x in sequences if x] if isinstance(sequences, list) else []
    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        ask.schema = fmt.get("schema") or {"type": "object"}
    thinking = body.get("thinking")
    ask.reasoning = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    # Anthropic's documented test prompt makes the answer carry a redacted_thinking block
    ask.redacted = ask.reasoning and REDACTED_TRIGGER in ask.last_text
    meta = body.get("metadata")
    if isinstance(meta, dict) and meta.get("user_id") is not None:
        ask.metadata = {"user_id": meta["user_id"]}
    ask.cache = anthropic_plan(body, style)  # cache_control breakpoints (and refusals)
    anthropic_request(body, style)  # thinking budget, tool pairing, signed thinking blocks
    return ask


def _usage_json(answer: Answer, output: int) -> str:
    # input_tokens is the uncached part only (Anthropic counts reads and writes apart).
    read, w5, w1 = answer.cache_read, answer.cache_write_5m, answer.cache_write_1h
    return (
        f'{{"input_tokens":{answer.prompt_tokens - read - w5 - w1},'
        f'"cache_creation_input_tokens":{w5 + w1},"cache_read_input_tokens":{read},'
        f'"cache_creation":{{"ephemeral_5m_input_tokens":{w5},'
        f'"ephemeral_1h_input_tokens":{w1}}},"output_tokens":{output},'
        '"service_tier":"standard"}'
    )


def _usage(answer: Answer, output: int) -> dict[str, Any]:
    read, w5, w1 = answer.cache_read, answer.cache_write_5m, answer.cache_write_1h
    return {
        "input_tokens": answer.prompt_tokens - read - w5 - w1,
        "cache_creation_input_tokens": w5 + w1,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
        "output_tokens": output,
        "service_tier": "standard",
    }


def _signature(rid: str, answer: Answer) -> str:
    return sign_thinking(rid, answer.reasoning_text)


# platform.claude.com, extended thinking, "Thinking redaction": a prompt holding this
# string is answered with a redacted_thinking block (opaque ``data``, to be sent back).
REDACTED_TRIGGER = ("ANTHROPIC_MAGIC_STRING_TRIGGER_REDACTED_THINKING_"
                    "46C9A13E193C177646C7398A98432ECCCE4C1253D5E2D82641AC0E52CC2876CB")


def _redacted(rid: str) -> dict[str, str]:
    return {"type": "redacted_thinking", "data": "sim-redacted-" + sign_thinking(rid, "")}


def _tool_input(arguments: str) -> Any:
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value


def render(rid: str, ask: Ask, answer: Answer) -> bytes:
    """The non-streamed ``message`` body."""
    content: list[dict[str, Any]] = []
    if ask.redacted:
        content.append(_redacted(rid))
    if answer.reasoning:
        content.append(
            {"type": "thinking", "thinking": answer.reasoning_text,
             "signature": _signature(rid, answer)}
        )
    if answer.pieces or not answer.tools:
        content.append({"type": "text", "text": answer.refusal or answer.text})
    for tool in answer.tools:
        block = {"type": "tool_use", "id": tool.id, "name": tool.name}
        content.append({**block, "input": _tool_input(tool.arguments)})
    if answer.provider_finish == "pause_turn":
        content.extend(_server_search(rid, ask))
    body = {
        "id": rid,
        "type": "message",
        "role": "assistant",
        "model": ask.model,
        "content": content,
        "stop_reason": _stop_reason(answer),
        "stop_sequence": answer.stop_sequence,
        "usage": _usage(answer, answer.completion_tokens),
    }
    return _DUMPS(body).encode()


def _server_search(rid: str, ask: Ask) -> list[dict[str, Any]]:
    """A ``web_search`` server tool's call and its result, as a turn that server tools
    paused (``pause_turn``) carries them (platform.claude.com, "Server tools")."""
    tool_id = "srvtoolu_" + hashlib.sha256(rid.encode()).hexdigest()[:24]
    query = " ".join(ask.last_text.split()[:8]) or "shoal"
    result = {"type": "web_search_result", "url": "https://example.com/shoal",
              "title": "Shoal notes", "encrypted_content": "sim-" + tool_id, "page_age": None}
    return [{"type": "server_tool_use", "id": tool_id, "name": "web_search",
             "input": {"query": query}},
            {"type": "web_search_tool_result", "tool_use_id": tool_id, "content": [result]}]


def _stop_reason(answer: Answer) -> str:
    if answer.provider_finish:
        return answer.provider_finish
    if answer.refusal:
        return "refusal"
    return "stop_sequence" if answer.stop_sequence else _STOP[answer.finish]


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _DUMPS(data).encode() + b"\n\n"


def render_stream(rid: str, ask: Ask, answer: Answer) -> tuple[list[bytes], list[bool]]:
    """SSE events and, for each, whether it carries a token. Ends with ``message_stop``.

    Built from text templates: this runs for every streamed request."""
    events: list[bytes] = []
    tokens: list[bool] = []

    def add(event: str, is_token: bool = False) -> None:
        events.append(event.encode())
        tokens.append(is_token)

    add(
        'event: message_start\ndata: {"type":"message_start","message":{'
        f'"id":"{rid}","type":"message","role":"assistant","model":{_DUMPS(ask.model)},'
        '"content":[],"stop_reason":null,"stop_sequence":null,'
        f'"usage":{_usage_json(answer, 1)}}}}}\n\n'
    )
    index = 0

    def block(opening: str, kind: str, field: str, pieces: list[str]) -> None:
        nonlocal index
        add(
            'event: content_block_start\ndata: {"type":"content_block_start",'
            f'"index":{index},"content_block":{opening}}}\n\n'
        )
        if index == 0:
            add('event: ping\ndata: {"type":"ping"}\n\n')
        prefix = (
            'event: content_block_delta\ndata: {"type":"content_block_delta",'
            f'"index":{index},"delta":'
        )
        head = f'{prefix}{{"type":"{kind}","{field}":'
        for piece in pieces:
            add(head + _DUMPS(piece) + "}}\n\n", True)
        if kind == "thinking_delta":
            signature = _signature(rid, answer)
            add(f'{prefix}{{"type":"signature_delta","signature":"{signature}"}}}}\n\n')
        add(
            'event: content_block_stop\ndata: {"type":"content_block_stop",'
            f'"index":{index}}}\n\n'
        )
        index += 1

    if ask.redacted:  # whole at its start: no deltas
        block(_DUMPS(_redacted(rid)), "", "", [])
    if answer.reasoning:
        opening = '{"type":"thinking","thinking":"","signature":""}'
        block(opening, "thinking_delta", "thinking", answer.reasoning)
    if answer.pieces or not answer.tools:
        refusal = [answer.refusal] if answer.refusal else []
        block('{"type":"text","text":""}', "text_delta", "text", answer.pieces or refusal)
    for tool in answer.tools:
        opening = _DUMPS({"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}})
        # An argument-less call comes with no input_json_delta at all (trap 3): its
        # input is the {} of the block's start.
        pieces = [] if tool.arguments == "{}" else tool.pieces
        block(opening, "input_json_delta", "partial_json", pieces)
    if answer.provider_finish == "pause_turn":
        use, result = _server_search(rid, ask)
        block(_DUMPS({**use, "input": {}}), "input_json_delta", "partial_json",
              [_DUMPS(use["input"])])
        block(_DUMPS(result), "", "", [])  # whole at its start: no deltas
    stop_reason = _stop_reason(answer)
    add(
        'event: message_delta\ndata: {"type":"message_delta","delta":'
        f'{{"stop_reason":"{stop_reason}","stop_sequence":{_DUMPS(answer.stop_sequence)}}},'
        f'"usage":{_usage_json(answer, answer.completion_tokens)}}}\n\n'
    )
    events.append(MESSAGE_STOP)
    tokens.append(False)
    return events, tokens


def stream_error_event() -> bytes:
    """An ``error`` event inside a 200 stream (the SDK raises a status-200 APIStatusError)."""
    data = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    return _event("error", data)


_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_body(kind: str, status: int, request_id: str, **ctx: Any) -> tuple[int, bytes]:
    """(status, body) of an Anthropic error; kinds as in :func:`openai_wire.error_body`."""
    if kind == "rate_limit":
        reason = ctx.get("reason", "fault")
        limit = ctx.get("limit")
        status, etype = 429, "rate_limit_error"
        if reason == "cap":
            message = f"Number of concurrent connections has exceeded your rate limit ({limit})."
        elif reason in ("rpm", "tpm"):
            unit = "requests" if reason == "rpm" else "input tokens"
            message = (
                f"This request would exceed the rate limit for your organization of {limit} "
                f"{unit} per minute. Please try again later."
            )
        else:
            message = "Rate limited. Please try again later."
    elif kind == "quota":
        status, etype = 400, "invalid_request_error"
        message = (
            "Your credit balance is too low to access the Anthropic API. Please go to "
            "Plans & Billing to upgrade or purchase credits."
        )
    elif kind == "auth":
        status, etype, message = 401, "authentication_error", "invalid x-api-key"
    elif kind == "context_overflow":
        status, etype = 400, "invalid_request_error"
        message = f"prompt is too long: {ctx.get('prompt')} tokens > {ctx.get('window')} maximum"
    elif kind == "bad_request":  # 400, or a style's 404 for a route it does not serve
        etype = "not_found_error" if status == 404 else "invalid_request_error"
        status, message = (404 if status == 404 else 400), str(ctx.get("message"))
    else:
        etype = _STATUS_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        message = {
            "overloaded_error": "Overloaded",
            "api_error": "Internal server error",
            "request_too_large": "Request exceeds the maximum allowed number of bytes.",
        }.get(etype, f"The simulator was told to answer {status}.")
    body = {"type": "error", "error": {"type": etype, "message": message}, "request_id": request_id}
    return status, _DUMPS(body).encode()
