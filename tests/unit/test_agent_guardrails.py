"""Guardrails on input and output: pass, rewrite (redact), trip, fail closed, judge agents."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from shoal.agents import (
    Agent,
    GuardrailResult,
    GuardrailTripped,
    GuardrailVerdict,
    RunContext,
    Runner,
    agent_guardrail,
    guardrail,
)
from shoal.agents.testing import ScriptedClient, reply

EMAIL = re.compile(r"[\w.]+@[\w.]+")


def redact_emails(text: str) -> str:
    return EMAIL.sub("[email]", text)


async def test_input_guardrail_trips_before_any_model_call() -> None:
    @guardrail(name="no-secrets")
    def no_secrets(text: str) -> GuardrailResult:
        if "password" in text:
            return GuardrailResult.trip("input contains a password")
        return GuardrailResult.ok()

    client = ScriptedClient([reply("never")])
    agent = Agent("a", model="m", input_guardrails=[no_secrets])
    with pytest.raises(GuardrailTripped) as err:
        await Runner(client).run(agent, "my password is hunter2")
    assert err.value.guardrail == "no-secrets"
    assert err.value.stage == "input"
    assert err.value.agent == "a"
    assert str(
        err.value
    ) == "input guardrail 'no-secrets' of agent 'a' tripped: input contains a password"
    assert client.calls == 0


async def test_input_guardrail_rewrites_what_the_model_sees() -> None:
    client = ScriptedClient([reply("ok")])
    agent = Agent("a", model="m", input_guardrails=[redact_emails, str.strip])
    await Runner(client).run(agent, "  mail ada@example.com please  ")
    assert client.requests[0].messages[-1].content == "mail [email] please"


async def test_output_guardrail_redacts_text_output() -> None:
    client = ScriptedClient([reply("Contact bob@corp.io for details")])
    agent = Agent("a", model="m", output_guardrails=[redact_emails])
    result = await Runner(client).run(agent, "who?")
    assert result.output == "Contact [email] for details"


class Contact(BaseModel):
    name: str
    email: str


async def test_output_guardrail_on_typed_output_with_context() -> None:
    def mask(c: Contact, ctx: RunContext) -> Contact:
        assert ctx.agent == "a"
        return c.model_copy(update={"email": "[hidden]"})

    client = ScriptedClient([reply('{"name": "Bob", "email": "bob@corp.io"}')])
    agent = Agent("a", model="m", output_type=Contact, output_guardrails=[mask])
    result = await Runner(client).run(agent, "who?")
    assert result.output == Contact(name="Bob", email="[hidden]")


async def test_false_and_exceptions_trip_fail_closed() -> None:
    def refuse(text: str) -> bool:
        return "ok" in text

    async def broken(text: str) -> None:
        raise RuntimeError("classifier down")

    client = ScriptedClient([reply("bad answer"), reply("fine")])
    with pytest.raises(GuardrailTripped, match="'refuse' of agent 'a' tripped: the check returned"):
        await Runner(client).run(Agent("a", model="m", output_guardrails=[refuse]), "x")
    with pytest.raises(GuardrailTripped, match="raised RuntimeError: classifier down"):
        await Runner(client).run(Agent("a", model="m", input_guardrails=[broken]), "x")
    assert client.calls == 1


async def test_agent_guardrail_uses_a_judge_and_counts_its_cost() -> None:
    judge: Agent[GuardrailVerdict] = Agent(
        "judge", model="cheap", output_type=GuardrailVerdict, instructions="Is it on topic?"
    )
    client = ScriptedClient(
        [
            reply('{"tripped": false, "rewrite": "clean question"}'),
            reply("answer"),
            reply('{"tripped": true, "reason": "off topic"}'),
        ]
    )
    agent = Agent("a", model="m", input_guardrails=[agent_guardrail(judge)])
    result = await Runner(client).run(agent, "dirty question")
    assert client.requests[0].model == "cheap"
    assert client.requests[1].messages[-1].content == "clean question"
    assert result.cost_usd > 0
    assert len(result.turns) == 1  # the judge's turn is its own run
    assert result.cost_usd > result.turns[0].cost_usd  # ... but its cost is counted
    with pytest.raises(GuardrailTripped, match="'judge' of agent 'a' tripped: off topic"):
        await Runner(client).run(agent, "football?")
    assert client.calls == 3
