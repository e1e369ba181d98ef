"""Who runs first when a flow's concurrency cap is full: :class:`SlotPool` (a cap
whose waiters are served by priority) and the critical-path priorities that the
scheduler (:mod:`shoal.flows.scheduler`) gives its steps.

When more steps (or map items) are ready than the cap admits, the one with the most
steps still below it goes first (critical-path list scheduling); ties go in the order
steps were added. That keeps a capped DAG's makespan close to its bound,
max(critical path, work / cap).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.flows.flow import Flow

__all__ = ["SlotPool", "critical_path_priorities"]


class SlotPool:
    """A concurrency cap whose waiters are served by priority (highest first, then FIFO).

    ``request`` queues synchronously and returns a ticket (a future that completes when
    the slot is granted), so a scheduler can queue several steps in priority order
    before any slot is handed out. ``give_back`` releases a granted ticket (handing the
    slot to the best waiter) or withdraws a waiting one. Cancelling a task that awaits
    its ticket withdraws it.
    """

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self._free = capacity if capacity is not None else 0
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.in_use = 0
        self.max_in_use = 0

    def request(self, priority: float = 0.0) -> asyncio.Future[None]:
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.capacity is None or self._free > 0:
            if self.capacity is not None:
                self._free -= 1
            self._grant(ticket)
        else:
            heapq.heappush(self._heap, (-priority, next(self._seq), ticket))
        return ticket

    def _grant(self, ticket: asyncio.Future[None]) -> None:
        ticket.set_result(None)
        self.in_use += 1
        self.max_in_use = max(self.max_in_use, self.in_use)

    def give_back(self, ticket: asyncio.Future[None]) -> None:
        if not ticket.done():
            ticket.cancel()  # withdrawn while waiting: skipped when popped
            return
        if ticket.cancelled():
            return
        self.in_use -= 1
        if self.capacity is None:
            return
        while self._heap:
            _, _, nxt = heapq.heappop(self._heap)
            if not nxt.done():
                self._grant(nxt)
                return
        self._free += 1

    @contextlib.asynccontextmanager
    async def slot(self, priority: float = 0.0) -> AsyncIterator[None]:
        ticket = self.request(priority)
        try:
            await ticket
            yield
        finally:
            self.give_back(ticket)


def critical_path_priorities(flow: Flow) -> dict[str, float]:
    """Steps below each step on its longest path to a sink, itself included."""
    children: dict[str, list[str]] = {n: [] for n in flow.steps}
    for step in flow.steps.values():
        for dep in step.after:
            children[dep].append(step.name)
    prio: dict[str, float] = {}
    for name in reversed(list(flow.steps)):  # steps are added after their dependencies
        prio[name] = 1.0 + max((prio[c] for c in children[name]), default=0.0)
    return prio
