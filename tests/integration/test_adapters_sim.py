"""shoal's provider adapters against the simulator over real HTTP: both protocols,
streaming and not, tools, JSON output, and one test per error class of the tree."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.errors import (
    AuthError,
    ContextOverflow,
    MalformedResponse,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    StreamInterrupted,
)
from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.base import Provider
from shoal.providers.http import HttpPool
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.types import (
    ChatRequest,
    ChatResponse,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    UsageEvent,
)

KEY = "sk-test-secret-0123456789"
WEATHER = ToolSpec(
    "get_weather", "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"},
                                      "days": {"type": "integer"}},
     "required": ["city", "days"], "additionalProperties": False},
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"title": {"type": "string"},
                   "points": {"type": "array", "items": {"type": "string"}},
                   "score": {"type": "number"}},
    "required": ["title", "points", "score"], "additionalProperties": False,
}


def make(protocol: str, url: str, *, key: str = KEY, style: str = "openai",
         pool: HttpPool | None = None) -> Provider:
    if protocol == "openai":
        return OpenAICompatProvider(base_url=url + "/v1", api_key=key, name="sim",
                                    provider=style, pool=pool)
    return AnthropicProvider(base_url=url, api_key=key, name="sim", pool=pool)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(seed=7, models={"*": ModelProfile(output_tokens=12)})) as s:
        yield s


@pytest.fixture(params=["openai", "anthropic"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def req(**kw: Any) -> ChatRequest:
    messages = kw.pop("messages", [Message.system("Be brief."), Message.user("Tell me a fact")])
    return ChatRequest(model="sim-model", messages=messages, max_tokens=64, **kw)


async def collect(p: Provider, r: ChatRequest) -> tuple[list[StreamEvent], ChatResponse]:
    events = [e async for e in p.stream(r, model="sim-model")]
    end = events[-1]
    assert isinstance(end, StreamEnd), "every stream ends with exactly one StreamEnd"
    assert sum(isinstance(e, StreamEnd) for e in events) == 1
    return events, end.response


async def test_text_complete_and_stream_agree(sim: SimServer, protocol: str) -> None:
    async with make(protocol, sim.url) as p:
        full = await p.complete(req(), model="sim-model")
        events, streamed = await collect(p, req())
    for r in (full, streamed):
        assert r.text and r.finish_reason == "stop" and not r.tool_calls
        assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
        assert r.channel == "sim"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == streamed.text
    assert any(isinstance(e, UsageEvent) for e in events)
    assert full.text == streamed.text  # the simulator is deterministic under its seed
    assert full.usage == streamed.usage


async def test_tool_calls_complete_and_stream(sim: SimServer, protocol: str) -> None:
    r = req(tools=[WEATHER], tool_choice="auto")
    async with make(protocol, sim.url) as p:
        full = await p.complete(r, model="sim-model")
        events, streamed = await collect(p, r)
    for resp in (full, streamed):
        assert resp.finish_reason == "tool_calls"
        (call,) = resp.tool_calls
        assert call.name == "get_weather" and call.id
        args = call.parsed_arguments()
        assert isinstance(args["city"], str) and isinstance(args["days"], int)
    assert any(isinstance(e, ToolCallDelta) for e in events)
    # A tool result goes back in the right shape for each protocol and gets an answer.
    call = full.tool_calls[0]
    follow = req(tools=[WEATHER], messages=[
        Message.user("weather?"), full.message(), Message.tool(call.id, '{"temp": 21}'),
    ])
    async with make(protocol, sim.url) as p:
        answer = await p.complete(follow, model="sim-model")
    assert answer.text and not answer.tool_calls


async def test_json_schema_output(sim: SimServer, protocol: str) -> None:
    r = req(output_schema=SCHEMA, output_schema_name="report")
    async with make(protocol, sim.url) as p:
        full = await p.complete(r, model="sim-model")
        _, streamed = await collect(p, r)
    for resp in (full, streamed):
        data = json.loads(resp.text)
        assert set(data) == {"title", "points", "score"}
        assert isinstance(data["points"], list) and isinstance(data["score"], int | float)
        assert not resp.tool_calls  # Anthropic's forced tool is the answer, not a tool call


# -- one test per error class ----------------------------------------------------------


async def test_rate_limited_carries_retry_after(sim: SimServer, protocol: str) -> None:
    sim.script(["429"])
    async with make(protocol, sim.url) as p:
        with pytest.raises(RateLimited) as exc:
            await p.complete(req(), model="sim-model")
    assert exc.value.status == 429 and exc.value.retry_after is not None
    assert exc.value.retryable


async def test_overloaded_529_is_overloaded(sim: SimServer) -> None:
    sim.script(["529", "529"])
    async with make("anthropic", sim.url) as p:
        with pytest.raises(Overloaded) as exc:
            await p.complete(req(), model="sim-model")
        with pytest.raises(Overloaded):
            await collect(p, req())
    assert exc.value.status == 529 and exc.value.retryable
    assert isinstance(exc.value, RateLimited)  # `except RateLimited` still catches it


async def test_moonshot_engine_overloaded_is_overloaded() -> None:
    async with SimServer(SimConfig(style="moonshot")) as s, \
            make("openai", s.url, style="moonshot") as p:
        s.script(["503"])
        with pytest.raises(Overloaded) as exc:
            await p.complete(req(), model="sim-model")
    assert exc.value.code == "engine_overloaded_error"


@pytest.mark.parametrize("style", ["openai", "deepseek", "moonshot", "zhipu"])
async def test_quota_is_not_a_rate_limit(style: str) -> None:
    async with SimServer(SimConfig(style=style)) as s, make("openai", s.url, style=style) as p:
        s.script(["quota"])
        with pytest.raises(QuotaExhausted) as exc:
            await p.complete(req(), model="sim-model")
    assert not exc.value.retryable
    assert exc.value.status in (402, 429)


async def test_quota_anthropic(sim: SimServer) -> None:
    sim.script(["quota"])
    async with make("anthropic", sim.url) as p:
        with pytest.raises(QuotaExhausted):
            await p.complete(req(), model="sim-model")


async def test_auth_error_never_leaks_the_key(sim: SimServer, protocol: str) -> None:
    sim.script(["401"])
    async with make(protocol, sim.url) as p:
        with pytest.raises(AuthError) as exc:
            await p.complete(req(), model="sim-model")
        assert KEY not in repr(p)
    assert exc.value.status == 401 and not exc.value.retryable
    for text in (str(exc.value), repr(exc.value), exc.value.body):
        assert KEY not in text


async def test_server_errors_are_unavailable(sim: SimServer, protocol: str) -> None:
    sim.script(["503", "500"])
    async with make(protocol, sim.url) as p:
        for status in (503, 500):
            with pytest.raises(ProviderUnavailable) as exc:
                await p.complete(req(), model="sim-model")
            assert exc.value.status == status


async def test_context_overflow(sim: SimServer, protocol: str) -> None:
    sim.script(["context_overflow"])
    async with make(protocol, sim.url) as p:
        with pytest.raises(ContextOverflow) as exc:
            await p.complete(req(), model="sim-model")
    assert exc.value.status == 400 and not exc.value.retryable


async def test_malformed_json(sim: SimServer, protocol: str) -> None:
    """A broken body is MalformedResponse; a stream broken after tokens is
    StreamInterrupted with the MalformedResponse as its cause."""
    sim.script(["malformed", "malformed"])
    async with make(protocol, sim.url) as p:
        with pytest.raises(MalformedResponse):
            await p.complete(req(), model="sim-model")
        with pytest.raises(StreamInterrupted) as exc:
            await collect(p, req())
    assert isinstance(exc.value.__cause__, MalformedResponse)
    assert exc.value.partial_output


async def test_cut_stream_is_interrupted(sim: SimServer, protocol: str) -> None:
    sim.script(["cut"])
    seen: list[StreamEvent] = []

    async def consume(p: Provider) -> None:
        async for e in p.stream(req(), model="sim-model"):
            seen.append(e)

    async with make(protocol, sim.url) as p:
        with pytest.raises(StreamInterrupted) as exc:
            await consume(p)
    assert not any(isinstance(e, StreamEnd) for e in seen)
    streamed = "".join(e.text for e in seen if isinstance(e, TextDelta))
    assert streamed and exc.value.partial_output == streamed


async def test_error_event_inside_200_stream(sim: SimServer, protocol: str) -> None:
    """The simulator sends its error event after tokens: StreamInterrupted, caused by the
    provider's error (Anthropic overloaded_error → Overloaded; OpenAI server_error)."""
    sim.script(["stream_error"])
    async with make(protocol, sim.url) as p:
        with pytest.raises(StreamInterrupted) as exc:
            await collect(p, req())
    assert exc.value.status == 200 and exc.value.partial_output
    cause = exc.value.__cause__
    expected = Overloaded if protocol == "anthropic" else ProviderUnavailable
    assert isinstance(cause, ProviderError) and type(cause) is expected
    assert cause.message in str(exc.value)


async def test_read_timeout(sim: SimServer, protocol: str) -> None:
    sim.script(["hang"])
    pool = HttpPool(read_timeout=0.3)
    async with make(protocol, sim.url, pool=pool) as p:
        with pytest.raises(ProviderTimeout) as exc:
            await p.complete(req(), model="sim-model")
    assert exc.value.code == "read_timeout"


async def test_pool_timeout(sim: SimServer) -> None:
    """One pooled connection, held by a hanging call: the next call times out in the pool."""
    sim.script(["hang"])
    pool = HttpPool(pool_size=1, pool_timeout=0.2, connect_timeout=0.2, read_timeout=5)
    async with make("openai", sim.url, pool=pool) as p:
        hung = asyncio.create_task(p.complete(req(), model="sim-model"))
        await asyncio.sleep(0.1)
        with pytest.raises(ProviderTimeout) as exc:
            await p.complete(req(), model="sim-model")
        assert exc.value.code == "connect_timeout"
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung


async def test_connection_refused_is_unavailable(protocol: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with make(protocol, f"http://127.0.0.1:{port}") as p:
        with pytest.raises(ProviderUnavailable) as exc:
            await p.complete(req(), model="sim-model")
    assert exc.value.retryable and exc.value.status == 0


async def test_deepseek_reasoning_content_is_kept() -> None:
    async with SimServer(SimConfig(style="deepseek")) as s, \
            make("openai", s.url, style="deepseek") as p:
        full = await p.complete(req(), model="deepseek-reasoner")
        _, streamed = await collect(p, req())
        streamed_r = [e async for e in p.stream(req(), model="deepseek-reasoner")][-1]
    assert full.reasoning
    assert isinstance(streamed_r, StreamEnd) and streamed_r.response.reasoning
    assert streamed.text
