"""The simulator driven by the official ``anthropic`` SDK, unmodified, over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import httpx
import pytest
from pydantic import BaseModel, Field
from sim_fixtures import CUT_ERRORS, QUESTION, USER, anthropic_for, prompt_tokens_of, running

from shoal.clock import VirtualClock
from shoal.sim import Faults, ModelProfile, SimConfig

MODEL = "claude-opus-4-6"


class Lookup(BaseModel):
    query: str = Field(min_length=3)
    limit: int = Field(ge=1, le=10)
    tags: list[str]


class Summary(BaseModel):
    title: str
    points: list[str] = Field(min_length=1)
    score: int = Field(ge=0, le=100)


TOOLS: Any = [
    {"name": "lookup", "description": "Search.", "input_schema": Lookup.model_json_schema()},
    {"name": "noop", "input_schema": {"type": "object", "properties": {}}},
]


async def test_text_answer_with_usage() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        m = await client.messages.create(model=MODEL, max_tokens=256, messages=USER)
    assert m.type == "message"
    assert m.role == "assistant"
    assert m.stop_reason == "end_turn"
    assert m.model == MODEL
    assert len(m.content) == 1
    block = m.content[0]
    assert block.type == "text"
    assert len(block.text.split()) == 20
    assert m.usage.input_tokens == prompt_tokens_of(QUESTION)
    assert m.usage.output_tokens == 20
    assert m.usage.cache_read_input_tokens == 0
    assert m.usage.cache_creation_input_tokens == 0


async def test_system_prompt_counts_towards_input_tokens() -> None:
    system = "You are terse."
    async with running() as sim, anthropic_for(sim) as client:
        m = await client.messages.create(model=MODEL, max_tokens=64, system=system, messages=USER)
    assert m.usage.input_tokens == prompt_tokens_of(system, QUESTION)


async def test_stream_helper_text_and_cumulative_usage() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        whole = await client.messages.create(model=MODEL, max_tokens=256, messages=USER)
        async with client.messages.stream(model=MODEL, max_tokens=256, messages=USER) as stream:
            pieces = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
    assert whole.content[0].type == "text"
    assert "".join(pieces) == whole.content[0].text
    assert len(pieces) == 20
    assert final.usage.output_tokens == 20
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.stop_reason == "end_turn"


async def test_raw_event_sequence() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        stream = await client.messages.create(
            model=MODEL, max_tokens=256, messages=USER, stream=True
        )
        kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start"
    assert kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert kinds.count("content_block_delta") == 20


async def test_max_tokens_stop_reason() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        m = await client.messages.create(model=MODEL, max_tokens=3, messages=USER)
    assert m.stop_reason == "max_tokens"
    assert m.usage.output_tokens == 3


async def test_tool_use_then_text_after_tool_result() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        first = await client.messages.create(
            model=MODEL, max_tokens=512, messages=USER, tools=TOOLS
        )
        assert first.stop_reason == "tool_use"
        use = first.content[-1]
        assert use.type == "tool_use"
        assert use.name == "lookup"
        Lookup.model_validate(use.input)
        history: Any = [
            *USER,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "3 hits"},
            ]},
        ]  # fmt: skip
        second = await client.messages.create(
            model=MODEL, max_tokens=512, messages=history, tools=TOOLS
        )
    assert second.stop_reason == "end_turn"
    assert [b.type for b in second.content] == ["text"]


async def test_streamed_tool_input_assembled_by_sdk() -> None:
    async with running() as sim, anthropic_for(sim) as client, client.messages.stream(
        model=MODEL, max_tokens=512, messages=USER, tools=TOOLS
    ) as stream:
        json_deltas = [e async for e in stream if e.type == "input_json"]
        final = await stream.get_final_message()
    use = final.content[-1]
    assert use.type == "tool_use"
    Lookup.model_validate(use.input)
    assert len(json_deltas) > 2
    assert final.stop_reason == "tool_use"


async def test_forced_tool_gives_schema_valid_input() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        m = await client.messages.create(
            model=MODEL, max_tokens=512, messages=USER, tools=TOOLS,
            tool_choice={"type": "tool", "name": "lookup"},
        )  # fmt: skip
        none = await client.messages.create(
            model=MODEL, max_tokens=512, messages=USER, tools=TOOLS, tool_choice={"type": "none"}
        )
    uses = [b for b in m.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["lookup"]
    Lookup.model_validate(uses[0].input)
    assert [b.type for b in none.content] == ["text"]


async def test_structured_output_parsed_by_sdk() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        m = await client.messages.parse(
            model=MODEL, max_tokens=512, messages=USER, output_format=Summary
        )
    assert isinstance(m.parsed_output, Summary)


async def test_thinking_block_with_signature() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        m = await client.messages.create(
            model=MODEL, max_tokens=2048, messages=USER,
            thinking={"type": "adaptive"},
        )  # fmt: skip
        async with client.messages.stream(
            model=MODEL, max_tokens=2048, messages=USER,
            thinking={"type": "adaptive"},
        ) as stream:  # fmt: skip
            final = await stream.get_final_message()
    assert [b.type for b in m.content] == ["thinking", "text"]
    thinking = m.content[0]
    assert thinking.type == "thinking"
    assert thinking.signature
    assert thinking.thinking
    assert final.content[0].type == "thinking"
    assert final.content[0].signature == thinking.signature.replace("0000001", "0000002")
    assert m.usage.output_tokens == 40


async def test_cap_429_rate_limit_error_with_retry_after() -> None:
    config = SimConfig(max_concurrency=1, models={"*": ModelProfile(latency_s=0.3)})
    async with running(config) as sim, anthropic_for(sim) as client:
        results = await asyncio.gather(
            client.messages.create(model=MODEL, max_tokens=64, messages=USER),
            client.messages.create(model=MODEL, max_tokens=64, messages=USER),
            return_exceptions=True,
        )
        stats = sim.stats()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    err = errors[0]
    assert isinstance(err, anthropic.RateLimitError)
    assert err.response.headers["retry-after"] == "1"
    assert err.response.headers["request-id"].startswith("req_sim_")
    assert err.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": err.body["error"]["message"]},  # type: ignore[index]
        "request_id": err.response.headers["request-id"],
    }
    assert stats.max_in_flight == 2
    assert stats.rate_limited == 1


async def test_rpm_headers_are_rfc3339() -> None:
    clock = VirtualClock()
    async with running(SimConfig(rpm=1), clock=clock) as sim, anthropic_for(sim) as client:
        ok = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=USER
        )
        with pytest.raises(anthropic.RateLimitError) as info:
            await client.messages.create(model=MODEL, max_tokens=64, messages=USER)
    assert ok.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
    headers = info.value.response.headers
    assert headers["retry-after"] == "60"
    assert "retry-after-ms" not in headers
    # VirtualClock's wall clock starts at 1_700_000_000 (2023-11-14T22:13:20Z); + 60 s.
    assert headers["anthropic-ratelimit-requests-reset"] == "2023-11-14T22:14:20Z"


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ("529", anthropic.OverloadedError, 529),
        ("500", anthropic.InternalServerError, 500),
        ("401", anthropic.AuthenticationError, 401),
        ("404", anthropic.NotFoundError, 404),
        ("429", anthropic.RateLimitError, 429),
        ("context_overflow", anthropic.BadRequestError, 400),
        ("quota", anthropic.BadRequestError, 400),
    ],
)
async def test_scripted_errors_map_to_sdk_classes(
    fault: str, error: type[anthropic.APIStatusError], status: int
) -> None:
    async with running() as sim, anthropic_for(sim) as client:
        sim.script([fault])
        with pytest.raises(error) as info:
            await client.messages.create(model=MODEL, max_tokens=64, messages=USER)
    assert info.value.status_code == status
    body: Any = info.value.body
    assert body["type"] == "error"
    assert body["request_id"] == info.value.response.headers["request-id"]
    if fault == "quota":
        assert "credit balance is too low" in body["error"]["message"]
    if fault == "context_overflow":
        assert body["error"]["message"].startswith("prompt is too long")


async def test_overloaded_fault_rate_gives_overloaded_error() -> None:
    config = SimConfig(faults=Faults(error_rate=1.0, error_status=529))
    async with running(config) as sim, anthropic_for(sim) as client:
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(model=MODEL, max_tokens=64, messages=USER)


async def test_missing_max_tokens_is_invalid_request() -> None:
    async with running() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        r = await http.post("/v1/messages", json={"model": MODEL, "messages": USER})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]


async def test_cut_stream_raises_in_sdk() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        sim.script(["cut"])
        with pytest.raises(CUT_ERRORS):
            async with client.messages.stream(model=MODEL, max_tokens=64, messages=USER) as s:
                await s.get_final_message()
        record = sim.stats().requests[-1]
    assert record.fault == "cut"
    assert 0 < record.completion_tokens < 20


async def test_error_event_in_200_stream_is_status_200_api_error() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        sim.script(["stream_error"])
        with pytest.raises(anthropic.APIStatusError) as info:
            async with client.messages.stream(model=MODEL, max_tokens=64, messages=USER) as s:
                await s.get_final_message()
    assert info.value.status_code == 200
    assert not isinstance(info.value, anthropic.OverloadedError)


async def test_metadata_user_id_is_logged() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        await client.messages.create(
            model=MODEL, max_tokens=64, messages=USER, metadata={"user_id": "tenant-9"},
            extra_headers={"x-shoal-tag": "t-1"},
        )  # fmt: skip
        record = sim.stats().requests[-1]
    assert record.metadata == {"user_id": "tenant-9"}
    assert record.tag == "t-1"
    assert record.path == "/v1/messages"
