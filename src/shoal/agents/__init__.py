"""Agents: instructions + model + output type + tools, run by a turn loop with guards.

The public names are re-exported here; see docs/agents.md.
"""

from shoal.agents.agent import Agent
from shoal.agents.client import ModelClient
from shoal.agents.context import ContextPolicy, map_reduce, split_text, trim_messages
from shoal.agents.errors import GuardrailTripped, StepFailed, ToolFailed
from shoal.agents.guardrails import (
    Guardrail,
    GuardrailResult,
    GuardrailVerdict,
    agent_guardrail,
    guardrail,
)
from shoal.agents.guards import Budget, LoopPolicy
from shoal.agents.recorder import MemoryRecorder, NullRecorder, RecordedStep, RunRecorder
from shoal.agents.run_context import RunContext
from shoal.agents.runner import Runner, RunResult, TurnTrace
from shoal.agents.tools import Tool, tool

__all__ = [
    "Agent",
    "Budget",
    "ContextPolicy",
    "Guardrail",
    "GuardrailResult",
    "GuardrailTripped",
    "GuardrailVerdict",
    "LoopPolicy",
    "MemoryRecorder",
    "ModelClient",
    "NullRecorder",
    "RecordedStep",
    "RunContext",
    "RunRecorder",
    "RunResult",
    "Runner",
    "StepFailed",
    "Tool",
    "ToolFailed",
    "TurnTrace",
    "agent_guardrail",
    "guardrail",
    "map_reduce",
    "split_text",
    "tool",
    "trim_messages",
]
