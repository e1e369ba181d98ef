"""Start/end event pairs for flow runs and steps (see :mod:`shoal.observe.emit`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from shoal.observe.context import enter, leave
from shoal.observe.emit import error_text, token_data
from shoal.observe.events import JOURNAL, RUN_END, RUN_START, STEP_END, STEP_START, EventBus
from shoal.types import Usage

if TYPE_CHECKING:
    from shoal.clock import Clock
    from shoal.flows.flow import StepResult

__all__ = ["journaled", "observed_run", "observed_step"]

_NONE = Usage()
T = TypeVar("T")


async def observed_run(bus: EventBus, clock: Clock, run_id: str, flow: str, *,
                       work: Awaitable[T], totals: Callable[[], tuple[Usage, float]]) -> T:
    """Run a flow or batch item (``work``) between ``run_start`` and ``run_end``, in the
    run's scope. ``totals()`` gives the usage and cost so far (also of a failed or
    cancelled run); the status is the result's ``status`` (a FlowResult's, a BatchItem's)."""
    token = enter(run_id=run_id)
    started = clock.now()
    bus.emit(RUN_START, run_id=run_id, flow=flow)
    status, error = "failed", ""
    try:
        result = await work
    except BaseException as exc:
        status = "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed"
        error = error_text(exc)
        raise
    else:
        status = str(getattr(result, "status", "succeeded"))
        return result
    finally:
        usage, cost = totals()
        bus.publish(RUN_END, {
            "run_id": run_id, "flow": flow, "status": status, "error": error,
            "duration_s": clock.now() - started, "cost_usd": cost, **token_data(usage)})
        leave(token)


async def observed_step(bus: EventBus, clock: Clock, run_id: str, step: str, *, agent: str,
                        work: Awaitable[StepResult]) -> StepResult:
    """Run one step or map item (``work``) between ``step_start`` and ``step_end``."""
    token = enter(run_id=run_id, step=step)
    started = clock.now()
    where = {"run_id": run_id, "step": step, "agent": agent}
    bus.publish(STEP_START, where)
    try:
        res = await work
    except BaseException as exc:  # cancelled: a step never raises otherwise
        bus.publish(STEP_END, {
            **where, "status": "cancelled", "error": error_text(exc),
            "duration_s": clock.now() - started, "cost_usd": 0.0, **token_data(_NONE)})
        raise
    else:
        bus.publish(STEP_END, {
            **where, "status": res.status, "error": res.error or "",
            "duration_s": clock.now() - started, "cost_usd": res.cost_usd,
            **token_data(res.usage)})
        return res
    finally:
        leave(token)


def journaled(bus: EventBus | None, what: str, step: str = "") -> None:
    """A ``journal`` event: a run or step record was written (``step`` names the step
    when the scope does not)."""
    if bus is not None and bus.active:
        data: dict[str, object] = {"what": what, "turn": None}
        if step:
            data["step"] = step
        bus.publish(JOURNAL, data)
