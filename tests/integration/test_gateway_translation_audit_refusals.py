"""What the target protocol cannot express: a clear 400 in the *caller's* envelope (the
SDK's ``BadRequestError``), naming the field, before any upstream request (the
simulator counts none); and what it can, with a sane default where the caller left a
field out that the target requires (``max_tokens`` on Anthropic)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
from gateway_fixtures import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    WEATHER_TOOLS_AN,
    WEATHER_TOOLS_OA,
    Recorder,
    anthropic_client,
    openai_client,
    recorded_gateway,
)

from shoal.gateway.server import GatewayServer
from shoal.sim import SimServer

ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
THINK: Any = {"type": "enabled", "budget_tokens": 1024}
Stack = tuple[SimServer, Recorder, GatewayServer]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with recorded_gateway() as parts:
        yield parts


# Each: (model, the request's fields, words the message must hold).
OPENAI_REFUSED: list[tuple[str, str, dict[str, Any], str]] = [
    ("n=2 to an OpenAI model", OPENAI_MODEL, {"n": 2}, "n"),
    ("n=2 to an Anthropic model", ANTHROPIC_MODEL, {"n": 2}, "n"),
    ("temperature 1.5 to Anthropic", ANTHROPIC_MODEL, {"temperature": 1.5}, "temperature"),
    ("top_p 1.5", ANTHROPIC_MODEL, {"top_p": 1.5}, "top_p"),
    ("logprobs to Anthropic", ANTHROPIC_MODEL, {"logprobs": True}, "logprobs"),
    ("reasoning with a forced tool on Anthropic", ANTHROPIC_MODEL,
     {"reasoning_effort": "high", "tools": WEATHER_TOOLS_OA, "tool_choice": "required"},
     "tool_choice"),
    ("reasoning with a temperature on Anthropic", ANTHROPIC_MODEL,
     {"reasoning_effort": "low", "temperature": 0.2}, "temperature"),
    ("reasoning in too few tokens on Anthropic", ANTHROPIC_MODEL,
     {"reasoning_effort": "low", "max_tokens": 500}, "max_tokens"),
    ("reasoning_effort to a model that does not reason", OPENAI_MODEL,
     {"reasoning_effort": "high"}, "does not reason"),
]


@pytest.mark.parametrize(("case", "model", "fields", "says"), OPENAI_REFUSED,
                         ids=[c[0] for c in OPENAI_REFUSED])
async def test_openai_sdk_gets_a_400_before_any_upstream_request(
        stack: Stack, case: str, model: str, fields: dict[str, Any], says: str) -> None:
    sim, _, gw = stack
    async with openai_client(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model=model, messages=ASK, **fields)
    assert info.value.status_code == 400
    assert says in info.value.message
    assert isinstance(info.value.body, dict) and info.value.body["type"] == \
        "invalid_request_error"
    assert info.value.param  # the field at fault, as OpenAI names it
    assert sim.stats().total_requests == 0


LIST_SCHEMA: Any = {"type": "array", "items": {"type": "string"}}

# Each: (model, the request's fields, the param OpenAI's envelope names).
FIELD_REFUSED: list[tuple[str, str, dict[str, Any], str]] = [
    ("a forced tool on Anthropic", ANTHROPIC_MODEL,
     {"reasoning_effort": "high", "tools": WEATHER_TOOLS_OA, "tool_choice": "required"},
     "tool_choice"),
    ("a temperature on Anthropic", ANTHROPIC_MODEL,
     {"reasoning_effort": "low", "temperature": 0.2}, "temperature"),
    ("a temperature and a forced tool: the refusal's", ANTHROPIC_MODEL,
     {"reasoning_effort": "low", "temperature": 0.2, "tools": WEATHER_TOOLS_OA,
      "tool_choice": "required"}, "temperature"),
    ("too few max_tokens on Anthropic", ANTHROPIC_MODEL,
     {"reasoning_effort": "low", "max_tokens": 500}, "max_tokens"),
    ("too few max_completion_tokens on Anthropic", ANTHROPIC_MODEL,
     {"reasoning_effort": "low", "max_completion_tokens": 500}, "max_completion_tokens"),
    ("a model that does not reason", OPENAI_MODEL, {"reasoning_effort": "high"},
     "reasoning_effort"),
    ("a tool whose parameters are not an object, to Anthropic", ANTHROPIC_MODEL,
     {"tools": [*WEATHER_TOOLS_OA, {"type": "function", "function": {
         "name": "tags", "parameters": LIST_SCHEMA}}]}, "tools[1].function.parameters"),
    ("an output schema that is not an object, to Anthropic", ANTHROPIC_MODEL,
     {"response_format": {"type": "json_schema", "json_schema": {
         "name": "tags", "schema": LIST_SCHEMA}}}, "response_format.json_schema.schema"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("case", "model", "fields", "param"), FIELD_REFUSED,
                         ids=[c[0] for c in FIELD_REFUSED])
async def test_a_refusal_names_the_field_at_fault(
        stack: Stack, case: str, model: str, fields: dict[str, Any], param: str,
        stream: bool) -> None:
    """What the upstream would refuse — reasoning it cannot do, or a schema that is not
    an object where Anthropic needs one — is a 400 before any upstream request, and its
    ``param`` names the caller's field at fault (as OpenAI's own 400s do), not null:
    the one to change, under the name the caller sent it."""
    sim, _, gw = stack
    async with openai_client(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model=model, messages=ASK, stream=stream,
                                                 **fields)
    assert info.value.status_code == 400
    assert info.value.param == param, info.value.message
    assert info.value.type == "invalid_request_error"
    assert sim.stats().total_requests == 0


ANTHROPIC_REFUSED: list[tuple[str, str, dict[str, Any], str]] = [
    # This SDK (2.x) has no sampling arguments: a caller sends them in extra_body.
    ("temperature 1.5 to Anthropic", ANTHROPIC_MODEL,
     {"extra_body": {"temperature": 1.5}}, "temperature"),
    ("top_p 1.5 to OpenAI", OPENAI_MODEL, {"extra_body": {"top_p": 1.5}}, "top_p"),
    ("thinking budget over max_tokens", ANTHROPIC_MODEL,
     {"thinking": THINK, "max_tokens": 1024}, "max_tokens"),
    ("thinking with a forced tool", ANTHROPIC_MODEL,
     {"thinking": THINK, "tools": WEATHER_TOOLS_AN, "tool_choice": {"type": "any"}},
     "tool_choice"),
    ("thinking to a model that does not reason", OPENAI_MODEL, {"thinking": THINK},
     "does not reason"),
    ("five stop sequences to OpenAI (it takes 4)", OPENAI_MODEL,
     {"stop_sequences": ["a1", "b2", "c3", "d4", "e5"]}, "stop"),
    ("an image", OPENAI_MODEL, {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}}]}]}, "image"),
]


@pytest.mark.parametrize(("case", "model", "fields", "says"), ANTHROPIC_REFUSED,
                         ids=[c[0] for c in ANTHROPIC_REFUSED])
async def test_anthropic_sdk_gets_a_400_before_any_upstream_request(
        stack: Stack, case: str, model: str, fields: dict[str, Any], says: str) -> None:
    sim, _, gw = stack
    body: dict[str, Any] = {"messages": ASK, "max_tokens": 2000, **fields}
    async with anthropic_client(gw) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(model=model, **body)
    assert info.value.status_code == 400
    assert says in info.value.message
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert sim.stats().total_requests == 0


async def test_what_the_target_takes_goes_through(stack: Stack) -> None:
    """The other side of the line: a temperature of 1.5 is an OpenAI model's to take
    from an Anthropic client, four stop sequences fit OpenAI, and the stop_sequences of
    an Anthropic client reach it as ``stop``."""
    _, rec, gw = stack
    async with anthropic_client(gw) as client:
        warm = await client.messages.create(model=OPENAI_MODEL, max_tokens=20, messages=ASK,
                                            extra_body={"temperature": 1.5})
        assert rec.bodies[-1]["temperature"] == 1.5
        four = await client.messages.create(model=OPENAI_MODEL, max_tokens=20, messages=ASK,
                                            stop_sequences=["a1", "b2", "c3", "d4"])
        assert rec.bodies[-1]["stop"] == ["a1", "b2", "c3", "d4"]
    assert warm.stop_reason == "end_turn" and four.stop_reason == "end_turn"


async def test_an_openai_request_without_max_tokens_gets_a_default_on_anthropic(
        stack: Stack) -> None:
    """Anthropic requires ``max_tokens``; an OpenAI client need not send it: the upstream
    gets a default, also with reasoning on (the thinking budget fits under it), never a
    400 from upstream."""
    _, rec, gw = stack
    async with openai_client(gw) as client:
        plain = await client.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK)
        sent = rec.bodies[-1]
        reasoned = await client.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK,
                                                        reasoning_effort="high")
        thinking = rec.bodies[-1]
    assert plain.choices[0].finish_reason == "stop"
    assert isinstance(sent["max_tokens"], int) and sent["max_tokens"] >= 1024
    assert 1024 <= thinking["thinking"]["budget_tokens"] < thinking["max_tokens"]
    assert reasoned.choices[0].message.content
    assert (reasoned.choices[0].message.model_extra or {}).get("reasoning_content")
