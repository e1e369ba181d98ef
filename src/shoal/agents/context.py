"""Context management: keep a conversation inside its token budget and the model's window.

When the next request would be too large, :func:`trim_messages` drops the oldest
turns — a turn being a user message, or an assistant message together with the
tool results answering it, so a tool call is never separated from its result —
while keeping the system prompt, the task (first user message) and the most
recent turns. With ``summarize=True`` the dropped turns are summarised by a
model call and the summary goes in as a user message right after the task: the
system prompt, the tools and the task stay byte for byte what they were, so the
provider's cached prefix (docs/cost.md) survives the trim. (Folding the summary
into the system prompt, as shoal did first, changed the first bytes of every later
request: each trim turned the whole cached prefix into a cache write.)

:func:`map_reduce` handles inputs longer than a window: split, map every chunk
(in parallel, bounded), then reduce the partial answers (hierarchically if even
they do not fit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from shoal.errors import ConfigError, ContextOverflow
from shoal.types import ChatRequest, Message, Usage

if TYPE_CHECKING:
    from shoal.agents.agent import Agent
    from shoal.agents.guards import Budget
    from shoal.agents.runner import Runner, RunResult

__all__ = ["ContextPolicy", "map_reduce", "split_text", "trim_messages"]

T = TypeVar("T")

SUMMARY_HEADER = "Summary of the earlier conversation (older turns were trimmed):"


@dataclass(frozen=True, slots=True)
class ContextPolicy:
    """How to keep an agent's conversation small enough.

    ``max_prompt_tokens``: a budget for the prompt below the model's window (None = the
    window minus ``max_tokens``). ``keep_recent``: turns never dropped (a turn is a user
    message, or an assistant message with its tool results). ``keep_task``: keep the first user
    message. ``summarize``: summarise dropped turns with ``summary_model`` (default: the
    agent's model), at most ``summary_max_tokens`` long.
    """

    max_prompt_tokens: int | None = None
    keep_recent: int = 2
    keep_task: bool = True
    summarize: bool = False
    summary_model: str | None = None
    summary_max_tokens: int = 400


def _group_turns(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    head: list[Message] = []
    i = 0
    while i < len(messages) and messages[i].role == "system":
        head.append(messages[i])
        i += 1
    groups: list[list[Message]] = []
    for msg in messages[i:]:
        if msg.role == "tool" and groups:
            groups[-1].append(msg)
        else:
            groups.append([msg])
    return head, groups


async def trim_messages(
    messages: list[Message],
    *,
    estimate: Callable[[list[Message]], int],
    limit: int,
    policy: ContextPolicy,
    summarize: Callable[[list[Message]], Awaitable[str]] | None = None,
) -> list[Message]:
    """``messages`` if they fit ``limit`` (as ``estimate`` counts), else a trimmed copy.

    Raises ``ContextOverflow`` when even the system prompt, the task and the
    ``keep_recent`` last turns do not fit.
    """
    if estimate(messages) <= limit:
        return messages
    head, groups = _group_turns(messages)
    task: list[list[Message]] = []
    if policy.keep_task and groups and groups[0][0].role == "user":
        task = [groups.pop(0)]
    dropped: list[Message] = []

    def assemble(extra_head: list[Message]) -> list[Message]:
        out = list(extra_head)
        for g in (*task, *groups):
            out.extend(g)
        return out

    current = assemble(head)
    while len(groups) > policy.keep_recent and estimate(current) > limit:
        dropped.extend(groups.pop(0))
        current = assemble(head)
    if dropped and summarize is not None:
        summary = (await summarize(dropped)).strip()
        if summary:  # after the task: the cached prefix (system, tools, task) stays
            task = [*task, [Message.user(f"{SUMMARY_HEADER}\n{summary}")]]
            current = assemble(head)
            while len(groups) > policy.keep_recent and estimate(current) > limit:
                groups.pop(0)
                current = assemble(head)
    if estimate(current) > limit:
        raise ContextOverflow(
            f"the conversation needs ~{estimate(current)} tokens even after trimming to the "
            f"system prompt, the task and the last {policy.keep_recent} turn(s), over the "
            f"limit of {limit}; shorten "
            "the input (see shoal.agents.map_reduce), lower max_tokens, or use a model with "
            "a larger window"
        )
    return current


def split_text(text: str, max_chars: int) -> list[str]:
    """Split ``text`` into pieces of at most ``max_chars``, at paragraph, line, sentence
    or word boundaries when possible."""
    if max_chars < 1:
        raise ConfigError(f"max_chars must be >= 1, got {max_chars}")
    if len(text) <= max_chars:
        return [text] if text else []
    for sep in ("\n\n", "\n", ". ", " "):
        parts = text.split(sep)
        if len(parts) > 1:
            break
    else:
        return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]
    chunks: list[str] = []
    current = ""
    for part in parts:
        piece = part if not current else current + sep + part
        if len(piece) <= max_chars:
            current = piece
            continue
        if current:
            chunks.append(current)
        if len(part) > max_chars:
            chunks.extend(split_text(part, max_chars))
            current = ""
        else:
            current = part
    if current:
        chunks.append(current)
    return chunks


def _render(value: Any) -> str:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return value if isinstance(value, str) else str(value)


async def map_reduce(
    runner: Runner,
    text: str,
    *,
    map_agent: Agent[Any],
    reduce_agent: Agent[T],
    chunk_tokens: int | None = None,
    concurrency: int = 4,
    budget: Budget | None = None,
    deps: Any = None,
    run_id: str | None = None,
    step_id: str = "map_reduce",
) -> RunResult[T]:
    """Answer over a ``text`` longer than a window: map ``map_agent`` over chunks of at most
    ``chunk_tokens`` (default: half the map model's window), then ``reduce_agent`` over the
    joined partial answers. The result's usage and cost cover every call made."""
    if concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
    model = runner.model_for(map_agent)
    info = runner.client.model_info(model)
    if chunk_tokens is None:
        chunk_tokens = max(256, (info.context_window - (map_agent.max_tokens or 1024)) // 2)
    probe = text[:20_000] or " "
    tokens = runner.client.estimate_tokens(
        ChatRequest(model=model, messages=[Message.user(probe)], max_tokens=1)
    )
    chars_per_token = max(1.0, len(probe) / max(1, tokens - 1))
    chunks = split_text(text, max(1, int(chunk_tokens * chars_per_token)))
    sem = asyncio.Semaphore(concurrency)
    usage = Usage()
    cost = 0.0

    async def one(i: int, chunk: str, agent: Agent[Any], stage: str) -> Any:
        nonlocal usage, cost
        async with sem:
            res = await runner.run(
                agent, f"Part {i + 1} of {len(chunks)}:\n\n{chunk}", deps=deps, budget=budget,
                run_id=run_id, step_id=f"{step_id}/{stage}/{i}",
            )
        usage = usage + res.usage
        cost += res.cost_usd
        return res.output

    partials = await asyncio.gather(*(one(i, c, map_agent, "map") for i, c in enumerate(chunks)))
    combined = "\n\n".join(f"## Part {i + 1}\n{_render(p)}" for i, p in enumerate(partials))
    level = 0
    limit_chars = int(chunk_tokens * chars_per_token) * 2
    while len(combined) > limit_chars and len(partials) > 1:
        level += 1
        groups = split_text(combined, limit_chars)
        chunks = groups
        partials = await asyncio.gather(
            *(one(i, g, reduce_agent, f"reduce{level}") for i, g in enumerate(groups))
        )
        combined = "\n\n".join(f"## Part {i + 1}\n{_render(p)}" for i, p in enumerate(partials))
    final = await runner.run(
        reduce_agent, combined, deps=deps, budget=budget, run_id=run_id,
        step_id=f"{step_id}/reduce",
    )
    final.usage = final.usage + usage
    final.cost_usd += cost
    return final
