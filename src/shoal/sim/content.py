"""What the simulator answers, independent of wire protocol.

A protocol module parses its request into an :class:`Ask`; :func:`plan` turns it
into an :class:`Answer` (text, tool calls or a JSON document, already split into
the pieces a stream will carry); the protocol module renders that.

Determinism: the answer depends only on the seed, the model and the request's
last user text (never on timing or arrival order).

Token accounting (documented in docs/simulator.md):
  * prompt tokens = ceil(characters / 4) over every message's text, tool-call
    arguments, tool results, the system prompt and the tool definitions (min 1);
  * a text answer is ``output_tokens`` words, one token each;
  * JSON (structured output, tool arguments) is emitted in 4-character pieces,
    one token each;
  * completion tokens = the pieces actually produced (reasoning included).
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

from shoal.sim.config import ModelProfile
from shoal.sim.schema import instance, violation

__all__ = ["Answer", "Ask", "BadInput", "ToolPlan", "Wordbank", "plan", "prompt_tokens",
           "truncate_calls"]

ToolMode = Literal["auto", "none", "required", "named"]
JSON_PIECE = 4


class BadInput(Exception):
    """The request is not valid for the protocol: answered with a 400 in its shape."""

    def __init__(
        self, message: str, param: str | None = None, *, status: int = 400,
        code: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status  # a provider style may refuse with another status (404)
        self.code = code  # the provider's error code, e.g. "unsupported_parameter", "1214"
        self.extra: dict[str, Any] = {}  # more context for the error envelope


@dataclass(slots=True)
class Ask:
    """The parts of a request that decide the answer."""

    model: str
    stream: bool = False
    prompt_chars: int = 0
    last_text: str = ""
    after_tool_result: bool = False
    tools: list[tuple[str, Any]] = field(default_factory=list)
    tool_mode: ToolMode = "auto"
    tool_name: str | None = None
    schema: Any = None
    json_object: bool = False
    max_tokens: int | None = None
    reasoning: bool = False
    redacted: bool = False  # Anthropic: answer with a redacted_thinking block too
    one_call: bool = False  # parallel_tool_calls false / disable_parallel_tool_use
    tool_stream: bool = False  # Zhipu: stream tool arguments in pieces (tool_stream: true)
    stop: list[str] = field(default_factory=list)  # stop / stop_sequences
    include_usage: bool = False
    metadata: dict[str, Any] | None = None
    cache: Any = None  # a shoal.sim.caching.CachePlan when the request can use the cache


@dataclass(slots=True)
class ToolPlan:
    id: str
    name: str
    arguments: str
    pieces: list[str]


@dataclass(slots=True)
class Answer:
    """What to send: ``pieces`` of visible text, ``reasoning`` pieces, tool calls."""

    pieces: list[str]
    reasoning: list[str]
    tools: list[ToolPlan]
    finish: Literal["stop", "length", "tool_calls"]
    prompt_tokens: int
    completion_tokens: int
    # Prompt-cache reads and writes (⊂ prompt_tokens), set by the engine (sim/caching.py).
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    # The stop sequence the text was cut at (Anthropic reports it; OpenAI says "stop").
    stop_sequence: str | None = None
    # The model declines (the "refusal" fault): OpenAI's message.refusal with no content,
    # Anthropic's stop_reason "refusal" after this text.
    refusal: str | None = None
    # The finish reason the wire says instead of ``finish``'s (a ``finish:<reason>``
    # fault: DeepSeek's insufficient_system_resource, Anthropic's pause_turn, ...).
    provider_finish: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)


REFUSAL_TEXT = "I'm sorry, but I can't help with that."


def refused(answer: Answer) -> Answer:
    """``answer`` turned into a refusal: no text, no tool calls, the refusal's words."""
    answer.pieces, answer.tools, answer.finish = [], [], "stop"
    answer.refusal = REFUSAL_TEXT
    answer.completion_tokens = len(answer.reasoning) + len(REFUSAL_TEXT.split())
    return answer


def prompt_tokens(chars: int) -> int:
    return max(1, -(-chars // 4))


def split_json(text: str) -> list[str]:
    return [text[i : i + JSON_PIECE] for i in range(0, len(text), JSON_PIECE)] or [""]


class Wordbank:
    """A seeded pool of words; an answer is a slice of it chosen by a hash of the request."""

    _VOCAB = (
        "the", "shoal", "moves", "as", "one", "while", "each", "fish", "keeps", "its", "own",
        "pace", "agents", "share", "a", "channel", "and", "a", "budget", "tokens", "flow",
        "through", "limits", "retries", "wait", "for", "capacity", "results", "are", "kept",
        "in", "the", "journal", "so", "runs", "resume", "where", "they", "stopped", "models",
        "answer", "quickly", "slowly", "clearly", "report", "findings", "trends", "risks",
        "open", "questions", "remain", "data", "shows", "steady", "growth", "costs", "fall",
    )  # fmt: skip
    SIZE = 4096

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.seed = seed
        self.pool = [" " + rng.choice(self._VOCAB) for _ in range(self.SIZE)]

    def key(self, *parts: str) -> int:
        # surrogatepass: a prompt may hold a lone surrogate (valid JSON, "\ud800"), which
        # servers accept (decoders replace it); the simulator answers it, not a 500
        text = "\x00".join((str(self.seed), *parts))
        return zlib.crc32(text.encode("utf-8", "surrogatepass"))

    def words(self, key: int, n: int) -> list[str]:
        n = max(0, n)
        start = key % (self.SIZE - 1)
        out: list[str] = []
        while len(out) < n:
            take = min(n - len(out), self.SIZE - start)
            out.extend(self.pool[start : start + take])
            start = 0
        if out:
            out[0] = out[0].lstrip().capitalize()
        return out


def plan(
    ask: Ask,
    profile: ModelProfile,
    bank: Wordbank,
    *,
    schema_invalid: bool = False,
    id_prefix: str = "call_",
    thinking: bool = False,
) -> Answer:
    """Decide the answer for *ask* (see the module docstring for the rules)."""
    key = bank.key(ask.model, ask.last_text)
    budget = ask.max_tokens if ask.max_tokens is not None else 1 << 30
    ptok = prompt_tokens(ask.prompt_chars)

    reasoning: list[str] = []
    if ask.reasoning or thinking:
        reasoning = bank.words(key ^ 0x5EED, min(profile.output_tokens, max(budget - 1, 1)))
        budget -= len(reasoning)

    tools = _tool_targets(ask)
    if tools:
        rng = random.Random(key)
        calls: list[ToolPlan] = []
        for i in range(1 if ask.one_call else profile.tool_calls):
            name, schema = tools[i % len(tools)]
            args_value = violation(schema, rng) if schema_invalid else instance(schema, rng)
            args = json.dumps(args_value, separators=(",", ":"))
            calls.append(ToolPlan(f"{id_prefix}{key:08x}{i:02d}", name, args, split_json(args)))
        used = sum(len(c.pieces) for c in calls)
        finish: Literal["stop", "length", "tool_calls"] = "tool_calls"
        if used > budget:
            finish = "length"
            calls = truncate_calls(calls, max(budget, 0))
            used = sum(len(c.pieces) for c in calls)
        return Answer([], reasoning, calls, finish, ptok, used + len(reasoning))

    if ask.schema is not None or ask.json_object:
        rng = random.Random(key)
        schema = ask.schema if ask.schema is not None else {"type": "object"}
        value: Any
        if ask.schema is None:
            value = {"answer": "".join(bank.words(key, 8)).strip()}
        else:
            value = violation(schema, rng) if schema_invalid else instance(schema, rng)
        pieces = split_json(json.dumps(value, separators=(",", ":")))
    else:
        pieces = bank.words(key, profile.output_tokens)
    finish = "stop"
    if len(pieces) > budget:
        pieces = pieces[: max(budget, 0)]
        finish = "length"
    pieces, matched = _cut_at_stop(pieces, ask.stop)
    if matched is not None:
        finish = "stop"
    answer = Answer(pieces, reasoning, [], finish, ptok, len(pieces) + len(reasoning))
    answer.stop_sequence = matched
    return answer


def _cut_at_stop(pieces: list[str], stops: list[str]) -> tuple[list[str], str | None]:
    """The pieces before the earliest stop sequence in their text (the sequence itself
    is not sent, as providers do), and that sequence; unchanged when none occurs."""
    text = "".join(pieces)
    found = [(at, stop) for stop in stops if stop and (at := text.find(stop)) >= 0]
    if not found:
        return pieces, None
    at, stop = min(found)
    kept: list[str] = []
    length = 0
    for piece in pieces:
        if length + len(piece) > at:
            if at > length:
                kept.append(piece[: at - length])
            break
        kept.append(piece)
        length += len(piece)
    return kept, stop


def _tool_targets(ask: Ask) -> list[tuple[str, Any]]:
    if not ask.tools or ask.tool_mode == "none":
        return []
    if ask.tool_mode == "named":
        named = [t for t in ask.tools if t[0] == ask.tool_name]
        return named[:1] or ask.tools[:1]
    if ask.after_tool_result and ask.tool_mode == "auto":
        return []
    return ask.tools


def truncate_calls(calls: list[ToolPlan], budget: int) -> list[ToolPlan]:
    out: list[ToolPlan] = []
    for call in calls:
        if budget <= 0:
            break
        pieces = call.pieces[:budget]
        budget -= len(pieces)
        out.append(ToolPlan(call.id, call.name, "".join(pieces), pieces))
    return out
