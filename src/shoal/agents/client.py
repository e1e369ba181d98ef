"""The seam agents call models through: ``ModelClient``.

:class:`shoal.traffic.router.Router` satisfies it; unit tests use a scripted fake.
Agents and flows never talk to providers, limiters or retries themselves: all of
that lives below this seam.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from shoal.config import ModelInfo
from shoal.errors import ConfigError
from shoal.types import ChatRequest, ChatResponse

__all__ = ["ModelClient", "default_client", "default_model_of"]


@runtime_checkable
class ModelClient(Protocol):
    """What the runner needs from the layer below: one call, a token estimate, a price list."""

    async def complete(
        self, request: ChatRequest, *, deadline_s: float | None = None
    ) -> ChatResponse:
        """One model call with traffic control; raises only :mod:`shoal.errors` types."""
        ...

    def estimate_tokens(self, request: ChatRequest) -> int:
        """Pre-call estimate: prompt tokens plus ``max_tokens``."""
        ...

    def model_info(self, name: str) -> ModelInfo:
        """The catalog entry (window, prices) for a model name or alias."""
        ...


def default_client() -> ModelClient:
    """A Router over ``Config.load()`` (``$SHOAL_CONFIG`` or ``./shoal.toml`` plus the catalog).

    The caller owns it and must ``await client.aclose()``; flows and batches that build
    one themselves close it when they finish.
    """
    from shoal.config import Config
    from shoal.traffic.router import Router

    return Router(Config.load())


def default_model_of(client: ModelClient) -> str:
    """The model to use when an agent names none: the client's config default."""
    config = getattr(client, "config", None)
    default = getattr(config, "default_model", None)
    if callable(default):
        name = default()
        if isinstance(name, str):
            return name
    raise ConfigError(
        "this agent has no model and the client has no default; "
        "pass Agent(..., model='<catalog name>') or Runner(..., default_model=...)"
    )
