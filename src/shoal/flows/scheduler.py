"""Running a flow: start each step as soon as its dependencies are done, under one
concurrency cap that serves the longest remaining path first, apply failure policies,
journal finished steps, and stop everything cleanly on failure or cancellation.

Priority. When more steps (or map items) are ready than the cap admits, the one
with the most steps still below it goes first: see :mod:`shoal.flows.slots`
(:class:`SlotPool` is re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, cast

from shoal.agents.agent import Agent
from shoal.agents.client import ModelClient
from shoal.agents.deadline import with_timeout
from shoal.agents.errors import GuardrailTripped, StepFailed
from shoal.agents.guards import Budget
from shoal.agents.recorder import (
    NullRecorder,
    RecordedStep,
    RunRecorder,
    RunStatus,
    from_jsonable,
    to_jsonable,
)
from shoal.agents.runner import Runner, new_run_id
from shoal.clock import Clock, RealClock
from shoal.errors import BudgetExceeded, ConfigError, DeadlineExceeded, RunError, StoreError
from shoal.flows.context import MessageBoard, SharedContext, StepContext
from shoal.flows.flow import Flow, FlowResult, Step, StepResult, as_text, render_input
from shoal.flows.slots import SlotPool, critical_path_priorities
from shoal.observe.emit import bus_of, live
from shoal.observe.emit_flow import journaled, observed_run, observed_step
from shoal.types import Usage

__all__ = ["FlowRun", "SlotPool"]

_NEVER_RETRY = (BudgetExceeded, GuardrailTripped, ConfigError, StoreError)


def _fatal(res: StepResult, policy: str) -> bool:
    """Whether a failed step stops the run: its policy says so, or the journal failed
    (a corrupt record or a store that is down stops the run whatever the policy)."""
    return res.status == "failed" and (policy == "fail" or isinstance(res.exception, StoreError))


def _sentence(text: str) -> str:
    """``text`` ending in exactly one full stop (errors often end in one already)."""
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _digest(doc: Any) -> str:
    text = json.dumps(doc, sort_keys=True, ensure_ascii=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _inputs_digest(deps: Mapping[str, Any]) -> str:
    """A hash of a step's dependencies' outputs, as the journal would hold them (text as
    is, anything else as sorted JSON), so a replayed output hashes as it did live."""
    h = hashlib.sha256()
    for name, value in deps.items():
        data = (b"s" + value.encode()) if isinstance(value, str) else (
            b"j" + json.dumps(to_jsonable(value), sort_keys=True, ensure_ascii=True).encode())
        h.update(b"%d:%s%d:" % (len(name), name.encode(), len(data)))
        h.update(data)
    return h.hexdigest()[:16]


class FlowRun:
    """The execution of one :class:`Flow` run."""

    def __init__(
        self,
        flow: Flow,
        input: Any,
        *,
        client: ModelClient,
        run_id: str | None = None,
        recorder: RunRecorder | None = None,
        budget: Budget | None = None,
        shared: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.flow = flow
        self.input = input
        self.run_id = run_id or new_run_id()
        self.clock: Clock = clock or RealClock()
        self.recorder: RunRecorder = recorder or NullRecorder()
        self.runner = Runner(client, clock=self.clock, recorder=self.recorder,
                             default_model=flow.default_model)
        self.events = bus_of(client)  # run/step events go where the client's calls' go
        self.journal_events = None if isinstance(self.recorder, NullRecorder) else self.events
        if flow.budget_usd is not None or flow.budget_tokens is not None:
            name = f"flow {flow.name!r}"
            budget = (
                budget.child(max_usd=flow.budget_usd, max_tokens=flow.budget_tokens, name=name)
                if budget is not None
                else Budget(max_usd=flow.budget_usd, max_tokens=flow.budget_tokens, name=name)
            )
        self.budget = budget
        self.shared = SharedContext(dict(shared or {}))
        self.board = MessageBoard()
        self.pool = SlotPool(flow.max_concurrency)
        self.priority = critical_path_priorities(flow)
        self.results: dict[str, StepResult] = {
            n: StepResult(n, "not_run") for n in flow.steps
        }
        self.tasks: dict[str, asyncio.Task[StepResult]] = {}
        self.tickets: dict[str, asyncio.Future[None]] = {}
        self.inputs: dict[str, str] = {}  # step -> hash of its dependencies' outputs
        self.item_inputs: dict[str, str] = {}  # map step -> what its items share of them

    async def execute(self) -> FlowResult:
        if live(self.events):
            assert self.events is not None
            return await observed_run(self.events, self.clock, self.run_id, self.flow.name,
                                      work=self._run(), totals=self._totals)
        return await self._run()

    def _totals(self) -> tuple[Usage, float]:
        results = self.results.values()
        return sum((r.usage for r in results), Usage()), sum(r.cost_usd for r in results)

    async def _run(self) -> FlowResult:
        started = self.clock.now()
        await self.recorder.run_started(self.run_id, self.flow.name, to_jsonable(self.input))
        journaled(self.journal_events, "run")
        waiting = {n: len(s.after) for n, s in self.flow.steps.items()}
        children: dict[str, list[str]] = {n: [] for n in self.flow.steps}
        for s in self.flow.steps.values():
            for d in s.after:
                children[d].append(s.name)
        failed: StepResult | None = None
        try:
            self._start_all([n for n, count in waiting.items() if count == 0])
            while self.tasks and failed is None:
                done, _ = await asyncio.wait(
                    self.tasks.values(), return_when=asyncio.FIRST_COMPLETED
                )
                ready: list[str] = []
                finished: list[str] = []
                for task in done:
                    res = task.result()
                    del self.tasks[res.name]
                    finished.append(res.name)
                    self.results[res.name] = res
                    if _fatal(res, self.flow.steps[res.name].on_failure):
                        failed = failed or res
                        continue
                    for child in children[res.name]:
                        waiting[child] -= 1
                        if waiting[child] == 0 and not self._skipped(child, children):
                            ready.append(child)
                # Queue the newly ready steps before handing on the finished steps' slots,
                # so a freed slot goes to the best step, not to whoever queued first.
                self._start_all(ready)
                for name in finished:
                    ticket = self.tickets.pop(name, None)
                    if ticket is not None:
                        self.pool.give_back(ticket)
        except BaseException:
            await self._cancel_all()
            await self.recorder.run_finished(self.run_id, "cancelled", "cancelled")
            journaled(self.journal_events, "run")
            raise
        if failed is not None:
            await self._cancel_all()
            result = self._result("failed", started)
            await self.recorder.run_finished(self.run_id, "failed", failed.error)
            journaled(self.journal_events, "run")
            if isinstance(failed.exception, StoreError):
                raise failed.exception  # names the record; "resume" would not help
            done_steps = [n for n, r in self.results.items() if r.ok]
            summary = (f"step {failed.name!r} of flow {self.flow.name!r} failed: "
                       f"{_sentence(failed.error or 'unknown error')} Finished steps: "
                       f"{', '.join(done_steps) or 'none'}.")
            raise StepFailed(
                f"{summary} Run again with run_id={self.run_id!r} and a journal to resume "
                "from here.", step=failed.name, result=result, summary=summary,
            ) from failed.exception
        status: RunStatus = (
            "partial" if any(r.status in ("skipped", "failed") for r in self.results.values())
            else "succeeded"
        )
        await self.recorder.run_finished(self.run_id, status, None)
        journaled(self.journal_events, "run")
        return self._result(status, started)

    def _skipped(self, name: str, children: dict[str, list[str]]) -> bool:
        """Mark ``name`` and its descendants skipped if a dependency gave no output."""
        step = self.flow.steps[name]
        blocked = [d for d in step.after
                   if self.results[d].status == "skipped"
                   or (self.results[d].status == "failed"
                       and self.flow.steps[d].on_failure == "skip")]
        if not blocked:
            return False
        self.results[name] = StepResult(
            name, "skipped", error=f"skipped: {', '.join(blocked)} did not produce output"
        )
        stack = list(children[name])
        while stack:  # the skip reaches every descendant at once
            child = stack.pop()
            if self.results[child].status == "not_run":
                self.results[child] = StepResult(child, "skipped", error=f"skipped: {name}")
                stack.extend(children[child])
        return True

    def _start_all(self, names: list[str]) -> None:
        """Start steps, best priority first (stable: ties in the order they were added)."""
        for name in sorted(names, key=lambda n: -self.priority[n]):
            step = self.flow.steps[name]
            ticket = None
            if not step.is_map:  # a map's items take slots, not the map itself
                ticket = self.tickets[name] = self.pool.request(self.priority[name])
            self.tasks[name] = asyncio.create_task(
                self._run_step(step, ticket), name=f"shoal-step:{self.flow.name}:{name}"
            )

    async def _cancel_all(self) -> None:
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for name in self.tasks:
            if self.results[name].status == "not_run":
                self.results[name] = StepResult(name, "cancelled")
        self.tasks.clear()
        for ticket in self.tickets.values():
            self.pool.give_back(ticket)
        self.tickets.clear()

    def _result(self, status: RunStatus, started: float) -> FlowResult:
        usage = Usage()
        cost = 0.0
        for r in self.results.values():
            usage = usage + r.usage
            cost += r.cost_usd
        sinks = self.flow.sinks()
        output = (self.results[sinks[0]].output if len(sinks) == 1
                  else {n: self.results[n].output for n in sinks})
        return FlowResult(
            flow=self.flow.name, run_id=self.run_id, status=status, output=output,
            steps=dict(self.results), usage=usage, cost_usd=cost,
            latency_s=self.clock.now() - started, shared=self.shared.snapshot(),
            messages=self.board.all(),
        )

    def _context(self, step: Step, step_id: str) -> StepContext:
        deps = {d: self.results[d].output for d in step.after}
        return StepContext(
            run_id=self.run_id, step=step_id, input=self.input, deps=deps, shared=self.shared,
            board=self.board, runner=self.runner, budget=self.budget,
        )

    async def _run_step(self, step: Step, ticket: asyncio.Future[None] | None) -> StepResult:
        ctx = self._context(step, step.name)
        if not isinstance(self.recorder, NullRecorder):  # a result is valid for its inputs
            self.inputs[step.name] = _inputs_digest(ctx.deps)
            if step.is_map:
                # An item sees its own item, not the list it came from (unless it asks for
                # the list by parameter, or builds its input from the context itself).
                over = step.over if isinstance(step.over, str) else None
                hidden = (over is not None and step.input is None and step.context_param is None
                          and over not in step.params)
                self.item_inputs[step.name] = _inputs_digest(
                    {d: v for d, v in ctx.deps.items() if not (hidden and d == over)})
        if step.is_map:
            return await self._run_unit(step, ctx, self._run_map(step, ctx),
                                        output_type=list[step.output_type])  # type: ignore[name-defined]
        # The scheduler gives the slot back once it has queued this step's dependents.
        return await self._run_unit(step, ctx, self._execute(step, ctx), ticket=ticket)

    async def _run_unit(self, step: Step, ctx: StepContext,
                        work: Coroutine[Any, Any, tuple[Any, int, list[StepResult]]],
                        **options: Any) -> StepResult:
        if live(self.events):  # step_start/step_end around it
            assert self.events is not None
            agent = step.target.name if isinstance(step.target, Agent) else ""
            return await observed_step(self.events, self.clock, self.run_id, ctx.step,
                                       agent=agent, work=self._unit(step, ctx, work, **options))
        return await self._unit(step, ctx, work, **options)

    async def _unit(
        self,
        step: Step,
        ctx: StepContext,
        work: Coroutine[Any, Any, tuple[Any, int, list[StepResult]]],
        *,
        ticket: asyncio.Future[None] | None = None,
        slot: bool = False,
        policy: str | None = None,
        output_type: Any = None,
    ) -> StepResult:
        """Replay, or run with retries, one step or map item. Never raises except on
        cancellation: failures become a failed (or fallback) StepResult."""
        step_inputs = self.inputs.get(step.name)
        if ctx.index is not None and step_inputs is not None:  # a map item: with its item
            shared = self.item_inputs[step.name]
            step_inputs = _digest([shared, ctx.index, to_jsonable(ctx.item)])
        try:
            recorded = await self.recorder.replay_step(self.run_id, ctx.step, step_inputs)
        except BaseException:
            work.close()  # cancelled while the journal answered: never leave it un-awaited
            raise
        if recorded is not None:
            work.close()
            if self.budget is not None:
                self.budget.charge(recorded.usage.total_tokens, recorded.cost_usd)
            now = self.clock.now()
            out_type = step.output_type if output_type is None else output_type
            return StepResult(
                ctx.step, "replayed", output=from_jsonable(recorded.output, out_type),
                started_at=now, finished_at=now, usage=recorded.usage,
                cost_usd=recorded.cost_usd, model=recorded.model,
            )
        if ticket is not None:
            await ticket
        started = self.clock.now()
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:  # a coroutine runs once: make a fresh one for the retry
                work = (self._run_map(step, ctx) if step.is_map and ctx.index is None
                        else self._execute(step, ctx))
            try:
                if slot:
                    async with self.pool.slot(self.priority[step.name]):
                        output, turns, items = await with_timeout(
                            self.clock, work, step.timeout_s)
                else:
                    output, turns, items = await with_timeout(self.clock, work, step.timeout_s)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    exc = DeadlineExceeded(
                        f"step {ctx.step!r} exceeded its timeout of {step.timeout_s:g}s"
                    )
                if attempt <= step.retries and not isinstance(exc, _NEVER_RETRY):
                    continue
                return self._failed(step, ctx, exc, started=started, attempt=attempt,
                                    policy=policy)
        result = StepResult(
            ctx.step, "succeeded", output=output, started_at=started,
            finished_at=self.clock.now(), usage=ctx.usage, cost_usd=ctx.cost_usd,
            model=", ".join(sorted(set(ctx.models))) or None, turns=turns, attempts=attempt,
            items=items,
        )
        await self.recorder.step_done(self.run_id, ctx.step, RecordedStep(
            to_jsonable(output), usage=result.usage, cost_usd=result.cost_usd,
            model=result.model, inputs=step_inputs,
        ))
        journaled(self.journal_events, "step")
        return result

    def _failed(self, step: Step, ctx: StepContext, exc: BaseException, *, started: float,
                attempt: int, policy: str | None) -> StepResult:
        step_id = ctx.step
        policy = policy or step.on_failure
        res = StepResult(
            step_id, "failed", error=f"{type(exc).__name__}: {exc}",
            error_type=type(exc).__name__, started_at=started, finished_at=self.clock.now(),
            usage=ctx.usage, cost_usd=ctx.cost_usd, attempts=attempt, exception=exc,
            model=", ".join(sorted(set(ctx.models))) or None,
        )
        if policy == "fallback" and not isinstance(exc, StoreError):
            res.status = "fallback"
            res.output = step.default(exc) if callable(step.default) else step.default
        return res

    async def _execute(self, step: Step, ctx: StepContext) -> tuple[Any, int, list[StepResult]]:
        """Run the step's target once: (output, model turns, no items)."""
        target = step.target
        if step.is_agent:
            assert isinstance(target, Agent)
            if step.input is not None:
                agent_input = step.input(ctx)
                if inspect.isawaitable(agent_input):
                    agent_input = await agent_input
            elif step.is_map:
                agent_input = as_text(ctx.item)
            else:
                agent_input = render_input(self.input, ctx.deps)
            try:
                result = await self.runner.run(
                    target, agent_input, deps=ctx, budget=self.budget, run_id=self.run_id,
                    step_id=ctx.step,
                )
            except RunError as exc:  # a failed attempt still cost what it spent
                if exc.spent_usage is not None:
                    ctx.usage = ctx.usage + exc.spent_usage
                    ctx.cost_usd += exc.spent_cost_usd
                raise
            ctx.usage = ctx.usage + result.usage
            ctx.cost_usd += result.cost_usd
            ctx.models.append(result.model)
            return result.output, len(result.turns), []
        kwargs: dict[str, Any] = {}
        for p in step.params:
            if p == "input":
                kwargs[p] = self.input
            elif p == "item":
                kwargs[p] = ctx.item
            elif p == "index":
                kwargs[p] = ctx.index
            else:
                kwargs[p] = ctx.deps[p]
        if step.context_param:
            kwargs[step.context_param] = ctx
        out = cast(Callable[..., Any], target)(**kwargs)
        if inspect.isawaitable(out):
            out = await out
        return out, 0, []

    async def _run_map(
        self, step: Step, ctx: StepContext
    ) -> tuple[list[Any], int, list[StepResult]]:
        over = step.over
        source: Any = ctx.deps[over] if isinstance(over, str) else over(ctx)  # type: ignore[misc]
        if inspect.isawaitable(source):
            source = await source
        if not isinstance(source, Iterable) or isinstance(source, str | bytes | Mapping):
            raise ConfigError(
                f"map step {step.name!r}: 'over' gave {type(source).__name__}, not a list"
            )
        items = list(source)
        results: list[StepResult | None] = [None] * len(items)
        sem = asyncio.Semaphore(step.concurrency) if step.concurrency else None
        policy = {"fail": "fail", "drop": "continue", "fallback": "fallback"}[step.on_item_failure]

        async def one(i: int, item: Any) -> None:
            item_ctx = StepContext(
                run_id=ctx.run_id, step=f"{step.name}/{i}", input=ctx.input, deps=ctx.deps,
                shared=ctx.shared, board=ctx.board, runner=ctx.runner, budget=ctx.budget,
                item=item, index=i,
            )
            async with sem or contextlib.nullcontext():
                res = await self._run_unit(step, item_ctx, self._execute(step, item_ctx),
                                           slot=True, policy=policy)
            results[i] = res
            if _fatal(res, policy):
                raise _ItemFailed(res)

        try:
            async with asyncio.TaskGroup() as tg:
                for i, item in enumerate(items):
                    tg.create_task(one(i, item))
        except* _ItemFailed as group:
            first = group.exceptions[0]
            assert isinstance(first, _ItemFailed)
            raise (first.result.exception or RuntimeError(first.result.error)) from None
        except* StoreError as group:  # the journal refused an item (a store down, a lease
            raise group.exceptions[0] from None  # taken over): the run stops, named so
        done = [r for r in results if r is not None]
        ctx.usage = sum((r.usage for r in done), Usage())
        ctx.cost_usd = sum(r.cost_usd for r in done)
        ctx.models = sorted({m for r in done if r.model for m in r.model.split(", ")})
        outputs = [r.output for r in done if r.status != "failed"]
        return outputs, sum(r.turns for r in done), done


class _ItemFailed(Exception):
    def __init__(self, result: StepResult) -> None:
        self.result = result
