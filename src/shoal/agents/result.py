"""What an agent run produced (:class:`RunResult`) and each of its model calls
(:class:`TurnTrace`); :mod:`shoal.agents.runner` makes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from shoal.types import Message, Usage

__all__ = ["RunResult", "TurnTrace"]

T = TypeVar("T")


@dataclass(slots=True)
class TurnTrace:
    """One model call of a run: who answered, how long it took, what it cost, what it did."""

    turn: int
    model: str
    provider: str
    channel: str
    started_at: float
    latency_s: float
    usage: Usage
    cost_usd: float
    finish_reason: str
    tool_calls: list[str] = field(default_factory=list)
    tool_errors: list[str] = field(default_factory=list)
    replayed: bool = False
    note: str = ""


@dataclass(slots=True)
class RunResult(Generic[T]):
    """What an agent run produced: the typed output and everything that led to it."""

    agent: str
    output: T
    text: str
    messages: list[Message]
    usage: Usage
    cost_usd: float
    turns: list[TurnTrace]
    model: str
    run_id: str
    step_id: str
    latency_s: float
