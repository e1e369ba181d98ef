"""Refusals the gateway's old field-guessing could not place: the adapters name the field
at fault where they raise (:class:`~shoal.errors.RequestRefused`), so every refusal made
before any upstream request carries OpenAI's ``param``, not only the thinking and schema
ones. A real OpenAI answers these with a 400 naming the field too (``Unsupported value:
'top_p' ...``, param ``top_p``)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from gateway_fixtures import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    WEATHER_TOOLS_OA,
    gateway,
    openai_client,
    sim_config,
)

from shoal.sim import SimConfig, SimServer

ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]

# Each: (case, model, its wire name upstream, the request's fields, the param named).
CASES: list[tuple[str, str, str, dict[str, Any], str]] = [
    ("top_p to an OpenAI reasoning model", OPENAI_MODEL, "o3-mini", {"top_p": 0.5}, "top_p"),
    ("temperature to an OpenAI reasoning model", OPENAI_MODEL, "gpt-5",
     {"temperature": 0.2}, "temperature"),
    ("top_p to Claude 5", ANTHROPIC_MODEL, "claude-sonnet-5", {"top_p": 0.5}, "top_p"),
    ("a forced tool to Claude 5.5", ANTHROPIC_MODEL, "claude-sonnet-5-5",
     {"tools": WEATHER_TOOLS_OA, "tool_choice": "required"}, "tool_choice"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("case", "model", "wire", "fields", "param"), CASES,
                         ids=[c[0] for c in CASES])
async def test_every_refusal_before_sending_names_the_callers_field(
        case: str, model: str, wire: str, fields: dict[str, Any], param: str,
        stream: bool) -> None:
    async with SimServer(SimConfig()) as sim, \
            gateway(sim_config(sim, models={model: {"wire_name": wire}})) as gw, \
            openai_client(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model=model, messages=ASK, stream=stream,
                                                 **fields)
        assert sim.stats().total_requests == 0
    assert info.value.status_code == 400
    assert info.value.param == param, info.value.message
    assert info.value.type == "invalid_request_error"
