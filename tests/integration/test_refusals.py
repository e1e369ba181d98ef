"""A model that declines to answer (the simulator's ``refusal`` fault: OpenAI's
``message.refusal`` with no content, Anthropic's ``stop_reason: "refusal"``).

shoal keeps the refusal's words (``ChatResponse.refusal``, finish ``content_filter``),
an agent raises ``ModelRefused`` with them instead of returning an empty answer, and the
gateway gives each SDK its own protocol's refusal whoever declined: OpenAI's
``parse()`` reports it instead of failing to parse "" (or raising a content-filter
error for a Claude refusal).
"""

from __future__ import annotations

import pytest
from gateway_fixtures import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    anthropic_client,
    gateway,
    openai_client,
    sim_config,
)
from pydantic import BaseModel
from sim_fixtures import running

from shoal.agents import Agent, Runner
from shoal.config import Config
from shoal.errors import ModelRefused
from shoal.sim import SimConfig
from shoal.sim.content import REFUSAL_TEXT
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message, StreamEnd

pytestmark = pytest.mark.asyncio


class Verdict(BaseModel):
    ok: bool


def _openai_config(url: str) -> Config:
    return Config.from_dict({
        "channels": {"oa": {"protocol": "openai", "base_url": url, "api_key": "sk-test-01234",
                            "provider": "openai"}},
        "models": {"m": {"channels": ["oa"], "wire_name": "gpt-4o-mini"}},
    })


async def test_the_router_keeps_the_refusal_and_an_agent_raises_it() -> None:
    async with running() as sim, Router(_openai_config(sim.base_url())) as router:
        ask = ChatRequest("m", [Message.user("hi")], extra={})
        sim.script(["refusal", "refusal", "refusal"])
        whole = await router.complete(ask)
        end = [e async for e in router.stream(ask)][-1]
        with pytest.raises(ModelRefused, match="declined to answer: I'm sorry") as caught:
            await Runner(router).run(Agent("judge", model="m", output_type=Verdict), "ok?")
    assert isinstance(end, StreamEnd)
    for answer in (whole, end.response):
        assert (answer.text, answer.refusal) == ("", REFUSAL_TEXT)
        assert answer.finish_reason == "content_filter"
    assert caught.value.refusal == REFUSAL_TEXT


@pytest.mark.parametrize("model", [OPENAI_MODEL, ANTHROPIC_MODEL])
async def test_each_sdk_sees_a_refusal_in_its_own_protocol(model: str) -> None:
    async with running(SimConfig()) as sim, gateway(sim_config(sim)) as gw:
        sim.script(["refusal"] * 3)  # the next three upstream requests are declined
        async with openai_client(gw) as oa:
            parsed = await oa.chat.completions.parse(
                model=model, messages=[{"role": "user", "content": "ok?"}],
                response_format=Verdict)
            chunks = [c async for c in await oa.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "ok?"}], stream=True)]
        async with anthropic_client(gw) as an:
            message = await an.messages.create(
                model=model, max_tokens=100, messages=[{"role": "user", "content": "ok?"}])
    # OpenAI's shape whoever declined: the refusal field, no content, finish "stop"
    choice = parsed.choices[0]
    assert choice.message.parsed is None and choice.message.content is None
    assert choice.message.refusal == REFUSAL_TEXT and choice.finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.refusal or "" for c in chunks if c.choices)
    assert streamed == REFUSAL_TEXT
    # Anthropic's: the words as text, stop_reason "refusal"
    assert message.stop_reason == "refusal"
    assert message.content[0].text == REFUSAL_TEXT  # type: ignore[union-attr]
