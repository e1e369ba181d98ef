"""Start/end event pairs for the layers above the Router: runs, steps, agents, tools.

Flows and agents emit on their model client's bus (``client.events``, the Router's),
so one subscription sees every layer. Each helper is called only when that bus is
active: with nothing subscribed a layer pays one attribute check. While a run, step or
agent runs, its ids are the observe scope (:mod:`shoal.observe.context`), which every
event emitted beneath it (the Router's included) carries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sized
from typing import TYPE_CHECKING, Any, TypeVar

from shoal.observe.context import enter, leave
from shoal.observe.events import (
    AGENT_END,
    AGENT_START,
    BUDGET,
    FAILOVER,
    GUARD,
    TOOL_END,
    TOOL_START,
    EventBus,
)

if TYPE_CHECKING:
    from shoal.agents.guardrails import Guardrail, Stage
    from shoal.agents.run_context import RunContext
    from shoal.agents.tools import ToolOutcome
    from shoal.clock import Clock
    from shoal.types import Usage

__all__ = ["budget", "bus_of", "fallback", "guard", "guarded", "live", "observed_agent",
           "observed_tool", "token_data"]

T = TypeVar("T")


def bus_of(client: object) -> EventBus | None:
    """The event bus of a model client (the Router's ``events``), or None."""
    bus = getattr(client, "events", None)
    return bus if isinstance(bus, EventBus) else None


def live(bus: EventBus | None) -> bool:
    """Whether anyone listens on ``bus`` (False for no bus)."""
    return bus is not None and bus.active


def token_data(usage: Usage) -> dict[str, int]:
    """The token keys of events (see :mod:`shoal.observe.events`)."""
    return {
        "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def observed_agent(bus: EventBus, clock: Clock, ctx: RunContext, model: str,
                         work: Awaitable[T], *, turns: Sized) -> T:
    """Run one agent invocation (``work``) between ``agent_start`` and ``agent_end``,
    in its scope. ``turns`` is the run's turn list (its length is reported)."""
    token = enter(run_id=ctx.run_id, step=ctx.step_id, agent=ctx.agent)
    started = clock.now()
    where = {"run_id": ctx.run_id, "step": ctx.step_id, "agent": ctx.agent, "model": model}
    bus.publish(AGENT_START, where, model=model)
    status, error = "succeeded", ""
    try:
        return await work
    except BaseException as exc:
        status, error = "failed", error_text(exc)
        raise
    finally:
        bus.publish(AGENT_END, {
            **where, "turns": len(turns), "status": status, "error": error,
            "duration_s": clock.now() - started, "cost_usd": ctx.cost_usd,
            **token_data(ctx.usage),
        }, model=model)
        leave(token)


async def observed_tool(bus: EventBus, clock: Clock, name: str, call_id: str,
                        work: Awaitable[ToolOutcome]) -> ToolOutcome:
    """Run one tool call between ``tool_start`` and ``tool_end``."""
    started = clock.now()
    bus.emit(TOOL_START, tool=name, call_id=call_id)
    status, error = "ok", ""
    try:
        outcome = await work
    except BaseException as exc:
        status, error = "error", error_text(exc)
        raise
    else:
        if outcome.is_error:
            status, error = "error", outcome.kind
        return outcome
    finally:
        bus.emit(TOOL_END, tool=name, call_id=call_id, status=status, error=error,
                 duration_s=clock.now() - started)


def guard(bus: EventBus | None, name: str, decision: str, detail: str) -> None:
    """A ``guard`` event: ``name`` (a guardrail, "loop", "max_turns") decided."""
    if bus is not None and bus.active:
        bus.emit(GUARD, guard=name, decision=decision, detail=detail)


def budget(bus: EventBus | None, decision: str, usd: float, tokens: int) -> None:
    """A ``budget`` event: a reservation made, refused, or settled."""
    if bus is not None and bus.active:
        bus.emit(BUDGET, decision=decision, amount_usd=usd, tokens=tokens)


async def guarded(bus: EventBus | None, rail: Guardrail, value: Any, ctx: RunContext,
                  stage: Stage) -> Any:
    """``rail.apply(value, ctx, stage)``, its decision a ``guard`` event."""
    from shoal.agents.errors import GuardrailTripped

    if bus is None or not bus.active:
        return await rail.apply(value, ctx, stage)
    try:
        out = await rail.apply(value, ctx, stage)
    except GuardrailTripped as exc:
        guard(bus, rail.name, "trip", str(exc))
        raise
    guard(bus, rail.name, "allow", stage)
    return out


def fallback(bus: EventBus | None, model: str, to: str, exc: BaseException) -> None:
    """An agent moves to its next fallback model: a ``failover`` event (from/to models)."""
    if bus is not None and bus.active:
        bus.publish(FAILOVER, {"from": model, "to": to, "error": type(exc).__name__},
                    model=model)
