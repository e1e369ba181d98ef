"""``Agent``: what a model is asked to be — instructions, model, output type, tools, limits.

An Agent is a plain, reusable description; running it is the
:class:`~shoal.agents.runner.Runner`'s job (``await agent.run(...)`` is a shortcut).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal

from typing_extensions import TypeVar

from shoal.agents.context import ContextPolicy
from shoal.agents.guardrails import Guardrail
from shoal.agents.guards import LoopPolicy
from shoal.agents.output import OutputSpec
from shoal.agents.run_context import RunContext
from shoal.agents.tools import Tool
from shoal.errors import ConfigError

if TYPE_CHECKING:
    from shoal.agents.client import ModelClient
    from shoal.agents.guards import Budget
    from shoal.agents.runner import RunResult
    from shoal.types import Message, Thinking

__all__ = ["Agent", "Instructions"]

OutputT = TypeVar("OutputT", default=str)

_DEFAULT_CONTEXT = ContextPolicy()

Instructions = str | Callable[[RunContext], str | Awaitable[str]]


class Agent(Generic[OutputT]):
    """An LLM agent.

    Args:
        name: unique within a flow; names the step and appears in traces and errors.
        instructions: the system prompt, or a function of the :class:`RunContext`
            returning it (sync or async).
        model: catalog name or alias; ``None`` = the configuration's default model.
        fallbacks: models to try, in order, when the model's every channel fails or
            its provider has retired it (the router already fails over between
            channels of one model).
        output_type: ``str`` (default) or a pydantic model / type for structured output,
            validated and re-asked up to ``output_retries`` times.
        tools: functions or :class:`Tool` objects the model may call.
        temperature, top_p, max_tokens, seed, stop: model settings. ``max_tokens``
            also bounds what a budget reserves per call (default: the runner's).
        max_turns: model calls allowed in one run (tool round trips and re-asks count).
        input_guardrails, output_guardrails: checks before and after (see guardrails).
        loop: loop detection policy; ``context``: context trimming policy (default: trim
            to the model's window; ``None`` = never trim, so an over-long conversation
            fails at the provider with ``ContextOverflow``).
        budget_usd, budget_tokens: a budget for each run of this agent (nested inside
            any flow budget).
        call_deadline_s: total seconds one model call may take, waits and retries included.
        thinking: ask the model to reason first (``Thinking(budget_tokens=..., effort=...)``),
            mapped per provider; signed reasoning goes back on later turns by itself.
        extra: provider-specific request fields merged into every wire body (like the
            SDKs' ``extra_body``).
        metadata: sent with every request (``ChatRequest.metadata``); ``tag`` (default: the
            step id) travels as the ``x-shoal-tag`` header, for attributing traffic.
    """

    def __init__(
        self,
        name: str,
        *,
        instructions: Instructions = "",
        model: str | None = None,
        fallbacks: Sequence[str] = (),
        output_type: type[OutputT] | None = None,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        tool_choice: Literal["auto", "none", "required"] | None = None,
        max_turns: int = 10,
        output_retries: int = 2,
        input_guardrails: Sequence[Guardrail | Callable[..., Any]] = (),
        output_guardrails: Sequence[Guardrail | Callable[..., Any]] = (),
        loop: LoopPolicy | None = None,
        context: ContextPolicy | None = _DEFAULT_CONTEXT,
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
        call_deadline_s: float | None = None,
        metadata: dict[str, str] | None = None,
        thinking: Thinking | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if not name or "/" in name:
            raise ConfigError(f"agent name {name!r} must be non-empty and contain no '/'")
        if max_turns < 1:
            raise ConfigError(f"agent {name!r}: max_turns must be >= 1, got {max_turns}")
        if output_retries < 0:
            raise ConfigError(f"agent {name!r}: output_retries must be >= 0")
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"agent {name!r}: max_tokens must be >= 1, got {max_tokens}")
        self.name = name
        self.instructions = instructions
        self.model = model
        self.fallbacks = tuple(fallbacks)
        self.output_type: Any = str if output_type is None else output_type
        self.output: OutputSpec[OutputT] = OutputSpec(self.output_type)
        self.tools = tuple(Tool.from_function(t) for t in tools)
        names = [t.name for t in self.tools]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ConfigError(f"agent {name!r} has several tools named {sorted(dupes)}")
        self.tool_map = {t.name: t for t in self.tools}
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self.seed = seed
        self.stop = list(stop) if stop else None
        self.tool_choice = tool_choice
        self.max_turns = max_turns
        self.output_retries = output_retries
        self.input_guardrails = tuple(_as_guardrail(g) for g in input_guardrails)
        self.output_guardrails = tuple(_as_guardrail(g) for g in output_guardrails)
        self.loop = loop or LoopPolicy()
        self.context: ContextPolicy | None = context
        self.budget_usd = budget_usd
        self.budget_tokens = budget_tokens
        self.call_deadline_s = call_deadline_s
        self.metadata = dict(metadata or {})
        self.thinking = thinking
        self.extra = dict(extra or {})

    def __repr__(self) -> str:
        out = getattr(self.output_type, "__name__", repr(self.output_type))
        return f"Agent({self.name!r}, model={self.model!r}, output_type={out})"

    def clone(self, **changes: Any) -> Agent[OutputT]:
        """A copy with some settings changed: ``agent.clone(model="gpt-4o-mini")``."""
        new = copy.copy(self)
        for key, value in changes.items():
            if not hasattr(new, key):
                raise ConfigError(f"Agent has no setting {key!r}")
            setattr(new, key, value)
        if "output_type" in changes:
            new.output = OutputSpec(new.output_type)
        if "tools" in changes:
            new.tools = tuple(Tool.from_function(t) for t in new.tools)
            new.tool_map = {t.name: t for t in new.tools}
        return new

    async def run(
        self,
        input: str | Sequence[Message],
        *,
        client: ModelClient | None = None,
        deps: Any = None,
        budget: Budget | None = None,
        run_id: str | None = None,
    ) -> RunResult[OutputT]:
        """Run once. Without ``client`` a Router over ``Config.load()`` is made and closed."""
        from shoal.agents.client import default_client
        from shoal.agents.runner import Runner

        own = client is None
        model_client = default_client() if client is None else client
        try:
            return await Runner(model_client).run(
                self, input, deps=deps, budget=budget, run_id=run_id
            )
        finally:
            if own:
                await _aclose(model_client)


def _as_guardrail(g: Guardrail | Callable[..., Any]) -> Guardrail:
    return g if isinstance(g, Guardrail) else Guardrail(g)


async def _aclose(client: object) -> None:
    close = getattr(client, "aclose", None)
    if close is not None:
        await close()
