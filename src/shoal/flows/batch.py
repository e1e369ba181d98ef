"""``Batch``: one agent, flow or async function over N inputs, with bounded concurrency,
every item's error collected (never a lost item), one budget, and a live progress bar
(done, failed, running, tokens, dollars, ETA)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from shoal.agents.agent import Agent
from shoal.agents.guards import Budget
from shoal.agents.runner import Runner, new_run_id
from shoal.clock import Clock, RealClock
from shoal.errors import ConfigError, LeaseLost, RunBusy, StepFailed
from shoal.flows.flow import Flow, FlowResult, as_text
from shoal.observe.emit import bus_of, live
from shoal.observe.emit_flow import observed_run
from shoal.types import Usage

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table

    from shoal.agents.client import ModelClient
    from shoal.agents.recorder import RunRecorder
    from shoal.scale.executor import DaskExecutor, LocalExecutor

__all__ = ["Batch", "BatchItem", "BatchResult"]

ItemStatus = Literal["succeeded", "failed", "cancelled"]
R = TypeVar("R")
_log = logging.getLogger("shoal.flows.batch")
_BUSY_POLL_S = 1.0  # an item another executor holds: how often to look whether it is free
Target = Agent[Any] | Flow | Callable[[Any], Awaitable[Any]]


@dataclass(slots=True)
class BatchItem:
    """One input's outcome. ``name`` is the input's key (its file name in ``shoal run
    -d``; its index when the inputs were a plain list). ``detail`` is the agent's
    RunResult or the flow's FlowResult."""

    index: int
    input: Any
    status: ItemStatus
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_s: float = 0.0
    run_id: str = ""
    detail: Any = field(default=None, repr=False)
    exception: BaseException | None = field(default=None, repr=False)
    name: str = ""


@dataclass(slots=True)
class BatchResult:
    """Every item, in input order, plus totals."""

    items: list[BatchItem]
    usage: Usage
    cost_usd: float
    latency_s: float

    @property
    def succeeded(self) -> list[BatchItem]:
        return [i for i in self.items if i.status == "succeeded"]

    @property
    def failed(self) -> list[BatchItem]:
        return [i for i in self.items if i.status != "succeeded"]

    @property
    def outputs(self) -> list[Any]:
        """Outputs in input order (``None`` where the item failed)."""
        return [i.output for i in self.items]

    def table(self, title: str = "batch") -> Table:
        from rich import box
        from rich.table import Table

        table = Table(title=f"{title}: {len(self.succeeded)} ok, {len(self.failed)} failed",
                      box=box.SIMPLE_HEAD, pad_edge=False, caption="in/out: tokens")
        from rich.markup import escape

        for col in ("item", "status", "latency", "in", "out", "cost $", "error"):
            table.add_column(col, justify="right" if col in ("latency", "in", "out", "cost $")
                             else "left")
        for i in self.items:
            colour = "green" if i.status == "succeeded" else "red"
            table.add_row(escape(i.name or str(i.index)), f"[{colour}]{i.status}[/]",
                          f"{i.latency_s:.2f}s", str(i.usage.input_tokens),
                          str(i.usage.output_tokens), f"{i.cost_usd:.6f}",
                          escape((i.error or "")[:60]))
        table.add_row("total", "", f"{self.latency_s:.2f}s", str(self.usage.input_tokens),
                      str(self.usage.output_tokens), f"{self.cost_usd:.6f}", "")
        return table


class Batch:
    """Run ``target`` over many inputs.

    Args:
        target: an :class:`Agent`, a :class:`Flow` or an async function of one input.
        concurrency: items in flight at once (the router still enforces provider limits).
        client: the model call path (default: a Router over ``Config.load()``, closed after).
        budget_usd, budget_tokens: one budget for the whole batch.
        recorder: journal; item ``i`` runs as ``f"{run_id}-{i}"`` so a re-run resumes.
        progress: show a live progress bar on ``console`` (default: stderr).
    """

    def __init__(
        self,
        target: Target,
        *,
        concurrency: int = 8,
        client: ModelClient | None = None,
        clock: Clock | None = None,
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
        recorder: RunRecorder | None = None,
        run_id: str | None = None,
        progress: bool = False,
        console: Console | None = None,
        description: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"batch concurrency must be >= 1, got {concurrency}")
        if not isinstance(target, Agent | Flow) and not callable(target):
            raise ConfigError("a batch target must be an Agent, a Flow or an async function")
        self.target = target
        self.concurrency = concurrency
        self.client = client
        self.clock: Clock = clock or RealClock()
        self.budget_usd = budget_usd
        self.budget_tokens = budget_tokens
        self.recorder = recorder
        self.run_id = run_id
        self.progress = progress
        self.console = console
        self.description = description or getattr(target, "name", None) or "batch"
        # The items of the latest run that have finished, by index, as they finish: what
        # a run that was cancelled (Ctrl-C) got done, for its caller to tell.
        self.outcomes: dict[int, BatchItem] = {}

    async def run(self, inputs: Iterable[Any] | Mapping[str, Any], *,
                  executor: DaskExecutor | LocalExecutor | None = None) -> BatchResult:
        """Run every input; returns when all are done. ``inputs``: a list, or a mapping of
        name -> input (the names label the items, e.g. file names). Item errors are
        collected in the result, never raised; cancelling the call cancels the items in
        flight. ``executor``: where the items run (e.g. ``shoal.scale.DaskExecutor``: a
        Dask cluster, every item journaled; see docs/scale.md); default here."""
        if executor is not None:
            return await executor.run(self, inputs)
        if isinstance(inputs, Mapping):
            names = [str(k) for k in inputs]
            items = list(inputs.values())
        else:
            items = list(inputs)
            names = [str(i) for i in range(len(items))]
        run_id = self.run_id or new_run_id()
        budget = None
        if self.budget_usd is not None or self.budget_tokens is not None:
            budget = Budget(max_usd=self.budget_usd, max_tokens=self.budget_tokens, name="batch")
        client = self.client
        if client is None and isinstance(self.target, Flow):
            client = self.target.client
        own = client is None and not self._plain_function()
        if own:
            from shoal.agents.client import default_client

            client = default_client()
        state = _Progress(len(items), self.clock, self.progress, self.console, self.description)
        results: list[BatchItem | None] = [None] * len(items)
        feed: Iterator[tuple[int, Any]] = iter(enumerate(items))
        started = self.clock.now()
        self.outcomes = {}

        async def worker() -> None:
            for index, value in feed:
                state.started()
                item = await self._one(index, value, f"{run_id}-{index}", client, budget)
                item.name = names[index]
                results[index] = self.outcomes[index] = item
                state.finished(item)

        try:
            with state:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(self.concurrency, len(items))):
                        tg.create_task(worker())
        finally:
            if own and client is not None:
                close = getattr(client, "aclose", None)
                if close is not None:
                    await close()
        done = [r for r in results if r is not None]
        assert len(done) == len(items), "every input has an outcome"
        usage = sum((r.usage for r in done), Usage())
        return BatchResult(done, usage, sum(r.cost_usd for r in done),
                           self.clock.now() - started)

    def _plain_function(self) -> bool:
        return not isinstance(self.target, Agent | Flow)

    async def _one(self, index: int, value: Any, run_id: str, client: ModelClient | None,
                   budget: Budget | None) -> BatchItem:
        started = self.clock.now()
        item = BatchItem(index, value, "succeeded", run_id=run_id)
        bus = bus_of(client)
        if live(bus) and not isinstance(self.target, Flow):  # a flow emits its own
            assert bus is not None
            await observed_run(bus, self.clock, run_id, self.description,
                               work=self._fill(item, value, client, budget),
                               totals=lambda: (item.usage, item.cost_usd))
        else:
            await self._fill(item, value, client, budget)
        item.latency_s = self.clock.now() - started
        return item

    async def _fill(self, item: BatchItem, value: Any, client: ModelClient | None,
                    budget: Budget | None) -> BatchItem:
        """Run one input, recording its outcome (or error) in ``item``."""
        run_id = item.run_id
        try:
            target = self.target
            if isinstance(target, Agent):
                assert client is not None
                runner = Runner(client, clock=self.clock, recorder=self.recorder)
                text = value if isinstance(value, str) else as_text(value)
                res = await self._unbusy(
                    lambda: runner.run(target, text, budget=budget, run_id=run_id))
                item.output, item.usage, item.cost_usd, item.detail = (
                    res.output, res.usage, res.cost_usd, res)
            elif isinstance(target, Flow):
                assert client is not None
                flow_res = await self._run_flow(target, value, run_id, client, budget)
                item.output, item.usage, item.cost_usd, item.detail = (
                    flow_res.output, flow_res.usage, flow_res.cost_usd, flow_res)
            else:
                out = target(value)
                item.output = await out if inspect.isawaitable(out) else out
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            item.status = "failed"
            # A failed flow's own advice (run again with its run_id) is not how a batch
            # resumes (the batch does, by its id): the summary of what failed only.
            said = exc.summary if isinstance(exc, StepFailed) else exc
            item.error = f"{type(exc).__name__}: {said}"
            item.error_type = type(exc).__name__
            item.exception = exc
            partial = getattr(exc, "result", None)
            if isinstance(partial, FlowResult):
                item.usage, item.cost_usd, item.detail = partial.usage, partial.cost_usd, partial
        return item


    async def _run_flow(self, flow: Flow, value: Any, run_id: str, client: ModelClient,
                        budget: Budget | None) -> FlowResult:
        """Run one item's flow (see :meth:`_unbusy`)."""
        return await self._unbusy(lambda: flow.run(
            value, run_id=run_id, client=client, recorder=self.recorder, budget=budget,
            clock=self.clock))

    async def _unbusy(self, start: Callable[[], Awaitable[R]]) -> R:
        """Run one item (its flow, or its agent). An item whose run another executor
        holds (a second run of this batch, an item Dask sent again after a worker died)
        waits until that one ends or its lease lapses, then runs, replaying what the
        other journaled: never both at once, and the batch still finishes. Why it
        waits, and how to take it over now, is logged once."""
        told = False
        while True:
            try:
                return await start()
            except LeaseLost:
                raise
            except RunBusy as busy:
                if not told:
                    _log.warning("%s Waiting for it.", busy)
                    told = True
                left = busy.expires_at - self.clock.wall()
                await self.clock.sleep(min(max(left, 0.05), _BUSY_POLL_S))


class _Progress:
    """Counters, and the rich progress bar that shows them (when enabled)."""

    def __init__(self, total: int, clock: Clock, show: bool, console: Console | None,
                 description: str) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.running = 0
        self.tokens = 0
        self.cost = 0.0
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if show:
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(bar_width=10),
                TextColumn("{task.completed:.0f}/{task.total:.0f} done · [green]"
                           "{task.fields[ok]} ok[/] · [red]{task.fields[failed]} failed[/] · "
                           "{task.fields[running]} running · {task.fields[tokens]} tok · "
                           "${task.fields[cost]} · ETA"),
                TimeRemainingColumn(),
                console=console, get_time=clock.now, transient=False,
            )
            self._task = self._bar.add_task(description, total=total, ok=0, failed=0,
                                            running=0, tokens=0, cost="0.0000")

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._refresh()
            with contextlib.suppress(Exception):
                self._bar.stop()

    def started(self) -> None:
        self.running += 1
        self._refresh()

    def finished(self, item: BatchItem) -> None:
        self.running -= 1
        self.done += 1
        if item.status != "succeeded":
            self.failed += 1
        self.tokens += item.usage.total_tokens
        self.cost += item.cost_usd
        self._refresh()

    def _refresh(self) -> None:
        if self._bar is None or self._task is None:
            return
        self._bar.update(self._task, completed=self.done, ok=self.done - self.failed,
                         failed=self.failed, running=self.running, tokens=self.tokens,
                         cost=f"{self.cost:.4f}")
