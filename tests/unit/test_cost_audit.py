"""An outside-in audit of money: prices, budgets and projections against figures worked
out by hand from the catalog's list prices ($ per million tokens) and each provider's
documented usage fields (/work/shared/PROVIDERS.md, "Usage" and "Prompt caching"), never
against what shoal itself prints.

Catalog prices used below (input / cache read / 5m write / 1h write / output):
claude-opus-4-6 5 / 0.5 / 6.25 / 10 / 25; claude-sonnet-4-6 3 / 0.3 / 3.75 / 6 / 15;
gpt-4.1 2 / 0.5 / - / - / 8; o3-mini 1.1 / 0.55 / - / - / 4.4;
deepseek-reasoner 0.28 / 0.028 / - / - / 0.42; gemini-2.5-flash 0.3 / 0.03 / - / - / 2.5.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from shoal.agents import Agent, Runner, tool
from shoal.agents.guards import Budget, estimate_cost, may_write_1h
from shoal.agents.testing import Reply, ScriptedClient, call
from shoal.cli import cost_cmd
from shoal.config import Config
from shoal.errors import BudgetExceeded, ProviderError
from shoal.providers import anthropic_answer, openai_answer
from shoal.types import CacheControl, ChatRequest, Message, Usage

CFG = Config.from_dict({})


def price(model: str, usage: Usage) -> float:
    return CFG.model(model).cost(usage)


# -- one response, each provider's usage block -----------------------------------------


def test_openai_cached_tokens_are_inside_prompt_tokens_and_reasoning_inside_output() -> None:
    # o3-mini: 2,000 prompt tokens of which 1,024 cached; 3,000 completion tokens of which
    # 2,500 reasoning. Billed: 976 fresh, 1,024 cached, 3,000 output (reasoning once).
    usage = openai_answer.usage_of({
        "prompt_tokens": 2000, "completion_tokens": 3000, "total_tokens": 5000,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 2500}})
    assert usage is not None
    assert price("o3-mini", usage) == pytest.approx(
        (976 * 1.1 + 1024 * 0.55 + 3000 * 4.4) / 1e6, rel=1e-12)  # $0.0148368
    assert price("o3-mini", usage) == pytest.approx(0.0148368, rel=1e-12)


@pytest.mark.parametrize("newer", [False, True], ids=["hit-miss", "with-cached_tokens"])
def test_deepseek_hit_and_miss_add_up_to_the_prompt(newer: bool) -> None:
    # deepseek-reasoner: 5,000 prompt = 4,000 hit + 1,000 miss; 600 out (400 reasoning).
    raw: dict[str, Any] = {"prompt_tokens": 5000, "completion_tokens": 600,
                           "prompt_cache_hit_tokens": 4000, "prompt_cache_miss_tokens": 1000,
                           "completion_tokens_details": {"reasoning_tokens": 400}}
    if newer:  # newer answers repeat the hits as OpenAI's cached_tokens: not twice
        raw["prompt_tokens_details"] = {"cached_tokens": 4000}
    usage = openai_answer.usage_of(raw)
    assert usage is not None
    by_hand = (1000 * 0.28 + 4000 * 0.028 + 600 * 0.42) / 1e6
    assert by_hand == pytest.approx(0.000644, rel=1e-12)
    assert price("deepseek-reasoner", usage) == pytest.approx(by_hand, rel=1e-12)


def test_deepseek_misses_alone_are_billed_when_prompt_tokens_is_absent() -> None:
    # hit + miss = prompt: a usage block with the two parts and no total still has a
    # 1,000-token prompt, all of it a miss.
    usage = openai_answer.usage_of({"completion_tokens": 10, "prompt_cache_hit_tokens": 0,
                                    "prompt_cache_miss_tokens": 1000})
    assert usage is not None
    assert price("deepseek-chat", usage) == pytest.approx(
        (1000 * 0.28 + 10 * 0.42) / 1e6, rel=1e-12)


def test_gemini_cached_tokens_on_the_openai_endpoint() -> None:
    usage = openai_answer.usage_of({"prompt_tokens": 3000, "completion_tokens": 100,
                                    "prompt_tokens_details": {"cached_tokens": 2000}})
    assert usage is not None
    assert price("gemini-2.5-flash", usage) == pytest.approx(
        (1000 * 0.3 + 2000 * 0.03 + 100 * 2.5) / 1e6, rel=1e-12)  # $0.00061


def test_anthropic_input_excludes_reads_and_writes_and_1h_writes_cost_2x() -> None:
    # Opus 4.6: 200 uncached + 4,000 written (1,000 for 5 minutes, 3,000 for an hour), no
    # reads; 500 out. Anthropic's input_tokens excludes the cache counts.
    usage = anthropic_answer.usage_of({
        "input_tokens": 200, "cache_creation_input_tokens": 4000,
        "cache_read_input_tokens": 0, "output_tokens": 500,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000,
                           "ephemeral_1h_input_tokens": 3000}})
    assert usage.input_tokens == 4200
    assert price("claude-opus-4-6", usage) == pytest.approx(
        (200 * 5 + 1000 * 6.25 + 3000 * 10 + 500 * 25) / 1e6, rel=1e-12)  # $0.04975


def test_anthropic_writes_without_the_ttl_split_are_5_minute_writes() -> None:
    usage = anthropic_answer.usage_of({"input_tokens": 200, "cache_creation_input_tokens": 4000,
                                       "cache_read_input_tokens": 1000, "output_tokens": 500})
    assert price("claude-opus-4-6", usage) == pytest.approx(
        (200 * 5 + 4000 * 6.25 + 1000 * 0.5 + 500 * 25) / 1e6, rel=1e-12)  # $0.039


def test_anthropic_thinking_tokens_are_output_billed_once() -> None:
    usage = anthropic_answer.usage_of({"input_tokens": 100, "output_tokens": 1000,
                                       "output_tokens_details": {"thinking_tokens": 700}})
    assert usage.reasoning_tokens == 700
    assert price("claude-sonnet-4-6", usage) == pytest.approx(
        (100 * 3 + 1000 * 15) / 1e6, rel=1e-12)  # $0.0153


@pytest.mark.parametrize("delta_repeats_input", [False, True])
def test_anthropic_stream_cumulative_usage_is_not_added_twice(delta_repeats_input: bool) -> None:
    # message_start carries the prompt counts, message_delta the cumulative output (newer
    # API versions repeat the prompt counts there too: the same numbers, not more).
    start = {"input_tokens": 200, "cache_read_input_tokens": 5000,
             "cache_creation_input_tokens": 1000, "output_tokens": 1,
             "cache_creation": {"ephemeral_5m_input_tokens": 0,
                                "ephemeral_1h_input_tokens": 1000}}
    delta: dict[str, Any] = {"output_tokens": 300}
    if delta_repeats_input:
        delta.update({"input_tokens": 200, "cache_read_input_tokens": 5000,
                      "cache_creation_input_tokens": 1000})
    state = anthropic_answer.StreamState(None)
    state.feed("message_start", {"type": "message_start", "message": {
        "id": "m", "model": "claude-sonnet-4-6", "content": [], "usage": start}})
    state.feed("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                 "usage": delta})
    state.feed("message_delta", {"type": "message_delta", "delta": {}, "usage": delta})
    assert price("claude-sonnet-4-6", state.usage) == pytest.approx(
        (200 * 3 + 5000 * 0.3 + 1000 * 6 + 300 * 15) / 1e6, rel=1e-12)  # $0.0126


# -- one budget, 20 agents at once -------------------------------------------------------


@tool
def lookup(key: str) -> str:
    """Look a key up.

    Args:
        key: what to look up.
    """
    return f"{key}: found"


MAX_OUT = 200


def agents_client(model: str, *, writes: str | None = None, fail_every: int = 0
                  ) -> ScriptedClient:
    """Turn 1 calls the tool, turn 2 answers; every answer uses all of max_tokens (the
    dearest output). ``writes`` bills the whole prompt as a cache write of that TTL."""
    n = 0

    def handler(request: ChatRequest) -> Reply | BaseException:
        nonlocal n
        n += 1
        if fail_every and n % fail_every == 0:
            return ProviderError("upstream 500")
        prompt = client.estimate_tokens(request) - (request.max_tokens or 0)
        one_hour = prompt if writes == "1h" else 0
        usage = Usage(prompt, MAX_OUT, cache_write_tokens=prompt if writes else 0,
                      cache_write_1h_tokens=one_hour)
        if any(m.role == "tool" for m in request.messages):
            return Reply(text="done", usage=usage)
        return Reply(tool_calls=call("lookup", key=f"k{n}").tool_calls, usage=usage)

    client = ScriptedClient(handler=handler, models={model: CFG.model(model)},
                            latency_s=0.002)
    return client


async def run_twenty(client: ScriptedClient, model: str, budget: Budget, *,
                     ttl: str | None = None) -> list[float | BaseException]:
    agent = Agent("worker", model=model, instructions="Answer from the lookup tool. " * 200,
                  tools=[lookup], max_tokens=MAX_OUT,
                  metadata={"cache_ttl": ttl} if ttl else {})

    async def one(i: int) -> float:
        result = await Runner(client).run(agent, f"task {i}", budget=budget)
        return result.cost_usd

    return list(await asyncio.gather(*(one(i) for i in range(20)), return_exceptions=True))


def worst_call_usd(client: ScriptedClient, model: str, *, write_price: float) -> float:
    """One call's worst case by hand: its prompt at the dearest way it can be billed, and
    all of max_tokens as output."""
    info = CFG.model(model)
    prompt = max(client.estimate_tokens(r) - (r.max_tokens or 0) for r in client.requests)
    return (prompt * max(info.input, write_price) + MAX_OUT * info.output) / 1e6


@pytest.mark.parametrize(("model", "writes"), [
    ("gpt-4.1", None), ("claude-sonnet-4-6", "5m"), ("claude-sonnet-4-6", "1h")])
async def test_shared_budget_stops_twenty_agents_near_its_limit(
        model: str, writes: str | None) -> None:
    client = agents_client(model, writes=writes)
    budget = Budget(max_usd=0.05)
    results = await run_twenty(client, model, budget, ttl=writes)
    info = CFG.model(model)
    write_price = {None: info.price.input, "5m": info.price.cache_write,
                   "1h": info.price.cache_write_1h}[writes]
    billed = sum(r.cost_usd for r in client.responses)
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert refused, "a $0.05 budget cannot pay for 40 calls"
    assert all(isinstance(r, float | BudgetExceeded) for r in results), results
    assert budget.spent_usd == pytest.approx(billed, rel=1e-9)
    assert 0 <= budget.spent_usd <= 0.05 + worst_call_usd(client, model,
                                                           write_price=write_price)
    assert budget.reserved_usd == 0 and budget.reserved_tokens == 0


async def test_failed_and_cancelled_calls_leave_no_reservation_behind() -> None:
    client = agents_client("gpt-4.1", fail_every=3)
    budget = Budget(max_usd=0.05)
    results = await run_twenty(client, "gpt-4.1", budget)
    assert any(isinstance(r, ProviderError) for r in results)
    assert budget.reserved_usd == 0 and budget.reserved_tokens == 0
    assert budget.spent_usd == pytest.approx(sum(r.cost_usd for r in client.responses))

    slow = ScriptedClient(handler=lambda r: Reply(text="late"), latency_s=5.0)
    flight = Budget(max_usd=1.0)
    agent = Agent("slow", model="m", max_tokens=MAX_OUT)
    tasks = [asyncio.create_task(Runner(slow).run(agent, "x", budget=flight))
             for _ in range(20)]
    await asyncio.sleep(0.05)
    assert flight.reserved_usd > 0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert flight.reserved_usd == 0 and flight.reserved_tokens == 0
    assert flight.spent_usd == 0


def test_a_calls_worst_case_prices_the_prompt_as_a_cache_write_where_writes_cost_more() -> None:
    # 1,000 prompt tokens + max_tokens 200. Sonnet: a 5-minute write is $3.75, a 1-hour
    # one $6; gpt-4.1 has no write fee: the input price.
    sonnet, gpt = CFG.model("claude-sonnet-4-6"), CFG.model("gpt-4.1")
    assert estimate_cost(sonnet, 1200, 200) == pytest.approx((1000 * 3.75 + 200 * 15) / 1e6)
    assert estimate_cost(sonnet, 1200, 200, one_hour_cache=True) == pytest.approx(
        (1000 * 6 + 200 * 15) / 1e6)
    assert estimate_cost(gpt, 1200, 200) == pytest.approx(
        (1000 * 2 + 200 * 8) / 1e6)


def test_one_hour_writes_are_expected_wherever_a_1h_ttl_applies() -> None:
    cfg = Config.from_dict({"channels": {"anthropic": {"cache_ttl": "1h"}}})
    sonnet = cfg.model("claude-sonnet-4-6")
    channels = cfg.channels_for(sonnet)

    def req(**meta: str) -> ChatRequest:
        return ChatRequest(model=sonnet.name, messages=[Message.user("hi")], metadata=meta)

    assert may_write_1h(req(), sonnet, channels)  # the channel's setting
    assert not may_write_1h(req(), sonnet)  # no channel known, none asked
    assert not may_write_1h(req(cache_ttl="5m"), sonnet, channels)  # the request wins
    assert not may_write_1h(req(cache="off"), sonnet, channels)
    assert may_write_1h(req(cache_ttl="1h"), sonnet)
    marked = ChatRequest(model=sonnet.name, messages=[
        Message("user", "hi", cache_control=CacheControl(ttl="1h"))])
    assert may_write_1h(marked, sonnet)
    assert not may_write_1h(req(cache_ttl="1h"), cfg.model("gpt-4.1"))  # no 1h entries


# -- shoal cost ----------------------------------------------------------------------


def cost_json(*args: str) -> dict[str, Any]:
    app = typer.Typer()
    cost_cmd.register(app)
    app.command("unused")(lambda: None)  # two commands: "cost" stays a subcommand
    out = CliRunner().invoke(app, ["cost", "--requests-per-day", "10000", "--input-tokens",
                                   "3000", "--output-tokens", "800", "--models",
                                   "deepseek-chat,gpt-4.1,claude-sonnet-4-6", *args, "--json"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    rows: dict[str, Any] = {r["model"]: r for r in json.loads(out.stdout)["models"]}
    return rows


# Per request by hand, 3,000 in + 800 out. No caching: fresh × input + out × output.
# --cache-hit-rate 0.8: 2,400 read + 600 fresh. Adding --cache-write-rate 0.2: the other
# 600 are 5-minute writes (= input off Anthropic).
BY_HAND = {
    "deepseek-chat": ((3000 * 0.28 + 800 * 0.42) / 1e6,
                      (2400 * 0.028 + 600 * 0.28 + 800 * 0.42) / 1e6,
                      (2400 * 0.028 + 600 * 0.28 + 800 * 0.42) / 1e6),
    "gpt-4.1": ((3000 * 2 + 800 * 8) / 1e6, (2400 * 0.5 + 600 * 2 + 800 * 8) / 1e6,
                (2400 * 0.5 + 600 * 2 + 800 * 8) / 1e6),
    "claude-sonnet-4-6": ((3000 * 3 + 800 * 15) / 1e6,
                          (2400 * 0.3 + 600 * 3 + 800 * 15) / 1e6,
                          (2400 * 0.3 + 600 * 3.75 + 800 * 15) / 1e6),
}


@pytest.mark.parametrize(("args", "column"), [
    ((), 0), (("--cache-hit-rate", "0.8"), 1),
    (("--cache-hit-rate", "0.8", "--cache-write-rate", "0.2"), 2)])
def test_shoal_cost_projection_equals_the_hand_computation(
        args: tuple[str, ...], column: int) -> None:
    rows = cost_json(*args)
    for model, figures in BY_HAND.items():
        one, uncached = figures[column], figures[0]
        row = rows[model]
        assert row["per_request_usd"] == pytest.approx(one, rel=1e-12), model
        assert row["daily_usd"] == pytest.approx(one * 10_000, rel=1e-12)
        assert row["monthly_usd"] == pytest.approx(one * 10_000 * 30, rel=1e-12)
        assert row["yearly_usd"] == pytest.approx(one * 10_000 * 365, rel=1e-12)
        assert row["uncached_monthly_usd"] == pytest.approx(uncached * 300_000, rel=1e-12)
        assert row["saved_monthly_usd"] == pytest.approx((uncached - one) * 300_000,
                                                         rel=1e-9, abs=1e-9)
    # The documented figures: claude-sonnet-4-6 at 0.8 is $0.01452 a request, $4,356/month.
    if column == 1:
        assert rows["claude-sonnet-4-6"]["monthly_usd"] == pytest.approx(4356.0)
        assert rows["deepseek-chat"]["saved_monthly_usd"] == pytest.approx(181.44)
