"""A flow's definition hash: what a journaled run records of its flow, so that a resume
with a changed definition is refused (:class:`~shoal.flows.journal.StoreRecorder`)."""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shoal.agents.recorder import to_jsonable

if TYPE_CHECKING:
    from shoal.agents.agent import Agent
    from shoal.flows.flow import Flow, Step

__all__ = ["changes", "flow_hash", "step_hashes"]


# -- the definition hash ----------------------------------------------------------------


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _code_id(fn: Any) -> str:
    """What defines a function: its qualified name and a hash of its source (its bytecode
    when there is none). Not its module: a flow run as ``python flow.py`` (``__main__``)
    and resumed by ``shoal resume`` (imported as ``flow``) is the same definition."""
    fn = inspect.unwrap(fn)
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    try:
        body = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        body = "" if code is None else code.co_code.hex() + repr(code.co_consts)
    return f"{name}:{hashlib.sha256(body.encode()).hexdigest()[:16]}"


def _agent_doc(agent: Agent[Any]) -> dict[str, Any]:
    instructions = agent.instructions
    return {
        "agent": agent.name,
        "instructions": instructions if isinstance(instructions, str) else _code_id(instructions),
        "model": agent.model,
        "output": agent.output.schema,
        "tools": [[t.name, t.description, t.parameters] for t in agent.tools],
        "settings": [agent.temperature, agent.top_p, agent.max_tokens, agent.seed, agent.stop,
                     agent.tool_choice],
        "guardrails": [[g.name for g in agent.input_guardrails],
                       [g.name for g in agent.output_guardrails]],
    }


def _step_doc(step: Step) -> dict[str, Any]:
    from shoal.agents.agent import Agent

    target = step.target
    default = step.default
    return {
        "target": _agent_doc(target) if isinstance(target, Agent) else _code_id(target),
        "after": list(step.after),
        "on_failure": step.on_failure,
        "default": _code_id(default) if callable(default) else to_jsonable(default),
        "input": None if step.input is None else _code_id(step.input),
        "over": step.over if step.over is None or isinstance(step.over, str)
        else _code_id(step.over),
        "on_item_failure": step.on_item_failure,
    }


def step_hashes(flow: Flow) -> dict[str, str]:
    """Each step's name -> a hash of what it computes, in the flow's order.

    In the hash: the graph, each agent's instructions, model, output schema, tools and
    sampling settings, each function's code, inputs and failure policies. Not in it:
    limits you may change before resuming (budgets, concurrency, retries, timeouts,
    ``max_turns``, fallback models).
    """
    return {name: _digest(_step_doc(step))[:16] for name, step in flow.steps.items()}


def flow_hash(flow: Flow, hashes: Mapping[str, str] | None = None) -> str:
    """The flow's definition hash (see :func:`step_hashes` for what it covers; pass
    ``hashes`` when you have them)."""
    return _digest({"flow": flow.name, "default_model": flow.default_model,
                    "steps": dict(step_hashes(flow) if hashes is None else hashes)})


def changes(old: Mapping[str, Any], new: Mapping[str, str]) -> str:
    parts = [f"step {n!r} changed" for n in new if n in old and old[n] != new[n]]
    parts += [f"step {n!r} added" for n in new if n not in old]
    parts += [f"step {n!r} removed" for n in old if n not in new]
    return ", ".join(parts) or "the flow's settings changed"
