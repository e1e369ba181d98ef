"""Errors raised by agents and flows, in shoal's one tree (all are ``RunError``).

They live here until ``shoal/errors.py`` takes them in (its owner was asked to);
import them from ``shoal.agents`` and the import will keep working after the move.
"""

from __future__ import annotations

from typing import Any, Literal

from shoal.errors import RunError

__all__ = ["GuardrailTripped", "StepFailed", "ToolFailed"]


class GuardrailTripped(RunError):
    """An input or output guardrail stopped the step.

    Attributes:
        guardrail: the guardrail's name.
        stage: ``"input"`` or ``"output"``.
        reason: what the guardrail said.
        agent: the agent whose input or output tripped it.
    """

    def __init__(
        self, guardrail: str, stage: Literal["input", "output"], reason: str, *, agent: str = ""
    ) -> None:
        self.guardrail = guardrail
        self.stage = stage
        self.reason = reason
        self.agent = agent
        where = f" of agent {agent!r}" if agent else ""
        super().__init__(
            f"{stage} guardrail {guardrail!r}{where} tripped: {reason or 'no reason given'}"
        )


class ToolFailed(RunError):
    """A tool declared with ``on_error="raise"`` failed after its retries."""

    def __init__(self, tool: str, message: str) -> None:
        self.tool = tool
        super().__init__(f"tool {tool!r} failed: {message}")


class StepFailed(RunError):
    """A flow step failed under the ``"fail"`` policy, so the run stopped.

    Attributes:
        step: the failed step's name.
        result: the partial :class:`~shoal.flows.flow.FlowResult` (finished steps kept).
        The original error is ``__cause__``.
    """

    def __init__(self, message: str, *, step: str, result: Any = None) -> None:
        self.step = step
        self.result = result
        super().__init__(message)
