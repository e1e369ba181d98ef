"""The Anthropic adapter against real, recorded Messages responses (not shoal's simulator).

Transcripts and their sources: :mod:`documented_transcripts` (anthropic-sdk-python's
recorded SSE fixtures, and go-vcr cassettes recorded against api.anthropic.com).
"""

from __future__ import annotations

import json

import pytest
from documented_transcripts import (
    ANTHROPIC_STREAM_ERROR,
    json_body,
    load,
    sse_events,
)
from transcript_server import args, completed, serve, streamed

from shoal.errors import Overloaded, StreamInterrupted
from shoal.types import ReasoningDelta, TextDelta, ToolCallDelta, Usage, UsageEvent


async def test_basic_stream_with_ping() -> None:
    async with serve(sse_events(load("anthropic_basic"))) as url:
        answer, seen = await streamed(url, "anthropic")
    assert answer.text == "Hello there!" and answer.finish_reason == "stop"
    assert answer.raw_finish_reason == "end_turn"
    assert answer.usage == Usage(11, 6)  # message_delta's output count, cumulative
    assert answer.id == "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK"
    assert [e.text for e in seen if isinstance(e, TextDelta)] == ["Hello", " there", "!"]


async def test_tool_use_with_input_json_split_mid_key() -> None:
    """``partial_json`` pieces are concatenated and parsed only at the block's end
    (streaming docs; the first piece is empty)."""
    async with serve(sse_events(load("anthropic_tool_use"))) as url:
        answer, seen = await streamed(url, "anthropic")
    assert answer.text == "I'll check the current weather in Paris for you."
    assert args(answer) == [("toolu_01NRLabsLyVHZPKxbKvkfSMn", "get_weather",
                             {"location": "Paris"})]
    assert answer.finish_reason == "tool_calls" and answer.raw_finish_reason == "tool_use"
    assert answer.usage == Usage(377, 65)
    pieces = [e.arguments for e in seen if isinstance(e, ToolCallDelta) and e.arguments]
    assert "".join(pieces) == '{"location": "Paris"}'


async def test_recorded_thinking_signature_and_tool_stream() -> None:
    """api.anthropic.com with thinking on: a thinking block (thinking_delta, then
    signature_delta just before it closes), a ping, a tool_use block whose input arrives
    over 7 events, every data line padded with trailing spaces."""
    async with serve(sse_events(load("anthropic_thinking_tool_stream")),
                     content_type="text/event-stream; charset=utf-8") as url:
        answer, seen = await streamed(url, "anthropic")
    assert answer.reasoning is not None and len(answer.reasoning) == 301
    assert answer.reasoning.startswith("The user is asking for weather information")
    (part,) = answer.reasoning_parts
    assert part.text == answer.reasoning
    assert part.signature is not None and part.signature.startswith("EtYDCkYICxgCKkAVHEWR")
    assert len(part.signature) == 636  # kept whole, to be sent back on the next turn
    assert args(answer) == [("toolu_01Js4AMfx5qpTLhwTusnvT68", "weather",
                             {"location": "Florence, Italy"})]
    assert answer.text == "" and answer.finish_reason == "tool_calls"
    assert answer.usage == Usage(424, 119)
    assert any(isinstance(e, ReasoningDelta) and e.signature == part.signature for e in seen)


async def test_recorded_thinking_and_tool_non_stream() -> None:
    async with serve(load("anthropic_thinking_tool"), content_type="application/json") as url:
        answer = await completed(url, "anthropic")
    body = json_body("anthropic_thinking_tool")
    (part,) = answer.reasoning_parts
    assert part.text == body["content"][0]["thinking"] == answer.reasoning
    assert part.signature == body["content"][0]["signature"]
    assert args(answer) == [("toolu_014azqsWLU8Djh6RhmBGRC2u", "weather",
                             {"location": "Florence, Italy"})]
    assert answer.finish_reason == "tool_calls" and answer.usage == Usage(424, 118)


async def test_two_tool_blocks_after_text() -> None:
    async with serve(sse_events(load("anthropic_multi_tool_stream"))) as url:
        answer, _ = await streamed(url, "anthropic")
    assert answer.text == "I'll add and multiply the numbers 2 and 3 for you."
    assert args(answer) == [("toolu_01UYxUYC2zRPY8wiutnF48eP", "add", {"a": 2, "b": 3}),
                            ("toolu_01VaRx1jpWCvPhi7L4kywAcd", "multiply", {"a": 2, "b": 3})]
    assert answer.usage == Usage(502, 137)


async def test_non_stream_text_and_tool() -> None:
    async with serve(load("anthropic_tool"), content_type="application/json") as url:
        answer = await completed(url, "anthropic")
    assert answer.text == "I'll check the weather in Florence, Italy for you."
    assert args(answer) == [("toolu_01XLb9pzgfLa2EMyqWot6Ezt", "weather",
                             {"location": "Florence,Italy"})]
    assert answer.usage == Usage(394, 66) and answer.finish_reason == "tool_calls"


async def test_message_delta_cache_counts_and_thinking_tokens() -> None:
    """message_delta usage is cumulative and overwrites message_start's
    (message_delta_usage.py); cache reads/writes are *not* inside input_tokens
    (shoal's input = input + cache_creation + cache_read); ``output_tokens_details.
    thinking_tokens`` is the reasoning part of output_tokens (output_tokens_details.py)."""
    async with serve(sse_events(load("anthropic_delta_fields"))) as url:
        answer, seen = await streamed(url, "anthropic")
    assert answer.text == "Hello there!"
    assert answer.usage == Usage(input_tokens=40 + 12 + 7, output_tokens=8,
                                 cached_input_tokens=7, reasoning_tokens=3,
                                 cache_write_tokens=12)
    assert answer.usage.fresh_input_tokens == 40
    assert [e.usage for e in seen if isinstance(e, UsageEvent)] == [answer.usage]


async def test_refusal_stop_reason() -> None:
    async with serve(sse_events(load("anthropic_refusal"))) as url:
        answer, _ = await streamed(url, "anthropic")
    assert answer.finish_reason == "content_filter" and answer.raw_finish_reason == "refusal"
    assert answer.refusal is not None and answer.text == ""
    assert answer.tool_calls == []


@pytest.mark.parametrize(("stop", "finish"), [
    ("pause_turn", "other"),  # server tools paused the turn: send it back to continue
    ("model_context_window_exceeded", "length"),  # cut by the context window
    ("max_tokens", "length"),
    ("stop_sequence", "stop"),
])
async def test_documented_stop_reasons_non_stream(stop: str, finish: str) -> None:
    """Every value of types/stop_reason.py, on the recorded non-stream tool answer
    (its stop_reason swapped; the tool call still arrives, but a cut wins over it)."""
    body = json_body("anthropic_tool")
    body["stop_reason"] = stop
    async with serve(json.dumps(body).encode(), content_type="application/json") as url:
        answer = await completed(url, "anthropic")
    assert answer.raw_finish_reason == stop
    expected = finish if finish == "length" or not answer.tool_calls else "tool_calls"
    assert answer.finish_reason == expected


async def test_error_event_before_output_is_overloaded_after_is_interrupted() -> None:
    """The streaming docs' ``event: error`` (overloaded_error) after the HTTP 200."""
    head = sse_events(load("anthropic_basic"))
    before = [head[0], ANTHROPIC_STREAM_ERROR]
    async with serve(before) as url:
        with pytest.raises(Overloaded) as exc:
            await streamed(url, "anthropic")
    assert exc.value.status == 200 and exc.value.retryable
    after = [*head[:4], ANTHROPIC_STREAM_ERROR]  # after "Hello"
    async with serve(after) as url:
        with pytest.raises(StreamInterrupted) as cut:
            await streamed(url, "anthropic")
    assert isinstance(cut.value.__cause__, Overloaded)
    assert cut.value.partial_output == "Hello"
    assert cut.value.usage == Usage(11, 1)  # message_start's count reached us
