"""Per-provider deviations of the OpenAI-compatible protocol, kept as data, not branches.

The adapter reads a :class:`Quirks` value by the channel's ``provider`` name; parsing
is tolerant of every variant (usage in a choice, null tool-call indices, reasoning
fields) whatever the provider, so quirks only shape what we *send*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["QUIRKS", "Quirks", "quirks_for"]


@dataclass(frozen=True, slots=True)
class Quirks:
    # Field that caps output: OpenAI reasoning models reject max_tokens; Zhipu takes only it.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Ask for a usage chunk when streaming (stream_options.include_usage).
    stream_usage_option: bool = True
    # Field holding reasoning text in responses, and whether to send it back in history.
    reasoning_field: str = "reasoning_content"
    send_reasoning_back: Literal["never", "tool_turns", "always"] = "never"
    # Merge several system messages into one (MiniMax rejects more than one).
    single_system: bool = False
    # Send tool_choice at all (Ollama and Zhipu only know "auto").
    tool_choice: bool = True
    # How to ask for schema-shaped JSON: OpenAI's json_schema response_format; llama.cpp's
    # {"type": "json_object", "schema": ...} (grammar-constrained); or json_object only.
    json_mode: Literal["json_schema", "json_object_schema", "json_object"] = "json_schema"


QUIRKS: dict[str, Quirks] = {
    "openai": Quirks(max_tokens_field="max_completion_tokens"),
    "deepseek": Quirks(send_reasoning_back="tool_turns"),
    "moonshot": Quirks(),
    "zhipu": Quirks(tool_choice=False, json_mode="json_object"),
    "minimax": Quirks(max_tokens_field="max_completion_tokens", single_system=True),
    "gemini": Quirks(),
    "ollama": Quirks(tool_choice=False, reasoning_field="reasoning"),
    # llama.cpp's server (the offline model): plain fields, usage gated by include_usage.
    "offline": Quirks(tool_choice=False, json_mode="json_object_schema"),
}

_DEFAULT = Quirks()


def quirks_for(provider: str) -> Quirks:
    return QUIRKS.get(provider, _DEFAULT)
