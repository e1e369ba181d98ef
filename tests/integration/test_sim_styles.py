"""Provider styles: each refuses what the real provider refuses (PROVIDERS.md), with its
status and envelope, and shapes answers its way. Driven over real HTTP with aiohttp and,
where they apply, the official ``openai`` / ``anthropic`` SDKs, unmodified."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from sim_fixtures import QUESTION, USER, anthropic_for, running

from shoal.errors import ConfigError
from shoal.sim import Faults, ModelProfile, SimConfig, SimServer

TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a city up.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ANT_TOOL: dict[str, Any] = {
    "name": "lookup",
    "description": "Look a city up.",
    "input_schema": TOOL["function"]["parameters"],
}
CALL: dict[str, Any] = {
    "id": "call_1", "type": "function",
    "function": {"name": "lookup", "arguments": '{"city":"Oslo"}'},
}  # fmt: skip
TOOL_TURN: list[Any] = [
    {"role": "user", "content": QUESTION},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]


class Reply:
    """A raw HTTP answer: status, headers, body bytes and (when JSON) the parsed body."""

    def __init__(self, status: int, headers: Mapping[str, str], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw
        try:
            self.json: Any = json.loads(raw)
        except ValueError:
            self.json = None

    def events(self) -> list[Any]:
        """The JSON ``data:`` payloads of an SSE body ([DONE] and comments dropped)."""
        out: list[Any] = []
        for line in self.raw.decode().splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
        return out


async def post(url: str, body: Any, headers: Mapping[str, str] | None = None) -> Reply:
    sent = {"authorization": "Bearer sk-test", **(headers or {})}
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=sent) as r:
        return Reply(r.status, dict(r.headers), await r.read())


def chat(sim: SimServer, style: str | None = None) -> str:
    return sim.base_url(style) + "/chat/completions"


def messages_url(sim: SimServer, style: str | None = None) -> str:
    return sim.base_url(style, protocol="anthropic") + "/v1/messages"


@asynccontextmanager
async def oai(sim: SimServer, style: str | None = None) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=sim.base_url(style), api_key="sk-test", max_retries=0)
    try:
        yield client
    finally:
        await client.close()


def body(model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, **extra}


# -- selection ---------------------------------------------------------------------------


async def test_every_style_is_accepted_by_config_and_url() -> None:
    styles = ("openai", "anthropic", "deepseek", "moonshot", "zhipu", "minimax", "gemini",
              "permissive")  # fmt: skip
    for style in styles:
        assert SimConfig(style=style).style == style
    with pytest.raises(ConfigError, match=r"SimConfig\.style must be one of openai"):
        SimConfig(style="bedrock")
    async with running() as sim:
        assert sim.base_url() == sim.url + "/v1"
        assert sim.base_url("zhipu") == sim.url + "/style/zhipu/v1"
        assert sim.base_url("anthropic", protocol="anthropic") == sim.url + "/style/anthropic"
        with pytest.raises(ConfigError, match="unknown simulator style 'bedrock'"):
            sim.base_url("bedrock")
        unknown = await post(sim.url + "/style/bedrock/v1/chat/completions", body())
        wrong_protocol = await post(chat(sim, "anthropic"), body())
    assert unknown.status == 404
    assert "unknown simulator style 'bedrock'" in unknown.json["error"]["message"]
    assert wrong_protocol.status == 404
    assert wrong_protocol.json["type"] == "error"
    assert wrong_protocol.json["error"]["type"] == "not_found_error"


async def test_one_server_plays_several_providers_by_route() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    async with running(SimConfig(style="openai")) as sim:
        as_openai = await post(chat(sim), body(response_format=schema))
        as_deepseek = await post(chat(sim, "deepseek"), body(response_format=schema))
        as_permissive = await post(chat(sim, "permissive"), body(response_format=schema))
    assert as_openai.status == 200
    assert as_deepseek.status == 400
    assert as_permissive.status == 200


# -- deepseek ----------------------------------------------------------------------------


async def test_deepseek_refuses_json_schema_and_accepts_json_object() -> None:
    schema: Any = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}},
    }
    async with running(SimConfig(style="deepseek")) as sim:
        refused = await post(chat(sim), body("deepseek-chat", response_format=schema))
        # JSON mode wants the word "json" in the prompt (test_sim_deepseek_json.py)
        accepted = await post(chat(sim), {
            "model": "deepseek-chat", "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": QUESTION + " Answer in JSON."}],
        })  # fmt: skip
        async with oai(sim) as client:
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(
                    model="deepseek-chat", messages=USER,
                    response_format=schema,
                )  # fmt: skip
    assert refused.status == 400
    assert refused.json == {"error": {
        "message": "This response_format type is unavailable now",
        "type": "invalid_request_error", "param": None, "code": "invalid_request_error",
    }}  # fmt: skip
    assert accepted.status == 200
    assert isinstance(json.loads(accepted.json["choices"][0]["message"]["content"]), dict)
    assert info.value.message.endswith("This response_format type is unavailable now")


async def test_json_mode_follows_the_schema_stated_in_the_prompt() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"},
              "days": {"type": "integer", "minimum": 1}}, "required": ["city", "days"]}  # fmt: skip
    stated = [
        {"role": "system", "content": "Answer in JSON matching this schema: " + json.dumps(schema)},
        *USER,
    ]
    fmt = {"type": "json_object"}
    async with running(SimConfig(style="deepseek")) as sim:
        shaped = await post(chat(sim), {"model": "deepseek-chat", "messages": stated,
                                        "response_format": fmt})  # fmt: skip
        bare = await post(chat(sim), {
            "model": "deepseek-chat", "response_format": fmt,
            "messages": [{"role": "user", "content": QUESTION + " Reply in json."}],
        })  # fmt: skip
    value = json.loads(shaped.json["choices"][0]["message"]["content"])
    assert set(value) == {"city", "days"}
    assert isinstance(value["city"], str) and value["days"] >= 1
    assert set(json.loads(bare.json["choices"][0]["message"]["content"])) == {"answer"}


@pytest.mark.parametrize(
    ("model", "thinking", "refused"),
    [
        ("deepseek-reasoner", None, True),
        ("deepseek-v4-flash", None, True),
        ("deepseek-chat", {"type": "enabled"}, True),
        ("deepseek-chat", None, False),
        ("deepseek-reasoner", {"type": "disabled"}, False),
    ],
)
async def test_deepseek_thinking_mode_needs_reasoning_content_on_tool_turns(
    model: str, thinking: Any, refused: bool
) -> None:
    extra = {} if thinking is None else {"thinking": thinking}
    with_reasoning = [
        TOOL_TURN[0],
        {**TOOL_TURN[1], "reasoning_content": "I should look it up."},
        TOOL_TURN[2],
    ]
    async with running(SimConfig(style="deepseek")) as sim:
        bare = await post(chat(sim), {"model": model, "messages": TOOL_TURN, **extra})
        kept = await post(chat(sim), {"model": model, "messages": with_reasoning, **extra})
    assert kept.status == 200
    if refused:
        assert bare.status == 400
        message = bare.json["error"]["message"]
        assert message.startswith(
            "Missing `reasoning_content` field in the assistant message at message index 1."
        )
    else:
        assert bare.status == 200


async def test_deepseek_shapes_reasoning_deltas_and_cache_usage() -> None:
    async with running(SimConfig(style="deepseek")) as sim, oai(sim) as client:
        whole = await client.chat.completions.create(
            model="deepseek-chat", messages=USER, extra_body={"thinking": {"type": "enabled"}}
        )
        stream = await client.chat.completions.create(
            model="deepseek-reasoner", messages=USER, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        with pytest.raises(openai.APIStatusError) as quota:
            await client.chat.completions.create(
                model="deepseek-chat", messages=USER, extra_headers={"x-sim-fault": "quota"}
            )
    assert whole.usage is not None
    extra = whole.usage.model_extra or {}
    hit, miss = extra["prompt_cache_hit_tokens"], extra["prompt_cache_miss_tokens"]
    assert hit + miss == whole.usage.prompt_tokens
    assert (whole.choices[0].message.model_extra or {})["reasoning_content"]
    reasoning = [
        (c.choices[0].delta.model_extra or {}).get("reasoning_content")
        for c in chunks if c.choices
    ]  # fmt: skip
    assert any(reasoning)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert quota.value.status_code == 402


# -- anthropic ---------------------------------------------------------------------------


async def test_anthropic_requires_max_tokens_in_its_envelope() -> None:
    async with running() as sim:
        r = await post(messages_url(sim, "anthropic"),
                       {"model": "claude-haiku-4-5", "messages": USER})  # fmt: skip
    assert r.status == 400
    assert r.json["type"] == "error"
    assert r.json["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json["error"]["message"]
    assert r.json["request_id"] == r.headers["request-id"]


@pytest.mark.parametrize(
    ("max_tokens", "budget", "words"),
    [
        (4096, 1023, "greater than or equal to 1024"),
        (2048, 2048, "`max_tokens` must be greater than `thinking.budget_tokens`"),
    ],
)
async def test_anthropic_thinking_budget_bounds(max_tokens: int, budget: int, words: str) -> None:
    async with running(SimConfig(style="anthropic")) as sim, anthropic_for(sim) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(
                model="claude-haiku-4-5", max_tokens=max_tokens, messages=USER,
                thinking={"type": "enabled", "budget_tokens": budget},
            )  # fmt: skip
        ok = await client.messages.create(
            model="claude-haiku-4-5", max_tokens=2048, messages=USER,
            thinking={"type": "enabled", "budget_tokens": 1024},
        )  # fmt: skip
    assert words in info.value.message
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert [b.type for b in ok.content] == ["thinking", "text"]


async def test_anthropic_thinking_form_follows_the_model() -> None:
    """As Anthropic documents: adaptive thinking from Opus/Sonnet 4.6 on (a manual budget
    still taken there), only a manual budget on 4.5 and older, only adaptive on Claude 5;
    no sampling parameters on Claude 5, no forced tool use on Claude 5.5."""
    budget: Any = {"type": "enabled", "budget_tokens": 1024}
    adaptive: Any = {"type": "adaptive"}
    tools: Any = [ANT_TOOL]
    any_tool: Any = {"type": "any"}
    async with running(SimConfig(style="anthropic")) as sim, anthropic_for(sim) as client:
        for model, thinking in (("claude-sonnet-4-6", adaptive), ("claude-sonnet-4-6", budget),
                                ("claude-haiku-4-5", budget), ("claude-sonnet-5-5", adaptive)):
            ok = await client.messages.create(model=model, max_tokens=2048, messages=USER,
                                              thinking=thinking)
            assert ok.content[0].type == "thinking", (model, thinking)
        with pytest.raises(anthropic.BadRequestError, match="adaptive thinking is not "
                           "supported on claude-haiku-4-5"):
            await client.messages.create(model="claude-haiku-4-5", max_tokens=2048,
                                         messages=USER, thinking=adaptive)
        with pytest.raises(anthropic.BadRequestError, match="'enabled' is not supported on "
                           "claude-sonnet-5-5"):
            await client.messages.create(model="claude-sonnet-5-5", max_tokens=2048,
                                         messages=USER, thinking=budget)
        with pytest.raises(anthropic.BadRequestError, match="forced tool use is not "
                           "supported on claude-sonnet-5-5"):
            await client.messages.create(model="claude-sonnet-5-5", max_tokens=2048,
                                         messages=USER, tools=tools, tool_choice=any_tool)
        with pytest.raises(anthropic.BadRequestError, match="does not support setting "
                           "temperature"):
            await client.messages.create(model="claude-sonnet-5", max_tokens=2048,
                                         messages=USER, extra_body={"temperature": 0.2})
        forced = await client.messages.create(model="claude-sonnet-5", max_tokens=2048,
                                              messages=USER, tools=tools,
                                              tool_choice=any_tool)
        assert forced.content[-1].type == "tool_use"  # Claude 5 still takes it
        with pytest.raises(anthropic.BadRequestError, match=r"output_config\.effort"):
            await client.messages.create(model="claude-sonnet-4-6", max_tokens=2048,
                                         messages=USER, thinking=adaptive,
                                         extra_body={"output_config": {"effort": "extreme"}})


async def test_anthropic_thinking_refuses_forced_tools_and_temperature() -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    tools: Any = [ANT_TOOL]
    async with running() as sim, anthropic_for(sim) as client:
        with pytest.raises(anthropic.BadRequestError, match="forces tool use"):
            await client.messages.create(
                model="claude-haiku-4-5", max_tokens=2048, messages=USER, thinking=thinking,
                tools=tools, tool_choice={"type": "tool", "name": "lookup"},
            )  # fmt: skip
        with pytest.raises(anthropic.BadRequestError, match="temperature"):
            await client.messages.create(
                model="claude-haiku-4-5", max_tokens=2048, messages=USER, thinking=thinking,
                extra_body={"temperature": 0.2},
            )  # fmt: skip


async def test_anthropic_tool_turn_needs_its_signed_thinking_block() -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    ask: dict[str, Any] = {
        "model": "claude-haiku-4-5", "max_tokens": 4096, "tools": [ANT_TOOL],
        "thinking": thinking,
    }  # fmt: skip
    async with running() as sim, anthropic_for(sim) as client:
        first = await client.messages.create(messages=USER, **ask)
        content = [b.model_dump(exclude_none=True) for b in first.content]
        assert [b["type"] for b in content] == ["thinking", "tool_use"]
        use = content[1]
        result = {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use["id"], "content": "sunny"}]}  # fmt: skip

        def history(blocks: list[dict[str, Any]]) -> list[Any]:
            return [*USER, {"role": "assistant", "content": blocks}, result]

        kept = await client.messages.create(messages=history(content), **ask)
        with pytest.raises(anthropic.BadRequestError) as dropped:
            await client.messages.create(messages=history(content[1:]), **ask)
        tampered = [{**content[0], "thinking": "something else"}, use]
        with pytest.raises(anthropic.BadRequestError) as changed:
            await client.messages.create(messages=history(tampered), **ask)
        unsigned = [{k: v for k, v in content[0].items() if k != "signature"}, use]
        bare = await post(messages_url(sim), {"messages": history(unsigned), **ask},
                          {"x-api-key": "sk-ant-test"})  # fmt: skip
        permissive = await post(messages_url(sim, "permissive"),
                                {"messages": history(content[1:]), **ask})  # fmt: skip
    assert kept.stop_reason == "end_turn"
    assert "Expected `thinking` or `redacted_thinking`, but found `tool_use`" in (
        dropped.value.message
    )
    assert "Invalid `signature` in `thinking` block" in changed.value.message
    assert bare.status == 400
    assert "signature: Field required" in bare.json["error"]["message"]
    assert permissive.status == 200


async def test_anthropic_tool_result_must_match_a_tool_use() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        with pytest.raises(anthropic.BadRequestError) as orphan:
            await client.messages.create(
                model="claude-haiku-4-5", max_tokens=256, tools=[ANT_TOOL],  # type: ignore[list-item]
                messages=[*USER, {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_nope", "content": "x"}]}],
            )  # fmt: skip
        with pytest.raises(anthropic.BadRequestError) as unanswered:
            await client.messages.create(
                model="claude-haiku-4-5", max_tokens=256, tools=[ANT_TOOL],  # type: ignore[list-item]
                messages=[*USER, {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup",
                     "input": {"city": "Oslo"}}]},
                    {"role": "user", "content": "go on"}],
            )  # fmt: skip
    assert "unexpected `tool_use_id` found in `tool_result` blocks: toolu_nope" in (
        orphan.value.message
    )
    assert "`tool_use` ids were found without `tool_result` blocks" in unanswered.value.message


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"seed": 1}, "seed: Extra inputs are not permitted"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
         "text content blocks must be non-empty"),
        ({"messages": [{"role": "user", "content": ""}]},
         "messages.0: all messages must have non-empty content"),
    ],
)  # fmt: skip
async def test_anthropic_refuses_extra_fields_and_empty_content(
    change: dict[str, Any], words: str
) -> None:
    ask = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": USER}
    async with running() as sim:
        refused = await post(messages_url(sim), {**ask, **change})
        prefill = await post(messages_url(sim), {**ask, "messages": [
            *USER, {"role": "assistant", "content": ""}]})  # fmt: skip
    assert refused.status == 400
    assert refused.json["error"]["type"] == "invalid_request_error"
    assert words in refused.json["error"]["message"]
    assert prefill.status == 200  # an empty final assistant message is allowed


# -- zhipu -------------------------------------------------------------------------------


async def test_zhipu_refuses_developer_role_and_forced_tool_choice() -> None:
    developer = [{"role": "developer", "content": "Be brief."}, *USER]
    async with running(SimConfig(style="zhipu")) as sim:
        role = await post(chat(sim), {"model": "glm-4.6", "messages": developer})
        forced = await post(chat(sim), body("glm-4.6", tools=[TOOL], tool_choice="required"))
        auto = await post(chat(sim), body("glm-4.6", tools=[TOOL], tool_choice="auto"))
        async with oai(sim) as client:
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(model="glm-4.6", messages=developer)
    assert role.status == 400
    assert role.json["error"]["code"] == "1214"
    assert set(role.json["error"]) == {"code", "message"}
    assert forced.status == 400 and forced.json["error"]["code"] == "1214"
    assert auto.status == 200
    assert info.value.code == "1214"


async def test_zhipu_caps_with_max_tokens_only_and_codes_are_strings() -> None:
    config = SimConfig(style="zhipu", max_concurrency=1,
                       models={"*": ModelProfile(output_tokens=20)})  # fmt: skip
    async with running(config) as sim:
        capped = await post(chat(sim), body("glm-4.6", max_tokens=5))
        ignored = await post(chat(sim), body("glm-4.6", max_completion_tokens=5))
        quota = await post(chat(sim), body("glm-4.6"), {"x-sim-fault": "quota"})
    assert capped.json["choices"][0]["finish_reason"] == "length"
    assert ignored.json["choices"][0]["finish_reason"] == "stop"
    assert ignored.json["usage"]["completion_tokens"] == 20
    assert (quota.status, quota.json["error"]["code"]) == (429, "1113")


# -- minimax -----------------------------------------------------------------------------


async def test_minimax_refuses_two_system_messages() -> None:
    two = [{"role": "system", "content": "A"}, {"role": "system", "content": "B"}, *USER]
    one = [{"role": "system", "content": "A\n\nB"}, *USER]
    async with running(SimConfig(style="minimax")) as sim:
        refused = await post(chat(sim), {"model": "MiniMax-M2.5", "messages": two})
        accepted = await post(chat(sim), {"model": "MiniMax-M2.5", "messages": one})
        async with oai(sim) as client:
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(model="MiniMax-M2.5", messages=two)
    assert refused.status == 400
    assert refused.json["type"] == "error"
    assert refused.json["error"] == {
        "type": "bad_request_error", "message": "invalid params, invalid chat setting (2013)",
        "http_code": "400",
    }  # fmt: skip
    assert accepted.status == 200
    assert "(2013)" in info.value.message


async def test_minimax_balance_error_comes_inside_a_200() -> None:
    config = SimConfig(style="minimax", faults=Faults(quota_exhausted=True))
    async with running(config) as sim:
        whole = await post(chat(sim), body("MiniMax-M2.5"))
        streamed = await post(chat(sim), body("MiniMax-M2.5", stream=True))
    for r in (whole, streamed):
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.json["base_resp"] == {"status_code": 1008, "status_msg": "insufficient balance"}


async def test_minimax_stream_deltas_carry_an_empty_role() -> None:
    async with running(SimConfig(style="minimax")) as sim:
        r = await post(chat(sim), body("MiniMax-M2.5", stream=True))
        async with oai(sim) as client:
            stream = await client.chat.completions.create(
                model="MiniMax-M2.5", messages=USER, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    deltas = [e["choices"][0]["delta"] for e in r.events() if e["choices"]]
    assert deltas[0]["role"] == "assistant"
    assert [d["role"] for d in deltas if d.get("content")] == [""] * 20
    assert len(text.split()) == 20


# -- moonshot ----------------------------------------------------------------------------


async def test_moonshot_usage_inside_the_choice_and_quota_as_429() -> None:
    async with running(SimConfig(style="moonshot")) as sim:
        r = await post(chat(sim), body("kimi-k2", stream=True,
                                       stream_options={"include_usage": True}))  # fmt: skip
        async with oai(sim) as client:
            with pytest.raises(openai.RateLimitError) as info:
                await client.chat.completions.create(
                    model="kimi-k2", messages=USER, extra_headers={"x-sim-fault": "quota"}
                )
    events = r.events()
    assert all(e["choices"] for e in events)  # no separate usage chunk
    last = events[-1]["choices"][0]
    assert last["finish_reason"] == "stop"
    assert last["usage"]["completion_tokens"] == 20
    assert info.value.body == {"message": info.value.message.split(" - ", 1)[-1],
                               "type": "exceeded_current_quota_error"}  # fmt: skip


# -- gemini ------------------------------------------------------------------------------


async def test_gemini_rejects_unknown_fields_with_an_error_array() -> None:
    async with running(SimConfig(style="gemini")) as sim:
        r = await post(chat(sim), body("gemini-2.5-flash", metadata={"k": "v"}, store=True))
        async with oai(sim) as client:
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(
                    model="gemini-2.5-flash", messages=USER, extra_body={"google": {}}
                )
    assert r.status == 400
    assert isinstance(r.json, list) and len(r.json) == 1
    err = r.json[0]["error"]
    assert (err["code"], err["status"]) == (400, "INVALID_ARGUMENT")
    assert 'Unknown name "metadata": Cannot find field.' in err["message"]
    assert 'Unknown name "store": Cannot find field.' in err["message"]
    assert len(err["details"][0]["fieldViolations"]) == 2
    assert isinstance(info.value.body, list)


async def test_gemini_streams_tool_calls_whole_without_index_and_stop() -> None:
    ask = body("gemini-2.5-flash", tools=[TOOL])
    async with running(SimConfig(style="gemini")) as sim:
        whole = await post(chat(sim), ask)
        streamed = await post(chat(sim), {**ask, "stream": True})
    assert whole.json["choices"][0]["finish_reason"] == "tool_calls"
    calls = [c for e in streamed.events() for c in e["choices"][0]["delta"].get("tool_calls", [])]
    assert len(calls) == 1
    assert "index" not in calls[0]
    assert json.loads(calls[0]["function"]["arguments"])["city"]
    finishes = [e["choices"][0]["finish_reason"] for e in streamed.events()]
    assert [f for f in finishes if f] == ["stop"]


async def test_gemini_bad_key_and_rate_limit_shapes() -> None:
    config = SimConfig(style="gemini", api_keys=("good",))
    async with running(config) as sim:
        bad_key = await post(chat(sim), body("gemini-2.5-flash"))
        limited = await post(chat(sim), body("gemini-2.5-flash"),
                             {"authorization": "Bearer good", "x-sim-fault": "429"})  # fmt: skip
    assert bad_key.status == 400
    assert bad_key.json[0]["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert limited.status == 429
    assert limited.json[0]["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert limited.json[0]["error"]["details"][-1]["retryDelay"] == "1s"
    assert "retry-after" not in {k.lower() for k in limited.headers}


async def test_gemini_3_tool_turns_need_their_thought_signature() -> None:
    ask = body("gemini-3-pro-preview", tools=[TOOL])
    async with running(SimConfig(style="gemini")) as sim:
        whole = await post(chat(sim), ask)
        streamed = await post(chat(sim), {**ask, "stream": True})
        call = whole.json["choices"][0]["message"]["tool_calls"][0]
        result = {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
        kept = [*USER, {"role": "assistant", "content": None, "tool_calls": [call]}, result]
        stripped_call = {k: v for k, v in call.items() if k != "extra_content"}
        lost = [*USER, {"role": "assistant", "content": None, "tool_calls": [stripped_call]},
                result]  # fmt: skip
        with_signature = await post(chat(sim), {"model": "gemini-3-pro-preview", "messages": kept})
        without = await post(chat(sim), {"model": "gemini-3-pro-preview", "messages": lost})
        older = await post(chat(sim), {"model": "gemini-2.5-flash", "messages": lost})
    signature = call["extra_content"]["google"]["thought_signature"]
    assert signature
    streamed_calls = [
        c for e in streamed.events() for c in e["choices"][0]["delta"].get("tool_calls", [])
    ]  # fmt: skip
    assert streamed_calls[0]["extra_content"]["google"]["thought_signature"] == signature
    assert with_signature.status == 200
    assert without.status == 400
    assert "missing a thought_signature" in without.json[0]["error"]["message"]
    assert older.status == 200  # only Gemini 3 requires the signature back


# -- openai ------------------------------------------------------------------------------


async def test_openai_reasoning_models_refuse_max_tokens() -> None:
    async with running(SimConfig(style="openai")) as sim, oai(sim) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="o3-mini", messages=USER, max_tokens=50)
        ok = await client.chat.completions.create(
            model="o3-mini", messages=USER, max_completion_tokens=50
        )
        older = await client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=50)
    assert (info.value.code, info.value.param) == ("unsupported_parameter", "max_tokens")
    assert ok.choices[0].message.content
    assert older.choices[0].message.content


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            "'additionalProperties' is required to be supplied and to be false",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                "required": ["a"],
                "additionalProperties": False,
            },
            "Missing 'b'",
        ),
        (
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["xs"],
                "properties": {
                    "xs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"n": {"type": "integer"}},
                            "required": ["n"],
                        },
                    }
                },
            },
            "In context=('properties', 'xs', 'items'), 'additionalProperties'",
        ),
    ],
)
async def test_openai_strict_schemas_must_fit_the_subset(schema: Any, words: str) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema, "strict": True}}
    async with running() as sim:
        as_format = await post(chat(sim), body(response_format=fmt))
        as_tool = await post(chat(sim), body(tools=[tool]))
        loose = await post(
            chat(sim),
            body(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "out", "schema": schema},
                }
            ),
        )
    assert as_format.status == 400
    assert words in as_format.json["error"]["message"]
    assert as_format.json["error"]["message"].startswith("Invalid schema for response_format 'out'")
    assert as_tool.status == 400
    assert as_tool.json["error"]["code"] == "invalid_function_parameters"
    assert loose.status == 200  # without strict, any schema is accepted


async def test_openai_refuses_malformed_conversations_and_fields() -> None:
    orphan = [*USER, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]
    unanswered = [*USER, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                  {"role": "user", "content": "go on"}]  # fmt: skip
    object_args = [*USER, {"role": "assistant", "tool_calls": [
        {**CALL, "function": {"name": "lookup", "arguments": {"city": "Oslo"}}}]},
        TOOL_TURN[2]]  # fmt: skip
    async with running() as sim:
        replies = {
            "orphan": await post(chat(sim), {"model": "m", "messages": orphan}),
            "unanswered": await post(chat(sim), {"model": "m", "messages": unanswered}),
            "object_args": await post(chat(sim), {"model": "m", "messages": object_args}),
            "choice_without_tools": await post(chat(sim), body(tool_choice="auto")),
            "temperature": await post(chat(sim), body(temperature=9)),
            "unknown_field": await post(chat(sim), body(thinking={"type": "enabled"})),
            "json_object_without_json": await post(
                chat(sim), body(response_format={"type": "json_object"})),
            "tools_not_array": await post(chat(sim), body(tools="lookup")),
            "stream_options_without_stream": await post(
                chat(sim), body(stream_options={"include_usage": True})),
            "null_content": await post(chat(sim), {"model": "m", "messages": [
                *USER, {"role": "assistant", "content": None}, *USER]}),
            "good_tool_turn": await post(chat(sim), {"model": "m", "messages": TOOL_TURN}),
        }  # fmt: skip
        async with oai(sim) as client:
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(
                    model="m", messages=USER, extra_body={"thinking": {"type": "enabled"}}
                )
    messages = {k: (r.status, (r.json.get("error") or {}).get("message", "")) for k, r in
                replies.items()}  # fmt: skip
    assert messages["good_tool_turn"][0] == 200
    expected = {
        "orphan": "messages with role 'tool' must be a response to a preceeding message",
        "unanswered": "did not have response messages: call_1",
        "object_args": "expected a string, but got an object instead",
        "choice_without_tools": "'tool_choice' is only allowed when 'tools' are specified",
        "temperature": "Expected a value <= 2, but got 9 instead",
        "unknown_field": "Unrecognized request argument supplied: thinking",
        "json_object_without_json": "must contain the word 'json'",
        "tools_not_array": "expected an array, but got str instead",
        "stream_options_without_stream": "only allowed when 'stream' is enabled",
        "null_content": "expected a string, got null",
    }
    for key, words in expected.items():
        status, message = messages[key]
        assert status == 400, key
        assert words in message, key
    assert "Unrecognized request argument supplied: thinking" in info.value.message


async def test_permissive_accepts_what_strict_styles_refuse() -> None:
    async with running(SimConfig(style="permissive")) as sim:
        replies = [
            await post(chat(sim), body("o3-mini", max_tokens=5, thinking={"type": "x"})),
            await post(chat(sim), {"model": "m", "messages": [
                {"role": "system", "content": "A"}, {"role": "system", "content": "B"},
                {"role": "developer", "content": "C"}, *USER,
                {"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
        ]  # fmt: skip
    assert [r.status for r in replies] == [200, 200]


def test_cli_style_flag_selects_the_provider() -> None:
    from shoal.sim import SimProcess

    with SimProcess("--style", "gemini") as sim:
        client = openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0)
        try:
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(model="gemini-2.5-flash", messages=USER, user="u")
            ok = client.chat.completions.create(model="gemini-2.5-flash", messages=USER)
        finally:
            client.close()
    assert isinstance(info.value.body, list)
    assert 'Unknown name "user"' in info.value.body[0]["error"]["message"]
    assert ok.choices[0].message.content


async def test_anthropic_refuses_tools_without_an_object_schema_and_bad_tool_choice() -> None:
    """A custom tool's input_schema is required and an object; tool_choice is one of four
    tags and ``none`` takes nothing else (PROVIDERS.md §2). Server tools have no schema."""
    listed = {**ANT_TOOL, "input_schema": {"type": "array", "items": {"type": "string"}}}
    bare = {k: v for k, v in ANT_TOOL.items() if k != "input_schema"}
    search = {"type": "web_search_20250305", "name": "web_search"}

    def ask(tools: list[Any], choice: Any = None) -> dict[str, Any]:
        call: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 64,
                                "messages": USER, "tools": tools}
        return call if choice is None else {**call, "tool_choice": choice}

    async with running(SimConfig(style="anthropic")) as sim, anthropic_for(sim) as client:
        create = client.messages.create
        with pytest.raises(anthropic.BadRequestError,
                           match=r"tools\.0\.custom\.input_schema\.type: Input should be 'object'"):
            await create(**ask([listed]))
        with pytest.raises(anthropic.BadRequestError,
                           match=r"tools\.1\.custom\.input_schema: Field required"):
            await create(**ask([ANT_TOOL, bare]))
        with pytest.raises(anthropic.BadRequestError, match="does not match any of the "
                           "expected tags: 'auto', 'any', 'tool', 'none'"):
            await create(**ask([ANT_TOOL], {"type": "bogus"}))
        with pytest.raises(anthropic.BadRequestError, match=r"tool_choice\.none\."
                           "disable_parallel_tool_use: Extra inputs are not permitted"):
            await create(**ask([ANT_TOOL], {"type": "none", "disable_parallel_tool_use": True}))
        fine = await create(**ask([ANT_TOOL, search],
                                   {"type": "any", "disable_parallel_tool_use": True}))
        assert fine.content


async def test_moonshot_pins_sampling_on_kimi_k2_5_and_streams_its_thinking() -> None:
    """Moonshot's parameter reference, as the moonshot style enforces it: Kimi K2.5's
    temperature (1.0 thinking, 0.6 not), top_p, n and penalties cannot be modified; it
    thinks by default (reasoning_content), unless thinking is disabled."""
    user: Any = USER
    async with running(SimConfig(style="moonshot")) as sim, oai(sim) as client:
        with pytest.raises(openai.BadRequestError,
                           match="invalid temperature: only 1 is allowed for this model"):
            await client.chat.completions.create(model="kimi-k2.5", messages=user,
                                                 temperature=0.3)
        with pytest.raises(openai.BadRequestError, match="invalid n: only 1 is allowed"):
            await client.chat.completions.create(model="kimi-k2.5", messages=user, n=2)
        thinking = await client.chat.completions.create(model="kimi-k2.5", messages=user)
        assert getattr(thinking.choices[0].message, "reasoning_content", None)
        plain = await client.chat.completions.create(
            model="kimi-k2.5", messages=user, temperature=0.6,
            extra_body={"thinking": {"type": "disabled"}})
        assert not getattr(plain.choices[0].message, "reasoning_content", None)
        older = await client.chat.completions.create(model="kimi-k2-0905-preview",
                                                     messages=user, temperature=0.3)
        assert older.choices[0].message.content
