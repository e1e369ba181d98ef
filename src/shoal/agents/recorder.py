"""The journaling hook: every finished step and every finished model turn goes through here.

The runner and the flow scheduler report to a :class:`RunRecorder` and ask it for
results recorded by an earlier attempt of the same run. The default records
nothing (:class:`NullRecorder`); the durable journal (``shoal.flows.journal``)
implements the same protocol over a :class:`~shoal.stores` backend, so a resumed
run replays finished steps and turns instead of calling models again.

A recorder may also have ``agent_run(run_id)``, an async context manager the runner
enters around an agent run (:func:`agent_scope`): the durable journal executes an agent
run journaled without a flow under the run's lease there.

Step ids are strings: ``"analyzer"``, ``"topics/3"`` (item 3 of a map). Turns are
numbered from 0 within a step. Results cross this seam as JSON-compatible data
(:func:`to_jsonable`), so any store can hold them.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from shoal.types import ChatResponse, ReasoningPart, ToolCall, Usage

if TYPE_CHECKING:
    from pydantic import TypeAdapter

__all__ = [
    "MemoryRecorder",
    "NullRecorder",
    "RecordedStep",
    "RunRecorder",
    "RunStatus",
    "agent_scope",
    "from_jsonable",
    "response_from_json",
    "response_to_json",
    "to_jsonable",
]

RunStatus = Literal["succeeded", "partial", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class RecordedStep:
    """A finished step as the journal keeps it: its output as JSON, what it cost, and a
    hash of the inputs it was computed from (``inputs``: a result is valid only for them)."""

    output: Any
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    model: str | None = None
    inputs: str | None = None


class RunRecorder(Protocol):
    """Where step and turn completions go, and where a resumed run finds them."""

    async def run_started(self, run_id: str, flow: str, input: Any) -> None: ...

    async def replay_step(
        self, run_id: str, step_id: str, inputs: str | None = None
    ) -> RecordedStep | None:
        """The step's recorded result if an earlier attempt finished it from the same
        ``inputs`` (a hash of the step's inputs; None: any), else None. A step whose inputs
        changed runs again, and its journaled model turns are not replayed."""
        ...

    async def step_done(self, run_id: str, step_id: str, step: RecordedStep) -> None:
        """Record a finished step durably; the step counts as done only after this returns."""
        ...

    async def replay_turn(self, run_id: str, step_id: str, turn: int) -> ChatResponse | None:
        """The model's recorded answer for this turn of the step, if any."""
        ...

    async def turn_done(
        self, run_id: str, step_id: str, turn: int, response: ChatResponse
    ) -> None: ...

    async def run_finished(self, run_id: str, status: RunStatus, error: str | None) -> None: ...


def agent_scope(recorder: RunRecorder, run_id: str) -> contextlib.AbstractAsyncContextManager[Any]:
    """What ``recorder`` does around an agent run of ``run_id``: its ``agent_run``, if it
    has one (:class:`~shoal.flows.journal.StoreRecorder`: the run's lease), else nothing."""
    scope = getattr(recorder, "agent_run", None)
    return contextlib.nullcontext() if scope is None else scope(run_id)


class NullRecorder:
    """Records nothing and replays nothing: the default when no journal is configured."""

    async def run_started(self, run_id: str, flow: str, input: Any) -> None:
        return None

    async def replay_step(
        self, run_id: str, step_id: str, inputs: str | None = None
    ) -> RecordedStep | None:
        return None

    async def step_done(self, run_id: str, step_id: str, step: RecordedStep) -> None:
        return None

    async def replay_turn(self, run_id: str, step_id: str, turn: int) -> ChatResponse | None:
        return None

    async def turn_done(
        self, run_id: str, step_id: str, turn: int, response: ChatResponse
    ) -> None:
        return None

    async def run_finished(self, run_id: str, status: RunStatus, error: str | None) -> None:
        return None


class MemoryRecorder:
    """Keeps records in process memory, as JSON, exactly as a store would see them.

    For tests and for resuming within one process; records round-trip through
    :func:`to_jsonable` / :func:`response_to_json` so what works here works with a store.
    """

    def __init__(self) -> None:
        self.steps: dict[tuple[str, str], dict[str, Any]] = {}
        self.turns: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}

    async def run_started(self, run_id: str, flow: str, input: Any) -> None:
        self.runs.setdefault(run_id, {"flow": flow, "input": to_jsonable(input)})
        self.runs[run_id]["status"] = "running"

    async def replay_step(
        self, run_id: str, step_id: str, inputs: str | None = None
    ) -> RecordedStep | None:
        raw = self.steps.get((run_id, step_id))
        if raw is not None and None not in (inputs, raw.get("inputs")) \
                and raw["inputs"] != inputs:
            # Computed from other inputs: stale. Forget it and the turns that produced it.
            del self.steps[(run_id, step_id)]
            for key in [k for k in self.turns if k[:2] == (run_id, step_id)]:
                del self.turns[key]
            raw = None
        if raw is None:
            return None
        return RecordedStep(
            output=raw["output"],
            usage=Usage(**raw["usage"]),
            cost_usd=raw["cost_usd"],
            model=raw["model"],
            inputs=raw.get("inputs"),
        )

    async def step_done(self, run_id: str, step_id: str, step: RecordedStep) -> None:
        self.steps[(run_id, step_id)] = {
            "output": to_jsonable(step.output),
            "usage": _usage_json(step.usage),
            "cost_usd": step.cost_usd,
            "model": step.model,
            "inputs": step.inputs,
        }

    async def replay_turn(self, run_id: str, step_id: str, turn: int) -> ChatResponse | None:
        raw = self.turns.get((run_id, step_id, turn))
        return None if raw is None else response_from_json(raw)

    async def turn_done(
        self, run_id: str, step_id: str, turn: int, response: ChatResponse
    ) -> None:
        self.turns[(run_id, step_id, turn)] = response_to_json(response)

    async def run_finished(self, run_id: str, status: RunStatus, error: str | None) -> None:
        self.runs.setdefault(run_id, {})
        self.runs[run_id]["status"] = status
        self.runs[run_id]["error"] = error


def to_jsonable(value: Any) -> Any:
    """JSON-compatible data for any output (pydantic models, dataclasses, lists, ...)."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value, fallback=str)


def from_jsonable(data: Any, tp: Any) -> Any:
    """Rebuild a value of type ``tp`` from :func:`to_jsonable` data (``Any`` = as is)."""
    if tp is Any or tp is None or tp is object:
        return data
    return _adapter(tp).validate_python(data)


@functools.lru_cache(maxsize=256)
def _adapter(tp: Any) -> TypeAdapter[Any]:
    """Building a TypeAdapter costs ~40 µs; a resume rebuilds thousands of outputs."""
    from pydantic import TypeAdapter

    return TypeAdapter(tp)


def _usage_json(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,  # absent in older records
    }


def response_to_json(response: ChatResponse) -> dict[str, Any]:
    """A model answer as JSON data, for the journal."""
    return {
        "text": response.text,
        "tool_calls": [
            {"id": c.id, "name": c.name, "arguments": c.arguments,
             **({"signature": c.signature} if c.signature else {})}
            for c in response.tool_calls
        ],
        "finish_reason": response.finish_reason,
        "usage": _usage_json(response.usage),
        "provider": response.provider,
        "model": response.model,
        "latency_s": response.latency_s,
        "raw_finish_reason": response.raw_finish_reason,
        "reasoning": response.reasoning,
        "id": response.id,
        "cost_usd": response.cost_usd,
        "channel": response.channel,
        # Signed reasoning the provider wants back on the next turn (Anthropic thinking).
        "reasoning_parts": [
            {"text": p.text, "signature": p.signature, "redacted": p.redacted}
            for p in response.reasoning_parts
        ],
        # The Router's timings (limiter wait, attempts, whole call) for the run report.
        "served_model": response.served_model,
        "queue_s": response.queue_s,
        "attempts": response.attempts,
        "call_s": response.call_s,
    }


def response_from_json(data: dict[str, Any]) -> ChatResponse:
    """Inverse of :func:`response_to_json`."""
    return ChatResponse(
        text=data["text"],
        tool_calls=[ToolCall(c["id"], c["name"], c["arguments"], c.get("signature"))
                    for c in data["tool_calls"]],
        finish_reason=data["finish_reason"],
        usage=Usage(**data["usage"]),
        provider=data["provider"],
        model=data["model"],
        latency_s=data.get("latency_s", 0.0),
        raw_finish_reason=data.get("raw_finish_reason"),
        reasoning=data.get("reasoning"),
        id=data.get("id", ""),
        cost_usd=data.get("cost_usd", 0.0),
        channel=data.get("channel", ""),
        reasoning_parts=tuple(
            ReasoningPart(p.get("text", ""), p.get("signature"), p.get("redacted"))
            for p in data.get("reasoning_parts", ())
        ),
        served_model=data.get("served_model", ""),
        queue_s=data.get("queue_s", 0.0),
        attempts=data.get("attempts", 1),
        call_s=data.get("call_s", 0.0),
    )
