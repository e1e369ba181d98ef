"""shoal: run many LLM agents together in production.

Every public name is loaded on first use (PEP 562), so ``import shoal`` stays fast
and touches no network: aiohttp, pydantic and the tokenizer load only when the code
that needs them runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Agent": "shoal.agents",
    "Budget": "shoal.agents",
    "ContextPolicy": "shoal.agents",
    "GuardrailResult": "shoal.agents",
    "LoopPolicy": "shoal.agents",
    "RunContext": "shoal.agents",
    "RunResult": "shoal.agents",
    "Runner": "shoal.agents",
    "Tool": "shoal.agents",
    "agent_guardrail": "shoal.agents",
    "guardrail": "shoal.agents",
    "tool": "shoal.agents",
    "Clock": "shoal.clock",
    "RealClock": "shoal.clock",
    "VirtualClock": "shoal.clock",
    "ChannelConfig": "shoal.config",
    "Config": "shoal.config",
    "ModelInfo": "shoal.config",
    "AuthError": "shoal.errors",
    "BadRequest": "shoal.errors",
    "BudgetExceeded": "shoal.errors",
    "CircuitOpen": "shoal.errors",
    "ConfigError": "shoal.errors",
    "ContextOverflow": "shoal.errors",
    "CorruptRecord": "shoal.errors",
    "DeadlineExceeded": "shoal.errors",
    "GuardrailTripped": "shoal.errors",
    "LoopDetected": "shoal.errors",
    "MalformedResponse": "shoal.errors",
    "OutputInvalid": "shoal.errors",
    "Overloaded": "shoal.errors",
    "ProviderError": "shoal.errors",
    "ProviderTimeout": "shoal.errors",
    "ProviderUnavailable": "shoal.errors",
    "QuotaExhausted": "shoal.errors",
    "RateLimited": "shoal.errors",
    "RunError": "shoal.errors",
    "RunExists": "shoal.errors",
    "RunBusy": "shoal.errors",
    "LeaseLost": "shoal.errors",
    "RunNotFound": "shoal.errors",
    "ShoalError": "shoal.errors",
    "StepFailed": "shoal.errors",
    "StoreError": "shoal.errors",
    "StoreUnavailable": "shoal.errors",
    "StreamInterrupted": "shoal.errors",
    "ToolFailed": "shoal.errors",
    "Batch": "shoal.flows.batch",
    "effect_key": "shoal.flows.effects",
    "idempotent": "shoal.flows.effects",
    "Flow": "shoal.flows.flow",
    "FlowResult": "shoal.flows.flow",
    "StoreRecorder": "shoal.flows.journal",
    "resume": "shoal.flows.resume",
    "run_durable": "shoal.flows.resume",
    "Event": "shoal.observe.events",
    "EventBus": "shoal.observe.events",
    "open_store": "shoal.stores",
    "register_secret": "shoal.secrets",
    "CircuitBreaker": "shoal.traffic.breaker",
    "LocalLimiter": "shoal.traffic.limits",
    "Backoff": "shoal.traffic.retry",
    "RetryPolicy": "shoal.traffic.retry",
    "Router": "shoal.traffic.router",
    "ChatRequest": "shoal.types",
    "ChatResponse": "shoal.types",
    "Message": "shoal.types",
    "ReasoningPart": "shoal.types",
    "ReasoningDelta": "shoal.types",
    "StreamEnd": "shoal.types",
    "StreamEvent": "shoal.types",
    "TextDelta": "shoal.types",
    "Thinking": "shoal.types",
    "ToolCall": "shoal.types",
    "ToolCallDelta": "shoal.types",
    "ToolSpec": "shoal.types",
    "Usage": "shoal.types",
    "UsageEvent": "shoal.types",
}

__all__ = [
    "Agent",
    "AuthError",
    "Backoff",
    "BadRequest",
    "Batch",
    "Budget",
    "BudgetExceeded",
    "ChannelConfig",
    "ChatRequest",
    "ChatResponse",
    "CircuitBreaker",
    "CircuitOpen",
    "Clock",
    "Config",
    "ConfigError",
    "ContextOverflow",
    "ContextPolicy",
    "CorruptRecord",
    "DeadlineExceeded",
    "Event",
    "EventBus",
    "Flow",
    "FlowResult",
    "GuardrailResult",
    "GuardrailTripped",
    "LeaseLost",
    "LocalLimiter",
    "LoopDetected",
    "LoopPolicy",
    "MalformedResponse",
    "Message",
    "ModelInfo",
    "OutputInvalid",
    "Overloaded",
    "ProviderError",
    "ProviderTimeout",
    "ProviderUnavailable",
    "QuotaExhausted",
    "RateLimited",
    "RealClock",
    "ReasoningDelta",
    "ReasoningPart",
    "RetryPolicy",
    "Router",
    "RunBusy",
    "RunContext",
    "RunError",
    "RunExists",
    "RunNotFound",
    "RunResult",
    "Runner",
    "ShoalError",
    "StepFailed",
    "StoreError",
    "StoreRecorder",
    "StoreUnavailable",
    "StreamEnd",
    "StreamEvent",
    "StreamInterrupted",
    "TextDelta",
    "Thinking",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolFailed",
    "ToolSpec",
    "Usage",
    "UsageEvent",
    "VirtualClock",
    "__version__",
    "agent_guardrail",
    "effect_key",
    "guardrail",
    "idempotent",
    "open_store",
    "register_secret",
    "resume",
    "run_durable",
    "tool",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from shoal.agents import (
        Agent,
        Budget,
        ContextPolicy,
        GuardrailResult,
        LoopPolicy,
        RunContext,
        Runner,
        RunResult,
        Tool,
        agent_guardrail,
        guardrail,
        tool,
    )
    from shoal.clock import (
        Clock,
        RealClock,
        VirtualClock,
    )
    from shoal.config import (
        ChannelConfig,
        Config,
        ModelInfo,
    )
    from shoal.errors import (
        AuthError,
        BadRequest,
        BudgetExceeded,
        CircuitOpen,
        ConfigError,
        ContextOverflow,
        CorruptRecord,
        DeadlineExceeded,
        GuardrailTripped,
        LeaseLost,
        LoopDetected,
        MalformedResponse,
        OutputInvalid,
        Overloaded,
        ProviderError,
        ProviderTimeout,
        ProviderUnavailable,
        QuotaExhausted,
        RateLimited,
        RunBusy,
        RunError,
        RunExists,
        RunNotFound,
        ShoalError,
        StepFailed,
        StoreError,
        StoreUnavailable,
        StreamInterrupted,
        ToolFailed,
    )
    from shoal.flows.batch import Batch
    from shoal.flows.effects import effect_key, idempotent
    from shoal.flows.flow import Flow, FlowResult
    from shoal.flows.journal import StoreRecorder
    from shoal.flows.resume import resume, run_durable
    from shoal.observe.events import Event, EventBus
    from shoal.secrets import register_secret
    from shoal.stores import open_store
    from shoal.traffic.breaker import CircuitBreaker
    from shoal.traffic.limits import LocalLimiter
    from shoal.traffic.retry import Backoff, RetryPolicy
    from shoal.traffic.router import Router
    from shoal.types import (
        ChatRequest,
        ChatResponse,
        Message,
        ReasoningDelta,
        ReasoningPart,
        StreamEnd,
        StreamEvent,
        TextDelta,
        Thinking,
        ToolCall,
        ToolCallDelta,
        ToolSpec,
        Usage,
        UsageEvent,
    )
