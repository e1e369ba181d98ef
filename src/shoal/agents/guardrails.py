"""Guardrails: checks on an agent's input (before the model sees it) and output (after).

A guardrail is a plain function, sync or async, taking the value (and optionally the
:class:`~shoal.agents.run_context.RunContext`) and returning:

- ``None`` or ``True``: pass;
- ``False``: trip (the step stops with :class:`~shoal.agents.errors.GuardrailTripped`);
- a :class:`GuardrailResult`: pass, rewrite or trip, with a reason;
- any other value: rewrite — it replaces the input or output (redact, sanitize, fix).

A guardrail that raises trips too (fail closed). :func:`agent_guardrail` makes one out
of a small agent that judges the text.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import BaseModel

from shoal.agents.errors import GuardrailTripped
from shoal.agents.run_context import RunContext

if TYPE_CHECKING:
    from shoal.agents.agent import Agent

__all__ = [
    "Guardrail",
    "GuardrailResult",
    "GuardrailVerdict",
    "agent_guardrail",
    "guardrail",
]

Stage = Literal["input", "output"]


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    """A guardrail's decision. Build with :meth:`ok`, :meth:`rewrite` or :meth:`trip`."""

    action: Literal["pass", "rewrite", "trip"]
    value: Any = None
    reason: str = ""

    @classmethod
    def ok(cls) -> GuardrailResult:
        return cls("pass")

    @classmethod
    def rewrite(cls, value: Any, reason: str = "") -> GuardrailResult:
        return cls("rewrite", value, reason)

    @classmethod
    def trip(cls, reason: str) -> GuardrailResult:
        return cls("trip", None, reason)


class Guardrail:
    """A named check. ``Agent(input_guardrails=[...], output_guardrails=[...])`` runs them
    in order, each seeing the previous one's rewrite."""

    def __init__(self, check: Callable[..., Any], *, name: str | None = None) -> None:
        self.check = check
        self.name: str = name or str(getattr(check, "__name__", "guardrail"))
        self._wants_context = _wants_context(check)

    def __repr__(self) -> str:
        return f"Guardrail({self.name!r})"

    async def decide(self, value: Any, ctx: RunContext) -> GuardrailResult:
        """Run the check and normalise what it returned."""
        out = self.check(value, ctx) if self._wants_context else self.check(value)
        if inspect.isawaitable(out):
            out = await out
        if out is None or out is True:
            return GuardrailResult.ok()
        if out is False:
            return GuardrailResult.trip("the check returned False")
        if isinstance(out, GuardrailResult):
            return out
        return GuardrailResult.rewrite(out)

    async def apply(self, value: Any, ctx: RunContext, stage: Stage) -> Any:
        """The value to continue with; raises ``GuardrailTripped`` on a trip or an error."""
        try:
            result = await self.decide(value, ctx)
        except GuardrailTripped:
            raise
        except Exception as exc:
            raise GuardrailTripped(
                self.name, stage, f"the check raised {type(exc).__name__}: {exc}", agent=ctx.agent
            ) from exc
        if result.action == "trip":
            raise GuardrailTripped(self.name, stage, result.reason, agent=ctx.agent)
        if result.action == "rewrite":
            return result.value
        return value


@overload
def guardrail(fn: Callable[..., Any], /) -> Guardrail: ...


@overload
def guardrail(*, name: str | None = None) -> Callable[[Callable[..., Any]], Guardrail]: ...


def guardrail(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None
) -> Guardrail | Callable[[Callable[..., Any]], Guardrail]:
    """Make a function a :class:`Guardrail` (``@guardrail`` or ``@guardrail(name=...)``)."""

    def wrap(f: Callable[..., Any]) -> Guardrail:
        return Guardrail(f, name=name)

    return wrap(fn) if fn is not None else wrap


class GuardrailVerdict(BaseModel):
    """What a judging agent answers: trip or not, why, and optionally a rewritten text."""

    tripped: bool
    reason: str = ""
    rewrite: str | None = None


def agent_guardrail(judge: Agent[GuardrailVerdict], *, name: str | None = None) -> Guardrail:
    """A guardrail that asks ``judge`` (an agent with ``output_type=GuardrailVerdict``).

    The judge runs through the same runner and budget as the guarded agent; its cost
    counts toward the run.
    """

    async def check(value: Any, ctx: RunContext) -> GuardrailResult:
        text = value if isinstance(value, str) else _as_text(value)
        verdict = await ctx.runner.run(
            judge, text, deps=ctx.deps, budget=ctx.budget, run_id=ctx.run_id,
            step_id=f"{ctx.step_id}/guard/{judge.name}",
        )
        out = verdict.output
        ctx.usage = ctx.usage + verdict.usage
        ctx.cost_usd += verdict.cost_usd
        if out.tripped:
            return GuardrailResult.trip(out.reason or f"judged unsafe by {judge.name!r}")
        if out.rewrite is not None and isinstance(value, str):
            return GuardrailResult.rewrite(out.rewrite, out.reason)
        return GuardrailResult.ok()

    return Guardrail(check, name=name or judge.name)


def _wants_context(check: Callable[..., Any]) -> bool:
    """True when ``check`` takes a second argument: required, or annotated RunContext."""
    try:
        params = list(inspect.signature(check).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    if len(params) < 2:
        return False
    second = params[1]
    annotation = second.annotation
    named_ctx = annotation is RunContext or (
        isinstance(annotation, str) and "RunContext" in annotation
    )
    return named_ctx or second.default is inspect.Parameter.empty


def _as_text(value: Any) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return str(value)
