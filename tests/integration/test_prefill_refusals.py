"""A pre-filled answer (the conversation ending with an assistant message) on Claude 4.6
and later: Anthropic answers 400 "This model does not support assistant message prefill",
thinking or not (the 4.6 migration guide). shoal refuses it before sending (the
simulator's log stays empty); the simulator refuses the raw request on its own, with
Anthropic's envelope; Claude 4.5 still takes a pre-fill on both sides."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
from sim_fixtures import USER, anthropic_for, running

from shoal.config import Config
from shoal.errors import RequestRefused
from shoal.sim import SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

PREFILL: Any = [*USER, {"role": "assistant", "content": "The answer is"}]
WORDS = "This model does not support assistant message prefill"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with running(SimConfig(seed=5)) as s:
        yield s


def claude(sim: SimServer, wire_model: str) -> Config:
    return Config.from_dict({
        "channels": {"ch": {"protocol": "anthropic",
                            "base_url": sim.base_url("anthropic", protocol="anthropic"),
                            "api_key": "sk-test", "provider": "anthropic"}},
        "models": {"m": {"channels": ["ch"], "wire_name": wire_model}},
    })


def prefilled() -> ChatRequest:
    return ChatRequest("m", messages=[Message.user("Name a colour."),
                                      Message.assistant("The colour is")], max_tokens=256)


@pytest.mark.parametrize("wire", ["claude-sonnet-4-6", "claude-opus-4-6", "claude-opus-4-7",
                                  "claude-haiku-4-6", "claude-sonnet-5"])
async def test_shoal_refuses_a_prefill_before_sending(sim: SimServer, wire: str) -> None:
    async with Router(claude(sim, wire)) as router:
        with pytest.raises(RequestRefused) as info:
            await router.complete(prefilled())
    assert info.value.param == "messages"
    assert "end the conversation with a user message" in str(info.value)
    assert sim.stats().total_requests == 0


@pytest.mark.parametrize("wire", ["claude-opus-4-1", "claude-haiku-4-5"])  # none retired
async def test_claude_4_5_and_before_take_a_prefill(sim: SimServer, wire: str) -> None:
    async with Router(claude(sim, wire)) as router:
        answer = await router.complete(prefilled())
    assert answer.text
    assert [r.status for r in sim.stats().requests] == [200]


async def test_the_simulator_refuses_a_raw_prefill_on_4_6() -> None:
    async with running(SimConfig(style="anthropic")) as sim, anthropic_for(sim) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(model="claude-opus-4-6", max_tokens=256,
                                         messages=PREFILL)
        older = await client.messages.create(model="claude-haiku-4-5", max_tokens=256,
                                             messages=PREFILL)
        ended = await client.messages.create(model="claude-opus-4-6", max_tokens=256,
                                             messages=USER)
    assert info.value.status_code == 400
    assert WORDS in info.value.message
    body: Any = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert older.content and ended.content
