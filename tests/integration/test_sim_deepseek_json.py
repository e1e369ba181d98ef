"""DeepSeek's JSON Output and request parsing as the simulator's ``deepseek`` style
imitates them, and shoal's DeepSeek path through them.

DeepSeek's JSON Output (api-docs.deepseek.com/guides/json_mode) takes
``response_format: {"type": "json_object"}`` only, and wants the word "json" in the
system or user prompt; without it the API answers 400 "Prompt must contain the word
'json' in some form to use 'response_format' of type 'json_object'." (the wording as
integrators saw it, vercel/ai#7913). PROVIDERS.md trap 12.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from pydantic import BaseModel
from sim_fixtures import QUESTION

from shoal.agents import Agent, Runner, tool
from shoal.config import Config
from shoal.errors import BadRequest, ConfigError
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEnd, Thinking

NO_JSON_WORD = ("Prompt must contain the word 'json' in some form to use 'response_format' "
                "of type 'json_object'.")
JSON_OBJECT = {"type": "json_object"}


class Verdict(BaseModel):
    topic: str
    score: int


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(style="deepseek", seed=5,
                                   models={"*": ModelProfile(output_tokens=12)})) as s:
        yield s


async def post(sim: SimServer, body: dict[str, Any]) -> tuple[int, bytes]:
    url = sim.base_url() + "/chat/completions"
    async with aiohttp.ClientSession() as http, http.post(
            url, json=body, headers={"authorization": "Bearer sk-test"}) as r:
        return r.status, await r.read()


def ask(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "deepseek-chat", "messages": list(messages), **extra}


# -- the refusal -------------------------------------------------------------------------


@pytest.mark.parametrize(("messages", "accepted"), [
    ([{"role": "user", "content": QUESTION}], False),
    ([{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": QUESTION}],
     True),
    ([{"role": "user", "content": QUESTION + " Reply as a json object."}], True),
    ([{"role": "user", "content": [{"type": "text", "text": "Give me Json"}]}], True),
    # The documented place is the system or user prompt: an assistant turn does not count.
    ([{"role": "user", "content": QUESTION},
      {"role": "assistant", "content": '{"json": true}'},
      {"role": "user", "content": "again"}], False),
], ids=["no word", "system, upper case", "user", "user text part", "assistant only"])
async def test_json_object_needs_the_word_json_in_the_prompt(
    sim: SimServer, messages: list[dict[str, Any]], accepted: bool
) -> None:
    status, raw = await post(sim, ask(*messages, response_format=JSON_OBJECT))
    body = json.loads(raw)
    if accepted:
        assert status == 200
        assert isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)
    else:
        assert status == 400
        assert body == {"error": {"message": NO_JSON_WORD, "type": "invalid_request_error",
                                  "param": None, "code": "invalid_request_error"}}


async def test_the_official_sdk_sees_the_refusal_as_bad_request(sim: SimServer) -> None:
    client = openai.AsyncOpenAI(base_url=sim.base_url(), api_key="sk-test", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="deepseek-chat", messages=[{"role": "user", "content": QUESTION}],
                response_format={"type": "json_object"})
        plain = await client.chat.completions.create(  # without JSON mode: no such rule
            model="deepseek-chat", messages=[{"role": "user", "content": QUESTION}])
    finally:
        await client.close()
    assert info.value.status_code == 400
    assert info.value.message.endswith(NO_JSON_WORD)
    assert plain.choices[0].message.content


async def test_developer_role_is_refused_by_the_request_parser(sim: SimServer) -> None:
    """DeepSeek's messages take system/user/assistant/tool (its deserializer's 400,
    decolua/9router#773; PROVIDERS.md trap 10)."""
    status, raw = await post(sim, ask({"role": "developer", "content": "Be brief."},
                                      {"role": "user", "content": QUESTION}))
    error = json.loads(raw)["error"]
    assert status == 400
    assert error["message"].startswith(
        "Failed to deserialize the JSON body into the target type: messages[0].role: "
        "unknown variant `developer`, expected one of `system`, `user`, `assistant`, `tool`")
    assert error["type"] == "invalid_request_error"


async def test_whole_answers_may_come_after_blank_lines(sim: SimServer) -> None:
    """DeepSeek keeps a waiting non-streamed request alive with blank lines before the
    JSON (api-docs.deepseek.com/quick_start/rate_limit; trap 11): the SDK and shoal
    both read the answer after them."""
    status, raw = await post(sim, ask({"role": "user", "content": QUESTION}))
    assert status == 200
    assert raw.startswith(b"\n") and raw.lstrip().startswith(b"{")
    client = openai.AsyncOpenAI(base_url=sim.base_url(), api_key="sk-test", max_retries=0)
    try:
        answer = await client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": QUESTION}])
    finally:
        await client.close()
    assert answer.choices[0].message.content
    async with Router(_config(sim)) as router:
        response = await router.complete(ChatRequest("m", [Message.user(QUESTION)]))
    assert response.text == answer.choices[0].message.content


# -- shoal's DeepSeek path ---------------------------------------------------------------


def _config(sim: SimServer, wire_model: str = "deepseek-chat") -> Config:
    return Config.from_dict({
        "channels": {"ds": {"protocol": "openai", "base_url": sim.base_url(),
                            "api_key": "sk-test", "provider": "deepseek"}},
        "models": {"m": {"channels": ["ds"], "wire_name": wire_model}},
    })


async def _streamed(router: Router, request: ChatRequest) -> ChatResponse:
    async for event in router.stream(request):
        if isinstance(event, StreamEnd):
            return event.response
    raise AssertionError("no StreamEnd")


@pytest.mark.parametrize("history", [
    [Message.user("Rate open-weight LLM economics.")],
    [Message.system("You are terse."), Message.user("Rate open-weight LLM economics.")],
], ids=["user only", "with a system prompt"])
@pytest.mark.parametrize("wire_model", ["deepseek-chat", "deepseek-reasoner"])
async def test_output_schema_on_deepseek_passes_json_mode(
    sim: SimServer, history: list[Message], wire_model: str
) -> None:
    """A library user asking for an output schema on a DeepSeek model: shoal sends
    json_object (json_schema would be refused) with the schema stated in the system
    prompt, which names JSON, so DeepSeek answers; whole and streamed."""
    request = ChatRequest("m", history, output_schema=Verdict.model_json_schema(),
                          output_schema_name="Verdict", max_tokens=256)
    async with Router(_config(sim, wire_model)) as router:
        whole = await router.complete(request)
        streamed = await _streamed(router, request)
    assert Verdict.model_validate_json(whole.text)
    assert Verdict.model_validate_json(streamed.text)
    assert [r.status for r in sim.stats().requests] == [200, 200]


async def test_output_schema_with_tools_and_thinking_on_deepseek(sim: SimServer) -> None:
    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        return f"{q}: costs fall"

    async with Router(_config(sim, "deepseek-reasoner")) as router:
        agent = Agent("a", model="m", tools=[lookup], output_type=Verdict,
                      thinking=Thinking(), max_tokens=512)
        result = await Runner(router).run(agent, "open-weight LLM economics")
    assert isinstance(result.output, Verdict)
    assert result.turns[0].tool_calls == ["lookup"]
    assert [r.status for r in sim.stats().requests] == [200, 200]


async def test_json_mode_without_a_schema_is_the_callers_prompt(sim: SimServer) -> None:
    """``json_mode`` without a schema sends JSON mode and leaves the prompt as written
    (ChatRequest docs): DeepSeek refuses it unless the prompt names JSON, so shoal
    refuses it first, without a request (the simulator would answer 400)."""
    async with Router(_config(sim)) as router:
        with pytest.raises(BadRequest, match='needs the word "json" in a system or user'):
            await router.complete(ChatRequest("m", [Message.user(QUESTION)], json_mode=True))
        assert not sim.stats().requests  # refused before sending
        named = await router.complete(ChatRequest(
            "m", [Message.user(QUESTION + " Answer in JSON.")], json_mode=True))
    assert isinstance(json.loads(named.text), dict)
    assert [r.status for r in sim.stats().requests] == [200]


# -- logprobs in thinking mode ------------------------------------------------------------


@pytest.mark.parametrize(("extra", "status"), [
    ({"logprobs": True}, 400),
    ({"logprobs": True, "top_logprobs": 2}, 400),
    ({"logprobs": True, "thinking": {"type": "disabled"}}, 200),
])
async def test_the_reasoner_refuses_logprobs_in_thinking_mode(
    sim: SimServer, extra: dict[str, Any], status: int
) -> None:
    """DeepSeek's reasoning-model guide: setting logprobs or top_logprobs is an error
    in thinking mode (the default on deepseek-reasoner)."""
    body = {**ask({"role": "user", "content": QUESTION}), "model": "deepseek-reasoner", **extra}
    got, _ = await post(sim, body)
    assert got == status


async def test_shoal_refuses_logprobs_in_thinking_mode_before_sending(sim: SimServer) -> None:
    async with Router(_config(sim, "deepseek-reasoner")) as router:
        with pytest.raises(ConfigError, match="thinking mode"):
            await router.complete(ChatRequest("m", [Message.user(QUESTION)], logprobs=0))
        off = await router.complete(ChatRequest("m", [Message.user(QUESTION)], logprobs=0,
                                                thinking=Thinking(enabled=False)))
    assert off.text
    assert [r.status for r in sim.stats().requests] == [200]
