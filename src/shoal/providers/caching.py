"""Prompt caching on purpose: where the adapters ask providers to cache a prefix.

One setting, ``cache = "auto" | "off"`` (and ``cache_ttl = "5m" | "1h"``), on a
channel, a model, or one request (``ChatRequest.metadata["cache"]`` /
``["cache_ttl"]``); the request wins, else ``off`` on the model or channel wins, else
auto. What auto does per provider (PROVIDERS.md §7):

* **Anthropic** — explicit ``cache_control`` breakpoints on the stable prefix, in
  the provider's order tools → system → messages: the end of the conversation so
  far (moves forward every turn), the end of the system prompt (shared by every
  agent with the same instructions and tools), the end of the previous turn (in
  case more than 20 blocks were added since, beyond the lookback), the end of the
  tools. Never more than 4 in all (breakpoints the caller placed through ``extra``
  count and are kept), never where the prefix is shorter than the model family's
  minimum (:func:`anthropic_min_tokens`; a shorter prefix is not cached and a
  write would only cost), and a 1h breakpoint never after a 5m one.
* **OpenAI** — caching is automatic; ``prompt_cache_key`` (the request's
  ``metadata["cache_key"]``: the agent's name by default) lands requests sharing a
  prefix on the same cache. Only sent to OpenAI itself: compatible servers refuse
  unknown fields (Gemini) or ignore them.
* Others (DeepSeek's disk cache, Gemini's implicit caching) need nothing sent.

``off`` sends nothing cache-related. :class:`WarmGate` (Anthropic, and OpenAI when a
``prompt_cache_key`` goes with a prefix of 1,024 tokens or more) lets the first of
several concurrent requests write a new shared prefix while the others wait for its
answer to begin, then read it: a cache entry exists only once a response has started,
so a fan-out's first wave would otherwise miss (and on Anthropic pay a write) N times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from shoal.types import ChatRequest, Usage

if TYPE_CHECKING:
    from shoal.clock import Clock
    from shoal.config import ChannelConfig, ModelInfo

__all__ = [
    "MAX_BREAKPOINTS",
    "NO_TURN",
    "CacheMode",
    "CacheTTL",
    "Turn",
    "WarmGate",
    "anthropic_min_tokens",
    "asks_1h_cache",
    "enter_gate",
    "estimate_cost",
    "estimate_tokens",
    "gate_key",
    "may_write_1h",
    "openai_prefix_key",
    "plan_anthropic",
    "plan_openai",
    "settings",
    "shared_prefix_key",
    "with_cache_settings",
]

CacheMode = Literal["auto", "off"]
CacheTTL = Literal["5m", "1h"]
MAX_BREAKPOINTS = 4
_TTL_S = {"5m": 300.0, "1h": 3600.0}


def asks_1h_cache(request: ChatRequest) -> bool:
    """Whether the caller placed a 1-hour cache breakpoint (on the request, a message or
    a tool): writes there are billed at the 1-hour price (Anthropic: 2× input)."""
    marks = (request.cache_control, *(m.cache_control for m in request.messages),
             *(t.cache_control for t in request.tools))
    return any(c is not None and c.ttl == "1h" for c in marks)
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# Minimum cacheable prefix per Claude family (Anthropic's prompt-caching docs, as
# tabulated by orq.ai's proxy docs; PROVIDERS.md §7 notes that sources differ). First
# match of a substring of the model id wins; unknown Claude models get 1024.
_ANTHROPIC_MIN: tuple[tuple[str, int], ...] = (
    ("opus-4-6", 4096), ("opus-4-5", 4096), ("haiku-4-5", 4096),
    ("sonnet-4-6", 2048), ("haiku-3", 2048), ("3-haiku", 2048), ("3-5-haiku", 2048),
)  # fmt: skip
_ANTHROPIC_DEFAULT_MIN = 1024


def anthropic_min_tokens(model: str) -> int:
    """The shortest prefix a Claude model caches (shorter: no error, nothing cached)."""
    name = model.lower()
    for part, minimum in _ANTHROPIC_MIN:
        if part in name:
            return minimum
    return _ANTHROPIC_DEFAULT_MIN


def estimate_tokens(text: str) -> int:
    """A cheap token estimate for placing breakpoints: 4 characters a token for ASCII,
    about a token per character for CJK (3 UTF-8 bytes). Errs on no side much; a
    breakpoint placed a little under the real minimum costs nothing (no write)."""
    if text.isascii():
        return len(text) // 4
    return len(text.encode("utf-8")) // 3


# -- the setting --------------------------------------------------------------------------


def settings(request: ChatRequest) -> tuple[CacheMode, CacheTTL]:
    """(mode, ttl) for one request from its metadata (``cache``, ``cache_ttl``)."""
    meta = request.metadata
    mode: CacheMode = "off" if meta.get("cache") == "off" else "auto"
    ttl: CacheTTL = "1h" if meta.get("cache_ttl") == "1h" else "5m"
    return mode, ttl


def with_cache_settings(request: ChatRequest, info: ModelInfo,
                        channel: ChannelConfig) -> ChatRequest:
    """``request`` with the model's and channel's cache settings in its metadata (a copy
    only when either sets one the request does not): the request's own wins, then
    ``off`` anywhere, then the model's ttl before the channel's."""
    mode = "off" if "off" in (info.cache, channel.cache) else None
    ttl = info.cache_ttl or channel.cache_ttl
    meta = request.metadata
    add: dict[str, str] = {}
    if mode is not None and "cache" not in meta:
        add["cache"] = mode
    if ttl is not None and "cache_ttl" not in meta:
        add["cache_ttl"] = ttl
    if not add:
        return request
    return dataclasses.replace(request, metadata={**meta, **add})


# -- OpenAI -------------------------------------------------------------------------------


def plan_openai(body: dict[str, Any], request: ChatRequest, provider: str) -> None:
    """Add ``prompt_cache_key`` for OpenAI itself when caching is on and the request
    names a key (``metadata["cache_key"]``) and the caller did not set one."""
    key = request.metadata.get("cache_key")
    if provider != "openai" or not key or "prompt_cache_key" in body:
        return
    if settings(request)[0] == "off":
        return
    body["prompt_cache_key"] = key[:64]  # OpenAI caps the key's length


# -- Anthropic ----------------------------------------------------------------------------


def _marker(ttl: CacheTTL) -> dict[str, str]:
    # 5m is the API's default: the short form is what every SDK example sends.
    return {"type": "ephemeral"} if ttl == "5m" else {"type": "ephemeral", "ttl": "1h"}


def _block_tokens(block: dict[str, Any]) -> int:
    kind = block.get("type")
    if kind == "text":
        return estimate_tokens(str(block.get("text", "")))
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, list):
            return sum(_block_tokens(b) for b in content if isinstance(b, dict))
        return estimate_tokens(str(content))
    if kind == "thinking":
        return estimate_tokens(str(block.get("thinking", "")))
    # A tool, a tool_use: repr is C-fast and a little longer than the JSON (errs high,
    # and a breakpoint a little under the minimum costs nothing).
    return len(repr(block)) // 4


def _as_blocks(owner: dict[str, Any], field: str) -> list[Any] | None:
    """``owner[field]`` as a list of blocks without changing it (a string is read as one
    text block; :func:`_mark` turns it into one only when a breakpoint goes there)."""
    value = owner.get(field)
    if isinstance(value, str):
        return [{"type": "text", "text": value}] if value else None
    return value if isinstance(value, list) and value else None


def _mark(owner: dict[str, Any], field: str, block: dict[str, Any], ttl: CacheTTL) -> None:
    if isinstance(owner.get(field), str):  # a plain string cannot carry cache_control
        owner[field] = [block]
    block["cache_control"] = _marker(ttl)


# (owner, field, block): where a breakpoint would go
_Where = tuple[dict[str, Any], str, dict[str, Any]]


def plan_anthropic(body: dict[str, Any], model: str, request: ChatRequest) -> int:
    """Place ``cache_control`` breakpoints on a Messages body (see the module doc);
    returns how many were placed. Nothing when caching is off, the caller used
    top-level automatic caching, or no prefix reaches the model's minimum."""
    mode, ttl = settings(request)
    if mode == "off" or isinstance(body.get("cache_control"), dict):
        return 0
    user_ttls: list[str] = []  # breakpoints the caller placed (via extra), in order
    # Candidates: (priority, prefix tokens up to and including the block, where).
    cands: list[tuple[int, int, _Where]] = []
    total = 0
    tools = body.get("tools") or []
    for t in tools:
        if isinstance(t, dict):
            total += _block_tokens(t)
            if "cache_control" in t:
                user_ttls.append(str((t["cache_control"] or {}).get("ttl", "5m")))
    if tools and isinstance(tools[-1], dict):
        cands.append((3, total, (body, "", tools[-1])))
    ends: list[tuple[str, int, _Where]] = []  # (role, tokens, its last cacheable block)
    parts: list[tuple[dict[str, Any], str, str]] = [(body, "system", "system")]
    parts += [(m, "content", str(m.get("role"))) for m in body.get("messages") or ()
              if isinstance(m, dict)]
    for owner, field, role in parts:
        blocks = _as_blocks(owner, field)
        last: dict[str, Any] | None = None
        for block in blocks or ():
            if not isinstance(block, dict):
                continue
            total += _block_tokens(block)
            if "cache_control" in block:
                user_ttls.append(str((block["cache_control"] or {}).get("ttl", "5m")))
            kind = block.get("type")
            # Thinking blocks cannot carry cache_control; empty text blocks must not.
            if kind not in ("thinking", "redacted_thinking") and (
                    kind != "text" or block.get("text")):
                last = block
        if last is not None:
            if role == "system":
                cands.append((1, total, (owner, field, last)))
            else:
                ends.append((role, total, (owner, field, last)))
    free = MAX_BREAKPOINTS - len(user_ttls)
    if free <= 0:
        return 0
    if "1h" in user_ttls and ttl == "5m":
        ttl = "1h"  # a 1h breakpoint may not follow a 5m one (ours may come after theirs)
    if "5m" in user_ttls and ttl == "1h":
        ttl = "5m"
    if ends:
        cands.append((0, ends[-1][1], ends[-1][2]))  # the conversation so far
        # The end of the previous turn: the last user-role message before the last
        # assistant message (what the previous request ended with).
        seen_assistant = False
        for role, tokens, where in reversed(ends[:-1]):
            if role == "assistant":
                seen_assistant = True
            elif seen_assistant:
                cands.append((2, tokens, where))
                break
    minimum = anthropic_min_tokens(model)
    chosen = sorted((c for c in cands if c[1] >= minimum and "cache_control" not in c[2][2]),
                    key=lambda c: c[0])[:free]
    for _, _, (owner, field, block) in chosen:
        _mark(owner, field, block, ttl)
    return len(chosen)


def shared_prefix_key(body: dict[str, Any]) -> str | None:
    """A digest of the prefix up to the last breakpoint on the tools or system (what
    agents with the same instructions share), or None when there is none."""
    upto: list[Any] = []
    found = False
    tools = body.get("tools") or []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and "cache_control" in tool:
            upto, found = [body.get("model"), tools[: i + 1]], True
    system = body.get("system")
    if isinstance(system, list):
        for i, block in enumerate(system):
            if isinstance(block, dict) and "cache_control" in block:
                upto, found = [body.get("model"), tools, system[: i + 1]], True
    if not found:
        return None
    return hashlib.sha256(_DUMPS(upto).encode()).hexdigest()


class WarmGate:
    """First writer of a shared prefix goes alone; the others wait for its answer.

    Providers cache a prefix only once a response has begun, so 20 agents that start
    together would each miss, and on Anthropic each pay a cache *write* (1.25× or 2×
    input), for the same system prompt. Through the gate the first request of a new
    prefix goes ahead; concurrent ones with the same prefix wait until its answer
    begins (or it fails), then read the cache. A prefix written within its ttl (kept
    warm by use) passes straight through.
    """

    def __init__(self, clock: Clock, max_wait_s: float = 30.0) -> None:
        self._clock = clock
        self.max_wait_s = max_wait_s  # a slow or hung writer holds the others this long
        self._warm: dict[str, float] = {}  # prefix -> when it may have expired
        self._writing: dict[str, asyncio.Event] = {}

    async def enter(self, key: str | None, ttl: CacheTTL = "5m") -> Turn:
        """A turn at the gate for ``key`` (None: no gate). Call ``began()`` on it once
        the answer starts and ``end(ok=False)`` on every path (a no-op after began).
        Waiting ends when the writer's answer begins or fails, or after ``max_wait_s``
        (then the request goes without the cache's help)."""
        turn = Turn(self, key, ttl)
        give_up = self._clock.now() + self.max_wait_s
        while key is not None:
            if self._warm.get(key, -1.0) > self._clock.now():
                break
            event = self._writing.get(key)
            if event is None:
                self._writing[key] = asyncio.Event()
                turn.leader = True
                break
            left = give_up - self._clock.now()
            if left <= 0 or not await self._wait(event, left):
                break
        return turn

    async def _wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Whether ``event`` was set within ``seconds`` (on the injected clock)."""
        waiter = asyncio.ensure_future(event.wait())
        timer = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait((waiter, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()
        return event.is_set()

    def _end(self, turn: Turn, ok: bool) -> None:
        key = turn.key
        if key is None:
            return
        if ok:
            now = self._clock.now()
            self._warm[key] = now + _TTL_S[turn.ttl]
            if len(self._warm) > 4096:  # bounded: drop what has expired
                self._warm = {k: t for k, t in self._warm.items() if t > now}
        if turn.leader:
            turn.leader = False
            event = self._writing.pop(key, None)
            if event is not None:
                event.set()


class Turn:
    """One request's passage through a :class:`WarmGate`."""

    __slots__ = ("done", "gate", "key", "leader", "ttl")

    def __init__(self, gate: WarmGate | None, key: str | None, ttl: CacheTTL) -> None:
        self.gate = gate
        self.key = key
        self.ttl = ttl
        self.leader = False
        self.done = False

    def began(self) -> None:
        """The answer started: the prefix is cached, the waiting requests may go."""
        self.end(ok=True)

    def end(self, *, ok: bool) -> None:
        if not self.done:
            self.done = True
            if self.gate is not None:
                self.gate._end(self, ok)


_GATES: weakref.WeakKeyDictionary[object, WarmGate] = weakref.WeakKeyDictionary()
# The turn of a request with nothing to gate: already done, so began()/end() do nothing.
NO_TURN = Turn(None, None, "5m")  # the turn of a call with no gate to pass
NO_TURN.done = True


def openai_prefix_key(body: dict[str, Any]) -> str | None:
    """A digest of an OpenAI body's tools and leading system messages when they reach
    OpenAI's 1,024-token minimum and the body asks for a cache (``prompt_cache_key``),
    else None."""
    if "prompt_cache_key" not in body:
        return None
    head: list[Any] = []
    for msg in body.get("messages") or ():
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "developer"):
            break
        head.append(msg)
    text = _DUMPS([body.get("model"), body.get("prompt_cache_key"), body.get("tools"), head])
    if estimate_tokens(text) < 1024:
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def gate_key(body: dict[str, Any], request: ChatRequest, protocol: str = "anthropic"
             ) -> tuple[str, CacheTTL] | None:
    """The warm gate a body with its cache fields placed must pass: (its shared prefix's
    key, the cache ttl), or None (the common case: caching off, or no prefix to share).
    Read from the body alone, so it is found when the request is built."""
    mode, ttl = settings(request)
    if mode != "auto":
        return None
    key = shared_prefix_key(body) if protocol == "anthropic" else openai_prefix_key(body)
    return None if key is None else (key, ttl)


async def enter_gate(owner: object, clock: Clock, gate: tuple[str, CacheTTL] | None
                     ) -> Turn:
    """``owner``'s (an adapter's) turn at ``gate`` (:func:`gate_key`): the first writer of
    a prefix goes alone, the others wait for its answer; no gate, no wait."""
    if gate is None:
        return NO_TURN  # no per-call allocation
    warm = _GATES.get(owner)
    if warm is None:
        warm = _GATES[owner] = WarmGate(clock)
    return await warm.enter(*gate)


# -- what a call may cost (budgets and key admission reserve this) ---------------------


def estimate_cost(info: ModelInfo, estimated_tokens: int, max_tokens: int | None, *,
                  one_hour_cache: bool = False) -> float:
    """Dollars a call may cost at most: the estimate split into prompt and ``max_tokens``,
    the prompt at the dearest way the provider may bill it: fresh, or written to its cache
    (Anthropic: 1.25× input, 2× for a 1-hour entry when ``one_hour_cache``; providers
    without a write fee price writes at the input price, so nothing changes there)."""
    out = min(max_tokens or 0, estimated_tokens)
    prompt = estimated_tokens - out
    fresh = info.cost(Usage(prompt, out))
    written = info.cost(Usage(prompt, out, cache_write_tokens=prompt,
                              cache_write_1h_tokens=prompt if one_hour_cache else 0))
    return max(fresh, written)


def may_write_1h(request: ChatRequest, info: ModelInfo,
                 channels: Sequence[ChannelConfig] = ()) -> bool:
    """Whether ``request`` may be billed 1-hour cache writes (2× input on Anthropic): a
    1-hour ``cache_control`` placed by the caller, or a 1-hour ``cache_ttl`` that applies
    to it (the request's metadata wins, then the model's, then any of its ``channels``')
    with caching not turned off. Only Claude models have 1-hour entries."""
    if not (info.provider == "anthropic" or
            (info.wire_name or info.name).lower().startswith("claude")):
        return False
    if asks_1h_cache(request):
        return True
    meta = request.metadata
    if meta.get("cache") == "off" or info.cache == "off" or \
            (channels and all(ch.cache == "off" for ch in channels)):
        return False
    if "cache_ttl" in meta:
        return meta.get("cache_ttl") == "1h"
    if info.cache_ttl is not None:
        return info.cache_ttl == "1h"
    return any(ch.cache_ttl == "1h" for ch in channels)
