"""The Router: every model call passes through it.

For one logical call it resolves the model (and its fallbacks) to lanes, then
repeats, under ONE retry budget that spans every lane and fallback:

1. pick the healthy lane of the first model that has one, least loaded first
   (join-shortest-queue weighted by capacity × weight);
2. wait FIFO in that lane's limiter (bounded by the call's deadline) — when every
   channel is saturated the call waits instead of failing;
3. call the provider; on success settle the TPM reservation with real usage,
   feed the breaker and adaptive concurrency, price the answer;
4. on failure: never-retryable errors (bad request, context overflow) raise at once;
   auth/quota errors exclude that lane for this call and fail over; retryable errors
   fail over at once to another healthy lane, or wait (Retry-After first, then
   backoff) and retry the same lane when it is the only one.

A streamed call fails over only until its first token reaches the caller; after
that a cut stream raises ``StreamInterrupted``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.clock import Clock, RealClock
from shoal.config import Config, ModelInfo
from shoal.errors import (
    AuthError,
    BadRequest,
    CircuitOpen,
    ConfigError,
    DeadlineExceeded,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    ShoalError,
)
from shoal.observe.events import EventBus
from shoal.tokens import count_text, estimate_call_tokens, estimate_prompt_tokens
from shoal.traffic.lane import Lane
from shoal.traffic.retry import RetryBudget, RetryPolicy
from shoal.types import ChatRequest, ChatResponse, StreamEnd, StreamEvent, TextDelta, ToolCallDelta

if TYPE_CHECKING:
    from shoal.config import ChannelConfig
    from shoal.providers.base import Provider
    from shoal.traffic.limits import Limiter, Permit

__all__ = ["Router"]


@dataclass(slots=True)
class _Call:
    """The state of one logical call across all its attempts."""

    request: ChatRequest
    chain: list[tuple[ModelInfo, list[Lane]]]
    budget: RetryBudget
    excluded: set[str] = field(default_factory=set)  # lanes out for this call (auth, quota)
    avoid: str | None = None  # the lane that just failed: prefer another
    last: BaseException | None = None


@dataclass(slots=True)
class _Attempt:
    """One admitted try: the model and lane chosen and the limiter permit held."""

    info: ModelInfo
    lane: Lane
    permit: Permit

    def release(self) -> None:
        """Give the limiter slot back; the caller judges the channel (breaker) separately."""
        self.permit.release()
        self.lane.pending -= 1


class Router:
    """Model name → channels, with limits, breakers, retries and failover.

    ``redis``: a URL or ``redis.asyncio.Redis`` used for channels with ``shared = true``
    (limits shared across processes and hosts). ``providers``: adapters to use for named
    channels instead of building them from config (e.g. a custom Provider).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        clock: Clock | None = None,
        events: EventBus | None = None,
        retry: RetryPolicy | None = None,
        redis: Any = None,
        providers: dict[str, Provider] | None = None,
        breaker_options: dict[str, Any] | None = None,
        adaptive_options: dict[str, Any] | None = None,
    ) -> None:
        self.config = config if config is not None else Config.load()
        self.clock: Clock = clock or RealClock()
        self.events = events or EventBus(self.clock)
        self.retry = retry or RetryPolicy()
        self._redis = redis if redis is not None else self.config.redis_url
        self._providers = dict(providers or {})
        self._breaker_options = dict(breaker_options or {})
        self._adaptive_options = dict(adaptive_options or {})
        self._lanes: dict[str, Lane] = {}
        self._chains: dict[str, list[tuple[ModelInfo, list[Lane]]]] = {}

    # -- lanes --------------------------------------------------------------------------

    def _limiter(self, ch: ChannelConfig, adaptive: bool) -> Limiter:
        cap = ch.max_concurrency
        if cap is None and adaptive:
            cap = int(self._adaptive_options.get("initial", 1))
        if ch.shared:
            if not self._redis:
                raise ConfigError(
                    f"channel {ch.name!r} has shared = true but no Redis is configured: set "
                    "redis_url in shoal.toml or pass Router(redis=...)"
                )
            from shoal.traffic.redis_limits import RedisLimiter

            return RedisLimiter(
                self._redis, key=f"shoal:limit:{ch.name}", max_concurrency=cap, rpm=ch.rpm,
                tpm=ch.tpm, clock=self.clock, events=self.events, name=ch.name,
            )
        from shoal.traffic.limits import LocalLimiter

        return LocalLimiter(
            max_concurrency=cap, rpm=ch.rpm, tpm=ch.tpm, clock=self.clock, name=ch.name,
            events=self.events,
        )

    def lane(self, name: str) -> Lane:
        lane = self._lanes.get(name)
        if lane is not None:
            return lane
        ch = self.config.channels.get(name)
        if ch is None:
            raise ConfigError(f"unknown channel {name!r}; defined: {sorted(self.config.channels)}")
        from shoal.traffic.breaker import CircuitBreaker

        adaptive_on = ch.adaptive if ch.adaptive is not None else ch.max_concurrency is None
        limiter = self._limiter(ch, adaptive_on)
        adaptive = None
        if adaptive_on and ch.max_concurrency is None:
            from shoal.traffic.adaptive import AdaptiveConcurrency

            adaptive = AdaptiveConcurrency(
                limiter, clock=self.clock, events=self.events, **self._adaptive_options
            )
        breaker = CircuitBreaker(name, clock=self.clock, events=self.events,
                                 **self._breaker_options)
        lane = Lane(ch, limiter=limiter, breaker=breaker, adaptive=adaptive, clock=self.clock,
                    events=self.events, provider=self._providers.get(name))
        self._lanes[name] = lane
        return lane

    def model_info(self, name: str) -> ModelInfo:
        return self.config.model(name)

    def _chain(self, model: str) -> list[tuple[ModelInfo, list[Lane]]]:
        chain = self._chains.get(model)
        if chain is None:
            chain = self._chains[model] = self._resolve_chain(model)
        return chain

    def _resolve_chain(self, model: str) -> list[tuple[ModelInfo, list[Lane]]]:
        first = self.config.model(model)
        chain, seen = [], set()
        for info in [first, *(self.config.model(f) for f in first.fallbacks)]:
            if info.name in seen:
                continue
            seen.add(info.name)
            chain.append((info, [self.lane(c) for c in info.channels]))
        return chain

    def estimate_tokens(self, request: ChatRequest, info: ModelInfo | None = None) -> int:
        return estimate_call_tokens(request, info or self.config.model(request.model))

    def _pick(
        self, chain: list[tuple[ModelInfo, list[Lane]]], excluded: set[str], avoid: str | None
    ) -> tuple[ModelInfo, Lane] | None:
        now = self.clock.now()
        for info, lanes in chain:
            healthy = [
                lane for lane in lanes
                if lane.keyed and lane.name not in excluded and lane.breaker.available(now)
            ]
            if not healthy:
                continue
            preferred = [lane for lane in healthy if lane.name != avoid] or healthy
            return info, min(preferred, key=Lane.load)
        return None

    # -- one attempt's bookkeeping ------------------------------------------------------

    async def _admit(self, call: _Call) -> _Attempt:
        request, chain, budget, last_error = call.request, call.chain, call.budget, call.last
        while True:
            pick = self._pick(chain, call.excluded, call.avoid)
            if pick is None:
                if isinstance(last_error, ShoalError):
                    raise last_error
                lanes_all = [lane for _, lanes in chain for lane in lanes]
                if not any(lane.keyed for lane in lanes_all):
                    envs = sorted({f"${lane.channel.api_key_env}" for lane in lanes_all
                                   if lane.channel.api_key_env})
                    raise ConfigError(
                        f"no API key for {request.model!r} or its fallbacks: set "
                        f"{' or '.join(envs)} (or api_key in shoal.toml), or pick another "
                        "model; with no keys at all, 'smollm2-135m' runs offline")
                reopen = [lane.breaker.retry_at for lane in lanes_all
                          if lane.breaker.retry_at is not None]
                raise CircuitOpen(
                    f"no healthy channel for {request.model!r} (channels: "
                    f"{', '.join(lane.name for lane in lanes_all)}); their circuit breakers "
                    "are open", retry_at=min(reopen, default=None),
                )
            info, lane = pick
            tokens = self.estimate_tokens(request, info)
            lane.pending += 1
            waited_from = self.clock.now()
            try:
                permit = await lane.limiter.acquire(tokens, timeout=budget.remaining())
            except DeadlineExceeded as exc:
                lane.pending -= 1
                raise DeadlineExceeded(
                    f"deadline passed while waiting for capacity on {lane.name!r} "
                    f"for {request.model!r}", last_error=last_error,
                ) from exc
            except BaseException:
                lane.pending -= 1
                raise
            if not lane.breaker.allow():
                # The breaker opened while we queued: give the slot back, choose again.
                _Attempt(info, lane, permit).release()
                continue
            waited = self.clock.now() - waited_from
            if self.events.active:
                self.events.emit("admit", channel=lane.name, model=info.name, waited_s=waited,
                                 tokens=tokens, attempt=budget.attempts)
            return _Attempt(info, lane, permit)

    def _failed(self, att: _Attempt, err: ProviderError) -> bool:
        """Release the slot and teach the channel's policies; True when the error was our
        own overshoot (adaptive concurrency admitted the call above the cap it now holds)."""
        lane, permit = att.lane, att.permit
        if isinstance(err, RateLimited):
            # Backpressure, not ill health: it teaches adaptive concurrency, not the breaker.
            # Lower the cap *before* freeing the slot, or the limiter would hand the slot
            # to the next waiter at the old, too-high level (a second 429).
            overshoot = (lane.adaptive.on_rate_limited(permit.in_flight)
                         if lane.adaptive is not None else False)
            att.release()
            return overshoot
        att.release()
        lane.breaker.record_failure(err)
        if lane.adaptive is not None and isinstance(err, ProviderUnavailable | ProviderTimeout):
            lane.adaptive.on_overload()
        return False

    def _succeeded(self, request: ChatRequest, att: _Attempt,
                   response: ChatResponse) -> ChatResponse:
        info, lane, permit = att.info, att.lane, att.permit
        usage = response.usage
        if usage.total_tokens == 0 and (response.text or response.tool_calls):
            # Some servers (llama.cpp) send no usage in streams: estimate it rather than
            # let budgets and TPM see a free call.
            usage.input_tokens = estimate_prompt_tokens(request, info.encoding)
            usage.output_tokens = count_text(
                response.text + "".join(c.arguments for c in response.tool_calls),
                info.encoding)
        permit.settle(usage.input_tokens + usage.output_tokens)
        if lane.adaptive is not None:  # before the release: a raised cap admits at once
            lane.adaptive.on_success(response.latency_s, permit.in_flight)
        att.release()
        lane.breaker.record_success()
        response.cost_usd = info.cost(usage.input_tokens, usage.output_tokens,
                                      usage.cached_input_tokens)
        response.model = info.name
        response.channel = lane.name
        return response

    async def _next(self, call: _Call, att: _Attempt, err: ProviderError) -> None:
        """After a failed attempt: settle it, then raise, or set the lane to avoid next
        (after waiting)."""
        overshoot = self._failed(att, err)
        call.last = err
        call.avoid = await self._decide(call, att.lane, err, overshoot)

    async def _decide(self, call: _Call, lane: Lane, err: ProviderError,
                      overshoot: bool) -> str | None:
        request, chain, budget, excluded = call.request, call.chain, call.budget, call.excluded
        if isinstance(err, BadRequest):
            raise err  # the request itself is wrong (incl. context overflow): never retried
        if isinstance(err, AuthError | QuotaExhausted):
            excluded.add(lane.name)
            if not budget.record_attempt(err) or self._pick(chain, excluded, None) is None:
                raise err
            self.events.emit("failover", channel=lane.name, model=request.model,
                             error=type(err).__name__)
            return lane.name
        if overshoot:
            # A 429 provoked by our own adaptive probe: the limiter, now lowered, is the wait
            # (the retry goes out only when one of our calls finishes), so no extra sleep.
            # Every other 429 honours its Retry-After.
            if budget.next_delay(err, failover=True) is None:
                raise err
            self.events.emit("retry", channel=lane.name, model=request.model, delay_s=0.0,
                             error=type(err).__name__, attempt=budget.attempts,
                             reason="own_overshoot")
            return None
        alternative = self._pick(chain, excluded, lane.name)
        failover = alternative is not None and alternative[1] is not lane
        delay = budget.next_delay(err, failover=failover)
        if delay is None:
            raise err
        if failover and alternative is not None:
            self.events.emit("failover", channel=lane.name, model=request.model,
                             to=alternative[1].name, error=type(err).__name__)
            return lane.name  # another lane is healthy: go there now, no backoff
        self.events.emit("retry", channel=lane.name, model=request.model, delay_s=delay,
                         error=type(err).__name__, attempt=budget.attempts)
        await self.clock.sleep(delay)
        return None

    def _budget(self, deadline_s: float | None) -> RetryBudget:
        policy = self.retry if deadline_s is None else self.retry.replace(deadline_s=deadline_s)
        return policy.budget(self.clock)

    # -- public calls -------------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, deadline_s: float | None = None
                       ) -> ChatResponse:
        """One logical call: the normalized, priced answer, or one shoal error."""
        call = _Call(request, self._chain(request.model), self._budget(deadline_s))
        while True:
            att = await self._admit(call)
            try:
                provider = att.lane.ready_provider or await att.lane.provider()
                response = await provider.complete(
                    request, model=att.lane.channel.wire_model(att.info))
            except ProviderError as err:
                await self._next(call, att, err)
                continue
            except BaseException:
                att.release()
                raise
            return self._succeeded(request, att, response)

    async def stream(self, request: ChatRequest, *, deadline_s: float | None = None
                     ) -> AsyncIterator[StreamEvent]:
        """Stream one logical call; fails over only before the first token is yielded."""
        call = _Call(request, self._chain(request.model), self._budget(deadline_s))
        while True:
            att = await self._admit(call)
            held: list[StreamEvent] = []
            it: AsyncIterator[StreamEvent] | None = None
            try:
                provider = att.lane.ready_provider or await att.lane.provider()
                it = provider.stream(request, model=att.lane.channel.wire_model(att.info))
                async for event in it:  # buffer until the first token: failover stays possible
                    held.append(event)
                    if isinstance(event, TextDelta | ToolCallDelta | StreamEnd):
                        break
            except ProviderError as err:
                await self._next(call, att, err)
                continue
            except BaseException:
                att.release()
                if it is not None:  # cancelled mid-buffer: give the connection back now
                    aclose = getattr(it, "aclose", None)
                    if aclose is not None:
                        with contextlib.suppress(Exception):
                            await aclose()
                raise
            async for event in self._finish_stream(request, att, it, held):
                yield event
            return

    async def _finish_stream(self, request: ChatRequest, att: _Attempt,
                             it: AsyncIterator[StreamEvent], held: list[StreamEvent]
                             ) -> AsyncIterator[StreamEvent]:
        finished = False

        async def events() -> AsyncIterator[StreamEvent]:
            for event in held:
                yield event
            if not held or not isinstance(held[-1], StreamEnd):
                async for event in it:
                    yield event

        try:
            async for event in events():
                if isinstance(event, StreamEnd):
                    finished = True
                    yield StreamEnd(self._succeeded(request, att, event.response))
                else:
                    yield event
        except ProviderError as err:
            # After the first token the caller has partial output: no failover, surface it.
            self._failed(att, err)
            finished = True
            raise
        finally:
            if not finished:  # the caller stopped early or was cancelled
                att.release()
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()

    def stats(self) -> list[dict[str, Any]]:
        return [lane.stats() for lane in self._lanes.values()]

    async def aclose(self) -> None:
        lanes, self._lanes = list(self._lanes.values()), {}
        self._chains.clear()
        for lane in lanes:
            await lane.aclose()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
