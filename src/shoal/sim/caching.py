"""Prompt caching in the simulator, by each provider's rules (PROVIDERS.md §7).

A wire module turns a request into a plan (:func:`anthropic_plan`,
:func:`prefix_plan`): the prompt as a chain of prefix digests with their token
positions. :class:`PromptCache` then settles it against what earlier requests of the
same API key (and, for OpenAI, ``prompt_cache_key``) left, on the simulator's clock:

* **Anthropic** — explicit ``cache_control`` breakpoints on tools, system blocks and
  message blocks, or one at the top level (automatic mode: on the last cacheable
  block). At most 4; ``ttl`` ``5m`` or ``1h``, and a 1h breakpoint never after a 5m
  one; none on an empty text block (each refused with Anthropic's 400). A read is the
  longest cached prefix found at a breakpoint or up to 20 blocks before it; each
  breakpoint past it whose prefix reaches the model's minimum (1,024 tokens; 2,048 for
  Sonnet 4.6 and Haiku 3.x; 4,096 for Opus 4.5/4.6 and Haiku 4.5) writes the tokens
  since the previous one at its own ttl. A read refreshes the entry's ttl.
* **OpenAI** — automatic for prompts of at least 1,024 tokens: the longest cached
  prefix in 128-token steps; every step of the prompt is stored for 5 minutes after
  its last use. Gemini's compatible endpoint reports the same way.
* **DeepSeek** — the disk cache: 64-token units, no minimum beyond one unit, hours of
  life; reported as ``prompt_cache_hit_tokens`` + ``prompt_cache_miss_tokens``.

A new entry is usable once the answer that wrote it has begun (``ready_at``): requests
sent together all miss, as with the real providers. Token positions use the
simulator's own accounting (4 characters a token).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from shoal.sim.styles import Refusal

__all__ = ["CachePlan", "CacheResult", "PromptCache", "anthropic_plan", "prefix_plan"]

_DUMPS = json.JSONEncoder(separators=(",", ":")).encode
_TTL_S = {"5m": 300.0, "1h": 3600.0}
LOOKBACK = 20
MAX_BREAKPOINTS = 4
_ANTHROPIC_MIN = (
    ("opus-4-6", 4096), ("opus-4-5", 4096), ("haiku-4-5", 4096), ("sonnet-4-6", 2048),
    ("haiku-3", 2048), ("3-haiku", 2048), ("3-5-haiku", 2048),
)  # fmt: skip
# Automatic prefix caching per OpenAI-protocol style: (minimum, step, ttl seconds).
_PREFIX_RULES = {
    "openai": (1024, 128, 300.0), "permissive": (1024, 128, 300.0),
    "gemini": (1024, 128, 300.0), "deepseek": (64, 64, 3600.0),
}  # fmt: skip


def anthropic_minimum(model: str) -> int:
    name = model.lower()
    return next((m for part, m in _ANTHROPIC_MIN if part in name), 1024)


@dataclass(slots=True)
class CachePlan:
    """A prompt as prefix digests: ``digests[i]`` covers the prompt up to position
    ``tokens[i]``; ``breakpoints`` are (index, ttl) (Anthropic) — empty for automatic
    prefix caching, where every position is a candidate."""

    kind: str  # "anthropic" or "prefix"
    digests: list[bytes] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    breakpoints: list[tuple[int, str]] = field(default_factory=list)
    key: str = ""  # prompt_cache_key
    minimum: int = 1024
    ttl_s: float = 300.0


@dataclass(slots=True)
class CacheResult:
    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    @property
    def write(self) -> int:
        return self.write_5m + self.write_1h


# -- Anthropic ----------------------------------------------------------------------------


def _chars(block: dict[str, Any]) -> int:
    """Characters of a block as the simulator counts prompt tokens (content.py)."""
    kind = block.get("type")
    if kind == "text":
        return len(str(block.get("text", "")))
    if kind == "tool_use":
        return len(str(block.get("name", ""))) + len(_DUMPS(block.get("input", {})))
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, list):
            return sum(_chars(b) for b in content if isinstance(b, dict))
        return len(str(content))
    if kind == "thinking":
        return len(str(block.get("thinking", "")))
    return len(_DUMPS({k: v for k, v in block.items() if k != "cache_control"}))


def _ttl_of(marker: Any, where: str, strict: bool) -> str:
    if not isinstance(marker, dict):
        if strict:
            raise Refusal(f"{where}.cache_control: Input should be a valid dictionary")
        return "5m"
    if strict and marker.get("type") != "ephemeral":
        raise Refusal(f"{where}.cache_control.type: Input should be 'ephemeral'")
    ttl = marker.get("ttl", "5m")
    if ttl not in _TTL_S:
        if strict:
            raise Refusal(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
        ttl = "5m"
    return str(ttl)


def _blocks(body: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """(block, where, role) in prefix order: tools, system, messages."""
    out: list[tuple[dict[str, Any], str, str]] = []
    for i, tool in enumerate(body.get("tools") or ()):
        if isinstance(tool, dict):
            out.append((tool, f"tools.{i}", ""))
    system = body.get("system")
    if isinstance(system, str) and system:
        out.append(({"type": "text", "text": system}, "system", ""))
    elif isinstance(system, list):
        out.extend((b, f"system.{i}", "") for i, b in enumerate(system) if isinstance(b, dict))
    for i, msg in enumerate(body.get("messages") or ()):
        if not isinstance(msg, dict):
            continue
        content, role = msg.get("content"), str(msg.get("role", ""))
        if isinstance(content, str):
            out.append(({"type": "text", "text": content}, f"messages.{i}.content", role))
        elif isinstance(content, list):
            out.extend((b, f"messages.{i}.content.{j}", role)
                       for j, b in enumerate(content) if isinstance(b, dict))
    return out


def anthropic_plan(body: dict[str, Any], style: str) -> CachePlan | None:
    """The cache plan of a Messages request (None: no breakpoint, nothing cached);
    Anthropic's refusals unless ``permissive``."""
    strict = style != "permissive"
    blocks = _blocks(body)
    top = body.get("cache_control")
    if top is None and not any("cache_control" in b for b, _, _ in blocks):
        return None
    plan = CachePlan("anthropic", minimum=anthropic_minimum(str(body.get("model", ""))))
    h = hashlib.sha256(str(body.get("model", "")).encode())
    chars = 0
    cacheable = -1  # the last block a top-level breakpoint may land on
    for index, (block, where, role) in enumerate(blocks):
        marker = block.get("cache_control")
        h.update(role.encode() + _DUMPS({k: v for k, v in block.items()
                                          if k != "cache_control"}).encode())
        chars += _chars(block)
        plan.digests.append(h.digest())
        plan.tokens.append(chars // 4)
        if block.get("type") not in ("thinking", "redacted_thinking"):
            cacheable = index
        if marker is not None:
            if strict and block.get("type") == "text" and not block.get("text"):
                raise Refusal(f"{where}.text: cache_control cannot be set for empty text "
                              "blocks")
            plan.breakpoints.append((index, _ttl_of(marker, where, strict)))
    if top is not None and cacheable >= 0:
        plan.breakpoints.append((cacheable, _ttl_of(top, "cache_control", strict)))
    if strict and len(plan.breakpoints) > MAX_BREAKPOINTS:
        raise Refusal(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be "
                      f"provided. Found {len(plan.breakpoints)}.")
    ordered = sorted(plan.breakpoints)
    if strict and any(a[1] == "5m" and b[1] == "1h" for a, b in itertools.pairwise(ordered)):
        raise Refusal(
            "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control "
            "block. Note that blocks are processed in the following order: `tools`, "
            "`system`, `messages`."
        )
    plan.breakpoints = ordered
    return plan


# -- OpenAI-compatible automatic prefix caching -------------------------------------------


def prefix_plan(body: dict[str, Any], style: str) -> CachePlan | None:
    """The automatic-caching plan of a Chat Completions request (None: the style does
    not cache). The prompt is its tools then its messages, as sent; a digest every
    ``step`` tokens."""
    rules = _PREFIX_RULES.get(style)
    if rules is None:
        return None
    minimum, step, ttl = rules
    key = body.get("prompt_cache_key")
    plan = CachePlan("prefix", key=str(key) if isinstance(key, str) and style != "deepseek"
                     else "", minimum=minimum, ttl_s=ttl)
    text = str(body.get("model", "")) + "\n"
    if body.get("tools"):
        text += _DUMPS(body["tools"])
    text += "".join(_DUMPS(m) for m in body.get("messages") or ())
    width = step * 4
    h = hashlib.sha256()
    for n in range(1, len(text) // width + 1):
        h.update(text[(n - 1) * width: n * width].encode())
        plan.digests.append(h.digest())
        plan.tokens.append(n * step)
    return plan


# -- the cache ----------------------------------------------------------------------------


class PromptCache:
    """Cached prefixes per API key (and prompt_cache_key), on the simulator's clock."""

    def __init__(self, max_entries: int = 200_000) -> None:
        # (scope, digest) -> [expires_at, ready_at, ttl_s]
        self._entries: dict[tuple[str, bytes], list[float]] = {}
        self._max = max_entries

    def clear(self) -> None:
        self._entries.clear()

    def _hit(self, scope: str, digest: bytes, now: float) -> list[float] | None:
        entry = self._entries.get((scope, digest))
        if entry is None or entry[0] <= now or entry[1] > now:
            return None
        return entry

    def _store(self, scope: str, digest: bytes, now: float, ready_at: float,
               ttl_s: float) -> None:
        if len(self._entries) >= self._max:
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
            if len(self._entries) >= self._max:
                self._entries.clear()
        entry = self._entries.get((scope, digest))
        if entry is not None and entry[0] > now:
            entry[0] = max(entry[0], now + ttl_s)
            entry[1] = min(entry[1], ready_at)
            entry[2] = max(entry[2], ttl_s)
        else:
            self._entries[(scope, digest)] = [now + ttl_s, ready_at, ttl_s]

    def settle(self, plan: CachePlan, scope: str, prompt_tokens: int, now: float,
               ready_at: float) -> CacheResult:
        """What this request reads and writes; the cache updated. ``ready_at``: when the
        answer begins (entries written now are usable from then)."""
        scope = f"{scope}\x00{plan.key}"
        if plan.kind == "anthropic":
            result = self._anthropic(plan, scope, now, ready_at)
        else:
            result = self._prefix(plan, scope, prompt_tokens, now, ready_at)
        # Never more than the prompt (the plan's count may differ by a rounding).
        result.read = min(result.read, prompt_tokens)
        room = prompt_tokens - result.read
        result.write_1h = min(result.write_1h, room)
        result.write_5m = min(result.write_5m, room - result.write_1h)
        return result

    def _anthropic(self, plan: CachePlan, scope: str, now: float,
                   ready_at: float) -> CacheResult:
        read_at = -1
        for index, _ in plan.breakpoints:
            for j in range(index, max(index - LOOKBACK, -1), -1):
                if j <= read_at:
                    break
                entry = self._hit(scope, plan.digests[j], now)
                if entry is not None:
                    read_at = j
                    entry[0] = now + entry[2]  # a read refreshes the entry
                    break
        result = CacheResult(read=plan.tokens[read_at] if read_at >= 0 else 0)
        done = result.read
        for index, ttl in plan.breakpoints:
            if index <= read_at or plan.tokens[index] < plan.minimum:
                continue
            written = plan.tokens[index] - done
            if ttl == "1h":
                result.write_1h += written
            else:
                result.write_5m += written
            done = plan.tokens[index]
            self._store(scope, plan.digests[index], now, ready_at, _TTL_S[ttl])
        return result

    def _prefix(self, plan: CachePlan, scope: str, prompt_tokens: int, now: float,
                ready_at: float) -> CacheResult:
        if prompt_tokens < plan.minimum:
            return CacheResult()
        result = CacheResult()
        for i in range(len(plan.digests) - 1, -1, -1):
            if plan.tokens[i] < plan.minimum:
                break
            entry = self._hit(scope, plan.digests[i], now)
            if entry is not None:
                result.read = plan.tokens[i]
                break
        for i, digest in enumerate(plan.digests):
            if plan.tokens[i] >= plan.minimum:
                self._store(scope, digest, now, ready_at, plan.ttl_s)
        return result
