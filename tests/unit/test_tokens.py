"""Offline token estimates: exact OpenAI encodings, the approx heuristic, prompt overheads."""

from __future__ import annotations

import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.config import Config, ModelInfo
from shoal.errors import ConfigError
from shoal.tokens import (
    APPROX_FACTOR,
    DEFAULT_OUTPUT_TOKENS,
    DEFAULT_REASONING_OUTPUT_TOKENS,
    ENCODINGS,
    call_token_bound,
    count_text,
    estimate_call_tokens,
    estimate_prompt_tokens,
    preload,
    prompt_token_bound,
)
from shoal.types import ChatRequest, Message, ToolCall, ToolSpec

# The example conversation of OpenAI's cookbook "How to count tokens with tiktoken",
# whose published prompt_tokens are 129 for cl100k models (gpt-4) and 124 for o200k (gpt-4o).
COOKBOOK = [
    Message(
        "system",
        "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    ),
    Message("system", "New synergies will help drive top-line growth.", name="example_user"),
    Message(
        "system",
        "Things working well together will increase revenue.",
        name="example_assistant",
    ),
    Message(
        "system",
        "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
        name="example_user",
    ),
    Message(
        "system",
        "Let's talk later when we're less busy about how to do better.",
        name="example_assistant",
    ),
    Message(
        "user",
        "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    ),
]

SEARCH_TOOL = ToolSpec(
    name="search_web",
    description="Search the web and return the top results.",
    parameters={
        "type": "object",
        "properties": {"query": {"type": "string"}, "max_results": {"type": "integer"}},
        "required": ["query"],
    },
)


def _model(**overrides: Any) -> ModelInfo:
    fields: dict[str, Any] = {
        "name": "m",
        "encoding": "o200k_base",
        "max_output": 16_384,
        "context_window": 128_000,
    }
    fields.update(overrides)
    return ModelInfo(**fields)


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_exact_counts_match_published_examples(encoding: str) -> None:
    # tiktoken's README: "tiktoken is great!" is 6 tokens; "hello world" is 2 in both.
    assert count_text("tiktoken is great!", encoding) == 6
    assert count_text("hello world", encoding) == 2
    assert count_text("", encoding) == 0


@pytest.mark.parametrize(("encoding", "published"), [("cl100k_base", 129), ("o200k_base", 124)])
def test_cookbook_conversation_matches_openai_prompt_tokens(encoding: str, published: int) -> None:
    assert estimate_prompt_tokens(ChatRequest("gpt-4o", COOKBOOK), encoding) == published


def test_encodings_differ_where_vocabularies_differ() -> None:
    chinese = "在生产环境中同时运行大量智能体时，最常见的问题是调用链路的可靠性。"
    assert count_text(chinese, "o200k_base") < count_text(chinese, "cl100k_base")


def test_approx_is_o200k_scaled_up() -> None:
    text = "Collect the key facts about the topic and cite where each comes from. " * 20
    exact = count_text(text, "o200k_base")
    assert count_text(text) == math.ceil(exact * APPROX_FACTOR)
    assert count_text(text, "approx") > exact


def test_unknown_encoding_is_a_config_error_naming_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        count_text("hi", "p50k_base")
    for name in ENCODINGS:
        assert name in str(info.value)
    with pytest.raises(ConfigError):
        estimate_prompt_tokens(ChatRequest("m", [Message.user("hi")]), "gpt2")


def test_lone_surrogates_are_counted_not_raised() -> None:
    assert count_text("abc\ud800def", "o200k_base") >= 2


def test_texts_beyond_a_million_characters_are_counted() -> None:
    text = "token " * 200_000  # 1.2M characters
    assert count_text(text, "o200k_base") >= 200_000


def test_tools_add_their_documented_overhead_and_schema() -> None:
    base = ChatRequest("m", [Message.user("find shoal on the web")])
    with_tool = ChatRequest("m", [Message.user("find shoal on the web")], tools=[SEARCH_TOOL])
    extra = estimate_prompt_tokens(with_tool, "o200k_base") - estimate_prompt_tokens(
        base, "o200k_base"
    )
    schema_json = (
        '{"properties":{"max_results":{"type":"integer"},"query":{"type":"string"}},'
        '"required":["query"],"type":"object"}'
    )
    expected = (
        12
        + 7
        + count_text("search_web:Search the web and return the top results.", "o200k_base")
        + count_text(schema_json, "o200k_base")
    )
    assert extra == expected


def test_output_schema_is_counted() -> None:
    schema = {
        "type": "object",
        "properties": {"points": {"type": "array", "items": {"type": "string"}}},
        "required": ["points"],
    }
    plain = ChatRequest("m", [Message.user("list the findings")])
    structured = ChatRequest("m", [Message.user("list the findings")], output_schema=schema)
    diff = estimate_prompt_tokens(structured, "o200k_base") - estimate_prompt_tokens(
        plain, "o200k_base"
    )
    assert diff > count_text('"points"', "o200k_base") + 8


def test_tool_calls_tool_results_and_reasoning_are_counted() -> None:
    arguments = '{"query": "open-weight LLM economics", "max_results": 5}'
    call = ToolCall(id="call_1", name="search_web", arguments=arguments)
    short = ChatRequest("m", [Message.user("go")])
    turn = ChatRequest(
        "m",
        [
            Message.user("go"),
            Message.assistant("", [call], reasoning="I should search first."),
            Message.tool("call_1", "result one; result two"),
        ],
    )
    diff = estimate_prompt_tokens(turn, "o200k_base") - estimate_prompt_tokens(short, "o200k_base")
    counted = sum(
        count_text(t, "o200k_base")
        for t in (arguments, "search_web", "I should search first.", "result one; result two")
    )
    assert diff > counted + 2 * 3  # the texts plus two messages' overhead


def test_call_estimate_adds_requested_max_tokens() -> None:
    request = ChatRequest("m", [Message.user("hello")], max_tokens=300)
    prompt = estimate_prompt_tokens(request, "o200k_base")
    assert estimate_call_tokens(request, _model()) == prompt + 300


def test_call_estimate_defaults_output_bounded_by_model() -> None:
    request = ChatRequest("m", [Message.user("hello")])
    prompt = estimate_prompt_tokens(request, "o200k_base")
    assert estimate_call_tokens(request, _model()) == prompt + DEFAULT_OUTPUT_TOKENS
    assert estimate_call_tokens(request, _model(max_output=256)) == prompt + 256
    reasoning = _model(reasoning=True, max_output=100_000)
    assert estimate_call_tokens(request, reasoning) == prompt + DEFAULT_REASONING_OUTPUT_TOKENS


def test_call_estimate_default_never_exceeds_the_context_window() -> None:
    request = ChatRequest("m", [Message.user("word " * 500)])
    prompt = estimate_prompt_tokens(request, "o200k_base")
    tight = _model(context_window=prompt + 50)
    assert estimate_call_tokens(request, tight) == prompt + 50


def test_call_estimate_uses_the_models_encoding() -> None:
    request = ChatRequest("m", [Message.user("Write a crisp report on LLM economics. " * 30)])
    approx = estimate_call_tokens(request, _model(encoding="approx"))
    exact = estimate_call_tokens(request, _model(encoding="o200k_base"))
    assert approx > exact


def test_every_catalog_model_can_be_estimated() -> None:
    config = Config.from_dict()
    request = ChatRequest("m", [Message.system("Be brief."), Message.user("hello")])
    for info in config.models.values():
        total = estimate_call_tokens(request, info)
        assert estimate_prompt_tokens(request, info.encoding) < total <= (
            estimate_prompt_tokens(request, info.encoding) + info.max_output
        )


def test_concurrent_first_use_from_threads_agrees() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 50
    with ThreadPoolExecutor(max_workers=4) as pool:
        counts = list(pool.map(lambda _: count_text(text, "cl100k_base"), range(8)))
    assert len(set(counts)) == 1
    assert counts[0] > 400


async def test_preload_loads_and_rejects_unknown_encodings() -> None:
    await preload("o200k_base")
    await preload()
    assert count_text("hello world", "o200k_base") == 2
    with pytest.raises(ConfigError):
        await preload("r50k_base")


def test_counting_skips_the_slow_package_import_and_coexists_with_it() -> None:
    # ``import bpe_openai`` decodes every vocabulary in Python (~0.6 s); shoal loads only
    # the native module. A later public import must reuse it and agree with our counts.
    script = (
        "import sys\n"
        "from shoal.tokens import count_text\n"
        "n = count_text('tiktoken is great!', 'cl100k_base')\n"
        "assert 'bpe_openai' not in sys.modules, 'package __init__ ran'\n"
        "import bpe_openai\n"
        "assert len(bpe_openai.get_encoding('cl100k_base').encode('tiktoken is great!')) == n\n"
        "print(n)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "6"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=4),
       st.sampled_from(ENCODINGS), st.booleans())
def test_the_byte_bound_is_never_below_the_estimate(texts: list[str], encoding: str,
                                                    with_tools: bool) -> None:
    """Any text (non-ASCII, emoji, lone surrogates), tools and an output schema: the
    bound holds, so a call it admits to the context window would fit when counted."""
    tools = [ToolSpec("lookup", texts[0], {"type": "object", "properties": {
        "q": {"type": "string", "description": texts[-1]}}})] if with_tools else []
    request = ChatRequest(model="m", messages=[Message.user(t) for t in texts], tools=tools,
                          output_schema={"type": "object"} if with_tools else None)
    assert prompt_token_bound(request, encoding) >= estimate_prompt_tokens(request, encoding)
    info = ModelInfo.model_validate({"name": "m", "channels": ["c"], "context_window": 2_000,
                                     "encoding": encoding})
    assert call_token_bound(request, info) >= estimate_call_tokens(request, info)
