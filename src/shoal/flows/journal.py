"""The durable journal: a :class:`~shoal.agents.recorder.RunRecorder` on a store.

    async with open_store("sqlite:///.shoal/runs.db") as store:
        result = await flow.run(topic, run_id="rep-001", recorder=StoreRecorder(store, flow=flow))

Every finished step and every finished model turn is committed to the store
(``complete_step``) before it counts as done; running the same ``run_id`` again
replays them with zero model calls and runs only the rest. What lands where:

- the run: id, flow name, the flow's definition hash, its input, and ``meta``
  (``step_hashes``: step name -> hash of what the step computes, plus what the caller
  adds, e.g. the ``module:object`` target ``shoal resume`` rebuilds the flow from);
- a step ``"writer"`` (or map item ``"topics/3"``): ``running`` when it starts, then
  ``succeeded`` with ``{"output", "usage", "cost_usd", "model"}`` as its result;
- a model turn ``n`` of a step: ``"writer/turn/n"`` with the model's answer. Turns
  carry the tokens and dollars (steps carry theirs inside the result), so a run's
  totals are what was really spent, lost work included;
- an effect: the result of an :func:`~shoal.flows.effects.idempotent` tool under its key.

A changed definition (graph, prompts, models, output types, function code) or input
is refused with :class:`~shoal.errors.ConfigError` unless ``allow_changed=True``
(the hash: :mod:`shoal.flows.definition`). Store failures are loud: a write that fails
after the store's retries raises :class:`~shoal.errors.StoreUnavailable` out of the step.

A run announced by ``run_started`` (every flow run), and an agent run journaled without
a flow (the Runner enters :meth:`StoreRecorder.agent_run` around it), is executed under a
lease (:mod:`shoal.flows.lease`): another executor of it is refused with
:class:`~shoal.errors.RunBusy` before any request, and one whose lease was taken over
stops with :class:`~shoal.errors.LeaseLost`; every write names this executor, so the
store refuses the writes of one that was taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from shoal.agents.recorder import (
    RecordedStep,
    RunStatus,
    response_from_json,
    response_to_json,
    to_jsonable,
)
from shoal.clock import Clock, RealClock
from shoal.errors import (
    ConfigError,
    CorruptRecord,
    LeaseLost,
    RunBusy,
    RunExists,
    StoreError,
    StoreUnavailable,
)
from shoal.flows import journal_records as jr
from shoal.flows.definition import changes, flow_hash, step_hashes
from shoal.flows.lease import DEFAULT_LEASE_S, RunLeases
from shoal.stores.leases import writing_as
from shoal.stores.records import EffectRecord, RunRecord, StepRecord
from shoal.types import ChatResponse, Usage

if TYPE_CHECKING:
    from shoal.flows.flow import Flow, FlowResult
    from shoal.stores.base import Store

__all__ = [
    "StoreRecorder",
    "flow_hash",
    "step_hashes",
    "turn_id",
]

_log = logging.getLogger("shoal.flows.journal")
_CACHED_RUNS = 256  # journals kept in memory (of runs driven without run_started/agent_run)
# (journal, run_id) of the agent runs this task is inside (an agent run inside one: nested)
_AGENT_RUNS: ContextVar[frozenset[tuple[object, str]]] = ContextVar(
    "shoal_agent_runs", default=frozenset())


def turn_id(step_id: str, turn: int) -> str:
    """The journal id of model turn ``turn`` of a step (step names never contain '/')."""
    return f"{step_id}/turn/{turn}"


# -- the recorder ---------------------------------------------------------------------------


class _RunJournal:
    """What the recorder knows of one run: its records, loaded once."""

    def __init__(self, records: dict[str, StepRecord]) -> None:
        self.records = records
        self.broken: BaseException | None = None
        self.inputs: dict[str, str] = {}  # step id -> hash of the inputs it runs on now


class StoreRecorder:
    """A :class:`~shoal.agents.recorder.RunRecorder` that journals runs into a store.

    Args:
        store: an open :class:`~shoal.stores.base.Store`.
        flow: the flow being run: its definition hash is recorded, and checked when the
            run resumes (without it only the flow name and input are checked).
        allow_changed: resume even when the definition or input changed; journaled steps
            replay as recorded.
        meta: JSON data stored with a new run (e.g. ``{"target": "pkg.flows:report"}``).
        clock: for step timestamps (epoch seconds through ``clock.wall()``) and the
            lease's renewals.
        lease_s: how long a run's lease lasts without renewal (renewed every
            ``lease_s / 3``; a killed executor's run is free again on another machine
            within it).
        force: take each run's lease whoever holds it. A live holder stops at its next
            renewal or journal write, but what it has in flight is paid twice.

    One executor drives a run at a time (the lease). A run resumed by a second recorder
    sees everything the first committed.
    """

    def __init__(
        self,
        store: Store,
        *,
        flow: Flow | None = None,
        allow_changed: bool = False,
        meta: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        force: bool = False,
    ) -> None:
        self.store = store
        self.flow = flow
        self.allow_changed = allow_changed
        self.meta = dict(meta or {})
        self.clock: Clock = clock or RealClock()
        self.leases = RunLeases(store, lease_s=lease_s, clock=self.clock, force=force)
        self._runs: OrderedDict[str, _RunJournal] = OrderedDict()
        self._flows: set[str] = set()  # runs announced by run_started, not finished yet
        self._locks: dict[str, asyncio.Lock] = {}
        self._interrupted: OrderedDict[str, dict[str, StepRecord]] = OrderedDict()

    def __repr__(self) -> str:
        return f"StoreRecorder({self.store.url})"

    # -- runs ------------------------------------------------------------------------------

    async def run_started(self, run_id: str, flow: str, input: Any) -> None:
        """Create the run, or check that the existing one is this flow on this input;
        then take its lease (:class:`~shoal.errors.RunBusy` while another executor
        holds it: nothing is run, nothing written)."""
        hashes = step_hashes(self.flow) if self.flow is not None else {}
        definition = flow_hash(self.flow, hashes) if self.flow is not None else ""
        existing = await self.store.get_run(run_id)
        if existing is None:
            meta = {**self.meta, "step_hashes": hashes}
            if self.flow is not None:  # the graph, for `shoal show` to tell what may re-run
                meta["step_after"] = {n: list(s.after) for n, s in self.flow.steps.items()}
            existing = await self._create(RunRecord(run_id, flow=flow, flow_hash=definition,
                                                    input=input, meta=meta))
        if existing is not None:
            self._check(existing, flow, definition, hashes, input)
        await self._execute(run_id, existing, agent=False)
        self._flows.add(run_id)

    @contextlib.asynccontextmanager
    async def agent_run(self, run_id: str) -> AsyncIterator[None]:
        """The Runner enters this around an agent run: one journaled without a flow
        (``flow="agent"``: ``Runner(client, recorder=StoreRecorder(...))``, a batch of
        agents) is created or loaded and executed under its lease as a flow run is, and
        its end recorded. Inside a flow run of this journal, or an agent run of the same
        id (a summary of its context, an agent a tool runs), it does nothing."""
        inside = _AGENT_RUNS.get()
        if run_id in self._flows or (self, run_id) in inside:
            yield
            return
        existing = await self.store.get_run(run_id)
        if existing is None:
            existing = await self._create(RunRecord(run_id, flow="agent", meta=self.meta))
        await self._execute(run_id, existing, agent=True)
        token = _AGENT_RUNS.set(inside | {(self, run_id)})
        status: RunStatus = "failed"
        error: str | None = None
        try:
            yield
            status = "succeeded"
        except asyncio.CancelledError:
            status, error = "cancelled", "cancelled"
            raise
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            _AGENT_RUNS.reset(token)
            await self.run_finished(run_id, status, error)

    async def _create(self, record: RunRecord) -> RunRecord | None:
        """Create the run: None, or the run another executor created a moment ago."""
        try:
            await self.store.create_run(record)
        except RunExists:
            return await self.store.require_run(record.run_id)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: it may be there, "running"
                await self._never_ran(record.run_id, exc)
            raise
        return None

    async def _execute(self, run_id: str, existing: RunRecord | None, *, agent: bool) -> None:
        """Take the run's lease (``RunBusy``, saying how to take it over, while another
        executor holds it: nothing is run or written), then read its journal as it is now
        (another executor may have written it until a moment ago, even a run this one
        just created) and mark an existing run running."""
        batch = (self.meta if existing is None else existing.meta).get("batch")
        try:
            await self.leases.take(run_id, batch=batch if isinstance(batch, str) else None,
                                   agent=agent)
        except RunBusy:
            raise  # another executor's run: not ours to mark
        except BaseException as exc:
            if existing is None:  # created a moment ago, "running": nothing else ends it
                await self._never_ran(run_id, exc)
            raise
        try:
            self._cache(run_id, _RunJournal(await self._load(run_id)))
            if existing is not None:
                with writing_as(self.leases.owner):
                    await self.store.update_run(run_id, status="running")
        except BaseException as exc:
            self._runs.pop(run_id, None)
            if existing is None or not isinstance(exc, Exception):  # may say "running"
                await self._never_ran(run_id, exc)
            await self.leases.release(run_id)
            raise

    async def _never_ran(self, run_id: str, exc: BaseException) -> None:
        """The run stopped before it began (cancelled while it took its lease, or read
        its journal): its record says so instead of ``running`` for ever. Fenced, so a
        run another executor holds by now is left alone; a store error is not raised
        over ``exc``."""
        cancelled = not isinstance(exc, Exception)
        error = ("cancelled before it began" if cancelled
                 else f"{type(exc).__name__} before it began: {exc}")
        with contextlib.suppress(StoreError), writing_as(self.leases.owner):
            await self.store.update_run(run_id, status="cancelled" if cancelled else "failed",
                                        error=error)

    def _check(self, run: RunRecord, flow: str, definition: str, hashes: dict[str, str],
               input: Any) -> None:
        if run.flow != flow:
            raise ConfigError(
                f"run {run.run_id!r} in {self.store.url} is a run of flow {run.flow!r}, not "
                f"{flow!r}; resume it with its own flow, or pick another run_id"
            )
        if self.allow_changed:
            return
        if definition and run.flow_hash and definition != run.flow_hash:
            old = run.meta.get("step_hashes")
            what = changes(old if isinstance(old, Mapping) else {}, hashes)
            raise ConfigError(
                f"flow {flow!r} changed since run {run.run_id!r} started ({what}): its "
                "journaled results may not fit the new definition. Resume with the original "
                "definition, start a new run_id, or pass allow_changed=True (shoal resume "
                "--allow-changed) to replay the journaled steps as recorded."
            )
        if jr.normal(input) != jr.normal(run.input):
            raise ConfigError(
                f"run {run.run_id!r} was started on another input ({jr.preview(run.input)}, now "
                f"{jr.preview(input)}); continue it on its own input (`shoal resume "
                f"{run.run_id}`, or shoal.flows.resume.resume: both read it from the journal), "
                "start a new run id, or, in Python, pass allow_changed=True"
            )

    async def _load(self, run_id: str) -> dict[str, StepRecord]:
        try:
            steps = await self.store.get_steps(run_id)
        except CorruptRecord as exc:
            step = f"step {exc.step_id!r}" if exc.step_id else "a record"
            raise CorruptRecord(
                f"cannot resume run {run_id!r}: {step} of its journal is corrupt, and a "
                f"resume never uses a record it cannot verify. {exc}",
                run_id=exc.run_id, step_id=exc.step_id, key=exc.key,
            ) from exc
        return {s.step_id: s for s in steps}

    def _cache(self, run_id: str, journal: _RunJournal) -> _RunJournal:
        self._runs[run_id] = journal
        self._runs.move_to_end(run_id)
        while len(self._runs) > _CACHED_RUNS:
            old, _ = self._runs.popitem(last=False)
            self._locks.pop(old, None)
        return journal

    async def _journal(self, run_id: str) -> _RunJournal:
        """The run's journal; a run neither announced nor entered (a journal driven
        without ``run_started`` or ``agent_run``: no lease) is created, or loaded."""
        journal = self._runs.get(run_id)
        if journal is not None:
            self._runs.move_to_end(run_id)
            return journal
        lock = self._locks.setdefault(run_id, asyncio.Lock())
        async with lock:
            journal = self._runs.get(run_id)
            if journal is not None:
                return journal
            if await self.store.get_run(run_id) is None \
                    and await self._create(RunRecord(run_id, flow="agent", meta=self.meta)) is None:
                return self._cache(run_id, _RunJournal({}))
            return self._cache(run_id, _RunJournal(await self._load(run_id)))

    async def run_finished(self, run_id: str, status: RunStatus, error: str | None) -> None:
        """Record the run's end and release its lease (unless it was taken over: then
        the run is the new holder's, and nothing more is written)."""
        journal = self._runs.pop(run_id, None)
        self._locks.pop(run_id, None)
        self._flows.discard(run_id)
        if journal is not None and status in ("failed", "cancelled", "partial"):
            self._interrupted[run_id] = {
                k: r for k, r in journal.records.items() if r.status == "running"}
            while len(self._interrupted) > _CACHED_RUNS:  # record_outcome is optional
                self._interrupted.popitem(last=False)
        final: Any = "succeeded" if status == "partial" else status
        if status == "partial":
            error = error or "partial: some steps failed or were skipped under their policy"
        try:
            if self.leases.lost(run_id) is None:
                with writing_as(self.leases.owner):
                    await self.store.update_run(run_id, status=final, error=error)
        except LeaseLost as exc:  # taken over since the last step: the new holder's run
            _log.warning("%s", exc)
        except StoreError:
            if journal is None or journal.broken is None:
                raise
            # The write that broke the journal is already on its way out of the run: a
            # second failure here would only hide it.
        finally:
            await self.leases.release(run_id)

    async def record_outcome(self, result: FlowResult) -> None:
        """Write why the steps of a failed or partial run did not finish (for ``shoal show``).

        ``flow.run`` reports only finished steps; :func:`shoal.flows.resume.run_durable`
        calls this with the (partial) result so failed, cancelled and skipped steps carry
        their error in the journal. Succeeded steps are never touched.
        """
        started = self._interrupted.pop(result.run_id, {})
        status_of = {"failed": "failed", "fallback": "failed", "cancelled": "cancelled",
                     "skipped": "skipped"}
        now = self.clock.wall()
        for step in result.steps.values():
            status = status_of.get(step.status)
            if status is None:
                continue
            prev = started.get(step.name)
            record = StepRecord(
                step.name, status,  # type: ignore[arg-type]
                attempt=prev.attempt if prev else 1,
                started_at=prev.started_at if prev else None,
                finished_at=now if prev else None, error=step.error,
                meta={"kind": "step", "attempts": step.attempts},
            )
            # Fenced: once another executor took the run over, its records are its own.
            with writing_as(self.leases.owner):
                await self.store.put_step(result.run_id, record)

    # -- steps and turns ---------------------------------------------------------------

    async def replay_step(
        self, run_id: str, step_id: str, inputs: str | None = None
    ) -> RecordedStep | None:
        """The journaled result, if the step finished from these ``inputs``. A result
        computed from other inputs (a dependency that failed under ``on_failure=
        "continue"`` and succeeded on resume) is stale: the step runs again, and so
        do its journaled turns (:meth:`replay_turn` skips turns of other inputs)."""
        journal = await self._journal(run_id)
        if inputs is not None:
            journal.inputs[step_id] = inputs
        rec = journal.records.get(step_id)
        if rec is not None and rec.status == "succeeded" and jr.same(rec, inputs):
            raw = jr.result(rec, run_id, ("output", "usage", "cost_usd", "model"))
            return RecordedStep(output=raw["output"], usage=Usage(**raw["usage"]),
                                cost_usd=raw["cost_usd"], model=raw["model"],
                                inputs=jr.inputs_of(rec))
        await self._ready(journal, run_id)
        running = StepRecord(step_id, "running", attempt=rec.attempt + 1 if rec else 1,
                             started_at=self.clock.wall(),
                             meta={"kind": "step", "inputs": inputs})
        await self._write(journal, run_id, self.store.put_step(run_id, running))
        journal.records[step_id] = running
        return None

    async def step_done(self, run_id: str, step_id: str, step: RecordedStep) -> None:
        journal = await self._journal(run_id)
        await self._ready(journal, run_id)
        prev = journal.records.get(step_id)
        done = StepRecord(
            step_id, "succeeded",
            result={"output": to_jsonable(step.output), "usage": to_jsonable(step.usage),
                    "cost_usd": step.cost_usd, "model": step.model},
            attempt=prev.attempt if prev else 1,
            started_at=prev.started_at if prev else None,
            meta={"kind": "step", "inputs": step.inputs or journal.inputs.get(step_id)},
        )
        journal.records[step_id] = await self._write(journal, run_id,
                                                     self.store.complete_step(run_id, done))

    async def replay_turn(self, run_id: str, step_id: str, turn: int) -> ChatResponse | None:
        journal = await self._journal(run_id)
        rec = journal.records.get(turn_id(step_id, turn))
        if rec is None or rec.status != "succeeded" \
                or not jr.same(rec, journal.inputs.get(step_id)):
            await self._ready(journal, run_id)  # never pay for a call that cannot be journaled
            return None
        try:
            return response_from_json(rec.result)
        except (KeyError, TypeError) as exc:
            raise jr.malformed(run_id, rec.step_id, exc) from exc

    async def turn_done(
        self, run_id: str, step_id: str, turn: int, response: ChatResponse
    ) -> None:
        journal = await self._journal(run_id)
        await self._ready(journal, run_id)
        now = self.clock.wall()
        rec = StepRecord(
            turn_id(step_id, turn), "succeeded", result=response_to_json(response),
            started_at=now - (response.call_s or response.latency_s), finished_at=now,
            tokens=response.usage.total_tokens, cost_usd=response.cost_usd,
            meta={"kind": "turn", "step": step_id, "turn": turn,
                  "inputs": journal.inputs.get(step_id)},
        )
        journal.records[rec.step_id] = await self._write(journal, run_id,
                                                         self.store.complete_step(run_id, rec))

    # -- effects ---------------------------------------------------------------------------

    async def effect(
        self, key: str, run_id: str, step_id: str | None, run: Callable[[], Awaitable[Any]]
    ) -> Any:
        """The recorded result under ``key``, or ``run()``'s, recorded first (as JSON)."""
        journal = await self._journal(run_id)
        await self._ready(journal, run_id)
        found = await self.store.get_effect(key)
        if found is not None:
            return found.result
        value = to_jsonable(await run())
        try:
            won = await self.store.put_effect(EffectRecord(key, run_id, value, step_id))
        except StoreError as exc:
            # The effect happened but is not recorded: nothing more of this run may be
            # journaled as if all were well, and the tool must not retry the effect.
            journal.broken = exc
            raise StoreError(
                f"the side effect {key!r} of step {step_id!r} ran, but recording it failed: "
                f"{exc}. The run stops; a resume may repeat that effect once."
            ) from exc
        return won.result

    async def _write(self, journal: _RunJournal, run_id: str,
                     write: Awaitable[StepRecord]) -> StepRecord:
        """A journal write, fenced by this executor's lease; one that fails leaves the run
        unable to journal more (loudly)."""
        try:
            with writing_as(self.leases.owner):
                return await write
        except StoreError as exc:
            journal.broken = exc
            if isinstance(exc, LeaseLost):  # fenced: another executor holds the run
                self.leases.lose(run_id, exc)
            raise

    async def _ready(self, journal: _RunJournal, run_id: str) -> None:
        """Before a step, a model call, a side effect or a write: the journal can take
        it, and this executor still holds the run."""
        self._usable(journal, run_id)
        await self.leases.check(run_id)

    def _usable(self, journal: _RunJournal, run_id: str) -> None:
        if isinstance(journal.broken, RunBusy):
            lost = journal.broken
            raise LeaseLost(str(lost), run_id=lost.run_id, owner=lost.owner,
                            expires_at=lost.expires_at) from lost
        if journal.broken is not None:
            raise StoreUnavailable(
                f"run {run_id!r} cannot journal more: an earlier write failed "
                f"({journal.broken}). Resume the run once the store is back."
            ) from journal.broken
