"""The simulator driven by the official ``openai`` SDK, unmodified, over real HTTP."""

from __future__ import annotations

import asyncio
import json
from enum import StrEnum
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk
from pydantic import BaseModel, Field
from sim_fixtures import CUT_ERRORS, QUESTION, USER, openai_for, prompt_tokens_of, running

from shoal.sim import Faults, ModelProfile, SimConfig, SimServer

MODEL = "gpt-4o-mini"


class Priority(StrEnum):
    LOW = "low"
    HIGH = "high"


class Step(BaseModel):
    title: str
    minutes: int = Field(ge=1, le=30)


class Plan(BaseModel):
    goal: str
    priority: Priority
    steps: list[Step] = Field(min_length=2)
    notes: str | None
    confidence: float = Field(ge=0, le=1)


class GetWeather(BaseModel):
    city: str
    days: int = Field(ge=1, le=7)
    unit: Priority


async def test_text_answer_with_usage() -> None:
    async with running() as sim, openai_for(sim) as client:
        r = await client.chat.completions.create(model=MODEL, messages=USER)
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert len(choice.message.content.split()) == 20
    assert r.model == MODEL
    assert r.object == "chat.completion"
    assert r.usage is not None
    assert r.usage.completion_tokens == 20
    assert r.usage.prompt_tokens == prompt_tokens_of(QUESTION)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 20
    assert r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens == 0


async def test_stream_matches_whole_answer_and_ends_with_usage_chunk() -> None:
    async with running() as sim, openai_for(sim) as client:
        whole = await client.chat.completions.create(model=MODEL, messages=USER)
        stream = await client.chat.completions.create(
            model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks: list[ChatCompletionChunk] = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == sum(
        1 for c in chunks if c.choices and c.choices[0].delta.content
    )
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    async with running() as sim, openai_for(sim) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_max_tokens_truncates_with_length() -> None:
    async with running() as sim, openai_for(sim) as client:
        r = await client.chat.completions.create(
            model=MODEL, messages=USER, max_completion_tokens=5
        )
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content is not None
    assert len(r.choices[0].message.content.split()) == 5
    assert r.usage is not None
    assert r.usage.completion_tokens == 5


async def test_tool_call_then_text_after_tool_result() -> None:
    tools: Any = [openai.pydantic_function_tool(GetWeather)]
    async with running() as sim, openai_for(sim) as client:
        first = await client.chat.completions.create(model=MODEL, messages=USER, tools=tools)
        msg = first.choices[0].message
        assert first.choices[0].finish_reason == "tool_calls"
        assert msg.tool_calls is not None
        assert len(msg.tool_calls) == 1
        call = msg.tool_calls[0]
        assert call.type == "function"
        assert call.function.name == "GetWeather"
        GetWeather.model_validate_json(call.function.arguments)
        assert first.usage is not None
        assert first.usage.completion_tokens == -(-len(call.function.arguments) // 4)
        history: Any = [
            *USER,
            msg.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ]
        second = await client.chat.completions.create(model=MODEL, messages=history, tools=tools)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content


async def test_streamed_tool_call_assembled_by_sdk_helper() -> None:
    tools = [openai.pydantic_function_tool(GetWeather)]
    config = SimConfig(models={"*": ModelProfile(tool_calls=2)})
    async with (
        running(config) as sim,
        openai_for(sim) as client,
        client.chat.completions.stream(
            model=MODEL, messages=USER, tools=tools, stream_options={"include_usage": True}
        ) as stream,
    ):
        deltas = [e async for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert len(calls) == 2
    assert len({c.id for c in calls}) == 2
    for call in calls:
        assert isinstance(call.function.parsed_arguments, GetWeather)
    assert len(deltas) > 2  # arguments arrived in pieces, not whole
    assert final.usage is not None
    assert final.usage.completion_tokens == sum(1 for d in deltas if d.arguments_delta)


async def test_json_schema_output_parsed_by_sdk() -> None:
    async with running() as sim, openai_for(sim) as client:
        r = await client.chat.completions.parse(model=MODEL, messages=USER, response_format=Plan)
        again = await client.chat.completions.parse(
            model=MODEL, messages=USER, response_format=Plan
        )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Plan)
    assert len(parsed.steps) >= 2
    assert again.choices[0].message.parsed == parsed  # same request, same answer


async def test_json_object_mode_gives_an_object() -> None:
    # OpenAI refuses json_object unless the messages say "json" (the openai style too).
    ask_json: Any = [{"role": "user", "content": QUESTION + " Answer in JSON."}]
    async with running() as sim, openai_for(sim) as client:
        r = await client.chat.completions.create(
            model=MODEL, messages=ask_json, response_format={"type": "json_object"}
        )
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


async def test_cap_429_is_reported_by_sdk_with_retry_after() -> None:
    config = SimConfig(max_concurrency=1, models={"*": ModelProfile(latency_s=0.3)})
    async with running(config) as sim, openai_for(sim) as client:
        results = await asyncio.gather(
            client.chat.completions.create(model=MODEL, messages=USER),
            client.chat.completions.create(model=MODEL, messages=USER),
            return_exceptions=True,
        )
        stats = sim.stats()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    err = errors[0]
    assert isinstance(err, openai.RateLimitError)
    assert err.code == "rate_limit_exceeded"
    assert err.type == "requests"
    assert err.response.headers["retry-after"] == "1"
    assert err.response.headers["retry-after-ms"] == "1000"
    assert err.response.headers["x-ratelimit-limit-requests"] == "1"
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.response.headers["x-ratelimit-reset-requests"] == "1s"
    assert stats.max_in_flight == 2
    assert stats.rate_limited == 1
    assert stats.by_status == {200: 1, 429: 1}
    assert sorted(str(r.fault) for r in stats.requests) == ["None", "cap"]


async def test_sdk_retries_honour_the_simulators_retry_after() -> None:
    config = SimConfig(fault_retry_after_s=0.01)
    async with running(config) as sim, openai_for(sim, max_retries=2) as client:
        sim.script(["429", "429", "ok"])
        r = await client.chat.completions.create(model=MODEL, messages=USER)
        stats = sim.stats()
    assert r.choices[0].message.content
    assert [rec.status for rec in stats.requests] == [429, 429, 200]
    assert [rec.retry_count for rec in stats.requests] == [0, 1, 2]
    assert [rec.fault for rec in stats.requests] == ["429", "429", None]


@pytest.mark.parametrize(
    ("style", "status", "check"),
    [
        ("openai", 429, lambda e: (e.code, e.type) == ("insufficient_quota",) * 2),
        ("deepseek", 402, lambda e: e.body["message"] == "Insufficient Balance"),
        ("moonshot", 429, lambda e: e.type == "exceeded_current_quota_error"),
        ("zhipu", 429, lambda e: e.code == "1113"),
    ],
)
async def test_quota_error_in_each_style(style: str, status: int, check: Any) -> None:
    config = SimConfig(style=style, faults=Faults(quota_exhausted=True))
    async with running(config) as sim, openai_for(sim) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == status
    assert check(info.value)


async def test_auth_failure_is_authentication_error() -> None:
    async with running(SimConfig(faults=Faults(auth_fail=True))) as sim, openai_for(sim) as client:
        with pytest.raises(openai.AuthenticationError) as info:
            await client.chat.completions.create(model=MODEL, messages=USER)
    assert "sk-test" not in str(info.value.body)


async def test_api_keys_setting_rejects_unknown_keys() -> None:
    async with running(SimConfig(api_keys=("sk-good",))) as sim:
        async with openai_for(sim) as client:
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(model=MODEL, messages=USER)
        good = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="sk-good", max_retries=0)
        try:
            r = await good.chat.completions.create(model=MODEL, messages=USER)
        finally:
            await good.close()
    assert r.choices[0].message.content


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("503", openai.InternalServerError),
        ("500", openai.InternalServerError),
        ("400", openai.BadRequestError),
        ("404", openai.NotFoundError),
        ("context_overflow", openai.BadRequestError),
    ],
)
async def test_scripted_statuses_map_to_sdk_classes(fault: str, error: type[Exception]) -> None:
    async with running() as sim, openai_for(sim) as client:
        sim.script([fault])
        with pytest.raises(error):
            await client.chat.completions.create(model=MODEL, messages=USER)
        assert sim.stats().requests[-1].fault == fault


async def test_bad_gateway_is_an_html_page() -> None:
    async with running() as sim, openai_for(sim) as client:
        sim.script(["502"])
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 502
    assert info.value.response.headers["content-type"].startswith("text/html")


async def test_prompt_over_context_window_is_400_context_length_exceeded() -> None:
    config = SimConfig(models={"small-*": ModelProfile(context_window=10)})
    long: Any = [{"role": "user", "content": "x" * 400}]
    async with running(config) as sim, openai_for(sim) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="small-model", messages=long)
        ok = await client.chat.completions.create(model="big-model", messages=long)
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length is 10 tokens" in info.value.message
    assert ok.usage is not None
    assert ok.usage.prompt_tokens == 100


async def test_cut_stream_raises_in_sdk() -> None:
    async with running() as sim, openai_for(sim) as client:
        sim.script(["cut"])
        received: list[str] = []
        stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        with pytest.raises(CUT_ERRORS):  # noqa: PT012 - raised mid-iteration
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
        record = sim.stats().requests[-1]
    assert 0 < len([t for t in received if t]) < 20
    assert record.fault == "cut"
    assert record.status == 200
    assert record.completion_tokens == len([t for t in received if t])


async def test_cut_whole_body_raises_in_sdk() -> None:
    async with running() as sim, openai_for(sim) as client:
        sim.script(["cut"])
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model=MODEL, messages=USER)


async def test_error_event_inside_200_stream_raises_api_error() -> None:
    async with running() as sim, openai_for(sim) as client:
        sim.script(["stream_error"])
        stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                pass
    assert not isinstance(info.value, openai.APIStatusError)
    assert "server had an error" in info.value.message


async def test_malformed_chunk_breaks_the_sdk_parser() -> None:
    async with running() as sim, openai_for(sim) as client:
        sim.script(["malformed"])
        stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        with pytest.raises(ValueError, match=r"Expecting|Unterminated"):
            async for _ in stream:
                pass


async def test_schema_invalid_answer_fails_validation() -> None:
    async with running() as sim, openai_for(sim) as client:
        sim.script(["schema_invalid", "ok"])
        fmt: Any = {
            "type": "json_schema",
            "json_schema": {"name": "Plan", "schema": Plan.model_json_schema()},
        }
        bad = await client.chat.completions.create(model=MODEL, messages=USER, response_format=fmt)
        good = await client.chat.completions.parse(model=MODEL, messages=USER, response_format=Plan)
    raw = json.loads(bad.choices[0].message.content or "")
    assert isinstance(raw, dict)
    with pytest.raises(ValueError, match="validation error"):
        Plan.model_validate(raw)
    assert isinstance(good.choices[0].message.parsed, Plan)


async def test_hang_times_out_in_sdk_and_is_logged() -> None:
    async with running() as sim, openai_for(sim, timeout=0.3) as client:
        sim.script(["hang"])
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model=MODEL, messages=USER)
        for _ in range(200):  # the server notices the disconnect on its next loop turns
            if sim.stats().in_flight == 0:
                break
            await asyncio.sleep(0.01)
        stats = sim.stats()
    assert stats.in_flight == 0
    assert stats.requests[-1].fault == "hang"
    assert stats.requests[-1].status == 0


async def test_metadata_tag_and_model_are_logged() -> None:
    async with running() as sim, openai_for(sim) as client:
        await client.chat.completions.create(
            model=MODEL,
            messages=USER,
            metadata={"run": "r1", "step": "writer"},
            extra_headers={"x-shoal-tag": "flow-7"},
        )
        record = sim.stats().requests[-1]
    assert record.metadata == {"run": "r1", "step": "writer"}
    assert record.tag == "flow-7"
    assert record.model == MODEL
    assert record.path == "/v1/chat/completions"
    assert record.stream is False
    assert record.id.startswith("req_sim_")


async def test_deepseek_reasoner_streams_reasoning_content() -> None:
    async with running(SimConfig(style="deepseek")) as sim, openai_for(sim) as client:
        whole = await client.chat.completions.create(model="deepseek-reasoner", messages=USER)
        stream = await client.chat.completions.create(
            model="deepseek-reasoner", messages=USER, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
    extra = whole.choices[0].message.model_extra or {}
    assert extra["reasoning_content"]
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    assert reasoning == extra["reasoning_content"]
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 20
    assert usage.completion_tokens == 40
    assert (usage.model_extra or {})["prompt_cache_miss_tokens"] == usage.prompt_tokens


async def test_sim_server_restarts_are_refused_while_running() -> None:
    sim = SimServer()
    await sim.start()
    try:
        with pytest.raises(Exception, match="already running"):
            await sim.start()
    finally:
        await sim.stop()
        await sim.stop()
    assert not sim.running
