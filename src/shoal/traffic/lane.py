"""A lane: one channel with its traffic policies, in the order a call meets them.

limiter (concurrency, RPM, TPM; in-process or Redis-shared) → breaker (health) →
adaptive concurrency (learns an unknown cap) → provider adapter (the wire).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Any

from shoal.errors import ConfigError

if TYPE_CHECKING:
    from shoal.clock import Clock
    from shoal.config import ChannelConfig
    from shoal.observe.events import EventBus
    from shoal.providers.base import Provider
    from shoal.traffic.adaptive import AdaptiveConcurrency
    from shoal.traffic.breaker import CircuitBreaker
    from shoal.traffic.limits import Limiter

__all__ = ["Lane", "make_provider"]


def _digest(key: str | None) -> str:
    """A fingerprint of a key, so the lane can tell it changed without keeping it twice."""
    return "" if key is None else hashlib.sha256(key.encode()).hexdigest()

OFFLINE_URL = "local://llama-cpp"


async def make_provider(channel: ChannelConfig, clock: Clock) -> Provider:
    """The adapter for a channel's protocol; starts the offline model if the channel is it."""
    base_url = channel.base_url
    if base_url == OFFLINE_URL:
        from shoal.offline import ensure_offline_server

        base_url = await ensure_offline_server()
    if channel.protocol == "anthropic":
        from shoal.providers.anthropic import AnthropicProvider

        return AnthropicProvider.from_channel(channel, clock=clock, base_url=base_url)
    from shoal.providers.openai_compat import OpenAICompatProvider

    return OpenAICompatProvider.from_channel(channel, clock=clock, base_url=base_url)


class Lane:
    """One channel's runtime state inside a Router."""

    def __init__(
        self,
        channel: ChannelConfig,
        *,
        limiter: Limiter,
        breaker: CircuitBreaker,
        adaptive: AdaptiveConcurrency | None,
        clock: Clock,
        events: EventBus,
        provider: Provider | None = None,
    ) -> None:
        self.channel = channel
        self.name = channel.name
        self.limiter = limiter
        self.breaker = breaker
        self.adaptive = adaptive
        self.clock = clock
        self.events = events
        self.pending = 0  # calls assigned to this lane and not yet finished (queued + running)
        self.keyed = channel.has_key()  # read once: the environment is read at the edge
        self._key_digest = _digest(channel.key())
        self._provider = provider
        self._injected = provider is not None  # the caller's adapter: never rebuilt here
        self._provider_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"Lane({self.name!r}, pending={self.pending}, breaker={self.breaker.state})"

    def load(self) -> float:
        """Join-shortest-queue score: pending calls per unit of (weighted) capacity."""
        cap = self.limiter.capacity
        return (self.pending + 1) / ((cap if cap else 64) * self.channel.weight)

    @property
    def ready_provider(self) -> Provider | None:
        """The adapter once built (the hot path skips an await)."""
        return self._provider

    async def provider(self) -> Provider:
        if self._provider is not None:
            return self._provider
        if not self.keyed:  # the router skips keyless lanes; this guards direct use
            raise ConfigError(
                f"channel {self.name!r} needs an API key: set ${self.channel.api_key_env} "
                "(or api_key in shoal.toml)"
            )
        if self._provider_lock is None:
            self._provider_lock = asyncio.Lock()
        async with self._provider_lock:
            if self._provider is None:
                self._provider = await make_provider(self.channel, self.clock)
        return self._provider

    async def refresh_key(self, *, force: bool = False) -> bool:
        """Re-read the channel's key; when it changed (or ``force``), close the breaker
        and rebuild the adapter with the new key. True when the lane was refreshed.

        The Router calls this for a lane whose breaker opened on a rejected key (401/403),
        so fixing ``$API_KEY_ENV`` brings the channel back on the next call instead of
        after the hour-long auth cooldown.
        """
        digest = _digest(self.channel.key())
        if digest == self._key_digest and not force:
            return False
        self._key_digest = digest
        self.keyed = self.channel.has_key()
        self.breaker.reset()
        if not self._injected:
            provider, self._provider = self._provider, None
            if provider is not None:
                await provider.aclose()
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "channel": self.name,
            "pending": self.pending,
            "in_flight": self.limiter.in_flight,
            "capacity": self.limiter.capacity,
            "breaker": str(self.breaker.state),
        }

    async def aclose(self) -> None:
        provider, self._provider = self._provider, None
        if provider is not None:
            await provider.aclose()
        await self.limiter.aclose()
