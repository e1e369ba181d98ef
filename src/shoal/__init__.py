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
    # core types
    "ChatRequest": "shoal.types",
    "ChatResponse": "shoal.types",
    "Message": "shoal.types",
    "StreamEnd": "shoal.types",
    "StreamEvent": "shoal.types",
    "TextDelta": "shoal.types",
    "ToolCall": "shoal.types",
    "ToolCallDelta": "shoal.types",
    "ToolSpec": "shoal.types",
    "Usage": "shoal.types",
    "UsageEvent": "shoal.types",
    # errors
    "AuthError": "shoal.errors",
    "BadRequest": "shoal.errors",
    "BudgetExceeded": "shoal.errors",
    "CircuitOpen": "shoal.errors",
    "ConfigError": "shoal.errors",
    "ContextOverflow": "shoal.errors",
    "DeadlineExceeded": "shoal.errors",
    "LoopDetected": "shoal.errors",
    "MalformedResponse": "shoal.errors",
    "OutputInvalid": "shoal.errors",
    "ProviderError": "shoal.errors",
    "ProviderTimeout": "shoal.errors",
    "ProviderUnavailable": "shoal.errors",
    "QuotaExhausted": "shoal.errors",
    "RateLimited": "shoal.errors",
    "RunError": "shoal.errors",
    "ShoalError": "shoal.errors",
    "StreamInterrupted": "shoal.errors",
    # config, traffic, time, events
    "ChannelConfig": "shoal.config",
    "Config": "shoal.config",
    "ModelInfo": "shoal.config",
    "Router": "shoal.traffic.router",
    "RetryPolicy": "shoal.traffic.retry",
    "Backoff": "shoal.traffic.retry",
    "CircuitBreaker": "shoal.traffic.breaker",
    "LocalLimiter": "shoal.traffic.limits",
    "Clock": "shoal.clock",
    "RealClock": "shoal.clock",
    "VirtualClock": "shoal.clock",
    "Event": "shoal.observe.events",
    "EventBus": "shoal.observe.events",
}

__all__ = [
    "AuthError",
    "Backoff",
    "BadRequest",
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
    "DeadlineExceeded",
    "Event",
    "EventBus",
    "LocalLimiter",
    "LoopDetected",
    "MalformedResponse",
    "Message",
    "ModelInfo",
    "OutputInvalid",
    "ProviderError",
    "ProviderTimeout",
    "ProviderUnavailable",
    "QuotaExhausted",
    "RateLimited",
    "RealClock",
    "RetryPolicy",
    "Router",
    "RunError",
    "ShoalError",
    "StreamEnd",
    "StreamEvent",
    "StreamInterrupted",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolSpec",
    "Usage",
    "UsageEvent",
    "VirtualClock",
    "__version__",
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
    from shoal.clock import Clock, RealClock, VirtualClock
    from shoal.config import ChannelConfig, Config, ModelInfo
    from shoal.errors import (
        AuthError,
        BadRequest,
        BudgetExceeded,
        CircuitOpen,
        ConfigError,
        ContextOverflow,
        DeadlineExceeded,
        LoopDetected,
        MalformedResponse,
        OutputInvalid,
        ProviderError,
        ProviderTimeout,
        ProviderUnavailable,
        QuotaExhausted,
        RateLimited,
        RunError,
        ShoalError,
        StreamInterrupted,
    )
    from shoal.observe.events import Event, EventBus
    from shoal.traffic.breaker import CircuitBreaker
    from shoal.traffic.limits import LocalLimiter
    from shoal.traffic.retry import Backoff, RetryPolicy
    from shoal.traffic.router import Router
    from shoal.types import (
        ChatRequest,
        ChatResponse,
        Message,
        StreamEnd,
        StreamEvent,
        TextDelta,
        ToolCall,
        ToolCallDelta,
        ToolSpec,
        Usage,
        UsageEvent,
    )
