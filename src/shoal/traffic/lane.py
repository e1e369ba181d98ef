"""A lane: one channel with its traffic policies, in the order a call meets them.

limiter (concurrency, RPM, TPM; in-process or Redis-shared) → breaker (health) →
adaptive concurrency (learns an unknown cap) → provider adapter (the wire); and the
channel's retry budget (retries it may receive, earned by its successes).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Any

from shoal.errors import ConfigError
from shoal.providers.profiles import profile_for
from shoal.traffic.retry_budget import ChannelRetryBudget

if TYPE_CHECKING:
    from shoal.clock import Clock
    from shoal.config import ChannelConfig
    from shoal.observe.events import EventBus
    from shoal.providers.base import Provider
    from shoal.traffic.adaptive import AdaptiveConcurrency
    from shoal.traffic.breaker import CircuitBreaker
    from shoal.traffic.limits import Limiter
    from shoal.traffic.redis_breaker import SharedBreaker

__all__ = ["Lane", "build_lane", "make_provider"]


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
        retry_budget: ChannelRetryBudget | None = None,
    ) -> None:
        self.channel = channel
        self.name = channel.name
        self.limiter = limiter
        self.breaker = breaker
        self.adaptive = adaptive
        # Retries this channel may receive, earned by its successes (traffic/retry_budget).
        self.retry_budget = retry_budget or ChannelRetryBudget(channel.name, clock=clock)
        self.clock = clock
        self.events = events
        self.pending = 0  # calls assigned to this lane and not yet finished (queued + running)
        # The provider's TPM counts prompt + max_tokens (Moonshot): settle no lower.
        self.tpm_counts_max_tokens = profile_for(
            channel.provider, channel.protocol).tpm_counts_max_tokens
        self._key_digest = ""
        self.keyed = self._read_key()  # read once: the environment is read at the edge
        self._provider = provider
        self._injected = provider is not None  # the caller's adapter: never rebuilt here
        self._provider_lock: asyncio.Lock | None = None
        self.shared_breaker: SharedBreaker | None = None

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
                if self.shared_breaker is not None:
                    await self.shared_breaker.start()  # no-op when already following
                self._provider = await make_provider(self.channel, self.clock)
        return self._provider

    def _read_key(self) -> bool:
        """Remember the channel's key fingerprint; say whether the lane can be used."""
        self._key_digest = _digest(self.channel.key())
        return self.channel.has_key()

    async def refresh_key(self, *, force: bool = False) -> bool:
        """Re-read the channel's key; when it changed (or ``force``), close the breaker
        and rebuild the adapter with the new key. True when the lane was refreshed.

        The Router calls this for a lane whose breaker opened on a rejected key (401/403),
        so fixing ``$API_KEY_ENV`` brings the channel back on the next call instead of
        after the hour-long auth cooldown.
        """
        before = self._key_digest
        self.keyed = self._read_key()
        if self._key_digest == before and not force:
            return False
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
        if self.shared_breaker is not None:
            await self.shared_breaker.aclose()
        provider, self._provider = self._provider, None
        if provider is not None:
            await provider.aclose()
        await self.limiter.aclose()


def _limiter(ch: ChannelConfig, adaptive: bool, *, clock: Clock, events: EventBus, redis: Any,
             adaptive_options: dict[str, Any]) -> Limiter:
    cap = ch.max_concurrency
    if cap is None and adaptive:
        cap = int(adaptive_options.get("initial", 1))
    if ch.shared:
        if not redis:
            raise ConfigError(
                f"channel {ch.name!r} has shared = true but no Redis is configured: set "
                "redis_url in shoal.toml or pass Router(redis=...)"
            )
        from shoal.traffic.redis_limits import RedisLimiter

        # The configured cap is a hard ceiling over any shared (learned) one; an
        # adaptive channel has none and seeds its starting cap itself.
        return RedisLimiter(
            redis, key=f"shoal:limit:{ch.name}", max_concurrency=ch.max_concurrency,
            rpm=ch.rpm, tpm=ch.tpm, lease_s=ch.lease_s, clock=clock,
            events=events, name=ch.name,
        )
    from shoal.traffic.limits import LocalLimiter

    return LocalLimiter(
        max_concurrency=cap, rpm=ch.rpm, tpm=ch.tpm, clock=clock, name=ch.name,
        events=events,
    )


def build_lane(
    ch: ChannelConfig,
    *,
    clock: Clock,
    events: EventBus,
    redis: Any = None,
    provider: Provider | None = None,
    breaker_options: dict[str, Any] | None = None,
    adaptive_options: dict[str, Any] | None = None,
    retry_budget_options: dict[str, Any] | None = None,
) -> Lane:
    """A channel's lane with its policies built from config and the Router's options."""
    from shoal.traffic.breaker import CircuitBreaker

    adaptive_options = adaptive_options or {}
    if ch.adaptive_max is not None:  # the channel's own bound beats the Router's default
        adaptive_options = {**adaptive_options, "max_limit": ch.adaptive_max}
    adaptive_on = ch.adaptive if ch.adaptive is not None else ch.max_concurrency is None
    limiter = _limiter(ch, adaptive_on, clock=clock, events=events, redis=redis,
                       adaptive_options=adaptive_options)
    adaptive = None
    if adaptive_on and ch.max_concurrency is None:
        from shoal.traffic.adaptive import AdaptiveConcurrency

        adaptive = AdaptiveConcurrency(limiter, clock=clock, events=events, **adaptive_options)
    breaker = CircuitBreaker(ch.name, clock=clock, events=events, key_hint=ch.api_key_env,
                             **(breaker_options or {}))
    retry_budget = ChannelRetryBudget(ch.name, clock=clock, **(retry_budget_options or {}))
    lane = Lane(ch, limiter=limiter, breaker=breaker, adaptive=adaptive, clock=clock,
                events=events, provider=provider, retry_budget=retry_budget)
    if ch.shared:  # one breaker for every process on this channel (traffic/redis_breaker)
        from shoal.traffic.redis_breaker import SharedBreaker
        from shoal.traffic.redis_link import RedisLink

        assert isinstance(limiter, RedisLink)
        lane.shared_breaker = SharedBreaker(limiter._redis(), breaker)
        lane.shared_breaker.start_soon()
    return lane
