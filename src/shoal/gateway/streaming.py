"""A streamed call over HTTP: Server-Sent Events in the caller's protocol.

The response starts (status 200, headers) only once the Router has the stream's first
event: until then the Router may still retry or fail over, and if it gives up the
caller gets a proper error status (a 429 with retry-after, a 502, ...). After the first
byte a failure can only be told inside the stream: OpenAI's ``data: {"error": ...}``
chunk without ``[DONE]``, Anthropic's ``event: error`` without ``message_stop``. A
client that goes away cancels the upstream call at once (the Router's stream is
closed, its channel slot freed) and is charged what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from aiohttp import web

from shoal.gateway.errors import failure_of
from shoal.types import ReasoningDelta, StreamEnd, TextDelta, ToolCallDelta

if TYPE_CHECKING:
    from shoal.gateway.access_log import AccessRecord
    from shoal.gateway.calls import Admitted, Gateway, Spend, Wire
    from shoal.gateway.translate_common import Parsed

__all__ = ["SSE_HEADERS", "stream_answer"]

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}


async def stream_answer(gw: Gateway, wire: Wire, request: web.Request, parsed: Parsed, *,
                        adm: Admitted, spend: Spend, rec: AccessRecord) -> web.StreamResponse:
    """Stream one admitted call; raises (before the first byte only) what the Router
    raised, for the caller to answer with an error status."""
    events = gw.router.stream(parsed.request, deadline_s=gw.settings.request_timeout_s)
    output: list[str] = []  # what the caller received: its charge if it leaves
    try:
        try:
            event = await anext(events)
        except asyncio.CancelledError:
            spend.cut(adm, output)
            raise
        except Exception as exc:
            spend.failed(exc)
            raise
        encoder = wire.stream(parsed.request.model, adm.prompt_tokens, parsed.include_usage)
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        rec.status = 200
        pending = encoder.start()
        try:
            while True:
                if isinstance(event, StreamEnd):
                    spend.answered(event.response)
                    await response.write(pending + encoder.end(event.response))
                    break
                if isinstance(event, TextDelta | ReasoningDelta):
                    output.append(event.text)
                elif isinstance(event, ToolCallDelta):
                    output.append(event.arguments)
                chunk = pending + encoder.feed(event)
                pending = b""
                if chunk:
                    await response.write(chunk)
                event = await anext(events)
        except asyncio.CancelledError:  # the client left (or the drain deadline passed)
            spend.cut(adm, output)
            rec.error = "client_disconnected"
            raise
        except ConnectionError:  # the client left while we wrote
            spend.cut(adm, output)
            rec.error = "client_disconnected"
            return response
        except Exception as exc:  # the stream broke after its first byte
            if isinstance(exc, StopAsyncIteration):  # the Router never ends without a
                exc = RuntimeError("the stream ended without its end event")  # StreamEnd
            failure = failure_of(exc)
            spend.failed(exc)
            if spend.usage.total_tokens == 0:
                spend.cut(adm, output)
            rec.error = failure.kind
            rec.stream_error = True
            with contextlib.suppress(ConnectionError):
                await response.write(pending + encoder.fail(failure))
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
    finally:
        await events.aclose()  # type: ignore[attr-defined]
