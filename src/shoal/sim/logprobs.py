"""Token log probabilities on the OpenAI wire (``logprobs: true``, ``top_logprobs: N``).

Only the styles whose providers return them answer with them: ``openai``, ``permissive``,
``gemini`` and ``deepseek`` outside thinking mode (where :mod:`shoal.sim.style_rules`
refuses the fields). Moonshot, Zhipu and MiniMax take the fields and answer
``"logprobs": null``; Anthropic's API has none.

One entry per piece of text the answer is split into (one token each, as in the usage),
in OpenAI's ``ChatCompletionTokenLogprob`` shape. The numbers are deterministic, derived
from the token and its position, so a streamed answer carries the same ones as the whole
answer: the token's own probability is between 0.4 and 0.9999 and it comes first in
``top_logprobs``; each alternative has half the remaining probability of the one before.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

from shoal.sim.content import Answer, Ask, BadInput

__all__ = ["LOGPROB_STYLES", "MAX_TOP", "LogprobAsk", "chunk_json", "refusal_words", "requested",
           "whole_json"]

LOGPROB_STYLES = frozenset({"openai", "permissive", "deepseek", "gemini"})
MAX_TOP = 20  # OpenAI's bound on top_logprobs (and DeepSeek's)
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode
_HALF = math.log(0.5)
# The words alternatives are drawn from (more than MAX_TOP, so one equal to the token
# can be skipped).
_WORDS = (
    "the", "a", "and", "to", "of", "in", "it", "is", "that", "for", "on", "with", "as",
    "this", "at", "by", "from", "or", "an", "be", "we", "so", "one", "each",
)  # fmt: skip


@dataclass(slots=True)
class LogprobAsk(Ask):
    """An :class:`Ask` whose answer carries log probabilities with ``top_logprobs``
    alternatives per token."""

    top_logprobs: int = 0


def requested(body: dict[str, Any], style: str) -> int | None:
    """The number of alternatives per token when the request asks for log probabilities
    and *style* returns them, else None; ``BadInput`` for a ``top_logprobs`` the style's
    provider refuses."""
    wanted = body.get("logprobs") is True
    top = body.get("top_logprobs")
    if top is None and not wanted:
        return None  # the usual request
    strict = style in LOGPROB_STYLES and style != "permissive"
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool):
            if strict:
                raise BadInput(
                    f"Invalid type for 'top_logprobs': expected an integer, but got "
                    f"{type(top).__name__} instead.", "top_logprobs", code="invalid_type")
            top = 0
        elif not 0 <= top <= MAX_TOP:
            if strict:
                above = top > MAX_TOP
                side = "above maximum" if above else "below minimum"
                raise BadInput(
                    f"Invalid 'top_logprobs': integer {side} value. Expected a value "
                    f"{f'<= {MAX_TOP}' if above else '>= 0'}, but got {top} instead.",
                    "top_logprobs",
                    code="integer_above_max_value" if above else "integer_below_min_value")
            top = max(0, min(top, MAX_TOP))
        if not wanted and style == "openai":
            # the wording is ours; OpenAI refuses top_logprobs without logprobs: true
            raise BadInput("Invalid value for 'top_logprobs': 'logprobs' must be true when "
                           "'top_logprobs' is set.", "top_logprobs", code="invalid_value")
    if not wanted or style not in LOGPROB_STYLES:
        return None
    return top or 0


def _entry(token: str, position: int, top: int) -> str:
    """One ``content[]`` entry as JSON: the token, its logprob and bytes, and *top*
    alternatives (the token itself first)."""
    mix = zlib.crc32(f"{position}\x00{token}".encode())
    chance = 0.4 + 0.5999 * ((mix & 0xFFFF) / 0xFFFF)
    own = f'"token":{_DUMPS(token)},"logprob":{math.log(chance)!r},"bytes":{_bytes(token)}'
    if top <= 0:
        return "{" + own + ',"top_logprobs":[]}'
    alternatives = ["{" + own + "}"]
    rest = math.log(1.0 - chance)
    start = mix >> 16
    i = 0
    while len(alternatives) < top:
        word = _like(token, _WORDS[(start + i) % len(_WORDS)])
        i += 1
        if word == token:
            continue
        logprob = rest + _HALF * len(alternatives)
        alternatives.append(
            f'{{"token":{_DUMPS(word)},"logprob":{logprob!r},"bytes":{_bytes(word)}}}')
    return "{" + own + ',"top_logprobs":[' + ",".join(alternatives) + "]}"


def _bytes(token: str) -> str:
    return "[" + ",".join(str(b) for b in token.encode()) + "]"


def _like(token: str, word: str) -> str:
    """*word* shaped as *token* is: a leading space, a capital."""
    if token.startswith(" "):
        return " " + word
    return word.capitalize() if token[:1].isupper() else word


def _entries(pieces: list[str], top: int) -> str:
    return "[" + ",".join(_entry(p, i, top) for i, p in enumerate(pieces) if p) + "]"


def refusal_words(refusal: str) -> list[str]:
    """The pieces a refusal is streamed in (each word with its following space)."""
    words = refusal.split(" ")
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


def whole_json(answer: Answer, top: int) -> str:
    """A whole answer's ``choices[0].logprobs``: the content tokens' entries (null when
    the message has no content: a refusal, tool calls alone), the refusal's tokens'
    entries (null unless the model refused)."""
    if answer.refusal:
        return '{"content":null,"refusal":' + _entries(refusal_words(answer.refusal), top) + "}"
    if answer.tools and not answer.pieces:
        return '{"content":null,"refusal":null}'
    return '{"content":' + _entries(answer.pieces, top) + ',"refusal":null}'


def chunk_json(piece: str, position: int, top: int, *, refusal: bool = False) -> str:
    """A stream chunk's ``choices[0].logprobs`` for the delta *piece* (the answer's
    *position*-th piece of content, or of the refusal)."""
    entries = "[" + _entry(piece, position, top) + "]" if piece else "[]"
    if refusal:
        return '{"content":null,"refusal":' + entries + "}"
    return '{"content":' + entries + ',"refusal":null}'
