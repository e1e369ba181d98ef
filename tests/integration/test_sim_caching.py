"""The simulator's prompt caching (shoal.sim.caching), driven by the official SDKs over
real HTTP: Anthropic breakpoints, TTLs, minimums, lookback and refusals; OpenAI and
DeepSeek automatic prefix caching; entries usable only once an answer has begun."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import httpx
import pytest
from sim_fixtures import anthropic_for, openai_for, running

from shoal.clock import VirtualClock
from shoal.sim import ModelProfile, SimConfig

SONNET = "claude-sonnet-4-20250514"  # Sonnet 4: caches from 1,024 tokens (4.6: 2,048)
SYSTEM = "You review contracts for risky clauses. " * 200  # 8,000 chars: 2,000 tokens
EPH: Any = {"type": "ephemeral"}


def system(ttl: str | None = None) -> Any:
    marker = dict(EPH) if ttl is None else {"type": "ephemeral", "ttl": ttl}
    return [{"type": "text", "text": SYSTEM, "cache_control": marker}]


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


async def test_write_then_read_as_the_sdk_reports_it() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        first = await client.messages.create(model=SONNET, max_tokens=64, system=system(),
                                             messages=user("Clause 1?"))
        second = await client.messages.create(model=SONNET, max_tokens=64, system=system(),
                                              messages=user("Clause 2?"))
    u1, u2 = first.usage, second.usage
    assert u1.cache_creation_input_tokens == 2000 and u1.cache_read_input_tokens == 0
    assert u1.cache_creation is not None
    assert u1.cache_creation.ephemeral_5m_input_tokens == 2000
    assert u1.cache_creation.ephemeral_1h_input_tokens == 0
    assert u2.cache_read_input_tokens == 2000 and u2.cache_creation_input_tokens == 0
    # input_tokens is the uncached part: the user text only
    assert u1.input_tokens == u2.input_tokens == 3  # "Clause 1?" = 9 chars


async def test_streamed_usage_carries_the_cache_counts() -> None:
    async with running() as sim, anthropic_for(sim) as client:
        await client.messages.create(model=SONNET, max_tokens=64, system=system(),
                                     messages=user("Clause 1?"))
        async with client.messages.stream(model=SONNET, max_tokens=64, system=system(),
                                          messages=user("Clause 2?")) as stream:
            final = await stream.get_final_message()
    assert final.usage.cache_read_input_tokens == 2000
    assert final.usage.input_tokens == 3


async def test_ttl_on_the_sim_clock_and_refresh_on_read() -> None:
    clock = VirtualClock()
    async with running(clock=clock) as sim, anthropic_for(sim) as client:

        async def ask(ttl: str | None = None, model: str = SONNET) -> Any:
            m = await clock.run(client.messages.create(
                model=model, max_tokens=64, system=system(ttl), messages=user("Clause?")))
            return m.usage

        assert (await ask()).cache_creation_input_tokens == 2000
        await clock.advance(299)
        assert (await ask()).cache_read_input_tokens == 2000  # read: refreshed to +300 s
        await clock.advance(299)
        assert (await ask()).cache_read_input_tokens == 2000
        await clock.advance(301)
        assert (await ask()).cache_creation_input_tokens == 2000  # expired: written again
        one_hour = await ask("1h")  # the same prefix (ttl is not part of it): a read
        assert one_hour.cache_read_input_tokens == 2000
        fresh = await ask("1h", "claude-sonnet-4")  # caches are per model: a 1h write
        assert fresh.cache_creation is not None
        assert fresh.cache_creation.ephemeral_1h_input_tokens == 2000
        await clock.advance(1800)
        assert (await ask("1h", "claude-sonnet-4")).cache_read_input_tokens == 2000


async def test_below_the_minimum_nothing_is_cached_and_nothing_refused() -> None:
    short: Any = [{"type": "text", "text": "Be brief. " * 100, "cache_control": EPH}]
    big = system()
    async with running() as sim, anthropic_for(sim) as client:
        for _ in range(2):
            m = await client.messages.create(model=SONNET, max_tokens=64, system=short,
                                             messages=user("hi"))
            assert m.usage.cache_creation_input_tokens == m.usage.cache_read_input_tokens == 0
        # 2,000 tokens: enough for Sonnet 4.5 (1,024), not for Opus 4.6 (4,096)
        opus = await client.messages.create(model="claude-opus-4-6", max_tokens=64,
                                            system=big, messages=user("hi"))
    assert opus.usage.cache_creation_input_tokens == 0


@pytest.mark.parametrize(("body", "message"), [
    ({"system": [{"type": "text", "text": "x" * 10, "cache_control": EPH}] * 5},
     "A maximum of 4 blocks with cache_control may be provided. Found 5."),
    ({"system": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral",
                                                                 "ttl": "10m"}}]},
     "system.0.cache_control.ttl: Input should be '5m' or '1h'"),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "", "cache_control": EPH}, {"type": "text", "text": "x"}]}]},
     "messages.0.content.0.text: cache_control cannot be set for empty text blocks"),
    ({"system": [{"type": "text", "text": "a", "cache_control": EPH},
                 {"type": "text", "text": "b", "cache_control": {"type": "ephemeral",
                                                                 "ttl": "1h"}}]},
     "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block"),
])
async def test_refusals(body: dict[str, Any], message: str) -> None:
    request = {"model": SONNET, "max_tokens": 64, "messages": user("hi"), **body}
    async with running() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        response = await http.post("/v1/messages", json=request)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(message)


async def test_top_level_automatic_mode_moves_with_the_conversation() -> None:
    history: list[Any] = user("Read the contract. " * 300)  # 1,425 tokens
    async with running() as sim, anthropic_for(sim) as client:
        reads: list[int] = []
        for turn in range(3):
            m = await client.messages.create(model=SONNET, max_tokens=64, messages=history,
                                             extra_body={"cache_control": EPH})
            reads.append(m.usage.cache_read_input_tokens or 0)
            text = "".join(b.text for b in m.content if b.type == "text")
            history = [*history, {"role": "assistant", "content": text},
                       {"role": "user", "content": f"And clause {turn}?"}]
    assert reads[0] == 0 and 0 < reads[1] < reads[2]


async def test_lookback_is_twenty_blocks() -> None:
    def convo(n: int) -> list[Any]:
        blocks: list[Any] = [{"type": "text", "text": f"note {i}"} for i in range(n)]
        blocks[-1] = {**blocks[-1], "cache_control": EPH}
        return [{"role": "user", "content": blocks}]

    async with running() as sim, anthropic_for(sim) as client:

        async def ask(n: int) -> Any:
            m = await client.messages.create(model=SONNET, max_tokens=8, system=SYSTEM,
                                             messages=convo(n))
            return m.usage

        assert (await ask(1)).cache_creation_input_tokens > 2000  # system + "note 0"
        # the one breakpoint now sits 25 blocks after the entry: out of the lookback
        assert (await ask(25)).cache_read_input_tokens == 0
        # 20 blocks: the entry is found
        assert (await ask(20)).cache_read_input_tokens > 2000


async def test_requests_sent_together_all_write() -> None:
    clock = VirtualClock()
    config = SimConfig(models={"*": ModelProfile(latency_s=1.0)})
    async with running(config, clock=clock) as sim, anthropic_for(sim) as client:

        async def ask() -> Any:
            return (await client.messages.create(model=SONNET, max_tokens=8, system=system(),
                                                 messages=user("Clause?"))).usage

        together = await clock.run(asyncio.gather(ask(), ask(), ask()))
        after = await clock.run(ask())
    assert [u.cache_creation_input_tokens for u in together] == [2000] * 3
    assert after.cache_read_input_tokens == 2000


async def test_openai_automatic_prefix_caching_in_128_token_steps() -> None:
    long = "Summarise the quarterly filings for the board. " * 120  # 5,640 chars
    msgs: Any = [{"role": "system", "content": long}, {"role": "user", "content": "Q1?"}]
    async with running() as sim, openai_for(sim) as client:
        first = await client.chat.completions.create(model="gpt-4.1", messages=msgs)
        second = await client.chat.completions.create(
            model="gpt-4.1", messages=[*msgs[:1], {"role": "user", "content": "Q2?"}])
        keyed = await client.chat.completions.create(
            model="gpt-4.1", messages=msgs, extra_body={"prompt_cache_key": "writer"})
        short = await client.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "hi " * 300}])
        short2 = await client.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "hi " * 300}])
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    cached = details.cached_tokens
    assert cached >= 1024 and cached % 128 == 0 and cached <= second.usage.prompt_tokens
    assert cached > second.usage.prompt_tokens - 128 - 10  # all but the changed tail
    # another prompt_cache_key is another cache
    assert keyed.usage is not None and keyed.usage.prompt_tokens_details is not None
    assert keyed.usage.prompt_tokens_details.cached_tokens == 0
    # under 1,024 tokens: never cached
    assert short2.usage is not None and short2.usage.prompt_tokens_details is not None
    assert short.usage is not None and short2.usage.prompt_tokens_details.cached_tokens == 0


async def test_caches_are_per_api_key() -> None:
    long = "Summarise the quarterly filings for the board. " * 120
    msgs: Any = [{"role": "system", "content": long}, {"role": "user", "content": "Q?"}]
    body = {"model": "gpt-4.1", "messages": msgs}
    async with running() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        for key, expect_cached in (("sk-a", False), ("sk-b", False), ("sk-a", True)):
            r = await http.post("/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {key}"})
            cached = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert (cached > 0) is expect_cached


async def test_deepseek_hit_and_miss_add_up_to_the_prompt() -> None:
    long = "Explain the proof step by step. " * 40  # 1,280 chars: 320 tokens
    msgs: Any = [{"role": "system", "content": long}, {"role": "user", "content": "Step 1?"}]
    async with running(SimConfig(style="deepseek")) as sim, \
            httpx.AsyncClient(base_url=sim.url) as http:
        usages = []
        for _ in range(2):
            r = await http.post("/v1/chat/completions",
                                json={"model": "deepseek-chat", "messages": msgs})
            usages.append(r.json()["usage"])
    first, second = usages
    assert first["prompt_cache_hit_tokens"] == 0
    assert second["prompt_cache_hit_tokens"] > 0 and second["prompt_cache_hit_tokens"] % 64 == 0
    for u in usages:
        assert u["prompt_cache_hit_tokens"] + u["prompt_cache_miss_tokens"] == u["prompt_tokens"]
        assert u["prompt_tokens_details"]["cached_tokens"] == u["prompt_cache_hit_tokens"]


def test_sdk_usage_type_has_the_cache_fields() -> None:
    fields = anthropic.types.Usage.model_fields
    assert {"cache_creation_input_tokens", "cache_read_input_tokens",
            "cache_creation"} <= set(fields)
