"""What a running agent knows about its run: handed to tools, guardrails and instructions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.types import Usage

if TYPE_CHECKING:
    from shoal.agents.guards import Budget
    from shoal.agents.runner import Runner

__all__ = ["RunContext"]


@dataclass(slots=True)
class RunContext:
    """The run an agent is part of.

    A tool or guardrail that declares a parameter annotated ``RunContext`` receives it
    (it is not part of the tool's JSON schema). ``deps`` is whatever the caller passed to
    ``Runner.run(..., deps=...)``; inside a flow it is the step's
    :class:`~shoal.flows.context.StepContext` (shared key-value context, messages).
    """

    run_id: str
    step_id: str
    agent: str
    runner: Runner
    deps: Any = None
    budget: Budget | None = None
    turn: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
