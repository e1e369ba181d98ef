"""Helpers for the simulator's tests: a running server and official SDK clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx
import openai

from shoal.clock import Clock
from shoal.config import Config
from shoal.sim import SimConfig, SimServer
from shoal.traffic.retry import RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, StreamEnd, StreamEvent


def _cut_errors() -> tuple[type[BaseException], ...]:
    """What an official SDK raises when a response is cut mid-body: the async stream
    iterators let the HTTP library's RemoteProtocolError through (httpx, or httpx2 in
    newer anthropic releases); whole responses come wrapped as APIConnectionError."""
    errors: list[type[BaseException]] = [
        openai.APIConnectionError,
        anthropic.APIConnectionError,
        httpx.RemoteProtocolError,
    ]
    try:
        import httpx2
    except ImportError:  # older SDKs use httpx only
        return tuple(errors)
    return (*errors, httpx2.RemoteProtocolError)


CUT_ERRORS = _cut_errors()
QUESTION = "What limits bind when many agents share one provider?"
USER: list[Any] = [{"role": "user", "content": QUESTION}]


@asynccontextmanager
async def running(
    config: SimConfig | None = None, *, clock: Clock | None = None
) -> AsyncIterator[SimServer]:
    async with SimServer(config or SimConfig(), clock=clock) as sim:
        yield sim


@asynccontextmanager
async def openai_for(
    sim: SimServer, *, max_retries: int = 0, timeout: float = 30.0
) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=sim.url + "/v1", api_key="sk-test", max_retries=max_retries, timeout=timeout
    )
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def anthropic_for(
    sim: SimServer, *, max_retries: int = 0, timeout: float = 30.0
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(
        base_url=sim.url, api_key="sk-ant-test", max_retries=max_retries, timeout=timeout
    )
    try:
        yield client
    finally:
        await client.close()


def prompt_tokens_of(*texts: str) -> int:
    """The simulator's documented prompt estimate: ceil(characters / 4), at least 1."""
    return max(1, -(-sum(len(t) for t in texts) // 4))


def style_router(sim: SimServer, style: str, retry: RetryPolicy) -> Router:
    """A Router whose one channel ``ch`` speaks ``style`` of ``sim`` (the Anthropic
    protocol for ``anthropic``, else OpenAI's), serving model ``m``."""
    protocol = "anthropic" if style == "anthropic" else "openai"
    return Router(Config.from_dict({
        "channels": {"ch": {"protocol": protocol, "api_key": "sk-test", "provider": style,
                            "base_url": sim.base_url(style, protocol=protocol)}},
        "models": {"m": {"channels": ["ch"]}},
    }), retry=retry)


async def streamed_whole(router: Router, ask: ChatRequest
                         ) -> tuple[list[StreamEvent], ChatResponse]:
    """Every event of ``router.stream(ask)`` and the answer its ``StreamEnd`` carries."""
    events = [e async for e in router.stream(ask)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    return events, end.response


async def drain_into(router: Router, ask: ChatRequest, seen: list[StreamEvent]) -> None:
    """Stream ``ask``, keeping each event in ``seen`` as it arrives (a stream that
    raises leaves what came before)."""
    async for event in router.stream(ask):
        seen.append(event)
