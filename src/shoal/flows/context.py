"""What steps of one flow run share: a key-value context, a message board, and the
per-step view of both (:class:`StepContext`)."""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from shoal.types import Message, Usage

if TYPE_CHECKING:
    from shoal.agents.agent import Agent
    from shoal.agents.guards import Budget
    from shoal.agents.runner import Runner, RunResult

__all__ = ["BoardMessage", "MessageBoard", "SharedContext", "StepContext"]

T = TypeVar("T")


class SharedContext:
    """Run-scoped key-value state every step can read and update.

    ``update(key, fn)`` is atomic per key even when ``fn`` awaits: updates of one key are
    serialised by a lock, so parallel steps never lose each other's writes.
    ``get``/``set`` are plain reads and writes (atomic on their own).
    """

    def __init__(self, initial: dict[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(initial or {})
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def set(self, key: str, value: Any) -> None:
        self._data[key] = value

    def lock(self, key: str) -> asyncio.Lock:
        """The lock ``update`` holds for ``key`` (for multi-step critical sections)."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def update(
        self, key: str, fn: Callable[[Any], Any | Awaitable[Any]], default: Any = None
    ) -> Any:
        """Replace ``key``'s value with ``fn(old)`` (``old`` = ``default`` if unset), atomically.

        Returns the new value. ``fn`` may be async.
        """
        async with self.lock(key):
            new = fn(self._data.get(key, default))
            if inspect.isawaitable(new):
                new = await new
            self._data[key] = new
            return new

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the current state."""
        return copy.deepcopy(self._data)


@dataclass(frozen=True, slots=True)
class BoardMessage:
    """A message a step published: who sent it, on what topic, in what order."""

    topic: str
    sender: str
    payload: Any
    seq: int


class MessageBoard:
    """Messages steps publish for later steps to consume, by topic, in publication order."""

    def __init__(self) -> None:
        self._topics: dict[str, list[BoardMessage]] = defaultdict(list)
        self._seq = 0
        self._changed = asyncio.Event()

    def publish(self, topic: str, payload: Any, *, sender: str = "") -> BoardMessage:
        self._seq += 1
        msg = BoardMessage(topic, sender, payload, self._seq)
        self._topics[topic].append(msg)
        self._changed.set()
        self._changed = asyncio.Event()
        return msg

    def messages(self, topic: str) -> list[BoardMessage]:
        return list(self._topics.get(topic, ()))

    def all(self) -> list[BoardMessage]:
        return sorted((m for msgs in self._topics.values() for m in msgs), key=lambda m: m.seq)

    async def wait(self, topic: str, count: int = 1) -> list[BoardMessage]:
        """Wait until ``topic`` holds at least ``count`` messages; return them all."""
        while len(self._topics.get(topic, ())) < count:
            await self._changed.wait()
        return self.messages(topic)


@dataclass(slots=True)
class StepContext:
    """A step's view of its run. Function steps receive it by declaring a parameter
    annotated ``StepContext``; agent steps get it as ``RunContext.deps`` (so their tools
    can reach ``shared`` and the board)."""

    run_id: str
    step: str
    input: Any
    deps: dict[str, Any]
    shared: SharedContext
    board: MessageBoard
    runner: Runner
    budget: Budget | None = None
    item: Any = None
    index: int | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    models: list[str] = field(default_factory=list)

    def publish(self, topic: str, payload: Any) -> BoardMessage:
        """Post a message for later steps (sender = this step)."""
        return self.board.publish(topic, payload, sender=self.step)

    def messages(self, topic: str) -> list[Any]:
        """The payloads published on ``topic`` so far, oldest first."""
        return [m.payload for m in self.board.messages(topic)]

    async def run_agent(
        self, agent: Agent[T], input: str | Sequence[Message], *, name: str | None = None
    ) -> RunResult[T]:
        """Run an agent inside this step, on the run's runner and budget; its usage and
        cost count toward the step."""
        result = await self.runner.run(
            agent, input, deps=self, budget=self.budget, run_id=self.run_id,
            step_id=f"{self.step}/{name or agent.name}",
        )
        self.usage = self.usage + result.usage
        self.cost_usd += result.cost_usd
        self.models.append(result.model)
        return result
