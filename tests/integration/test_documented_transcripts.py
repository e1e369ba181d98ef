"""OpenAI-style adapters against real, recorded provider responses (not shoal's simulator).

Each transcript in :mod:`documented_transcripts` is served byte for byte, one provider
event per write, and the test asserts what a user of shoal must get from it: text, tool
calls with parsed arguments, reasoning, refusal, logprobs, finish reason and usage
(input, output, cached, reasoning), as the provider documents them.
Anthropic: test_documented_transcripts_anthropic.py; errors and the Router:
test_documented_transcripts_errors.py.
"""

from __future__ import annotations

import json

import pytest
from documented_transcripts import json_body, load, sse_events
from transcript_server import args, completed, serve, streamed

from shoal.types import (
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

# -- OpenAI (recorded by openai-python's own tests, gpt-4o-2024-08-06) -----------------------


async def test_openai_text_stream_with_include_usage_chunk() -> None:
    """Usage arrives on a last chunk with ``choices: []`` before [DONE]
    (chat_completion_stream_options_param.py); every earlier chunk has none."""
    async with serve(sse_events(load("openai_text_include_usage"))) as url:
        answer, seen = await streamed(url, "openai")
    assert answer.text == (
        "I'm unable to provide real-time weather updates. To get the current weather in "
        "San Francisco, I recommend checking a reliable weather website or a weather app.")
    assert answer.finish_reason == "stop" and answer.raw_finish_reason == "stop"
    assert answer.usage == Usage(14, 30)
    assert answer.id == "chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL"
    assert answer.model == "gpt-4o-2024-08-06"
    assert answer.tool_calls == [] and answer.refusal is None
    assert [e.usage for e in seen if isinstance(e, UsageEvent)] == [Usage(14, 30)]
    assert "".join(e.text for e in seen if isinstance(e, TextDelta)) == answer.text


async def test_openai_two_parallel_tool_calls_by_index() -> None:
    """Fragments carry ``index``; id/type/name only on each call's first fragment and
    the arguments arrive in pieces to be joined in order (chat_completion_chunk.py)."""
    async with serve(sse_events(load("openai_two_tool_calls"))) as url:
        answer, seen = await streamed(url, "openai")
    assert args(answer) == [
        ("call_JMW1whyEaYG438VE1OIflxA2", "GetWeatherArgs",
         {"city": "Edinburgh", "country": "GB", "units": "c"}),
        ("call_DNYTawLBoN8fj3KN6qU9N1Ou", "get_stock_price",
         {"ticker": "AAPL", "exchange": "NASDAQ"}),
    ]
    assert answer.finish_reason == "tool_calls" and answer.text == ""
    assert answer.usage == Usage(149, 60)
    deltas = [e for e in seen if isinstance(e, ToolCallDelta)]
    assert {d.index for d in deltas} == {0, 1}
    assert [d.name for d in deltas if d.name] == ["GetWeatherArgs", "get_stock_price"]


async def test_openai_streamed_refusal() -> None:
    """``delta.refusal`` pieces with ``content: null``: the model declined; the
    label says ``stop``, so shoal reports content_filter and the refusal text."""
    async with serve(sse_events(load("openai_refusal"))) as url:
        answer, seen = await streamed(url, "openai")
    assert answer.refusal == "I'm sorry, I can't assist with that request."
    assert answer.text == "" and answer.finish_reason == "content_filter"
    assert answer.raw_finish_reason == "stop"
    assert answer.usage == Usage(79, 11)
    assert not any(isinstance(e, TextDelta) and e.text for e in seen)


async def test_openai_streamed_logprobs() -> None:
    async with serve(sse_events(load("openai_logprobs"))) as url:
        answer, seen = await streamed(url, "openai")
    assert answer.text == "Foo!"
    assert answer.logprobs is not None
    assert [(t.token, t.bytes) for t in answer.logprobs] == [("Foo", (70, 111, 111)),
                                                           ("!", (33,))]
    assert answer.logprobs[0].logprob == pytest.approx(-0.0025094282)
    on_deltas = [lp.token for e in seen if isinstance(e, TextDelta) for lp in e.logprobs]
    assert on_deltas == ["Foo", "!"]
    assert answer.usage == Usage(9, 2)


async def test_openai_length_cut() -> None:
    async with serve(sse_events(load("openai_length"))) as url:
        answer, _ = await streamed(url, "openai")
    assert answer.text == '{"' and answer.finish_reason == "length"
    assert answer.usage == Usage(79, 1)


# Non-stream bodies recorded by openai-python, inlined in tests/lib/chat/test_completions.py
# (test_parse_pydantic_model_refusal, test_parse_multiple_pydantic_tools), verbatim.
OPENAI_REFUSAL_BODY = (
    b'{"id": "chatcmpl-ABfvwoKVWPQj2UPlAcAKM7s40GsRx", "object": "chat.completion", "created": '
    b'1727346164, "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "message": {"role": '
    b'"assistant", "content": null, "refusal": "I\'m very sorry, but I can\'t assist with '
    b'that."}, "logprobs": null, "finish_reason": "stop"}], "usage": {"prompt_tokens": 79, '
    b'"completion_tokens": 12, "total_tokens": 91, "completion_tokens_details": '
    b'{"reasoning_tokens": 0}}, "system_fingerprint": "fp_5050236cbd"}')
OPENAI_TWO_TOOLS_BODY = (
    b'{"id": "chatcmpl-ABfvyvfNWKcl7Ohqos4UFrmMs1v4C", "object": "chat.completion", "created": '
    b'1727346166, "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "message": {"role": '
    b'"assistant", "content": null, "tool_calls": [{"id": "call_fdNz3vOBKYgOIpMdWotB9MjY", '
    b'"type": "function", "function": {"name": "GetWeatherArgs", "arguments": "{\\"city\\": '
    b'\\"Edinburgh\\", \\"country\\": \\"GB\\", \\"units\\": \\"c\\"}"}}, {"id": '
    b'"call_h1DWI1POMJLb0KwIyQHWXD4p", "type": "function", "function": {"name": '
    b'"get_stock_price", "arguments": "{\\"ticker\\": \\"AAPL\\", \\"exchange\\": '
    b'\\"NASDAQ\\"}"}}], "refusal": null}, "logprobs": null, "finish_reason": "tool_calls"}], '
    b'"usage": {"prompt_tokens": 149, "completion_tokens": 60, "total_tokens": 209, '
    b'"completion_tokens_details": {"reasoning_tokens": 0}}, "system_fingerprint": '
    b'"fp_b40fb1c6fb"}')


async def test_openai_non_stream_refusal_and_tools() -> None:
    async with serve(OPENAI_REFUSAL_BODY, content_type="application/json") as url:
        refused = await completed(url, "openai")
    assert refused.refusal == "I'm very sorry, but I can't assist with that."
    assert refused.text == "" and refused.finish_reason == "content_filter"
    assert refused.usage == Usage(79, 12)
    async with serve(OPENAI_TWO_TOOLS_BODY, content_type="application/json") as url:
        tools = await completed(url, "openai")
    assert [(n, a) for _, n, a in args(tools)] == [
        ("GetWeatherArgs", {"city": "Edinburgh", "country": "GB", "units": "c"}),
        ("get_stock_price", {"ticker": "AAPL", "exchange": "NASDAQ"})]
    assert tools.finish_reason == "tool_calls" and tools.usage == Usage(149, 60)


async def test_openai_gpt5_reasoning_tokens_stream_and_whole() -> None:
    """gpt-5 (recorded): ``completion_tokens_details.reasoning_tokens`` ⊂ completion
    tokens; chunks carry ``obfuscation`` and ``usage: null`` until the usage chunk."""
    async with serve(sse_events(load("openai_gpt5_tool_stream"))) as url:
        answer, _ = await streamed(url, "openai")
    assert args(answer) == [("call_eKRQDHJdZUhEXo1K1cobzFrl", "weather",
                             {"location": "Florence, Italy"})]
    assert answer.usage == Usage(145, 89, cached_input_tokens=0, reasoning_tokens=64)
    assert answer.finish_reason == "tool_calls"
    async with serve(load("openai_gpt5_tool"), content_type="application/json") as url:
        whole = await completed(url, "openai")
    assert args(whole) == [("call_CbLGG8FesyHec5bdp4w9isPp", "weather",
                            {"location": "Florence, Italy"})]
    assert whole.usage == Usage(145, 153, reasoning_tokens=128)
    assert whole.text == "" and whole.finish_reason == "tool_calls"


# -- Zhipu GLM (api.z.ai, recorded) ------------------------------------------------------------


async def test_zhipu_thinking_stream_usage_on_the_finish_chunk() -> None:
    """GLM sends usage on the chunk with finish_reason, without stream_options
    (docs.bigmodel.cn streaming guide), cached tokens in prompt_tokens_details; thinking
    streams as reasoning_content before the text; the tool call arrives whole."""
    async with serve(sse_events(load("zhipu_thinking_tool_stream")),
                     content_type="text/event-stream;charset=UTF-8") as url:
        answer, seen = await streamed(url, "zhipu")
    assert answer.text == "I'll check the weather in Florence, Italy for you."
    assert answer.reasoning is not None
    assert answer.reasoning.startswith("The user is asking about the weather in Florence")
    assert len(answer.reasoning) == 298
    assert args(answer) == [("call_330c741a86144cb7a385bc6d", "weather",
                             {"location": "Florence"})]
    assert answer.finish_reason == "tool_calls"
    assert answer.usage == Usage(173, 87, cached_input_tokens=172, reasoning_tokens=63)
    first_text = next(i for i, e in enumerate(seen) if isinstance(e, TextDelta))
    assert all(isinstance(e, ReasoningDelta) for e in seen[:first_text])


async def test_zhipu_thinking_non_stream() -> None:
    async with serve(load("zhipu_thinking_tool"),
                     content_type="application/json; charset=UTF-8") as url:
        answer = await completed(url, "zhipu")
    assert answer.text == "I'll get the current weather information for Florence, Italy for you."
    assert answer.reasoning is not None and answer.reasoning.startswith("The user is asking")
    assert args(answer) == [("call_-7807252050131023498", "weather",
                             {"location": "Florence, Italy"})]
    assert answer.usage == Usage(173, 89, cached_input_tokens=169, reasoning_tokens=61)


# -- llama.cpp llama-server (recorded, --jinja) ------------------------------------------------


async def test_llamacpp_reasoning_and_streamed_tool_arguments() -> None:
    async with serve(sse_events(load("llamacpp_reasoning_tool_stream"))) as url:
        answer, _ = await streamed(url, "llamacpp")
    assert answer.reasoning == (
        "We need to call function 'weather' with location \"Florence, Italy\".")
    assert answer.text == ""
    assert args(answer) == [("1wNpqrejg1FCTjf6xq8JRCGKgWZO74AL", "weather",
                             {"location": "Florence, Italy"})]
    assert answer.finish_reason == "tool_calls"
    assert answer.usage == Usage(139, 42)  # the choices:[] chunk (its "timings" ignored)


# -- Moonshot / Kimi (live recording) ----------------------------------------------------------


async def test_moonshot_usage_in_the_choice_and_after() -> None:
    """Kimi puts usage inside ``choices[0]`` on the finish chunk (PROVIDERS.md §3) and,
    in this live K3 recording, again on a ``choices: []`` chunk: counted once."""
    async with serve(sse_events(load("moonshot_usage_live_stream"))) as url:
        answer, seen = await streamed(url, "moonshot")
    assert answer.text == "OK"
    assert answer.reasoning == (
        'The user is asking me to reply with exactly "OK". This is a simple request with '
        'no ambiguity. I should just respond with "OK" and nothing else.')
    assert answer.finish_reason == "stop"
    assert answer.usage == Usage(90, 50, cached_input_tokens=90, reasoning_tokens=33)
    assert [e.usage for e in seen if isinstance(e, UsageEvent)] == [answer.usage]


# -- DeepSeek (API reference example) ----------------------------------------------------------


async def test_deepseek_cache_hit_and_miss_usage() -> None:
    """prompt_cache_hit_tokens + prompt_cache_miss_tokens = prompt_tokens
    (api-docs.deepseek.com/guides/kv_cache); cached input is the hit count."""
    async with serve(load("deepseek_chat"), content_type="application/json") as url:
        answer = await completed(url, "deepseek")
    assert answer.text == "Hello! How can I assist you today? 😊"
    assert answer.finish_reason == "stop" and answer.model == "deepseek-chat"
    assert answer.usage == Usage(10, 11, cached_input_tokens=0)
    hit = json_body("deepseek_chat")
    hit["usage"].update(prompt_cache_hit_tokens=8, prompt_cache_miss_tokens=2)
    hit["usage"].pop("prompt_tokens_details")  # older answers carry only hit/miss
    async with serve(json.dumps(hit).encode(), content_type="application/json") as url:
        cached = await completed(url, "deepseek")
    assert cached.usage == Usage(10, 11, cached_input_tokens=8)


# -- MiniMax (API reference example) -----------------------------------------------------------


async def test_minimax_v2_answer_with_base_resp_ok() -> None:
    """``base_resp.status_code`` 0 is success (platform.minimax.io text-post example)."""
    async with serve(load("minimax_v2"), content_type="application/json") as url:
        answer = await completed(url, "minimax")
    assert answer.text == "Hello! How can I assist you?"
    assert answer.reasoning == "...omitted"
    assert answer.usage == Usage(26, 223, reasoning_tokens=214)
    assert answer.finish_reason == "stop"
