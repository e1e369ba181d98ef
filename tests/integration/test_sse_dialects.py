"""The SSE dialects a tolerant reader must accept (PROVIDERS.md §0, traps 11 and 13),
through ``Router.stream`` against the simulator over HTTP, for both protocols: CRLF line
ends, ``data:`` without its space, a stream that ends without ``[DONE]`` /
``message_stop`` after its finish reason, and a whole JSON answer to a stream request
(DeepSeek's comes after blank lines). Each is the same answer as the plain stream; a
stream that ends cleanly mid-answer is still a ``StreamInterrupted``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sim_fixtures import drain_into, streamed_whole, style_router

from shoal.errors import StreamInterrupted
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEvent, TextDelta

FAST = RetryPolicy(attempts=2, backoff=Backoff(base=0.01, cap=0.02), deadline_s=20)
ASK = ChatRequest("m", [Message.user("what limits bind a shared provider?")])
STYLES = ["openai", "deepseek", "anthropic"]  # DeepSeek: keep-alive comments, blank lines


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(seed=9, models={"*": ModelProfile(output_tokens=16)})) as s:
        yield s


def router(sim: SimServer, style: str) -> Router:
    return style_router(sim, style, FAST)


async def streamed(r: Router) -> tuple[list[StreamEvent], ChatResponse]:
    return await streamed_whole(r, ASK)


async def drain(r: Router, seen: list[StreamEvent]) -> None:
    await drain_into(r, ASK, seen)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("dialect", ["crlf", "data_nospace", "no_done", "json_body"])
async def test_each_dialect_is_the_same_answer(sim: SimServer, style: str,
                                               dialect: str) -> None:
    sim.script(["ok", dialect])
    async with router(sim, style) as r:
        _, plain = await streamed(r)
        events, answer = await streamed(r)
    assert answer.text and answer.text == plain.text
    assert (answer.finish_reason, answer.raw_finish_reason) == (plain.finish_reason,
                                                                plain.raw_finish_reason)
    assert answer.usage == plain.usage and answer.usage.output_tokens == 16
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == answer.text
    log = sim.stats().requests
    assert [q.fault for q in log] == [None, dialect]  # one request each: nothing retried
    if dialect == "json_body":
        assert log[1].stream  # asked for a stream, answered whole


@pytest.mark.parametrize("style", STYLES)
async def test_a_stream_that_ends_cleanly_mid_answer_is_interrupted(
        sim: SimServer, style: str) -> None:
    sim.script(["truncated"])
    seen: list[StreamEvent] = []
    async with router(sim, style) as r:
        with pytest.raises(StreamInterrupted, match="ended without") as caught:
            await drain(r, seen)
    text = "".join(e.text for e in seen if isinstance(e, TextDelta))
    assert text and caught.value.partial_output == text
    assert sim.stats().total_requests == 1  # tokens reached the caller: not retried
