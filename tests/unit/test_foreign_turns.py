"""What the adapters send for a tool turn another provider answered (foreign_turns.py):
a placeholder reasoning for DeepSeek/Kimi thinking mode, Google's documented signature
placeholder for Gemini 3, thinking left off for Anthropic while such a loop runs; a
turn the provider answered itself keeps what it came with."""

from __future__ import annotations

from typing import Any

from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.foreign_turns import FOREIGN_REASONING, GEMINI_SKIP_SIGNATURE
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.types import ChatRequest, Message, ReasoningPart, Thinking, ToolCall, ToolSpec

LOOKUP = ToolSpec("lookup", "Look up.", {"type": "object", "properties": {}})
CALL = ToolCall("call_1", "lookup", "{}")


def loop(assistant: Message) -> list[Message]:
    return [Message.user("look it up"), assistant, Message.tool("call_1", "found")]


def foreign() -> Message:
    return Message.assistant("", tool_calls=[CALL])


def oa_body(family: str, model: str, messages: list[Message], **kw: Any) -> dict[str, Any]:
    provider = OpenAICompatProvider(base_url="http://127.0.0.1:9/v1", provider=family)
    return provider.payload(ChatRequest("m", messages, tools=[LOOKUP], **kw), model,
                            stream=False)


def an_body(model: str, messages: list[Message], **kw: Any) -> dict[str, Any]:
    provider = AnthropicProvider(base_url="http://127.0.0.1:9", provider="anthropic")
    return provider.payload(ChatRequest("m", messages, tools=[LOOKUP], max_tokens=4096, **kw),
                            model, stream=False)


def test_deepseek_thinking_mode_gets_a_placeholder_only_where_reasoning_is_missing() -> None:
    turn = oa_body("deepseek", "deepseek-reasoner", loop(foreign()))["messages"][1]
    assert turn["reasoning_content"] == FOREIGN_REASONING
    own = Message.assistant("", tool_calls=[CALL], reasoning="I should look it up.")
    assert oa_body("deepseek", "deepseek-reasoner", loop(own))["messages"][1][
        "reasoning_content"] == "I should look it up."
    # thinking switched on by request, and off: a placeholder only where it is demanded
    on = oa_body("deepseek", "deepseek-chat", loop(foreign()), thinking=Thinking())
    assert on["messages"][1]["reasoning_content"] == FOREIGN_REASONING
    off = oa_body("deepseek", "deepseek-reasoner", loop(foreign()),
                  thinking=Thinking(enabled=False))
    assert "reasoning_content" not in off["messages"][1]
    assert "reasoning_content" not in oa_body("deepseek", "deepseek-chat",
                                              loop(foreign()))["messages"][1]
    kimi = oa_body("moonshot", "kimi-k2-thinking", loop(foreign()))["messages"][1]
    assert kimi["reasoning_content"] == FOREIGN_REASONING
    k25 = oa_body("moonshot", "kimi-k2.5", loop(foreign()))["messages"][1]  # thinks by default
    assert k25["reasoning_content"] == FOREIGN_REASONING
    k25_off = oa_body("moonshot", "kimi-k2.5", loop(foreign()),
                      thinking=Thinking(enabled=False))["messages"][1]
    assert "reasoning_content" not in k25_off
    assert "reasoning_content" not in oa_body("openai", "gpt-4o", loop(foreign()))["messages"][1]


def test_gemini_3_gets_the_documented_placeholder_signature_on_a_foreign_first_call() -> None:
    two = Message.assistant("", tool_calls=[CALL, ToolCall("call_2", "lookup", "{}")])
    calls = oa_body("gemini", "gemini-3-pro-preview", loop(two))["messages"][1]["tool_calls"]
    assert calls[0]["extra_content"] == {"google": {"thought_signature": GEMINI_SKIP_SIGNATURE}}
    assert "extra_content" not in calls[1]  # Gemini signs the first call of a step
    signed = Message.assistant("", tool_calls=[ToolCall("call_1", "lookup", "{}", "sig-A")])
    own = oa_body("gemini", "gemini-3-pro-preview", loop(signed))["messages"][1]["tool_calls"]
    assert own[0]["extra_content"] == {"google": {"thought_signature": "sig-A"}}
    older = oa_body("gemini", "gemini-2.5-flash", loop(foreign()))["messages"][1]["tool_calls"]
    assert "extra_content" not in older[0]


def test_anthropic_leaves_thinking_off_only_while_an_unsigned_tool_loop_runs() -> None:
    body = an_body("claude-sonnet-4-6", loop(foreign()), thinking=Thinking(effort="low"))
    assert "thinking" not in body and "output_config" not in body
    signed = Message.assistant("", tool_calls=[CALL], reasoning_parts=(
        ReasoningPart("Look it up.", signature="sig"),))
    kept = an_body("claude-sonnet-4-6", loop(signed), thinking=Thinking())
    assert kept["thinking"] == {"type": "adaptive"}
    # the foreign loop ended with an answer: the next turn thinks again
    ended = [*loop(foreign()), Message.assistant("It is found."), Message.user("And now?")]
    assert an_body("claude-sonnet-4-6", ended, thinking=Thinking())["thinking"] == {
        "type": "adaptive"}
