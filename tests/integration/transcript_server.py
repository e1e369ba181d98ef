"""Serve a documented transcript byte for byte to a shoal adapter: a tiny aiohttp
server on both protocols' endpoints (:func:`wire`, shared with test_adapters_wire.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.base import Provider
from shoal.providers.http import HttpPool
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.types import ChatRequest, ChatResponse, Message, StreamEnd, StreamEvent

REQ = ChatRequest(model="m", messages=[Message.user("hi")], max_tokens=256)


@asynccontextmanager
async def serve(pieces: list[bytes] | bytes, *, status: int = 200,
                content_type: str = "text/event-stream",
                headers: dict[str, str] | None = None) -> AsyncIterator[str]:
    """An HTTP server that answers every POST with ``pieces`` (one write each, in order)
    under ``status``; yields its base URL. ``seen`` bodies land in ``server.requests``."""
    chunks = [pieces] if isinstance(pieces, bytes) else pieces

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=status, headers={"Content-Type": content_type,
                                                         **(headers or {})})
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async with wire(handler) as url:
        yield url


@asynccontextmanager
async def wire(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
               ) -> AsyncIterator[str]:
    """An HTTP server answering both protocols' endpoints with ``handler``; yields its
    base URL (also what test_adapters_wire.py serves its wire bytes with)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)  # hung handlers are cancelled
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def adapter(url: str, family: str) -> Provider:
    pool = HttpPool(read_timeout=10.0)
    if family == "anthropic":
        return AnthropicProvider(base_url=url, api_key="sk-x", name="doc", pool=pool)
    return OpenAICompatProvider(base_url=url + "/v1", api_key="sk-x", name="doc", pool=pool,
                                provider=family)


async def streamed(url: str, family: str, request: ChatRequest = REQ
                   ) -> tuple[ChatResponse, list[StreamEvent]]:
    """Every event of one stream, and the answer its StreamEnd carried."""
    seen: list[StreamEvent] = []
    async with adapter(url, family) as p:
        async for e in p.stream(request, model="m"):
            seen.append(e)
    end = seen[-1]
    assert isinstance(end, StreamEnd), seen[-3:]
    return end.response, seen


async def completed(url: str, family: str, request: ChatRequest = REQ) -> ChatResponse:
    async with adapter(url, family) as p:
        return await p.complete(request, model="m")


def args(response: ChatResponse) -> list[tuple[str, str, Any]]:
    """(id, name, parsed arguments) of every tool call."""
    return [(c.id, c.name, c.parsed_arguments()) for c in response.tool_calls]
