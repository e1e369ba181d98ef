"""``Flow``: steps (agents or plain functions) wired into a DAG, and what a run returns.

    flow = Flow("report", budget_usd=0.50)
    flow.add(researcher)
    flow.add(analyzer, after=researcher)
    flow.add(writer, after=analyzer)
    result = await flow.run("open-weight LLM economics")

Each step receives its dependencies' outputs: an agent step gets them rendered as its
input (or whatever its ``input=`` function builds); a function step gets them as
arguments named after the steps. ``flow.map`` fans a step out over a list. Running is
:mod:`shoal.flows.scheduler`'s job.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast, get_type_hints

from shoal.agents.agent import Agent
from shoal.errors import ConfigError
from shoal.flows.context import BoardMessage, StepContext
from shoal.flows.spec_check import (
    FLOW_KEYS,
    STEP_KEYS,
    as_list,
    check_after,
    check_fields,
    step_fields,
)
from shoal.types import Usage
from shoal.validate import check_timeout

if TYPE_CHECKING:
    from rich.table import Table

    from shoal.agents.client import ModelClient
    from shoal.agents.guards import Budget
    from shoal.agents.recorder import RunRecorder, RunStatus
    from shoal.clock import Clock
    from shoal.flows.batch import BatchResult

__all__ = [
    "FailurePolicy",
    "Flow",
    "FlowResult",
    "ItemPolicy",
    "Step",
    "StepResult",
    "StepStatus",
    "render_input",
]

FailurePolicy = Literal["fail", "skip", "continue", "fallback"]
ItemPolicy = Literal["fail", "drop", "fallback"]
StepStatus = Literal[
    "succeeded", "replayed", "fallback", "failed", "skipped", "cancelled", "not_run"
]
StepRef = "str | Agent[Any] | Step"
_SPECIAL_PARAMS = {"input", "item", "index"}


@dataclass(slots=True)
class Step:
    """One node of a flow (built by :meth:`Flow.add` / :meth:`Flow.map`)."""

    name: str
    target: Agent[Any] | Callable[..., Any]
    after: tuple[str, ...] = ()
    on_failure: FailurePolicy = "fail"
    default: Any = None
    retries: int = 0
    timeout_s: float | None = None
    input: Callable[[StepContext], Any] | None = None
    over: str | Callable[[StepContext], Iterable[Any]] | None = None
    concurrency: int | None = None
    on_item_failure: ItemPolicy = "fail"
    output_type: Any = Any
    context_param: str | None = None
    params: tuple[str, ...] = ()

    @property
    def is_agent(self) -> bool:
        return isinstance(self.target, Agent)

    @property
    def is_map(self) -> bool:
        return self.over is not None


@dataclass(slots=True)
class StepResult:
    """What one step did. ``items`` holds the per-item results of a map step."""

    name: str
    status: StepStatus
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    model: str | None = None
    turns: int = 0
    attempts: int = 0
    items: list[StepResult] = field(default_factory=list)
    exception: BaseException | None = field(default=None, repr=False)

    @property
    def latency_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "replayed", "fallback")


@dataclass(slots=True)
class FlowResult:
    """What a flow run produced. ``output`` is the sink step's output (a dict by step name
    when the flow has several sinks); ``steps`` has every step's :class:`StepResult`."""

    flow: str
    run_id: str
    status: RunStatus
    output: Any
    steps: dict[str, StepResult]
    usage: Usage
    cost_usd: float
    latency_s: float
    shared: dict[str, Any] = field(default_factory=dict)
    messages: list[BoardMessage] = field(default_factory=list)

    @property
    def outputs(self) -> dict[str, Any]:
        return {name: s.output for name, s in self.steps.items()}

    def __getitem__(self, step: str) -> Any:
        return self.steps[step].output

    def rows(self) -> list[dict[str, Any]]:
        """One summary dict per step (step, status, model, latency, tokens, cost, error)."""
        return [
            {
                "step": s.name, "status": s.status, "model": s.model,
                "latency_s": None if s.latency_s is None else round(s.latency_s, 3),
                "tokens_in": s.usage.input_tokens, "tokens_out": s.usage.output_tokens,
                "cost_usd": round(s.cost_usd, 6), "error": s.error,
            }
            for s in self.steps.values()
        ]

    def table(self, title: str | None = None) -> Table:
        """A rich table: step, model, status, latency, tokens in/out, cost in dollars."""
        from rich import box
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title or escape(f"{self.flow} · run {self.run_id} · {self.status}"),
                      caption="in/out: tokens",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        for col, justify in (("step", "left"), ("model", "left"), ("status", "left"),
                             ("latency", "right"), ("in", "right"), ("out", "right"),
                             ("cost $", "right")):
            table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        colours = {"succeeded": "green", "replayed": "cyan", "fallback": "yellow",
                   "failed": "red", "skipped": "dim", "cancelled": "magenta", "not_run": "dim"}
        for s in self.steps.values():
            lat = "-" if s.latency_s is None else f"{s.latency_s:.2f}s"
            status = f"[{colours.get(s.status, 'white')}]{s.status}[/]"
            table.add_row(escape(s.name), escape(s.model or "-"), status, lat,
                          str(s.usage.input_tokens),
                          str(s.usage.output_tokens), f"{s.cost_usd:.6f}")
        table.add_row("[b]total[/b]", "", self.status, f"{self.latency_s:.2f}s",
                      str(self.usage.input_tokens), str(self.usage.output_tokens),
                      f"{self.cost_usd:.6f}")
        return table


def as_text(value: Any) -> str:
    """A step output as text for a model: str as is, models and data as indented JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return "(no output)"
    from shoal.agents.recorder import to_jsonable

    return json.dumps(to_jsonable(value), indent=2, ensure_ascii=False)


def render_input(flow_input: Any, deps: Mapping[str, Any]) -> str:
    """The default input of an agent step: the task, then each dependency's output."""
    if not deps:
        return as_text(flow_input)
    parts = []
    if flow_input is not None and flow_input != "":
        parts.append(f"Task: {as_text(flow_input)}")
    parts += [f"## Output of {name}\n{as_text(out)}" for name, out in deps.items()]
    return "\n\n".join(parts)


def _ref_name(ref: Any) -> str:
    if isinstance(ref, str):
        return ref
    if isinstance(ref, Agent | Step):
        return ref.name
    name = getattr(ref, "__name__", None)
    if isinstance(name, str):
        return name
    raise ConfigError(f"cannot refer to step {ref!r}: pass the step's name, agent or function")


class Flow:
    """A DAG of steps with one budget, one concurrency cap and one shared context per run.

    Args:
        name: names the run in journals and reports.
        budget_usd, budget_tokens: one budget spanning every agent of a run.
        max_concurrency: steps (and map items) running at once; when more are ready the
            ones on the longest remaining path go first.
        client, recorder, clock, default_model: defaults for :meth:`run`.
    """

    def __init__(
        self,
        name: str,
        *,
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
        max_concurrency: int | None = None,
        client: ModelClient | None = None,
        recorder: RunRecorder | None = None,
        clock: Clock | None = None,
        default_model: str | None = None,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError(f"flow {name!r}: max_concurrency must be >= 1")
        self.name = name
        self.budget_usd = budget_usd
        self.budget_tokens = budget_tokens
        self.max_concurrency = max_concurrency
        self.client = client
        self.recorder = recorder
        self.clock = clock
        self.default_model = default_model
        self.steps: dict[str, Step] = {}

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, steps={list(self.steps)})"

    def add(
        self,
        target: Agent[Any] | Callable[..., Any],
        *,
        after: Any = (),
        name: str | None = None,
        on_failure: FailurePolicy = "fail",
        default: Any = None,
        retries: int = 0,
        timeout_s: float | None = None,
        input: Callable[[StepContext], Any] | None = None,
    ) -> Step:
        """Add a step running ``target`` after the steps in ``after`` (names, agents or steps).

        ``on_failure``: ``"fail"`` stops the run (``StepFailed``); ``"skip"`` skips the
        steps depending on it; ``"continue"`` runs them with ``None`` for its output;
        ``"fallback"`` uses ``default`` (a value, or a function of the exception).
        ``retries``: extra attempts of the whole step. ``input``: for agent steps, a
        function of the :class:`StepContext` building the agent's input.
        """
        return self._add(target, after=after, name=name, on_failure=on_failure,
                         default=default, retries=retries, timeout_s=timeout_s, input=input)

    def map(
        self,
        target: Agent[Any] | Callable[..., Any],
        *,
        over: Any,
        after: Any = (),
        name: str | None = None,
        concurrency: int | None = None,
        on_item_failure: ItemPolicy = "fail",
        on_failure: FailurePolicy = "fail",
        default: Any = None,
        retries: int = 0,
        timeout_s: float | None = None,
        input: Callable[[StepContext], Any] | None = None,
    ) -> Step:
        """Fan ``target`` out over a list: ``over`` is a step (its output is the list) or a
        function of the :class:`StepContext` returning an iterable (a function that is
        already a step of this flow counts as the step). At most
        ``concurrency`` items run at once. The step's output is the list of item outputs,
        in order. ``on_item_failure``: ``"fail"`` fails the step, ``"drop"`` leaves the
        item out, ``"fallback"`` uses ``default``. Function targets receive ``item`` and
        ``index`` parameters; agents get the item as input (or ``input(ctx)``).
        """
        if concurrency is not None and concurrency < 1:
            raise ConfigError(f"map concurrency must be >= 1, got {concurrency}")
        after_names = list(_names(after))
        over_ref: str | Callable[[StepContext], Iterable[Any]]
        if callable(over) and not isinstance(over, Agent | Step) and not self._is_step(over):
            over_ref = over
        else:
            over_ref = _ref_name(over)
            if over_ref not in after_names:
                after_names.append(over_ref)
        return self._add(target, after=after_names, name=name, on_failure=on_failure,
                         default=default, retries=retries, timeout_s=timeout_s, input=input,
                         over=over_ref, concurrency=concurrency, on_item_failure=on_item_failure)

    def _is_step(self, fn: Any) -> bool:
        step = self.steps.get(getattr(fn, "__name__", ""))
        return step is not None and step.target is fn

    def _add(self, target: Agent[Any] | Callable[..., Any], *, after: Any, name: str | None,
             **options: Any) -> Step:
        step_name = name or _ref_name(target)
        if not step_name or "/" in step_name:
            raise ConfigError(f"step name {step_name!r} must be non-empty and contain no '/'")
        if step_name in self.steps:
            raise ConfigError(
                f"flow {self.name!r} already has a step {step_name!r}; pass name=... to add "
                "the same agent or function twice"
            )
        deps = tuple(_names(after))
        for dep in deps:
            if dep not in self.steps:
                raise ConfigError(
                    f"step {step_name!r} runs after {dep!r}, which is not in flow {self.name!r} "
                    f"(add steps before the steps that depend on them; known: "
                    f"{', '.join(self.steps) or '(none)'})"
                )
        if options.get("retries", 0) < 0:
            raise ConfigError("retries must be >= 0")
        check_timeout(options.get("timeout_s"), f"step {step_name!r}:")
        step = Step(step_name, target, deps, **options)
        if isinstance(target, Agent):
            step.output_type = target.output_type
        elif callable(target):
            self._inspect_function(step)
        else:
            raise ConfigError(f"step {step_name!r}: target must be an Agent or a function")
        self.steps[step_name] = step
        return step

    def _inspect_function(self, step: Step) -> None:
        fn = cast(Callable[..., Any], step.target)
        try:
            hints = get_type_hints(fn)
        except Exception:
            hints = {}
        ret = hints.get("return", Any)
        step.output_type = Any if ret is None or ret is type(None) else ret
        params = []
        for pname in inspect.signature(fn).parameters:
            ann = hints.get(pname)
            if ann is StepContext or pname == "ctx":
                step.context_param = pname
                continue
            if pname not in step.after and pname not in _SPECIAL_PARAMS:
                raise ConfigError(
                    f"step {step.name!r}: parameter {pname!r} names no dependency; parameters "
                    f"are filled from the steps it runs after ({', '.join(step.after) or 'none'})"
                    ", 'input' (the flow input), 'item'/'index' (map items) or a StepContext"
                )
            params.append(pname)
        step.params = tuple(params)

    def sinks(self) -> list[str]:
        """Steps no other step depends on (their outputs are the run's output)."""
        used = {d for s in self.steps.values() for d in s.after}
        return [n for n in self.steps if n not in used]

    async def run(
        self,
        input: Any = None,
        *,
        run_id: str | None = None,
        client: ModelClient | None = None,
        recorder: RunRecorder | None = None,
        budget: Budget | None = None,
        shared: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> FlowResult:
        """Run the flow once. A run id already in the ``recorder`` resumes that run:
        finished steps are replayed, not re-run. Raises ``StepFailed`` (with the partial
        result) when a ``"fail"`` step fails; cancelling the task cancels every step."""
        from shoal.flows.scheduler import FlowRun

        if not self.steps:
            raise ConfigError(f"flow {self.name!r} has no steps")
        from shoal.agents.client import default_client

        given = client or self.client
        own = given is None
        model_client = default_client() if given is None else given
        try:
            return await FlowRun(
                self, input, client=model_client, run_id=run_id,
                recorder=recorder or self.recorder, budget=budget, shared=shared,
                clock=clock or self.clock,
            ).execute()
        finally:
            if own:
                close = getattr(model_client, "aclose", None)
                if close is not None:
                    await close()

    async def run_batch(self, inputs: Iterable[Any] | Mapping[str, Any], *,
                        executor: Any = None, **options: Any) -> BatchResult:
        """Run the flow over many inputs: ``Batch(self, **options).run(inputs,
        executor=executor)`` (a :class:`~shoal.flows.batch.BatchResult`; ``executor``
        e.g. ``shoal.scale.DaskExecutor``, see docs/scale.md)."""
        from shoal.flows.batch import Batch

        return await Batch(self, **options).run(inputs, executor=executor)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], *, name: str | None = None) -> Flow:
        """A flow from plain data (a parsed TOML/YAML spec): ``[flow]`` options and
        ``[steps.NAME]`` tables with agent settings plus ``after``/``on_failure``/
        ``default``/``retries``/``timeout_s``. See docs/flows.md."""
        flow_opts = dict(spec.get("flow") or {})
        unknown = set(spec) - {"flow", "steps"}
        if unknown:
            raise ConfigError(f"unknown top-level keys {sorted(unknown)} in flow spec; "
                              "expected [flow] and [steps.NAME]")
        flow_name = name or flow_opts.pop("name", None) or "flow"
        flow_opts.pop("name", None)
        check_fields("[flow]", flow_opts, FLOW_KEYS)
        flow = cls(flow_name, **flow_opts)
        steps = spec.get("steps") or {}
        if not isinstance(steps, Mapping) or not steps:
            raise ConfigError("a flow spec needs at least one [steps.NAME] table")
        pending: dict[str, dict[str, Any]] = {}
        for step_name, raw in steps.items():
            if raw is not None and not isinstance(raw, Mapping):
                raise ConfigError(f"[steps.{step_name}] must be a table of agent settings "
                                  f"(instructions, model, after, ...), not {raw!r}")
            pending[str(step_name)] = dict(raw or {})
            check_fields(f"[steps.{step_name}]", pending[str(step_name)], step_fields())
        check_after(pending)
        while pending:
            ready = [n for n, raw in pending.items()
                     if all(d in flow.steps for d in as_list(raw.get("after")))]
            for step_name in ready:
                _add_spec_step(flow, step_name, pending.pop(step_name))
        return flow


def _add_spec_step(flow: Flow, step_name: str, raw: dict[str, Any]) -> None:
    step_opts = {k: raw.pop(k) for k in list(raw) if k in STEP_KEYS}
    try:
        agent: Agent[Any] = Agent(step_name, **raw)
    except TypeError as exc:
        raise ConfigError(f"[steps.{step_name}]: {exc}") from None
    after = as_list(step_opts.pop("after", None))
    over = step_opts.pop("map", None)
    if over is not None:
        flow.map(agent, over=over, after=after, **step_opts)
    else:
        step_opts.pop("concurrency", None)
        step_opts.pop("on_item_failure", None)
        flow.add(agent, after=after, **step_opts)


def _names(refs: Any) -> Sequence[str]:
    if refs is None:
        return ()
    if isinstance(refs, str | Agent | Step) or callable(refs):
        return (_ref_name(refs),)
    return tuple(_ref_name(r) for r in refs)
