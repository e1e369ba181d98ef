"""Cache planning (shoal.providers.caching): where Anthropic breakpoints go, what OpenAI
is sent, what ``cache = "off"`` sends, and the warm gate. Bodies come from the adapters'
own ``payload``; what the provider then bills is in tests/integration/test_sim_caching.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shoal.clock import VirtualClock
from shoal.config import ChannelConfig, ModelInfo
from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.caching import (
    WarmGate,
    anthropic_min_tokens,
    plan_anthropic,
    shared_prefix_key,
    with_cache_settings,
)
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.types import ChatRequest, Message, ToolCall, ToolSpec

LONG = "You are a careful analyst. " * 300  # ~8,100 characters: ~2,000 tokens
TOOLS = [ToolSpec(f"tool_{i}", "Look something up. " * 20,
                  {"type": "object", "properties": {"q": {"type": "string"}}})
         for i in range(10)]


def an() -> AnthropicProvider:
    return AnthropicProvider(base_url="http://127.0.0.1:9", provider="anthropic")


def oa(family: str = "openai") -> OpenAICompatProvider:
    return OpenAICompatProvider(base_url="http://127.0.0.1:9/v1", provider=family)


def markers(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, cache_control) of every breakpoint, in prefix order."""
    out: list[tuple[str, dict[str, Any]]] = []
    for i, tool in enumerate(body.get("tools") or ()):
        if "cache_control" in tool:
            out.append((f"tools.{i}", tool["cache_control"]))
    system = body.get("system")
    if isinstance(system, list):
        for i, block in enumerate(system):
            if "cache_control" in block:
                out.append((f"system.{i}", block["cache_control"]))
    for i, msg in enumerate(body["messages"]):
        content = msg["content"]
        for j, block in enumerate(content if isinstance(content, list) else ()):
            if "cache_control" in block:
                out.append((f"messages.{i}.{j}", block["cache_control"]))
    return out


def conversation(turns: int) -> list[Message]:
    msgs = [Message.system(LONG), Message.user("Find the three biggest risks.")]
    for t in range(turns):
        msgs.append(Message.assistant("", [ToolCall(f"c{t}", "tool_0", '{"q":"x"}')]))
        msgs.append(Message.tool(f"c{t}", "result " * 40))
    return msgs


def test_minimums_per_family() -> None:
    assert anthropic_min_tokens("claude-sonnet-4-5") == 1024
    assert anthropic_min_tokens("claude-opus-4-1-20250805") == 1024
    assert anthropic_min_tokens("claude-opus-4-6") == 4096
    assert anthropic_min_tokens("claude-haiku-4-5") == 4096
    assert anthropic_min_tokens("claude-3-5-haiku-latest") == 2048
    assert anthropic_min_tokens("claude-sonnet-4-6") == 2048


def test_first_turn_caches_the_system_prompt_and_the_conversation() -> None:
    body = an().payload(ChatRequest("m", conversation(0), tools=TOOLS), "claude-sonnet-4-5",
                        stream=False)
    # tools alone (~1,300 tokens) pass the minimum: a third breakpoint, free of charge
    assert markers(body) == [("tools.9", {"type": "ephemeral"}),
                             ("system.0", {"type": "ephemeral"}),
                             ("messages.0.0", {"type": "ephemeral"})]
    assert body["system"][0]["text"] == LONG  # the string became one block, unchanged


def test_later_turns_mark_the_previous_turn_too_and_never_exceed_four() -> None:
    body = an().payload(ChatRequest("m", conversation(3), tools=TOOLS), "claude-sonnet-4-5",
                        stream=False)
    where = [w for w, _ in markers(body)]
    # tools (2,500 tokens alone) + system + the previous turn's end + the current end
    assert where == ["tools.9", "system.0", "messages.4.0", "messages.6.0"]


def test_nothing_below_the_minimum() -> None:
    short = [Message.system("Be brief."), Message.user("hi")]
    assert markers(an().payload(ChatRequest("m", short), "claude-sonnet-4-5",
                                stream=False)) == []
    # ~2,000 tokens: cached on Sonnet 4.5 (1,024), not on Opus 4.6 (4,096)
    sonnet = an().payload(ChatRequest("m", conversation(0)), "claude-sonnet-4-5", stream=False)
    opus = an().payload(ChatRequest("m", conversation(0)), "claude-opus-4-6", stream=False)
    assert markers(sonnet) and markers(opus) == []
    assert opus["system"] == LONG  # untouched: a plain string, as without caching


def test_off_sends_nothing_cache_related() -> None:
    r = ChatRequest("m", conversation(3), tools=TOOLS, metadata={"cache": "off"})
    body = an().payload(r, "claude-sonnet-4-5", stream=False)
    assert "cache_control" not in str(body)
    r = ChatRequest("m", conversation(1), tools=TOOLS,
                    metadata={"cache": "off", "cache_key": "writer"})
    assert "prompt_cache_key" not in oa().payload(r, "gpt-4.1", stream=False)


def test_one_hour_ttl() -> None:
    r = ChatRequest("m", conversation(0), metadata={"cache_ttl": "1h"})
    body = an().payload(r, "claude-sonnet-4-5", stream=False)
    assert {m["ttl"] for _, m in markers(body)} == {"1h"}


def test_user_placed_breakpoints_are_kept_and_counted() -> None:
    body = an().payload(ChatRequest("m", conversation(3), tools=TOOLS), "claude-sonnet-4-5",
                        stream=False)
    mine = {"type": "ephemeral", "ttl": "1h"}
    body2 = {**body, "tools": [dict(t) for t in body["tools"]]}
    for t in body2["tools"]:
        t.pop("cache_control", None)
    body2["tools"][2]["cache_control"] = mine  # the caller's, via extra
    system = [{"type": "text", "text": LONG, "cache_control": mine}]
    r = ChatRequest("m", conversation(3), tools=TOOLS,
                    extra={"tools": body2["tools"], "system": system})
    out = an().payload(r, "claude-sonnet-4-5", stream=False)
    found = markers(out)
    assert len(found) == 4
    assert found[0] == ("tools.2", mine) and found[1] == ("system.0", mine)
    # after the caller's 1h breakpoints, shoal's are 1h too (1h may not follow 5m)
    assert all(m.get("ttl") == "1h" for _, m in found)
    # top-level automatic mode set by the caller: shoal adds nothing
    auto = an().payload(ChatRequest("m", conversation(2),
                                    extra={"cache_control": {"type": "ephemeral"}}),
                        "claude-sonnet-4-5", stream=False)
    assert markers(auto) == []


def test_plan_counts_every_existing_marker() -> None:
    blocks = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}
              for _ in range(4)]
    body: dict[str, Any] = {"system": blocks, "messages": [
        {"role": "user", "content": LONG}]}
    assert plan_anthropic(body, "claude-sonnet-4-5", ChatRequest("m", [])) == 0
    assert body["messages"][0]["content"] == LONG


def test_openai_gets_the_agents_cache_key_others_get_nothing() -> None:
    r = ChatRequest("m", conversation(1), tools=TOOLS, metadata={"cache_key": "writer"})
    assert oa().payload(r, "gpt-4.1", stream=False)["prompt_cache_key"] == "writer"
    for family in ("deepseek", "gemini", "zhipu", "generic"):
        assert "prompt_cache_key" not in oa(family).payload(r, "m", stream=False)
    mine = ChatRequest("m", conversation(1), metadata={"cache_key": "writer"},
                       extra={"prompt_cache_key": "mine"})
    assert oa().payload(mine, "gpt-4.1", stream=False)["prompt_cache_key"] == "mine"


def test_model_and_channel_settings_reach_the_request() -> None:
    ch = ChannelConfig(name="a", protocol="anthropic", base_url="http://127.0.0.1:9")
    off = ChannelConfig(name="b", protocol="anthropic", base_url="http://127.0.0.1:9",
                        cache="off")
    info = ModelInfo(name="claude-sonnet-4-5", cache_ttl="1h")
    plain = ModelInfo(name="claude-sonnet-4-5")
    r = ChatRequest("m", [Message.user("x")])
    assert with_cache_settings(r, plain, ch) is r  # nothing set: no copy
    assert with_cache_settings(r, info, ch).metadata == {"cache_ttl": "1h"}
    assert with_cache_settings(r, info, off).metadata == {"cache": "off", "cache_ttl": "1h"}
    own = ChatRequest("m", [Message.user("x")], metadata={"cache": "auto"})
    assert with_cache_settings(own, info, off).metadata["cache"] == "auto"


def test_shared_prefix_key_ignores_the_conversation() -> None:
    a = an().payload(ChatRequest("m", conversation(0), tools=TOOLS), "claude-sonnet-4-5",
                     stream=False)
    msgs = conversation(0)
    msgs[1] = Message.user("Something else entirely.")
    b = an().payload(ChatRequest("m", msgs, tools=TOOLS), "claude-sonnet-4-5", stream=False)
    assert shared_prefix_key(a) is not None and shared_prefix_key(a) == shared_prefix_key(b)
    short = an().payload(ChatRequest("m", [Message.user("hi")]), "claude-sonnet-4-5",
                         stream=False)
    assert shared_prefix_key(short) is None


def test_warm_gate_lets_one_writer_go_first() -> None:
    clock = VirtualClock()
    gate = WarmGate(clock)
    order: list[str] = []

    async def call(name: str, fail: bool = False) -> None:
        turn = await gate.enter("prefix")
        order.append(f"{name} sent")
        try:
            await asyncio.sleep(0)
            if not fail:
                turn.began()
        finally:
            turn.end(ok=False)

    async def main() -> None:
        await asyncio.gather(call("a", fail=True), call("b"), call("c"), call("d"))
        order.append("--")
        await call("e")  # warm now: straight through

    asyncio.run(main())
    # a led and failed, so b led next; c and d went once b's answer began
    assert order[:2] == ["a sent", "b sent"]
    assert sorted(order[2:4]) == ["c sent", "d sent"] and order[4:] == ["--", "e sent"]
    assert not gate._writing


@pytest.mark.parametrize("turns", [1, 4])
def test_prefix_is_byte_stable_across_turns(turns: int) -> None:
    """The body up to the previous request's end is identical in the next request."""
    import json

    msgs = conversation(turns)
    before = an().payload(ChatRequest("m", msgs[:-2], tools=TOOLS), "claude-sonnet-4-5",
                          stream=False)
    after = an().payload(ChatRequest("m", msgs, tools=TOOLS), "claude-sonnet-4-5",
                         stream=False)

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "cache_control"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    assert json.dumps(strip(before["tools"])) == json.dumps(strip(after["tools"]))
    assert json.dumps(strip(before["system"])) == json.dumps(strip(after["system"]))
    n = len(before["messages"])
    assert json.dumps(strip(before["messages"])) == json.dumps(strip(after["messages"][:n]))


def test_breakpoints_set_on_messages_and_tools_are_kept_within_four() -> None:
    import dataclasses

    from shoal import types

    marker = {"type": "ephemeral"}
    cc_type = getattr(types, "CacheControl", None)  # the typed slot, where it exists
    given: Any = cc_type() if cc_type is not None else marker
    msgs = conversation(3)
    msgs[1] = dataclasses.replace(msgs[1], cache_control=given)  # the task
    tools = [dataclasses.replace(TOOLS[4], cache_control=given), *TOOLS[5:]]
    body = an().payload(ChatRequest("m", msgs, tools=tools), "claude-sonnet-4-5",
                        stream=False)
    found = markers(body)
    assert len(found) == 4
    assert ("tools.0", marker) in found and ("messages.0.0", marker) in found
    # shoal's two: the conversation end first, then the system prompt
    assert [w for w, _ in found] == ["tools.0", "system.0", "messages.0.0", "messages.6.0"]


def test_warm_gate_stops_waiting_for_a_hung_writer() -> None:
    clock = VirtualClock()
    gate = WarmGate(clock, max_wait_s=30)

    async def main() -> list[float]:
        leader = await gate.enter("prefix")  # never begins: a hung request
        assert leader.leader
        follower = asyncio.ensure_future(gate.enter("prefix"))
        await clock.advance(29)
        assert not follower.done()
        await clock.advance(2)
        turn = await follower
        assert not turn.leader  # goes without the cache's help
        leader.end(ok=False)
        return [clock.now()]

    assert asyncio.run(main()) == [31.0]
