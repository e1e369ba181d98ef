"""Real provider responses, byte for byte, each with where it came from.

The rule these serve: test the adapters against what providers *document or were
recorded sending*, not against shoal's own simulator. Bigger transcripts live as files
in ``transcripts/`` (copied verbatim from their source; nothing re-serialized unless a
comment says so); small error bodies are inline. ``load(name)`` returns the bytes.

Sources (all public):
- openai-python: openai/openai-python @ e43b4224 (v3.x), ``.inline-snapshot/external/*.bin``
  — Chat Completions streams recorded from api.openai.com (gpt-4o-2024-08-06) by the
  SDK's own tests (tests/lib/chat/test_completions_streaming.py), and the non-stream
  bodies inlined in tests/lib/chat/test_completions.py.
- anthropic-sdk-python: anthropics/anthropic-sdk-python @ 009b0353 (and d2e7c4e4 for one
  file), ``tests/lib/streaming/fixtures/*.txt`` — the SDK's recorded SSE streams.
- charmbracelet/fantasy @ f6d4d1e (v0.41.2), ``providertests/testdata/**.yaml`` — go-vcr
  cassettes recorded against api.anthropic.com, api.openai.com, api.z.ai (GLM-4.7-flash)
  and a llama.cpp ``llama-server`` (b7010, gpt-oss-20b); the response ``body`` of the
  first interaction, unchanged (Anthropic's trailing-space padding included).
- vercel/ai @ db416979, packages/moonshotai/src/__fixtures__/moonshotai-usage-live.chunks.txt
  — a live Kimi K3 stream (api.moonshot.ai); the fixture keeps one JSON chunk a line,
  so the ``data: …\\n\\n`` framing and the closing ``data: [DONE]`` are ours.
- Provider docs pages (URLs next to each inline body below).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent / "transcripts"

# name -> (file, source). Every file is the source's bytes, unchanged unless noted.
FILES: dict[str, tuple[str, str]] = {
    # -- OpenAI Chat Completions -----------------------------------------------------------
    # Text stream with stream_options.include_usage: finish chunk, then a choices:[] usage
    # chunk, then [DONE]. openai-python .inline-snapshot/external/e2aad469b71d…bin
    # (test_parse_nothing).
    "openai_text_include_usage": ("openai_text_include_usage.sse",
                                  "openai-python e2aad469b71d"),
    # Two parallel tool calls, fragments matched on index 0 and 1; id/type/name only in
    # each call's first fragment. openai-python .inline-snapshot/external/f82268f2fefd…bin
    # (test_parse_multiple_pydantic_tools).
    "openai_two_tool_calls": ("openai_two_tool_calls.sse", "openai-python f82268f2fefd"),
    # Refusal streamed as delta.refusal pieces, content null, finish_reason "stop".
    # openai-python .inline-snapshot/external/173417d55340…bin (test_parse_pydantic_model_refusal).
    "openai_refusal": ("openai_refusal.sse", "openai-python 173417d55340"),
    # logprobs.content per chunk (token, logprob, bytes, top_logprobs).
    # openai-python .inline-snapshot/external/83b060bae42e…bin (test_content_logprobs_events).
    "openai_logprobs": ("openai_logprobs.sse", "openai-python 83b060bae42e"),
    # finish_reason "length" after one token (max_tokens=1).
    # openai-python .inline-snapshot/external/4cc50a6135d2…bin (test_parse_max_tokens_reached).
    "openai_length": ("openai_length.sse", "openai-python 4cc50a6135d2"),
    # gpt-5 tool call stream: obfuscation fields, usage:null on every chunk, final usage
    # with completion_tokens_details.reasoning_tokens=64. charmbracelet/fantasy
    # providertests/testdata/TestOpenAICommon/openai-gpt-5/tool_streaming.yaml
    "openai_gpt5_tool_stream": ("openai_gpt5_tool_reasoning_tokens.sse",
                                "fantasy TestOpenAICommon/openai-gpt-5/tool_streaming.yaml"),
    # gpt-5 non-stream tool call, reasoning_tokens=128, content null.
    # charmbracelet/fantasy providertests/testdata/TestOpenAICommon/openai-gpt-5/tool.yaml
    "openai_gpt5_tool": ("openai_gpt5_tool.json",
                         "fantasy TestOpenAICommon/openai-gpt-5/tool.yaml"),
    # -- Anthropic Messages ------------------------------------------------------------------
    # Text with a ping between events. anthropic-sdk-python
    # tests/lib/streaming/fixtures/basic_response.txt
    "anthropic_basic": ("anthropic_sdk_basic_response.sse",
                        "anthropic-sdk-python basic_response.txt"),
    # Text then tool_use; input_json_delta split mid-key ("{\"locati", "on\": \"P", …),
    # an empty first partial_json. anthropic-sdk-python
    # tests/lib/streaming/fixtures/tool_use_response.txt
    "anthropic_tool_use": ("anthropic_sdk_tool_use_response.sse",
                           "anthropic-sdk-python tool_use_response.txt"),
    # stop_reason "refusal" with stop_details, no text. anthropic-sdk-python
    # tests/lib/streaming/fixtures/refusal_response.txt @ 009b0353
    "anthropic_refusal": ("anthropic_sdk_refusal_response.sse",
                          "anthropic-sdk-python refusal_response.txt"),
    # message_delta carrying cumulative input/cache counts and
    # output_tokens_details.thinking_tokens (types/output_tokens_details.py: "Always ≤
    # output_tokens"). anthropic-sdk-python @ d2e7c4e4
    # tests/lib/streaming/fixtures/message_delta_fields_response.txt
    "anthropic_delta_fields": ("anthropic_sdk_message_delta_fields_response.sse",
                               "anthropic-sdk-python message_delta_fields_response.txt"),
    # Recorded from api.anthropic.com (claude-sonnet-4, thinking budget 4000): thinking
    # block with thinking_delta + signature_delta, ping, a tool_use whose input_json_delta
    # is split over 7 events, message_delta with cumulative usage, and every data line
    # padded with trailing spaces. charmbracelet/fantasy
    # providertests/testdata/TestAnthropicThinking/claude-sonnet-4/thinking-streaming.yaml
    "anthropic_thinking_tool_stream": ("anthropic_thinking_tool.sse",
                                       "fantasy TestAnthropicThinking/claude-sonnet-4/"
                                       "thinking-streaming.yaml"),
    # The same, non-stream (thinking block with signature, tool_use, stop_reason tool_use).
    # fantasy providertests/testdata/TestAnthropicThinking/claude-sonnet-4/thinking.yaml
    "anthropic_thinking_tool": ("anthropic_thinking_tool.json",
                                "fantasy TestAnthropicThinking/claude-sonnet-4/thinking.yaml"),
    # Text then two tool_use blocks (index 1 and 2). fantasy
    # providertests/testdata/TestAnthropicCommon/claude-sonnet-4/multi_tool_streaming.yaml
    "anthropic_multi_tool_stream": ("anthropic_multi_tool.sse",
                                    "fantasy TestAnthropicCommon/claude-sonnet-4/"
                                    "multi_tool_streaming.yaml"),
    # Non-stream text + tool_use. fantasy TestAnthropicCommon/claude-sonnet-4/tool.yaml
    "anthropic_tool": ("anthropic_tool.json",
                       "fantasy TestAnthropicCommon/claude-sonnet-4/tool.yaml"),
    # -- Zhipu GLM (api.z.ai) ----------------------------------------------------------------
    # glm-4.7-flash with thinking: reasoning_content deltas, "role":"assistant" on every
    # delta, a whole tool call in one fragment, usage on the finish chunk (no
    # stream_options needed; prompt_tokens_details.cached_tokens=172, reasoning_tokens=63),
    # no [DONE]-less end. fantasy
    # providertests/testdata/TestOpenAICompatibleThinking/zai-glm-4-7-flash/thinking-streaming.yaml
    "zhipu_thinking_tool_stream": ("zhipu_thinking_tool.sse",
                                   "fantasy TestOpenAICompatibleThinking/zai-glm-4-7-flash/"
                                   "thinking-streaming.yaml"),
    # Non-stream: content + reasoning_content + tool call, cached 169 of 173.
    # fantasy .../TestOpenAICompatibleThinking/zai-glm-4-7-flash/thinking.yaml
    "zhipu_thinking_tool": ("zhipu_thinking_tool.json",
                            "fantasy TestOpenAICompatibleThinking/zai-glm-4-7-flash/thinking.yaml"),
    # -- llama.cpp llama-server --------------------------------------------------------------
    # --jinja, gpt-oss-20b: content:null first chunk, reasoning_content deltas, tool-call
    # arguments streamed by index, a choices:[] usage chunk with "timings".
    # fantasy .../TestOpenAICompatibleThinking/llama-cpp-gpt-oss/thinking-streaming.yaml
    "llamacpp_reasoning_tool_stream": ("llamacpp_reasoning_tool.sse",
                                       "fantasy TestOpenAICompatibleThinking/llama-cpp-gpt-oss/"
                                       "thinking-streaming.yaml"),
    # -- Moonshot / Kimi ---------------------------------------------------------------------
    # Live kimi-k3 stream: usage inside choices[0] on the finish chunk AND a choices:[]
    # usage chunk after it (cached_tokens both top-level and in prompt_tokens_details).
    # vercel/ai packages/moonshotai/src/__fixtures__/moonshotai-usage-live.chunks.txt
    # (chunks re-serialized compactly — same 4,332 bytes as the fixture, checked — and
    # framed as SSE by us).
    "moonshot_usage_live_stream": ("moonshot_kimi_k3_usage_live.sse",
                                   "vercel/ai moonshotai-usage-live.chunks.txt (framed)"),
    # -- DeepSeek ----------------------------------------------------------------------------
    # The response shown on DeepSeek's "Create Chat Completion" API page (mirrored at
    # https://toiotech.apifox.cn/deepseek-reasoner-398141713e0): prompt_cache_hit_tokens +
    # prompt_cache_miss_tokens = prompt_tokens, prompt_tokens_details.cached_tokens.
    "deepseek_chat": ("deepseek_chat.json", "api-docs.deepseek.com create-chat-completion"),
    # -- MiniMax -----------------------------------------------------------------------------
    # The response example of POST /v1/text/chatcompletion_v2 (base_resp status 0,
    # reasoning_tokens 214) — https://platform.minimax.io/docs/api-reference/text-post
    "minimax_v2": ("minimax_chatcompletion_v2.json",
                   "https://platform.minimax.io/docs/api-reference/text-post"),
}


def load(name: str) -> bytes:
    return (HERE / FILES[name][0]).read_bytes()


def sse_events(raw: bytes) -> list[bytes]:
    """The transcript cut at its event boundaries (each piece ends with its blank line),
    so a server can send one event per write, as the provider did."""
    text = raw.replace(b"\r\n", b"\n")
    return [p + b"\n\n" for p in text.split(b"\n\n") if p.strip()]


def json_body(name: str) -> Any:
    return json.loads(load(name))


# -- error bodies (inline: small) --------------------------------------------------------------

# Anthropic error shape, https://docs.claude.com/en/api/errors ("Error shapes"): the
# rate-limit type of the documented table; 429 carries retry-after in seconds
# (https://docs.claude.com/en/api/rate-limits: "retry-after header").
ANTHROPIC_429 = (b'{"type":"error","error":{"type":"rate_limit_error","message":"Number of '
                 b'request tokens has exceeded your per-minute rate limit"},'
                 b'"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}')
# 529 overloaded_error, same page's table.
ANTHROPIC_529 = (b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},'
                 b'"request_id":"req_018EeWyXxfu5pfWkrYcMdjWG"}')
# The error event of https://docs.claude.com/en/docs/build-with-claude/streaming
# ("Error events": event: error / data: {"type": "error", "error": {"type":
# "overloaded_error", "message": "Overloaded"}}), verbatim.
ANTHROPIC_STREAM_ERROR = (b'event: error\ndata: {"type": "error", "error": {"type": '
                          b'"overloaded_error", "message": "Overloaded"}}\n\n')
# OpenAI 429 "insufficient_quota" (https://platform.openai.com/docs/guides/error-codes,
# "You exceeded your current quota, please check your plan and billing details").
OPENAI_QUOTA_429 = (b'{"error":{"message":"You exceeded your current quota, please check your '
                    b'plan and billing details.","type":"insufficient_quota","param":null,'
                    b'"code":"insufficient_quota"}}')
# OpenAI 429 rate limit (same guide; code rate_limit_exceeded).
OPENAI_RATE_429 = (b'{"error":{"message":"Rate limit reached for gpt-4o on requests per min '
                   b'(RPM): Limit 500, Used 500, Requested 1.","type":"requests","param":null,'
                   b'"code":"rate_limit_exceeded"}}')
# Gemini's OpenAI-compatible endpoint wraps the Google error in an array (PROVIDERS.md §4,
# FuzzAnything/PromptFuzz#42); the Google error itself is vercel/ai
# packages/google/src/__fixtures__/google-429-retry-info.json (RetryInfo retryDelay 34.4s).
GEMINI_429_ARRAY = json.dumps([{"error": {
    "code": 429, "message": "You exceeded your current quota, please check your plan.",
    "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "34.4s"}]}}]).encode()
# MiniMax base_resp inside an HTTP 200, code 1008 "insufficient balance"
# (https://platform.minimax.io/docs/api-reference/errorcode; adrianlyjak/obsidian-aloud-tts#114).
MINIMAX_1008 = (b'{"id":"","choices":null,"created":0,"model":"","object":"","usage":null,'
                b'"base_resp":{"status_code":1008,"status_msg":"insufficient balance"}}')
# MiniMax 1002 rate limit, same page.
MINIMAX_1002 = b'{"base_resp":{"status_code":1002,"status_msg":"rate limit exceeded(RPM)"}}'
# Moonshot 429 exceeded_current_quota_error (https://platform.moonshot.cn/api-reference
# error table; https://forum.moonshot.ai/t/429-insufficient-balance/244).
MOONSHOT_QUOTA_429 = (b'{"error":{"message":"Your account org-xx is suspended, please check '
                      b'your plan and billing details","type":"exceeded_current_quota_error"}}')
# Moonshot 429 rate_limit_reached_error (same table).
MOONSHOT_RATE_429 = (b'{"error":{"message":"Your account org-xx request reached organization '
                     b'max RPM: 3, please try again after 1 seconds",'
                     b'"type":"rate_limit_reached_error"}}')
# Zhipu business codes as HTTP 429 (https://docs.z.ai/api-reference/api-code): 1302
# concurrency too high (retry), 1113 arrears (quota).
ZHIPU_1302 = (b'{"error":{"code":"1302","message":"High concurrency usage of this API, please '
              b'reduce concurrency or contact customer service to increase limits"}}')
ZHIPU_1113 = (b'{"error":{"code":"1113","message":"Your account is in arrears, please recharge '
              b'and try again"}}')
# DeepSeek 402 "Insufficient Balance" (https://api-docs.deepseek.com/quick_start/error_codes).
DEEPSEEK_402 = (b'{"error":{"message":"Insufficient Balance","type":"unknown_error",'
                b'"param":null,"code":"invalid_request_error"}}')
