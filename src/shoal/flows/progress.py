"""Live progress of one run: each step's state, turns, tokens and cost as they happen.

    progress = RunProgress(flow)
    result = await flow.run(topic, recorder=progress.watch(NullRecorder()))
    # or: await run_durable(flow, topic, store=..., progress=progress)

:meth:`RunProgress.watch` wraps any :class:`~shoal.agents.recorder.RunRecorder` (the
journal included) and notes what passes through it: a step starting, each model turn
it finishes, the step finishing or replaying from the journal, and a journal write that
failed (the step's status becomes ``not saved``: it finished, or paid for a model turn,
but the store did not take it). ``on_change`` is called
after every change (``shoal run`` and ``shoal demo`` draw a live table from it, or print
one line per finished step when stdout is not a terminal). Failures reach the recorder
only as the run's end, so a step still ``running`` then is reported by the run's result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.clock import Clock, RealClock
from shoal.errors import StoreError

if TYPE_CHECKING:
    from rich.table import Table

    from shoal.agents.recorder import RecordedStep, RunRecorder, RunStatus
    from shoal.flows.flow import Flow
    from shoal.types import ChatResponse

__all__ = ["RunProgress", "StepProgress"]


@dataclass(slots=True)
class StepProgress:
    """One step as the progress view shows it (map items count under their step)."""

    name: str
    status: str = "waiting"  # waiting, running, succeeded, replayed, not saved
    turns: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    model: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    items_done: int = 0

    def elapsed(self, now: float) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at if self.finished_at is not None else now) - self.started_at


class RunProgress:
    """The steps of one run and what each has done so far (see the module docstring)."""

    def __init__(self, flow: Flow | None = None, *, clock: Clock | None = None,
                 on_change: Callable[[StepProgress], None] | None = None) -> None:
        self.clock: Clock = clock or RealClock()
        self.on_change = on_change
        self.steps: dict[str, StepProgress] = {}
        if flow is not None:
            for name in flow.steps:
                self.steps[name] = StepProgress(name)

    def watch(self, inner: RunRecorder) -> RunRecorder:
        """``inner``, reporting to this progress as the run goes."""
        return _Watching(inner, self)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.steps.values())

    @property
    def cost_usd(self) -> float:
        return sum(s.cost_usd for s in self.steps.values())

    def _step(self, step_id: str) -> StepProgress:
        name = step_id.split("/", 1)[0]
        step = self.steps.get(name)
        if step is None:
            step = self.steps[name] = StepProgress(name)
        return step

    def _changed(self, step: StepProgress) -> None:
        if self.on_change is not None:
            self.on_change(step)

    def started(self, step_id: str) -> None:
        step = self._step(step_id)
        if step.status != "running":
            step.status = "running"
            step.started_at = step.started_at or self.clock.now()
            step.finished_at = None
            self._changed(step)

    def turn(self, step_id: str, response: ChatResponse) -> None:
        step = self._step(step_id)
        step.turns += 1
        step.tokens += response.usage.total_tokens
        step.cost_usd += response.cost_usd
        step.model = response.model or step.model
        self._changed(step)

    def finished(self, step_id: str, recorded: RecordedStep, *, replayed: bool) -> None:
        step = self._step(step_id)
        if "/" in step_id:  # a map item: the step goes on
            step.items_done += 1
            if replayed:
                step.tokens += recorded.usage.total_tokens
                step.cost_usd += recorded.cost_usd
            self._changed(step)
            return
        step.status = "replayed" if replayed else "succeeded"
        step.tokens = recorded.usage.total_tokens
        step.cost_usd = recorded.cost_usd
        step.model = recorded.model or step.model
        now = self.clock.now()
        step.started_at = step.started_at or now
        step.finished_at = now
        self._changed(step)

    def unsaved(self, step_id: str, response: ChatResponse | None = None) -> None:
        """The journal could not take what ``step_id`` did: its result, or (``response``)
        a model turn it paid for. The step is ``not saved``: a resume runs it again."""
        step = self._step(step_id)
        if response is not None:
            step.turns += 1
            step.tokens += response.usage.total_tokens
            step.cost_usd += response.cost_usd
            step.model = response.model or step.model
        step.status = "not saved"
        step.finished_at = step.finished_at or self.clock.now()
        self._changed(step)

    def table(self, title: str | None = None) -> Table:
        """A rich table of the steps so far: step, status, turns, tokens, cost, time."""
        from rich import box
        from rich.markup import escape
        from rich.table import Table

        colours = {"running": "cyan", "succeeded": "green", "replayed": "blue",
                   "waiting": "dim", "not run": "dim", "not saved": "red",
                   "interrupted": "yellow"}
        table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("step", "status", "model", "turns", "tokens", "cost $", "time"):
            table.add_column(col, justify="left" if col in ("step", "status", "model")
                             else "right", no_wrap=True)
        now = self.clock.now()
        for s in self.steps.values():
            took = s.elapsed(now)
            status = s.status + (f" ({s.items_done} items)" if s.items_done else "")
            table.add_row(escape(s.name), f"[{colours.get(s.status, 'white')}]{status}[/]",
                          escape(s.model or "-"), str(s.turns), str(s.tokens),
                          f"{s.cost_usd:.6f}", "-" if took is None else f"{took:.1f}s")
        table.add_row("[b]total[/b]", "", "", "", str(self.tokens), f"{self.cost_usd:.6f}", "")
        return table

    def line(self, step: StepProgress) -> str:
        """One plain line for a step's change (for logs and pipes)."""
        took = step.elapsed(self.clock.now())
        parts = [f"step {step.name}: {step.status}"]
        if step.status != "running" or step.turns:
            parts += [f"{step.turns} turn(s)", f"{step.tokens} tokens", f"${step.cost_usd:.6f}"]
        if step.status != "running" and took is not None:
            parts.append(f"{took:.2f}s")
        return " · ".join(parts)


class _Watching:
    """A RunRecorder passing everything to ``inner`` and noting it in a RunProgress."""

    def __init__(self, inner: RunRecorder, progress: RunProgress) -> None:
        self._inner = inner
        self._progress = progress

    def __getattr__(self, name: str) -> Any:  # effect(), record_outcome(), ...
        return getattr(self._inner, name)

    async def run_started(self, run_id: str, flow: str, input: Any) -> None:
        await self._inner.run_started(run_id, flow, input)

    async def replay_step(
        self, run_id: str, step_id: str, inputs: str | None = None
    ) -> RecordedStep | None:
        found = await self._inner.replay_step(run_id, step_id, inputs)
        if found is not None:
            self._progress.finished(step_id, found, replayed=True)
        else:
            self._progress.started(step_id)
        return found

    async def step_done(self, run_id: str, step_id: str, step: RecordedStep) -> None:
        try:
            await self._inner.step_done(run_id, step_id, step)
        except StoreError:
            self._progress.unsaved(step_id)
            raise
        self._progress.finished(step_id, step, replayed=False)

    async def replay_turn(self, run_id: str, step_id: str, turn: int) -> ChatResponse | None:
        found = await self._inner.replay_turn(run_id, step_id, turn)
        if found is not None:
            self._progress.started(step_id)
            self._progress.turn(step_id, found)
        return found

    async def turn_done(
        self, run_id: str, step_id: str, turn: int, response: ChatResponse
    ) -> None:
        try:
            await self._inner.turn_done(run_id, step_id, turn, response)
        except StoreError:  # paid for, not journaled
            self._progress.unsaved(step_id, response)
            raise
        self._progress.started(step_id)
        self._progress.turn(step_id, response)

    async def run_finished(self, run_id: str, status: RunStatus, error: str | None) -> None:
        await self._inner.run_finished(run_id, status, error)
