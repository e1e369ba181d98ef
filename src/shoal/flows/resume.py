"""Running a flow on a journal, resuming it, and reading what a resume would do.

    result = await run_durable(flow, topic, store="sqlite:///.shoal/runs.db", run_id="rep-001")
    # ... the process dies, or a step fails past its retries ...
    result = await resume("rep-001", flow, store="sqlite:///.shoal/runs.db")

A resume reads the run's input from the journal, replays every journaled step and
model turn with zero model calls, and runs the rest: steps that failed, were
cancelled, or were in flight when the process died. :func:`plan` tells, without
running anything, which steps a resume would replay and which it would run.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from shoal.errors import ConfigError, StepFailed, StoreError
from shoal.flows.journal import StoreRecorder
from shoal.flows.lease import DEFAULT_LEASE_S

if TYPE_CHECKING:
    from shoal.agents.agent import Agent
    from shoal.agents.client import ModelClient
    from shoal.agents.guards import Budget
    from shoal.clock import Clock
    from shoal.flows.flow import Flow, FlowResult
    from shoal.flows.progress import RunProgress
    from shoal.scale.batch_ids import ItemRow
    from shoal.stores.base import Store
    from shoal.stores.records import Lease, RunRecord, StepRecord

__all__ = ["RunPlan", "StepView", "as_flow", "plan", "resume", "run_durable"]


def as_flow(target: Flow | Agent[Any]) -> Flow:
    """A Flow as is; an Agent as the one-step flow of it (how an agent run is journaled)."""
    from shoal.agents.agent import Agent
    from shoal.flows.flow import Flow

    if isinstance(target, Flow):
        return target
    if isinstance(target, Agent):
        flow = Flow(target.name)
        flow.add(target)
        return flow
    raise ConfigError(f"a {type(target).__name__} cannot be journaled or resumed: only an "
                      "Agent or a Flow")


@contextlib.asynccontextmanager
async def _opened(store: Store | str) -> AsyncIterator[Store]:
    if not isinstance(store, str):
        yield store
        return
    from shoal.stores import open_store

    async with open_store(store) as opened:
        yield opened


async def run_durable(
    flow: Flow | Agent[Any],
    input: Any = None,
    *,
    store: Store | str,
    run_id: str | None = None,
    client: ModelClient | None = None,
    meta: Mapping[str, Any] | None = None,
    allow_changed: bool = False,
    budget: Budget | None = None,
    shared: Mapping[str, Any] | None = None,
    clock: Clock | None = None,
    progress: RunProgress | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    force: bool = False,
) -> FlowResult:
    """Run ``flow`` (or an agent, as a one-step flow) with every step and turn journaled
    in ``store`` (an open Store or a URL).

    A ``run_id`` already in the store continues that run (same flow and input, unless
    ``allow_changed``). ``meta`` (JSON) is kept with a new run, e.g. how to rebuild the
    flow. ``progress`` (a :class:`~shoal.flows.progress.RunProgress`) follows the steps
    live. Raises what ``flow.run`` raises; failed and cancelled steps are written to the
    journal with their error first.

    The run is executed under a lease (:mod:`shoal.flows.lease`): ``RunBusy`` before any
    request while another executor holds it; ``LeaseLost`` if another one takes it over
    meanwhile. ``lease_s``: how long the lease outlives this process if it is killed
    (renewed every ``lease_s / 3``). ``force``: take the run over whoever holds it (a
    live holder's calls in flight are paid twice).
    """
    from shoal.agents.runner import new_run_id

    run_id = run_id or new_run_id()
    flow = as_flow(flow)
    async with _opened(store) as opened:
        recorder = StoreRecorder(opened, flow=flow, allow_changed=allow_changed, meta=meta,
                                 clock=clock, lease_s=lease_s, force=force)
        watched = recorder if progress is None else progress.watch(recorder)
        try:
            result = await flow.run(input, run_id=run_id, client=client, recorder=watched,
                                    budget=budget, shared=shared, clock=clock)
        except StepFailed as exc:
            if exc.result is not None:
                await _note(recorder, exc.result)
            raise
        if result.status != "succeeded":
            await _note(recorder, result)
        return result


async def _note(recorder: StoreRecorder, result: FlowResult) -> None:
    """Record why steps did not finish: for ``shoal show`` only, so a store failure here
    must not hide the run's own outcome."""
    with contextlib.suppress(StoreError):
        await recorder.record_outcome(result)


async def resume(
    run_id: str,
    flow: Flow | Agent[Any],
    *,
    store: Store | str,
    client: ModelClient | None = None,
    allow_changed: bool = False,
    budget: Budget | None = None,
    shared: Mapping[str, Any] | None = None,
    clock: Clock | None = None,
    progress: RunProgress | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    force: bool = False,
) -> FlowResult:
    """Continue a failed, cancelled or killed run of ``flow`` from its journal.

    Finished steps and turns replay with zero model calls; the rest runs. The input is
    the run's own (read from the journal). Raises ``RunNotFound`` for an unknown run,
    ``ConfigError`` when the flow's definition changed (unless ``allow_changed``),
    ``CorruptRecord`` naming the run and step when the journal fails verification,
    ``RunBusy`` (before any request) while another executor holds the run's lease —
    ``force=True`` takes it over anyway (see :func:`run_durable`).
    """
    async with _opened(store) as opened:
        run = await opened.require_run(run_id)
        return await run_durable(flow, run.input, store=opened, run_id=run_id, client=client,
                                 allow_changed=allow_changed, budget=budget, shared=shared,
                                 clock=clock, progress=progress, lease_s=lease_s,
                                 force=force)


@dataclass(frozen=True, slots=True)
class StepView:
    """One step of a journaled run as ``shoal show`` prints it."""

    step_id: str
    status: str  # a store status; "interrupted": running when its run stopped; "not_run"
    attempt: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    model: str | None = None
    error: str | None = None
    turns: int = 0  # model turns journaled (replayed by a resume even if the step re-runs)
    spend_known: bool = True  # a batch item whose tokens and cost are gone: False

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass(frozen=True, slots=True)
class RunPlan:
    """A journaled run: its record, its steps, and what a resume would replay and redo."""

    run: RunRecord
    steps: list[StepView]
    replay: list[str] = field(default_factory=list)
    redo: list[str] = field(default_factory=list)
    turns_to_replay: int = 0
    # replayed steps below a redone one: they run again if their inputs come out different
    stale_if_changed: list[str] = field(default_factory=list)
    # who executes the run, or last did (a lease past its expiry binds no one): None: free
    lease: Lease | None = None
    # a batch's items whose tokens and cost cannot be known (their outcomes, recorded by
    # an older shoal, lack them, and their own runs are gone): the run's totals are
    # unknown then, not the sum of the others
    unknown_spend: list[str] = field(default_factory=list)

    @property
    def target(self) -> str | None:
        target = self.run.meta.get("target")
        return target if isinstance(target, str) else None


async def plan(store: Store | str, run_id: str) -> RunPlan:
    """What the journal holds for ``run_id`` and what ``resume`` would do with it.

    Steps journaled as succeeded replay; every other step of the flow (known from the
    run's ``step_hashes``; map items count under their step) runs again, and the model
    turns journaled inside it replay. A replayed step below one that runs again
    (``stale_if_changed``) runs again too if its inputs come out different. A batch's
    steps are its items (``item/N``), and its tokens and cost their sum. Raises
    ``RunNotFound`` or ``CorruptRecord``. ``lease``: the executor holding the run, if any.
    """
    from shoal.scale.batch_ids import batch_items, is_batch

    async with _opened(store) as opened:
        run = await opened.require_run(run_id)
        if is_batch(run):
            found = _batch_plan(run, await batch_items(opened, run),
                                await opened.get_steps(run_id, prefix="item/"))
        else:
            found = _plan(run, await opened.get_steps(run_id))
        lease = await opened.get_lease(run_id)
    return replace(found, lease=lease)


def _batch_plan(run: RunRecord, rows: list[ItemRow], records: list[StepRecord]) -> RunPlan:
    """A batch (:mod:`shoal.scale.batch_ids`): one step per item, ``item/N``, with the
    item's status, tokens and cost as ``shoal runs --batch`` tells them (an item with
    no outcome yet: its run's); a resume runs again every item that did not succeed.
    The run's totals are its items' (a batch record written before the items' outcomes
    carried their spend holds 0); ``unknown_spend`` names the items whose spend is gone."""
    from shoal.scale.batch_ids import item_step_id

    steps = {rec.step_id: rec for rec in records}
    views = []
    for r in rows:
        rec = steps.get(item_step_id(r.index))
        views.append(StepView(
            item_step_id(r.index), "not_run" if r.status == "pending" else r.status,
            rec.attempt if rec else 0, rec.started_at if rec else None,
            rec.finished_at if rec else None, r.usage.total_tokens, r.cost_usd, None,
            r.error, spend_known=r.spend_known))
    replay = [v.step_id for v in views if v.status == "succeeded"]
    redo = [v.step_id for v in views if v.status != "succeeded"]
    totals = replace(run, tokens=sum(v.tokens for v in views),
                     cost_usd=sum(v.cost_usd for v in views))
    return RunPlan(totals, views, replay, redo,
                   unknown_spend=[r.run_id for r in rows if not r.spend_known])


def _plan(run: RunRecord, records: list[StepRecord]) -> RunPlan:
    turns: dict[str, list[StepRecord]] = {}
    steps: dict[str, StepRecord] = {}
    for rec in records:
        if rec.meta.get("kind") == "turn":
            turns.setdefault(str(rec.meta.get("step")), []).append(rec)
        else:
            steps[rec.step_id] = rec
    views: list[StepView] = []
    for step_id, rec in steps.items():
        mine = turns.get(step_id, [])
        result = rec.result if isinstance(rec.result, dict) else {}
        raw_usage = result.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        tokens = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
        cost = float(result.get("cost_usd", 0.0))
        if rec.status != "succeeded":  # spend so far: the journaled turns
            tokens = sum(t.tokens for t in mine)
            cost = sum(t.cost_usd for t in mine)
        model = result.get("model") or next(
            (t.result.get("model") for t in mine if isinstance(t.result, dict)), None)
        status = "interrupted" if rec.status in ("running", "pending") else rec.status
        views.append(StepView(rec.step_id, status, rec.attempt, rec.started_at,
                              rec.finished_at, tokens, cost, model, rec.error, len(mine)))
    hashes = run.meta.get("step_hashes")
    names = list(hashes) if isinstance(hashes, Mapping) else []
    for name in steps:
        top = name.split("/", 1)[0]
        if top not in names:
            names.append(top)
    views += [StepView(n, "not_run") for n in names if n not in steps]
    done = {v.step_id for v in views if v.status == "succeeded"}
    replay = [n for n in names if n in done]
    redo = [n for n in names if n not in done]
    replay_turns = sum(len(t) for s, t in turns.items() if s.split("/", 1)[0] in redo)
    return RunPlan(run, views, replay, redo, replay_turns, _below(run, redo, replay))


def _below(run: RunRecord, redo: list[str], replay: list[str]) -> list[str]:
    """The replayed steps that depend, at any depth, on a step a resume runs again."""
    graph = run.meta.get("step_after")
    if not isinstance(graph, Mapping):
        return []
    changed = set(redo)
    out: list[str] = []
    for name, deps in graph.items():  # in the flow's order: dependencies come first
        if isinstance(deps, list) and changed.intersection(deps):
            changed.add(name)
            if name in replay:
                out.append(name)
    return out
