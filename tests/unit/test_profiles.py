"""Provider profiles: what each family is sent (structured output, tool_choice, max-tokens
field, reasoning round-trips, thinking, extra). Bodies are built by the adapters' own
``payload``; the exact recorded shapes over HTTP are in test_wire_fixtures.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shoal.errors import BadRequest, ConfigError
from shoal.families import FAMILIES
from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.providers.profiles import PROFILES, profile_for, schema_instructions, strict_schema
from shoal.types import (
    CacheControl,
    ChatRequest,
    Message,
    ReasoningPart,
    Thinking,
    ToolCall,
    ToolSpec,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"topic": {"type": "string"}, "points": {"type": "array",
                                                          "items": {"type": "string"}}},
    "required": ["topic", "points"],
}
LOOKUP = ToolSpec("lookup", "Look something up.",
                  {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})


def oa(family: str) -> OpenAICompatProvider:
    return OpenAICompatProvider(base_url="http://127.0.0.1:9/v1", provider=family)


def an(family: str = "anthropic") -> AnthropicProvider:
    return AnthropicProvider(base_url="http://127.0.0.1:9", provider=family)


def req(**kw: Any) -> ChatRequest:
    kw.setdefault("messages", [Message.user("summarise the findings")])
    return ChatRequest("m", **kw)


def test_every_family_has_a_profile() -> None:
    assert set(FAMILIES) <= set(PROFILES)
    for name, profile in PROFILES.items():
        assert profile.family == name


def test_unknown_family_or_other_protocol_gets_the_generic_rules() -> None:
    assert profile_for("no-such-family").family == "generic"
    assert profile_for("no-such-family", "anthropic").output_mode == "tool"
    # DeepSeek's Anthropic-compatible endpoint speaks Messages: Anthropic's generic rules
    assert profile_for("deepseek", "anthropic").protocol == "anthropic"


def test_deepseek_structured_output_is_json_object_with_the_schema_in_the_prompt() -> None:
    body = oa("deepseek").payload(req(output_schema=SCHEMA), "deepseek-chat", stream=False)
    assert body["response_format"] == {"type": "json_object"}
    assert "json_schema" not in json.dumps(body["response_format"])
    system = body["messages"][0]
    assert system["role"] == "system"
    assert "json" in system["content"].lower()
    assert json.dumps(SCHEMA, separators=(",", ":")) in system["content"]


def test_schema_prompt_is_not_repeated_when_the_agent_already_stated_it() -> None:
    messages = [Message.system("Be brief.\n\n" + schema_instructions(SCHEMA)),
                Message.user("go")]
    body = oa("deepseek").payload(req(messages=messages, output_schema=SCHEMA), "d",
                                  stream=False)
    assert len(body["messages"]) == 2
    assert body["messages"][0]["content"].count("JSON schema") == 1


@pytest.mark.parametrize(("family", "expected"), [
    ("moonshot", {"type": "json_object"}),
    ("zhipu", {"type": "json_object"}),
    ("qwen", {"type": "json_object"}),
    ("offline", {"type": "json_object", "schema": SCHEMA}),
    ("llamacpp", {"type": "json_object", "schema": SCHEMA}),
])
def test_json_object_families(family: str, expected: dict[str, Any]) -> None:
    body = oa(family).payload(req(output_schema=SCHEMA), "m", stream=False)
    assert body["response_format"] == expected


def test_minimax_gets_the_schema_in_the_prompt_only_and_one_system_message() -> None:
    messages = [Message.system("You are terse."), Message.system("Cite sources."),
                Message.user("go")]
    body = oa("minimax").payload(req(messages=messages, output_schema=SCHEMA), "m",
                                 stream=False)
    assert "response_format" not in body
    systems = [m for m in body["messages"] if m["role"] == "system"]
    assert len(systems) == 1
    assert "You are terse." in systems[0]["content"]
    assert "JSON schema" in systems[0]["content"]


def test_openai_native_json_schema_is_strict_when_the_schema_allows() -> None:
    body = oa("openai").payload(req(output_schema=SCHEMA, output_schema_name="Findings"), "m",
                                stream=False)
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Findings"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False
    # An optional property cannot be strict: sent non-strict, validated locally.
    loose = {**SCHEMA, "required": ["topic"]}
    body = oa("openai").payload(req(output_schema=loose), "m", stream=False)
    assert "strict" not in body["response_format"]["json_schema"]
    assert body["response_format"]["json_schema"]["schema"] == loose


def test_strict_schema_rules() -> None:
    nested = {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"],
              "$defs": {"A": {"type": "object", "properties": {"x": {"type": "integer"}},
                              "required": ["x"]}}}
    out = strict_schema(nested)
    assert out is not None
    assert out["$defs"]["A"]["additionalProperties"] is False
    with_default = {"type": "object", "properties": {"x": {"type": "integer", "default": 1}},
                    "required": ["x"]}
    assert strict_schema(with_default) is None
    open_extra = {**SCHEMA, "additionalProperties": True}
    assert strict_schema(open_extra) is None
    # OpenAI's strict mode takes only an object at the root: others go non-strict
    listed = {"type": "array", "items": {"type": "string"}}
    assert strict_schema(listed) is None
    body = oa("openai").payload(req(output_schema=listed, output_schema_name="L"), "gpt-4o",
                                stream=False)["response_format"]["json_schema"]
    assert "strict" not in body and body["schema"] == listed
    # a nullable object is an object: it gets additionalProperties false like the others
    nullable = {"type": "object", "properties": {"n": {
        "type": ["object", "null"], "properties": {"x": {"type": "string"}}, "required": ["x"]}},
        "required": ["n"]}
    fixed = strict_schema(nullable)
    assert fixed is not None and fixed["properties"]["n"]["additionalProperties"] is False
    bare = {"type": "object", "properties": {"n": {"type": ["object", "null"]}}, "required": ["n"]}
    assert strict_schema(bare) == {**bare, "additionalProperties": False, "properties": {
        "n": {"type": ["object", "null"], "additionalProperties": False}}}


def test_max_tokens_field_and_tool_choice_per_family() -> None:
    r = req(tools=[LOOKUP], tool_choice="required", max_tokens=100)
    openai = oa("openai").payload(r, "m", stream=False)
    assert openai["max_completion_tokens"] == 100 and "max_tokens" not in openai
    assert openai["tool_choice"] == "required"
    plain = req(tools=[LOOKUP], max_tokens=100)
    zhipu = oa("zhipu").payload(plain, "m", stream=False)
    assert zhipu["max_tokens"] == 100 and "max_completion_tokens" not in zhipu
    assert "tool_choice" not in zhipu
    auto = oa("zhipu").payload(req(tools=[LOOKUP], tool_choice="auto"), "m", stream=False)
    assert auto["tool_choice"] == "auto"
    assert "tool_choice" not in oa("ollama").payload(plain, "m", stream=False)


@pytest.mark.parametrize("family", ["zhipu", "minimax", "ollama", "llamacpp", "offline"])
def test_a_tool_choice_the_provider_cannot_honour_is_refused_or_kept_by_offering_none(
        family: str) -> None:
    """Zhipu and MiniMax take only "auto", Ollama and llama.cpp no tool_choice at all
    (PROVIDERS.md §3): dropping the field made "none" mean "call one if you like" (the
    simulator's Zhipu answered a tool call). "none" now offers no tools; a required or
    named tool, which no field can ask for there, is a ConfigError before any request."""
    none = oa(family).payload(req(tools=[LOOKUP], tool_choice="none"), "m", stream=False)
    assert "tools" not in none and "tool_choice" not in none
    for choice in ("required", "lookup"):
        with pytest.raises(ConfigError, match=f"family {family!r} takes .*tool_choice="
                                              f"'{choice}'.*leave tool_choice unset"):
            oa(family).payload(req(tools=[LOOKUP], tool_choice=choice), "m", stream=False)


@pytest.mark.parametrize(("family", "says"), [("openai", "the messages"),
                                              ("deepseek", "a system or user message")])
def test_json_mode_without_the_word_json_is_refused_before_sending(
        family: str, says: str) -> None:
    """OpenAI and DeepSeek answer 400 to json_object when the prompt never says "json"
    (PROVIDERS.md trap 12): refused here, naming the fix."""
    with pytest.raises(BadRequest, match=f'needs the word "json" in {says}') as info:
        oa(family).payload(req(json_mode=True), "m", stream=False)
    assert info.value.param == "messages"
    ok = req(json_mode=True, messages=[Message.user("Reply in JSON: {\"n\": 1}")])
    assert oa(family).payload(ok, "m", stream=False)["response_format"] == {
        "type": "json_object"}
    # DeepSeek reads only system and user messages for it; OpenAI any message.
    said_by_assistant = req(json_mode=True, messages=[
        Message.user("hi"), Message.assistant("I will answer in JSON."), Message.user("go")])
    if family == "deepseek":
        with pytest.raises(BadRequest):
            oa(family).payload(said_by_assistant, "m", stream=False)
    else:
        oa(family).payload(said_by_assistant, "m", stream=False)


def test_no_family_is_sent_the_developer_role() -> None:
    r = req(messages=[Message.system("rules"), Message.user("hi")])
    for family in PROFILES:
        if PROFILES[family].protocol == "openai":
            roles = [m["role"] for m in oa(family).payload(r, "m", stream=False)["messages"]]
            assert "developer" not in roles


def tool_turn(reasoning: str | None = "I should look it up.") -> list[Message]:
    return [
        Message.user("find it"),
        Message.assistant("", [ToolCall("call_1", "lookup", '{"q":"x"}', signature="sig-g")],
                          reasoning=reasoning),
        Message.tool("call_1", "found"),
        Message.assistant("It is x.", reasoning="easy"),
        Message.user("thanks"),
    ]


def test_assistant_tool_turn_content_is_an_empty_string_not_null() -> None:
    for family in ("openai", "deepseek", "gemini", "generic", "ollama", "offline"):
        msgs = oa(family).payload(req(messages=tool_turn()), "m", stream=False)["messages"]
        assert msgs[1]["content"] == ""
        assert msgs[1]["tool_calls"][0]["function"]["arguments"] == '{"q":"x"}'


def test_deepseek_sends_reasoning_content_back_on_tool_turns_only() -> None:
    msgs = oa("deepseek").payload(req(messages=tool_turn()), "m", stream=False)["messages"]
    assert msgs[1]["reasoning_content"] == "I should look it up."
    assert "reasoning_content" not in msgs[3]  # a turn without tool calls
    # families without the rule never send it
    msgs = oa("openai").payload(req(messages=tool_turn()), "m", stream=False)["messages"]
    assert "reasoning_content" not in msgs[1]


def test_gemini_sends_thought_signatures_back_on_tool_calls() -> None:
    msgs = oa("gemini").payload(req(messages=tool_turn()), "m", stream=False)["messages"]
    call = msgs[1]["tool_calls"][0]
    assert call["extra_content"] == {"google": {"thought_signature": "sig-g"}}
    msgs = oa("openai").payload(req(messages=tool_turn()), "m", stream=False)["messages"]
    assert "extra_content" not in msgs[1]["tool_calls"][0]  # OpenAI would refuse the field


def test_extra_is_merged_last() -> None:
    r = req(max_tokens=5, extra={"max_completion_tokens": 7, "service_tier": "flex"})
    body = oa("openai").payload(r, "m", stream=True)
    assert body["max_completion_tokens"] == 7 and body["service_tier"] == "flex"
    body = an().payload(req(extra={"top_k": 5}), "claude", stream=False)
    assert body["top_k"] == 5


@pytest.mark.parametrize(("family", "thinking", "expected"), [
    ("deepseek", Thinking(), {"thinking": {"type": "enabled"}}),
    ("deepseek", Thinking(effort="high"),
     {"thinking": {"type": "enabled"}, "reasoning_effort": "high"}),
    ("deepseek", Thinking(enabled=False), {"thinking": {"type": "disabled"}}),
    ("zhipu", Thinking(), {"thinking": {"type": "enabled"}}),
    ("qwen", Thinking(budget_tokens=500), {"enable_thinking": True, "thinking_budget": 500}),
    ("openai", Thinking(effort="low"), {"reasoning_effort": "low"}),
    ("openai", Thinking(budget_tokens=10_000), {"reasoning_effort": "high"}),
    ("gemini", Thinking(effort="medium"), {"reasoning_effort": "medium"}),
    ("gemini", Thinking(budget_tokens=2000), {"extra_body": {"google": {"thinking_config": {
        "thinking_budget": 2000, "include_thoughts": True}}}}),
    ("gemini", Thinking(enabled=False), {"reasoning_effort": "none"}),
])
def test_thinking_fields_per_family(family: str, thinking: Thinking,
                                    expected: dict[str, Any]) -> None:
    body = oa(family).payload(req(thinking=thinking), "m", stream=False)
    for key, value in expected.items():
        assert body[key] == value
    assert not {"thinking", "reasoning_effort", "enable_thinking", "extra_body"} - set(
        expected) & set(body)


def test_thinking_on_a_family_without_a_known_switch_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"ChatRequest\.extra"):
        oa("ollama").payload(req(thinking=Thinking()), "m", stream=False)


def test_thinking_option_is_validated() -> None:
    with pytest.raises(ConfigError, match="budget_tokens"):
        Thinking(budget_tokens=0)
    with pytest.raises(ConfigError, match="effort"):
        Thinking(effort="max")  # type: ignore[arg-type]  # the point of the test


# -- Anthropic --------------------------------------------------------------------------


def test_anthropic_offers_the_output_tool_next_to_the_callers_tools_with_auto() -> None:
    body = an().payload(req(tools=[LOOKUP], output_schema=SCHEMA, output_schema_name="F"),
                        "claude", stream=False)
    assert [t["name"] for t in body["tools"]] == ["lookup", "F"]
    assert body["tool_choice"] == {"type": "auto"}


def test_anthropic_forces_the_output_tool_only_when_nothing_else_may_be_called() -> None:
    alone = an().payload(req(output_schema=SCHEMA, output_schema_name="F"), "c", stream=False)
    assert alone["tool_choice"] == {"type": "tool", "name": "F"}
    answer_now = an().payload(req(tools=[LOOKUP], tool_choice="none", output_schema=SCHEMA,
                                  output_schema_name="F"), "c", stream=False)
    assert answer_now["tool_choice"] == {"type": "tool", "name": "F"}
    thinking = an().payload(req(output_schema=SCHEMA, output_schema_name="F",
                                thinking=Thinking(budget_tokens=1024), max_tokens=4000),
                            "c", stream=False)
    assert thinking["tool_choice"] == {"type": "auto"}  # Anthropic refuses forcing then
    answer_now_thinking = an().payload(req(tools=[LOOKUP], tool_choice="none",
                                           output_schema=SCHEMA, output_schema_name="F",
                                           thinking=Thinking(budget_tokens=1024),
                                           max_tokens=4000), "c", stream=False)
    assert answer_now_thinking["tool_choice"] == {"type": "none"}  # a JSON text answer


def test_anthropic_thinking_is_adaptive_where_the_model_takes_it() -> None:
    """Opus/Sonnet 4.6 and Claude 5 think adaptively (a manual budget is deprecated or
    refused there); effort goes in output_config. A budget the caller set is kept, and a
    4.5 model gets the budgeted form."""
    low = an().payload(req(thinking=Thinking(effort="low"), max_tokens=3000),
                       "claude-sonnet-4-6", stream=False)
    assert low["thinking"] == {"type": "adaptive"}
    assert low["output_config"] == {"effort": "low"}
    plain = an().payload(req(thinking=Thinking()), "claude-opus-4-6", stream=False)
    assert plain["thinking"] == {"type": "adaptive"} and "output_config" not in plain
    assert an().payload(req(thinking=Thinking(), max_tokens=1000), "claude-sonnet-5-5",
                        stream=False)["thinking"] == {"type": "adaptive"}  # no budget floor
    kept = an().payload(req(thinking=Thinking(budget_tokens=2000), max_tokens=3000),
                        "claude-sonnet-4-6", stream=False)
    assert kept["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    for older in ("claude-haiku-4-5", "claude-sonnet-4-5-20250929",
                  "claude-sonnet-4-20250514", "claude-opus-4-20250514",
                  "claude-opus-4-1-20250805"):  # a date is not a minor version (4.20...)
        old = an().payload(req(thinking=Thinking(effort="low"), max_tokens=3000), older,
                           stream=False)
        assert old["thinking"]["type"] == "enabled" and "output_config" not in old, older
    for newer in ("claude-opus-4-6-20260205", "claude-sonnet-4-7", "claude-sonnet-5-5"):
        assert an().payload(req(thinking=Thinking(), max_tokens=3000), newer,
                            stream=False)["thinking"] == {"type": "adaptive"}, newer
    forced = an().payload(req(output_schema=SCHEMA, output_schema_name="F",
                              thinking=Thinking()), "claude-sonnet-4-6", stream=False)
    assert forced["tool_choice"] == {"type": "auto"}  # no forced tool while thinking
    with pytest.raises(ConfigError, match="temperature"):
        an().payload(req(thinking=Thinking(), temperature=0.2), "claude-sonnet-4-6",
                     stream=False)


def test_claude_5_5_gets_the_json_schema_format_instead_of_a_forced_tool() -> None:
    alone = an().payload(req(output_schema=SCHEMA, output_schema_name="F",
                             thinking=Thinking(effort="low")), "claude-sonnet-5-5",
                         stream=False)
    assert alone["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA},
                                      "effort": "low"}
    assert "tools" not in alone and "tool_choice" not in alone
    answer_now = an().payload(req(tools=[LOOKUP], tool_choice="none", output_schema=SCHEMA,
                                  output_schema_name="F"), "claude-opus-5-5", stream=False)
    assert answer_now["tool_choice"] == {"type": "none"}
    assert answer_now["output_config"]["format"]["schema"] == SCHEMA
    offered = an().payload(req(tools=[LOOKUP], output_schema=SCHEMA, output_schema_name="F"),
                           "claude-sonnet-5-5", stream=False)
    assert [t["name"] for t in offered["tools"]] == ["lookup", "F"]
    assert offered["tool_choice"] == {"type": "auto"} and "output_config" not in offered
    # Claude 5 (not 5.5) still takes a forced tool, but no sampling parameters.
    five = an().payload(req(output_schema=SCHEMA, output_schema_name="F"), "claude-sonnet-5",
                        stream=False)
    assert five["tool_choice"] == {"type": "tool", "name": "F"}
    with pytest.raises(ConfigError, match="refuses temperature"):
        an().payload(req(temperature=0.3), "claude-sonnet-5", stream=False)
    with pytest.raises(ConfigError, match="refuses forced tool use"):
        an().payload(req(tools=[LOOKUP], tool_choice="lookup"), "claude-sonnet-5-5",
                     stream=False)
    assert an().payload(req(temperature=0.3), "claude-sonnet-4-6",
                        stream=False)["temperature"] == 0.3


def test_anthropic_thinking_budget_is_checked_before_sending() -> None:
    body = an().payload(req(thinking=Thinking(budget_tokens=2000), max_tokens=3000), "c",
                        stream=False)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    with pytest.raises(ConfigError, match="1024 <= budget_tokens < max_tokens"):
        an().payload(req(thinking=Thinking(budget_tokens=512), max_tokens=3000), "c",
                     stream=False)
    with pytest.raises(ConfigError, match="1024 <= budget_tokens < max_tokens"):
        an().payload(req(thinking=Thinking(budget_tokens=3000), max_tokens=3000), "c",
                     stream=False)
    with pytest.raises(ConfigError, match="max_tokens above 1024"):
        an().payload(req(thinking=Thinking(), max_tokens=1000), "c", stream=False)
    derived = an().payload(req(thinking=Thinking(effort="high"), max_tokens=4096), "c",
                           stream=False)
    assert derived["thinking"]["budget_tokens"] == 4095  # clamped below max_tokens
    with pytest.raises(ConfigError, match="temperature"):
        an().payload(req(thinking=Thinking(), temperature=0.2), "c", stream=False)
    with pytest.raises(ConfigError, match="tool_choice"):
        an().payload(req(thinking=Thinking(), tools=[LOOKUP], tool_choice="required"), "c",
                     stream=False)
    off = an().payload(req(thinking=Thinking(enabled=False)), "c", stream=False)
    assert off["thinking"] == {"type": "disabled"}


def test_anthropic_sends_signed_thinking_blocks_back_and_keeps_is_error_false() -> None:
    parts = (ReasoningPart("Let me look.", "sig-a"), ReasoningPart(redacted="opaque"),
             ReasoningPart("unsigned (from another provider)"))
    messages = [
        Message.user("find it"),
        Message.assistant("", [ToolCall("toolu_1", "lookup", '{"q":"x"}')],
                          reasoning="Let me look.", reasoning_parts=parts),
        Message.tool("toolu_1", "found", is_error=False),
        Message.tool("toolu_2", "boom", is_error=True),
        Message.tool("toolu_3", "plain"),
    ]
    body = an().payload(req(messages=messages), "c", stream=False)
    assistant = body["messages"][1]["content"]
    assert assistant == [
        {"type": "thinking", "thinking": "Let me look.", "signature": "sig-a"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}},
    ]
    results = body["messages"][2]["content"]
    assert results[0]["is_error"] is False
    assert results[1]["is_error"] is True
    assert "is_error" not in results[2]


def test_anthropic_always_sends_max_tokens() -> None:
    assert an().payload(req(), "c", stream=False)["max_tokens"] > 0
    assert an().payload(req(max_tokens=77), "c", stream=False)["max_tokens"] == 77


def test_the_journal_keeps_what_goes_back_to_the_provider() -> None:
    from shoal.agents.recorder import response_from_json, response_to_json
    from shoal.types import ChatResponse, Usage

    response = ChatResponse(
        text="", tool_calls=[ToolCall("c1", "lookup", "{}", signature="sig-g")],
        finish_reason="tool_calls", usage=Usage(1, 2), provider="anthropic", model="c",
        reasoning="hmm", reasoning_parts=(ReasoningPart("hmm", "sig-a"),
                                          ReasoningPart(redacted="x")),
    )
    back = response_from_json(json.loads(json.dumps(response_to_json(response))))
    assert back.message() == response.message()


def test_openai_reasoning_models_refuse_sampling_settings_before_any_request() -> None:
    from shoal.errors import ConfigError
    from shoal.providers.profiles import PROFILES, check_sampling
    from shoal.types import ChatRequest, Message

    openai = PROFILES["openai"]
    hot = ChatRequest(model="m", messages=[Message.user("hi")], temperature=0.2)
    for model in ("o3-mini", "o1", "gpt-5", "gpt-5-mini"):
        with pytest.raises(ConfigError, match="leave temperature unset"):
            check_sampling(openai, model, hot)
    for model in ("gpt-4o", "gpt-5-chat-latest"):
        check_sampling(openai, model, hot)  # accepted
    check_sampling(PROFILES["deepseek"], "o3-mini", hot)  # another family's rules
    check_sampling(openai, "o3-mini",
                   ChatRequest(model="m", messages=[Message.user("hi")], temperature=1))


def test_anthropic_refuses_a_non_object_tool_schema_before_sending() -> None:
    """Anthropic takes only object schemas as tool input (its 400 names
    tools.N.custom.input_schema.type): shoal says so, and how to wrap, before sending."""
    listed = {"type": "array", "items": {"type": "string"}}
    with pytest.raises(ConfigError, match=r"output schema 'L'.*wrap it"):
        an().payload(req(output_schema=listed, output_schema_name="L"), "claude-sonnet-4-6",
                     stream=False)
    with pytest.raises(ConfigError, match="tool 'tags': Anthropic takes only an object"):
        an().payload(req(tools=[ToolSpec("tags", "", listed)]), "claude-sonnet-4-6",
                     stream=False)
    # Claude 5.5 answers in its JSON-schema format instead of an output tool: no tool then
    native = an().payload(req(output_schema=SCHEMA, output_schema_name="F"),
                          "claude-sonnet-5-5", stream=False)
    assert "tools" not in native and native["output_config"]["format"]["schema"] == SCHEMA
    # OpenAI takes the same list as a non-strict schema
    assert oa("openai").payload(req(output_schema=listed, output_schema_name="L"),
                                "gpt-4o", stream=False)["response_format"]["type"] == "json_schema"


def test_the_offline_model_gets_a_low_temperature_unless_the_caller_sets_one() -> None:
    """llama.cpp's default (0.8) makes the 135M offline model ramble: shoal sends 0.3 when
    the request sets none; a caller's own value wins; other providers keep their default."""
    assert oa("offline").payload(req(), "smollm2", stream=False)["temperature"] == 0.3
    assert oa("offline").payload(req(temperature=0.9), "smollm2",
                                 stream=False)["temperature"] == 0.9
    for family in ("openai", "deepseek", "llamacpp", "generic"):
        assert "temperature" not in oa(family).payload(req(), "m", stream=False), family


def test_kimi_k2_5_pins_its_sampling_and_switches_thinking() -> None:
    """Moonshot's parameter reference: on Kimi K2.5 and later temperature (1.0 thinking,
    0.6 not), top_p (0.95), n and the penalties cannot be modified (400 otherwise);
    thinking is switched with thinking {"type"}. shoal refuses before sending."""
    with pytest.raises(ConfigError, match=r"'kimi-k2.5' pins temperature to 1 .*leave"):
        oa("moonshot").payload(req(temperature=0.3), "kimi-k2.5", stream=False)
    with pytest.raises(ConfigError, match=r"pins temperature to 0\.6"):
        oa("moonshot").payload(req(temperature=1.0, thinking=Thinking(enabled=False)),
                               "kimi-k2.5", stream=False)
    with pytest.raises(ConfigError, match=r"pins top_p to 0\.95"):
        oa("moonshot").payload(req(top_p=0.5), "kimi-k2.6", stream=False)
    same = oa("moonshot").payload(req(temperature=1.0, top_p=0.95), "kimi-k2.5", stream=False)
    assert (same["temperature"], same["top_p"]) == (1.0, 0.95)  # the pinned values pass
    off = oa("moonshot").payload(req(thinking=Thinking(enabled=False)), "kimi-k2.5",
                                 stream=False)
    assert off["thinking"] == {"type": "disabled"}
    # older Kimi models take any temperature
    assert oa("moonshot").payload(req(temperature=0.3), "kimi-k2-0905-preview",
                                  stream=False)["temperature"] == 0.3


def test_one_tool_call_per_answer_where_the_provider_has_the_switch() -> None:
    one = req(tools=[LOOKUP], parallel_tool_calls=False)
    assert oa("openai").payload(one, "gpt-4o", stream=False)["parallel_tool_calls"] is False
    assert "parallel_tool_calls" not in oa("deepseek").payload(one, "deepseek-chat",
                                                               stream=False)
    assert an().payload(one, "claude-sonnet-4-6", stream=False)["tool_choice"] == {
        "type": "auto", "disable_parallel_tool_use": True}
    forced = req(tools=[LOOKUP], tool_choice="lookup", parallel_tool_calls=False)
    assert an().payload(forced, "claude-sonnet-4-6", stream=False)["tool_choice"] == {
        "type": "tool", "name": "lookup", "disable_parallel_tool_use": True}
    quiet = req(tools=[LOOKUP], tool_choice="none", parallel_tool_calls=False)
    assert an().payload(quiet, "claude-sonnet-4-6", stream=False)["tool_choice"] == {
        "type": "none"}  # Anthropic's none takes no other field
    assert "tool_choice" not in an().payload(req(tools=[LOOKUP]), "claude-sonnet-4-6",
                                             stream=False)


def test_a_strict_tool_is_strict_where_the_provider_takes_it_and_the_schema_fits() -> None:
    fits = ToolSpec("lookup", "", {"type": "object", "properties": {"q": {"type": "string"}},
                                   "required": ["q"]}, strict=True)
    loose = ToolSpec("find", "", {"type": "object", "properties": {"q": {"type": "string"}}},
                     strict=True)  # q optional: strict mode would refuse it
    body = oa("openai").payload(req(tools=[fits, loose]), "gpt-4o", stream=False)
    strict_fn, loose_fn = (t["function"] for t in body["tools"])
    assert strict_fn["strict"] is True
    assert strict_fn["parameters"]["additionalProperties"] is False
    assert "strict" not in loose_fn and loose_fn["parameters"] == loose.parameters
    assert "strict" not in oa("deepseek").payload(req(tools=[fits]), "deepseek-chat",
                                                  stream=False)["tools"][0]["function"]
    assert an().payload(req(tools=[fits]), "claude-sonnet-4-6",
                        stream=False)["tools"][0]["strict"] is True


def test_output_strict_false_sends_the_schema_as_it_is() -> None:
    body = oa("openai").payload(req(output_schema=SCHEMA, output_strict=False), "m",
                                stream=False)
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": SCHEMA}}


@pytest.mark.parametrize(("family", "expected"), [
    ("openai", {"type": "json_object"}),
    ("deepseek", {"type": "json_object"}),
    ("gemini", {"type": "json_object"}),
    ("llamacpp", {"type": "json_object"}),
    ("minimax", None),  # no JSON mode on its wire: the prompt asks
])
def test_json_mode_is_json_object_where_the_provider_has_it(
        family: str, expected: dict[str, Any] | None) -> None:
    messages = [Message.system("Be brief."), Message.user("Risks, in JSON.")]
    body = oa(family).payload(req(messages=messages, json_mode=True), "m", stream=False)
    assert body.get("response_format") == expected
    if expected is not None:  # the prompt as the caller wrote it
        assert [m["content"] for m in body["messages"]] == ["Be brief.", "Risks, in JSON."]
    else:
        assert "single JSON object" in body["messages"][0]["content"]


def test_json_mode_on_anthropic_is_an_open_object_output_tool() -> None:
    body = an().payload(req(json_mode=True), "claude-sonnet-4-6", stream=False)
    assert body["tools"] == [{"name": "output", "description": body["tools"][0]["description"],
                              "input_schema": {"type": "object",
                                               "additionalProperties": True}}]
    assert body["tool_choice"] == {"type": "tool", "name": "output"}


def test_logprobs_where_the_provider_returns_them_and_a_config_error_elsewhere() -> None:
    body = oa("openai").payload(req(logprobs=3), "gpt-4o", stream=False)
    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)
    body = oa("deepseek").payload(req(logprobs=0), "deepseek-chat", stream=False)
    assert body["logprobs"] is True and "top_logprobs" not in body
    for provider in (oa("zhipu"), an()):
        with pytest.raises(ConfigError, match="log probabilities"):
            provider.payload(req(logprobs=0), "m", stream=False)


def test_top_level_cache_control_goes_to_anthropic_and_replaces_shoals_breakpoints() -> None:
    long = Message.system("Cite every source. " * 2000)
    request = req(messages=[long, Message.user("go")],
                  cache_control=CacheControl(ttl="1h"))
    body = an().payload(request, "claude-sonnet-4-6", stream=False)
    assert body["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert "cache_control" not in json.dumps(body["system"])  # automatic mode only
    assert "cache_control" not in oa("openai").payload(request, "gpt-4o", stream=False)


def test_anthropic_empty_content_is_left_out_or_refused_before_sending() -> None:
    """Anthropic answers 400 to empty text content and to a request with only a system
    prompt (PROVIDERS.md §2; the simulator's anthropic style refuses them too). An empty
    assistant turn (a model that ended without text, replayed by an agent) is left out;
    what only the caller can fix is a BadRequest naming the message."""
    body = an().payload(req(messages=[Message.user("a"), Message.assistant(""),
                                      Message.user("b")]), "claude-sonnet-4-6", stream=False)
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    cases: list[tuple[list[Message], str]] = [
        ([Message.user("")], "messages[0]"),
        ([Message.system("be brief"), Message.user("ok"), Message.user("")], "messages[2]"),
        ([Message.system("only a system prompt")], "messages"),
        ([Message("system", "", cache_control=CacheControl()), Message.user("hi")],
         "messages[0]"),
    ]
    for messages, param in cases:
        with pytest.raises(BadRequest) as info:
            an().payload(req(messages=messages), "claude-sonnet-4-6", stream=False)
        assert info.value.param == param, messages


def test_anthropic_temperature_and_adaptive_only_thinking_are_checked_locally() -> None:
    with pytest.raises(BadRequest, match="from 0 to 1 for Anthropic") as info:
        an().payload(req(temperature=1.5), "claude-sonnet-4-6", stream=False)
    assert info.value.param == "temperature"
    assert an().payload(req(temperature=1.0), "claude-sonnet-4-6",
                        stream=False)["temperature"] == 1.0
    budget = Thinking(budget_tokens=2000)
    for model in ("claude-opus-4-7", "claude-sonnet-5", "claude-mythos-1"):
        with pytest.raises(ConfigError, match="thinks only adaptively"):
            an().payload(req(thinking=budget, max_tokens=8000), model, stream=False)
    for model in ("claude-opus-4-6", "claude-sonnet-4-5"):  # a budget is still taken
        body = an().payload(req(thinking=budget, max_tokens=8000), model, stream=False)
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 2000}
