"""Sending an answer over aiohttp, whole or as SSE, with the delivery faults applied.

* ``cut``: the connection is closed mid-body (the client sees an incomplete response;
  the official SDKs raise ``APIConnectionError``);
* ``truncated``: the body ends cleanly but early: a stream after half its tokens (no
  finish reason, no end marker), a JSON body cut in half;
* ``malformed``: one stream event (or the JSON body) is broken JSON;
* ``stream_error``: a 200 stream that carries an error event halfway.

And the SSE dialects a tolerant reader must accept (PROVIDERS.md §0, trap 11), each a
whole answer: ``no_done`` (the stream ends after its last event without ``data:
[DONE]`` / ``message_stop``), ``crlf`` (every line ends in CRLF), ``data_nospace``
(``data:{…}``, ``event:name``: no space after the colon).
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shoal.sim.content import Answer, Ask
from shoal.sim.stats import RequestRecord

if TYPE_CHECKING:
    from shoal.clock import Clock

__all__ = ["Call", "send_stream", "send_whole"]

# Faults whose answer, though sent, is not a usable completion.
_BROKEN = frozenset({"cut", "truncated", "malformed", "stream_error"})

_JSON = "application/json"
_NOSPACE = re.compile(rb"(?m)^(data|event): ")  # a field name and its colon's space
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


class Call:
    """One request in flight: what was asked, the fault chosen, what was sent."""

    __slots__ = (
        "answer", "ask", "completion", "delivered", "fault", "n", "protocol", "request", "rid",
        "status",
    )  # fmt: skip

    def __init__(self, request: web.Request, protocol: str) -> None:
        self.request = request
        self.protocol = protocol
        self.n = 0
        self.rid = ""
        self.ask: Ask | None = None
        self.answer: Answer | None = None
        self.fault: str | None = None
        self.status = 0
        self.completion = 0
        self.delivered = False  # the whole answer was handed to the connection

    def base_headers(self) -> dict[str, str]:
        if self.protocol == "openai":
            return {"x-request-id": self.rid, "openai-processing-ms": "1"}
        return {"request-id": self.rid}

    def record(self, start: float, end: float) -> RequestRecord:
        ask = self.ask
        headers = self.request.headers
        retry = headers.get("x-stainless-retry-count")
        metadata: dict[str, Any] | None = ask.metadata if ask is not None else None
        return RequestRecord(
            id=self.rid,
            path=sys.intern(self.request.path),
            model=sys.intern(ask.model) if ask is not None else "",
            stream=ask.stream if ask is not None else False,
            status=self.status,
            fault=self.fault,
            start=start,
            end=end,
            prompt_tokens=self.answer.prompt_tokens if self.answer is not None else 0,
            completion_tokens=self.completion,
            metadata=metadata,
            tag=headers.get("x-shoal-tag"),
            retry_count=int(retry) if retry is not None and retry.isdigit() else None,
            key=headers.get("idempotency-key") or headers.get("x-shoal-tag"),
            complete=self.delivered and self.fault not in _BROKEN
            and not (self.fault or "").startswith("finish:"),  # an answer ended short
        )


async def send_whole(call: Call, body: bytes, headers: dict[str, str]) -> web.StreamResponse:
    """A non-streamed answer (``stream_error`` bodies are prepared by the caller)."""
    fault = call.fault
    if fault in ("malformed", "truncated"):
        body = body[: len(body) // 2]
    elif fault == "cut":
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = _JSON
        resp.content_length = len(body)
        await resp.prepare(call.request)
        call.status = 200
        await resp.write(body[: len(body) // 2])
        return _abort(call, resp)
    call.status = 200
    call.delivered = True
    return web.Response(status=200, body=body, headers=headers, content_type=_JSON)


async def send_stream(
    call: Call,
    events: list[bytes],
    tokens: list[bool],
    headers: dict[str, str],
    *,
    clock: Clock,
    delay: float,
    step: float,
    error_event: bytes,
) -> web.StreamResponse:
    """An SSE answer: headers at once, the first token after *delay*, then one token per
    *step* seconds (all at once when *step* is 0)."""
    fault = call.fault
    token_at = [i for i, is_token in enumerate(tokens) if is_token]
    mid = token_at[len(token_at) // 2] if token_at else min(1, len(events) - 1)
    if fault == "no_done":
        events, tokens = events[:-1], tokens[:-1]
    elif fault == "crlf":
        events = [e.replace(b"\n", b"\r\n") for e in events]
    elif fault == "data_nospace":
        events = [_NOSPACE.sub(rb"\1:", e) for e in events]
    elif fault == "truncated":
        events, tokens = events[:mid], tokens[:mid]
    elif fault == "malformed":
        events = [*events[:mid], _break(events[mid]), *events[mid + 1 :]]
    elif fault in ("cut", "stream_error"):
        events, tokens = events[: mid + 1], tokens[: mid + 1]
        if fault == "stream_error":
            events.append(error_event)
            tokens.append(False)
    resp = web.StreamResponse(status=200, headers={**headers, **_SSE_HEADERS})
    await resp.prepare(call.request)
    call.status = 200
    if delay > 0:
        await clock.sleep(delay)
    if step <= 0:
        call.completion = sum(tokens)
        await resp.write(b"".join(events))
    else:
        for event, is_token in zip(events, tokens, strict=True):
            if is_token:
                await clock.sleep(step)
                call.completion += 1
            await resp.write(event)
    if fault == "cut":
        return _abort(call, resp)
    await resp.write_eof()
    call.delivered = True
    return resp


def _abort(call: Call, resp: web.StreamResponse) -> web.StreamResponse:
    """Close the connection mid-body: the client reads what was sent, then an incomplete
    response. (A graceful close, not a reset, so the bytes sent before it always arrive.)"""
    transport = call.request.transport
    if transport is not None:
        transport.close()
    return resp


def _break(event: bytes) -> bytes:
    """The same SSE event with its JSON cut in half."""
    at = event.find(b"data: ")
    if at < 0:
        return event
    data_end = event.rfind(b"}")
    keep = at + 6 + max((data_end - at - 6) // 2, 1)
    return event[:keep] + b"\n\n"
