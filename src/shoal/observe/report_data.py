"""What the run report shows, gathered from a store: the flow's graph with each step's
status, the journaled model calls with their timings, tokens and cost by agent and model
(with what prompt caching saved), the errors, and what a resume would redo.

    data = await gather("sqlite:///.shoal/runs.db", "rep-001", prices=Config.load())

Everything comes from the journal (:mod:`shoal.flows.journal`); what a resume would do
is :func:`shoal.flows.resume.plan`'s answer, the same one ``shoal show`` prints. Turn
records written before the Router's timings were journaled (``queue_s``, ``attempts``,
``call_s``) still load: their calls show provider time only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.errors import ConfigError
from shoal.secrets import redact
from shoal.types import Usage

if TYPE_CHECKING:
    from shoal.config import Config, ModelInfo
    from shoal.flows.resume import RunPlan, StepView
    from shoal.stores.base import Store
    from shoal.stores.records import StepRecord

__all__ = [
    "CallView",
    "ErrorView",
    "NodeView",
    "ReportData",
    "UsageRow",
    "cache_savings",
    "gather",
    "layers",
    "prices_for",
]

_ERROR_CHARS = 4000  # one error's text in the report; the journal keeps all of it


@dataclass(frozen=True, slots=True)
class CallView:
    """One journaled model call (a turn of a step), timed as the Router saw it.

    ``queue_s`` (waiting in channel limiters), ``retry_s`` (failed attempts and backoff)
    and ``latency_s`` (the answering request) add up to the call's span, which ends at
    ``finished_at``. ``timed`` is False for records from before the Router's timings were
    journaled: only ``latency_s`` is known then.
    """

    step: str
    agent: str
    turn: int
    model: str
    served_model: str
    channel: str
    started_at: float | None
    finished_at: float | None
    latency_s: float
    queue_s: float
    retry_s: float
    attempts: int
    timed: bool
    usage: Usage
    cost_usd: float
    saved_usd: float | None
    finish_reason: str
    tool_calls: tuple[str, ...] = ()


@dataclass(slots=True)
class UsageRow:
    """Tokens and dollars of one agent on one model; ``saved_usd`` None: price unknown."""

    agent: str
    model: str
    calls: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    saved_usd: float | None = 0.0


@dataclass(frozen=True, slots=True)
class NodeView:
    """A step of the flow's graph: its status, its layer, what a resume does with it."""

    name: str
    status: str
    after: tuple[str, ...]
    layer: int
    resume: str  # "replay" | "redo" | "stale" (replays unless its inputs come out different)
    items: int = 0  # map items journaled
    items_failed: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    model: str | None = None
    error: str | None = None
    # how many of its items (or itself) have no known tokens and cost (a batch recorded
    # by an older shoal whose item journals are gone): ``tokens`` and ``cost_usd`` are
    # then a partial sum, at least that much
    spend_unknown: int = 0


@dataclass(frozen=True, slots=True)
class ErrorView:
    where: str  # "run" or the step id
    status: str
    message: str


@dataclass(frozen=True, slots=True)
class ReportData:
    plan: RunPlan
    nodes: list[NodeView]
    steps: list[StepView]
    calls: list[CallView]
    usage: list[UsageRow]
    errors: list[ErrorView]
    origin: float  # the run's creation: timeline zero
    end: float  # the last time the journal knows of

    @property
    def cached_tokens(self) -> int:
        return sum(r.usage.cached_input_tokens for r in self.usage)

    @property
    def saved_usd(self) -> float:
        return sum(r.saved_usd or 0.0 for r in self.usage)

    @property
    def prices_missing(self) -> list[str]:
        return sorted({r.model for r in self.usage if r.saved_usd is None})


def cache_savings(info: ModelInfo, usage: Usage) -> float:
    """Dollars prompt caching saved on ``usage`` at ``info``'s prices: the prompt with
    every token at the input price, minus its cost as billed (cache reads at their price,
    cache writes at theirs; negative when a write premium was never read back). The
    catalog's own rule, :func:`shoal.pricing.savings_usd`."""
    from shoal.pricing import savings_usd

    return savings_usd(usage, info.price)


def layers(after: Mapping[str, tuple[str, ...]]) -> dict[str, int]:
    """Each node's layer: 0 for a node with no (known) dependency, else one more than its
    deepest dependency. Iterative (a chain of thousands of steps is fine); a cycle (a
    corrupt graph) is broken where it is found."""
    out: dict[str, int] = {}
    for root in after:
        stack, entered = [root], set()
        while stack:
            name = stack[-1]
            if name in out:
                stack.pop()
                continue
            pending = [d for d in after[name] if d in after and d not in out
                       and d not in entered]
            if name not in entered and pending:
                entered.add(name)
                stack.extend(pending)
                continue
            out[name] = 1 + max((out[d] for d in after[name] if d in out), default=-1)
            stack.pop()
    return out


async def gather(store: Store | str, run_id: str, *, prices: Config | None = None
                 ) -> ReportData:
    """Everything the report shows of ``run_id``. ``prices``: the config whose catalog
    prices the cache savings (None: :func:`prices_for` the run). Raises ``RunNotFound``
    or ``CorruptRecord`` as :func:`~shoal.flows.resume.plan` does."""
    from shoal.flows.resume import _opened, plan

    async with _opened(store) as opened:
        p = await plan(opened, run_id)
        records = await opened.get_steps(run_id)
    return build(p, records, prices=prices or prices_for(p.run.meta))


def prices_for(meta: Mapping[str, Any]) -> Config:
    """The prices a run was billed at, as well as they can be known afterwards: the
    config file the run recorded (``shoal run -c``), else ``$SHOAL_CONFIG`` or
    ``./shoal.toml``, else shoal's catalog alone (a file that no longer loads is
    skipped: the report still renders, with "?" for models it cannot price)."""
    from shoal.config import Config

    recorded = meta.get("config")
    for path in ([recorded] if isinstance(recorded, str) else []) + [None]:
        try:
            return Config.load(path)
        except ConfigError:
            continue
    return Config.from_dict({})


def build(p: RunPlan, records: list[StepRecord], *, prices: Config | None = None
          ) -> ReportData:
    """The report of a run from its plan and its journal records."""
    calls = _calls(records, prices)
    steps = _steps(p)
    origin = p.run.created_at
    times = [t for c in calls for t in (c.started_at, c.finished_at) if t is not None]
    times += [t for s in steps for t in (s.started_at, s.finished_at) if t is not None]
    end = max([origin, p.run.updated_at, *times])
    return ReportData(p, _nodes(p, steps, calls), steps, calls, _usage(calls),
                      _errors(p, steps), origin, end)


def _steps(p: RunPlan) -> list[StepView]:
    """The plan's steps; those "interrupted" in a run still running are running."""
    if p.run.status != "running":
        return list(p.steps)
    from dataclasses import replace

    return [replace(v, status="running") if v.status == "interrupted" else v for v in p.steps]


def _info(prices: Config, model: str) -> ModelInfo | None:
    try:
        return prices.model(model)
    except ConfigError:
        return None


def _num(raw: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    value = raw.get(key, default)
    return float(value) if isinstance(value, int | float) else default


def _calls(records: list[StepRecord], prices: Config | None) -> list[CallView]:
    if prices is None:
        from shoal.config import Config

        prices = Config.from_dict({})
    known: dict[str, ModelInfo | None] = {}
    out: list[CallView] = []
    for rec in records:
        if rec.meta.get("kind") != "turn" or not isinstance(rec.result, dict):
            continue
        raw = rec.result
        step = str(rec.meta.get("step", rec.step_id.split("/turn/", 1)[0]))
        turn = rec.meta.get("turn")
        raw_usage = raw.get("usage")
        usage = _usage_of(raw_usage if isinstance(raw_usage, dict) else {})
        model = str(raw.get("model") or "?")
        if model not in known:
            known[model] = _info(prices, model)
        info = known[model]
        latency = _num(raw, "latency_s")
        span = _num(raw, "call_s")
        queue = _num(raw, "queue_s")
        timed = span > 0
        attempts = int(_num(raw, "attempts", 1))
        # Failed attempts and backoff: the span's rest (with one attempt, the rest is
        # the Router's own sub-millisecond bookkeeping, not a retry).
        retry = max(0.0, span - queue - latency) if timed and attempts > 1 else 0.0
        tools = raw.get("tool_calls")
        out.append(CallView(
            step=step, agent=step.split("/", 1)[0], turn=turn if isinstance(turn, int) else 0,
            model=model, served_model=str(raw.get("served_model") or ""),
            channel=str(raw.get("channel") or ""),
            started_at=rec.started_at, finished_at=rec.finished_at, latency_s=latency,
            queue_s=queue, retry_s=retry, attempts=attempts, timed=timed,
            usage=usage, cost_usd=_num(raw, "cost_usd"),
            saved_usd=None if info is None else cache_savings(info, usage),
            finish_reason=str(raw.get("finish_reason") or ""),
            tool_calls=tuple(str(c.get("name")) for c in tools if isinstance(c, dict))
            if isinstance(tools, list) else (),
        ))
    return out


def _usage_of(raw: Mapping[str, Any]) -> Usage:
    names = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens",
             "cache_write_tokens", "cache_write_1h_tokens")
    return Usage(**{n: int(raw[n]) for n in names if isinstance(raw.get(n), int)})


def _usage(calls: list[CallView]) -> list[UsageRow]:
    rows: dict[tuple[str, str], UsageRow] = {}
    for c in calls:
        row = rows.get((c.agent, c.model))
        if row is None:
            row = rows[(c.agent, c.model)] = UsageRow(c.agent, c.model)
        row.calls += 1
        row.usage = row.usage + c.usage
        row.cost_usd += c.cost_usd
        if row.saved_usd is not None:
            row.saved_usd = None if c.saved_usd is None else row.saved_usd + c.saved_usd
    return sorted(rows.values(), key=lambda r: (-r.cost_usd, r.agent, r.model))


def _graph(p: RunPlan, steps: list[StepView], calls: list[CallView]
           ) -> dict[str, tuple[str, ...]]:
    """Step name -> its dependencies, in the flow's order (from the run's meta; steps
    the meta does not name, e.g. in runs not started by a flow, stand alone)."""
    raw = p.run.meta.get("step_after")
    graph: dict[str, tuple[str, ...]] = {}
    if isinstance(raw, Mapping):
        for name, deps in raw.items():
            graph[str(name)] = tuple(str(d) for d in deps) if isinstance(deps, list) else ()
    for name in [v.step_id.split("/", 1)[0] for v in steps] + [c.agent for c in calls]:
        graph.setdefault(name, ())
    return {n: tuple(d for d in deps if d in graph) for n, deps in graph.items()}


_WORST = ("failed", "cancelled", "interrupted", "running", "skipped", "not_run", "succeeded")


def _nodes(p: RunPlan, steps: list[StepView], calls: list[CallView]) -> list[NodeView]:
    graph = _graph(p, steps, calls)
    called = {c.agent for c in calls}
    level = layers(graph)
    own = {v.step_id: v for v in steps}
    items: dict[str, list[StepView]] = {}
    for v in steps:
        if "/" in v.step_id:
            items.setdefault(v.step_id.split("/", 1)[0], []).append(v)
    stale = set(p.stale_if_changed)
    redo = set(p.redo)
    out = []
    for name, deps in graph.items():
        mine = items.get(name, [])
        view = own.get(name)
        if view is not None:
            status = view.status
        elif mine:  # only its items are journaled: the worst of them
            status = min((i.status for i in mine),
                         key=lambda s: _WORST.index(s) if s in _WORST else 0)
        elif name in called:  # model turns journaled, no step record (an agent run)
            status = p.run.status if p.run.status in ("succeeded", "running") \
                else "interrupted"
        else:
            status = "not_run"
        again = name in redo or any(i.step_id in redo for i in mine)  # a batch: item/N
        resume = "stale" if name in stale else "redo" if again else "replay"
        out.append(NodeView(
            name, status, deps, level.get(name, 0), resume, items=len(mine),
            items_failed=sum(1 for i in mine if i.status == "failed"),
            tokens=view.tokens if view else sum(i.tokens for i in mine),
            cost_usd=view.cost_usd if view else sum(i.cost_usd for i in mine),
            model=view.model if view else None,
            error=_clean(view.error) if view and view.error else None,
            spend_unknown=(0 if view.spend_known else 1) if view
            else sum(1 for i in mine if not i.spend_known),
        ))
    return out


def _clean(text: str) -> str:
    text = redact(text)
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"


def _errors(p: RunPlan, steps: list[StepView]) -> list[ErrorView]:
    """The steps' errors, and the run's when it says more than one of theirs."""
    out = [ErrorView(v.step_id, v.status, _clean(v.error)) for v in steps if v.error]
    if p.run.error and _clean(p.run.error) not in {e.message for e in out}:
        out.insert(0, ErrorView("run", p.run.status, _clean(p.run.error)))
    return out
