"""The Router: every model call passes through it.

For one logical call it resolves the model (and its fallbacks) to lanes, then
repeats, under ONE retry budget that spans every lane and fallback:

1. pick a lane: on the first attempt the least loaded healthy lane of the first model
   that has one (join-shortest-queue weighted by capacity × weight); after failures the
   lane this call has failed on least, so the model's other channels and then its
   fallbacks are tried before a failed lane is tried again;
2. wait FIFO in that lane's limiter (bounded by the call's deadline) — when every
   channel is saturated the call waits instead of failing; when every breaker is open
   it waits for the earliest probe, if that comes before the deadline;
3. call the provider, cancelled if the call's deadline passes; on success settle the
   TPM reservation with real usage, feed the breaker and adaptive concurrency, price
   the answer and any billed answers discarded on the way (``wasted``);
4. on failure: never-retryable errors (bad request, context overflow) raise at once;
   auth/quota errors exclude that lane for this call and fail over; retryable errors
   fail over at once to a lane this call has failed on less, or wait (Retry-After
   first, then backoff) and retry.

A streamed call fails over only until its first token (text, tool call or reasoning)
reaches the caller; after that a cut stream raises ``StreamInterrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from shoal.clock import Clock, RealClock
from shoal.config import Config, ModelInfo
from shoal.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    ProviderError,
    QuotaExhausted,
    RetryDeclined,
    ShoalError,
    StreamInterrupted,
)
from shoal.observe.context import leave
from shoal.observe.events import WAIT, EventBus
from shoal.providers.caching import with_cache_settings
from shoal.tokens import call_token_bound, estimate_call_tokens
from shoal.traffic.call import Attempt, CallState, deadline_error, no_lane_error, pick, usable
from shoal.traffic.call_events import (
    admitted,
    observed_complete,
    observed_stream,
    provider_scope,
)
from shoal.traffic.deadline import clock_timeout
from shoal.traffic.lane import Lane, build_lane
from shoal.traffic.outcome import attempt_abandoned, attempt_failed, attempt_succeeded
from shoal.traffic.retirement import Warned, current_chain, day_of
from shoal.traffic.retry import RetryBudget, RetryPolicy
from shoal.types import (
    ChatRequest,
    ChatResponse,
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
)
from shoal.validate import validate_request

if TYPE_CHECKING:
    from shoal.providers.base import Provider

__all__ = ["Router"]

# The first of these committed to a stream ends failover: the caller has seen output.
_FIRST_TOKEN = (TextDelta, ToolCallDelta, ReasoningDelta, StreamEnd)


def _reservation(request: ChatRequest, info: ModelInfo, lane: Lane) -> int:
    """The tokens an attempt reserves on ``lane``: the call's estimate where its limiter
    keeps a TPM window, else 0. Either way the call must fit the model's context window
    (else ``ContextOverflow``), which the bytes of the prompt show without tokenizing it
    (~0.1-0.4 µs a token, the Router's largest cost for a long fresh prompt)."""
    counts = lane.limiter.counts_tokens
    if not counts and call_token_bound(request, info) <= info.context_window:
        return 0
    tokens = estimate_call_tokens(request, info)
    if tokens > info.context_window:  # the prompt (+ max_tokens) cannot fit
        validate_request(request, info)  # raises ContextOverflow with the numbers
    return tokens if counts else 0


async def _aclose(it: AsyncIterator[StreamEvent] | None) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()



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
        retry_budget_options: dict[str, Any] | None = None,
    ) -> None:
        self.config = config if config is not None else Config.load()
        self.clock: Clock = clock or RealClock()
        self.events = events or EventBus(self.clock)
        self.retry = retry or RetryPolicy()
        self._redis = redis if redis is not None else self.config.redis_url
        self._providers = dict(providers or {})
        self._breaker_options = dict(breaker_options or {})
        self._adaptive_options = dict(adaptive_options or {})
        self._retry_budget_options = dict(retry_budget_options or {})
        self._lanes: dict[str, Lane] = {}
        self._chains: dict[str, list[tuple[ModelInfo, list[Lane]]]] = {}
        # the clock's now() when the UTC day of a cached chain with a dated model ends
        # (its retirement is decided again then: shoal.traffic.retirement)
        self._day_ends: float | None = None
        self._retire_warned: Warned = set()  # each retirement warning once per Router

    # -- lanes --------------------------------------------------------------------------

    def lane(self, name: str) -> Lane:
        lane = self._lanes.get(name)
        if lane is not None:
            return lane
        ch = self.config.channels.get(name)
        if ch is None:
            raise ConfigError(f"unknown channel {name!r}; defined: {sorted(self.config.channels)}")
        lane = self._lanes[name] = build_lane(
            ch, clock=self.clock, events=self.events, redis=self._redis,
            provider=self._providers.get(name), breaker_options=self._breaker_options,
            adaptive_options=self._adaptive_options,
            retry_budget_options=self._retry_budget_options)
        return lane

    def model_info(self, name: str) -> ModelInfo:
        return self.config.model(name)

    def _chain(self, model: str) -> list[tuple[ModelInfo, list[Lane]]]:
        if self._day_ends is not None and self.clock.now() >= self._day_ends:
            self._chains.clear()  # a new day: every dated chain is decided again
            self._day_ends = None
        chain = self._chains.get(model)
        if chain is None:
            chain = self._dated_chain(model)
        return chain

    def _dated_chain(self, model: str) -> list[tuple[ModelInfo, list[Lane]]]:
        """Resolve ``model``'s chain and cache it; one holding a model with a retirement
        date is checked against today (shoal.traffic.retirement) and kept for the day."""
        chain = self._resolve_chain(model)
        if any(info.retires is not None for info, _ in chain):
            today, self._day_ends = day_of(self.clock)
            # raises ModelRetired when nothing is left: nothing cached then
            chain = current_chain(chain, today, self._retire_warned)
        self._chains[model] = chain
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

    async def _sleep_toward(self, call: CallState, at: float | None, reason: str) -> bool:
        """Sleep toward clock time ``at`` (at most a second at a time: what the caller
        waits for may come sooner), emitting ``wait``; False, without sleeping, when
        ``at`` is None or not before the call's deadline."""
        deadline = call.budget.deadline
        if at is None or (deadline is not None and at >= deadline):
            return False
        now = self.clock.now()
        if self.events.active:
            self.events.emit(WAIT, model=call.request.model, reason=reason, wait_s=at - now)
        await self.clock.sleep(min(max(at - now, 0.0), 1.0))
        return True

    async def _wait_for_probe(self, call: CallState) -> bool:
        """Every usable lane's breaker refuses now: wait for the earliest one to let a
        probe through, if that is within the call's deadline. False: give up."""
        lanes = usable(call)
        if not lanes:
            return False
        for lane in lanes:  # a channel shut by a rejected key comes back once it changes
            if isinstance(lane.breaker.last_error, AuthError) and await lane.refresh_key():
                return True
        now = self.clock.now()
        reopen = min(lane.breaker.next_allowed_at(now) for lane in lanes)
        return await self._sleep_toward(call, reopen, "breakers_open")

    async def _wait_for_retry_token(self, call: CallState, lane: Lane) -> None:
        """The lane's retry budget is spent (it has been failing more than it serves):
        wait for its next token within the call's deadline, or give up with the last
        error. Retries to a failing channel thus stay near its floor rate, not a storm."""
        if not await self._sleep_toward(call, lane.retry_budget.next_token_at(),
                                        "retry_budget"):
            last = call.last
            assert isinstance(last, ShoalError)  # a retry follows a failed attempt
            raise call.charged(last)

    # -- one attempt's bookkeeping ------------------------------------------------------

    async def _admit(self, call: CallState, *, prepare: bool = False) -> Attempt:
        """The next attempt's lane, its slot taken. ``prepare``: a call that has to queue
        builds its request for that lane while it waits (``CallState.prepare_early``)."""
        request, budget = call.request, call.budget
        while True:
            chosen = pick(call, self.clock.now())
            if chosen is None:
                if await self._wait_for_probe(call):
                    continue
                raise call.charged(no_lane_error(call, self.clock.now()))
            info, lane = chosen
            tokens = _reservation(request, info, lane)
            retry = budget.attempts > 0
            if retry and not lane.retry_budget.try_withdraw():
                await self._wait_for_retry_token(call, lane)
                continue
            lane.pending += 1
            waited_from = self.clock.now()
            try:
                permit = lane.limiter.try_acquire(tokens)  # a free slot: no await
                queued = permit is None
                if permit is None:
                    if prepare:
                        call.prepare_early(info, lane)
                    permit = await lane.limiter.acquire(tokens, timeout=budget.remaining())
            except DeadlineExceeded as exc:
                lane.pending -= 1
                raise call.charged(DeadlineExceeded(
                    f"deadline passed while waiting for capacity on {lane.name!r} "
                    f"for {request.model!r}: {exc}", last_error=call.last,
                )) from exc
            except BaseException:
                lane.pending -= 1
                if retry:
                    lane.retry_budget.refund()
                raise
            now = self.clock.now()
            call.queue_s += now - waited_from
            if not lane.breaker.allow():
                # The breaker opened while we queued: give the slot back, choose again.
                Attempt(info, lane, permit, now).release()
                if retry:
                    lane.retry_budget.refund()
                continue
            if self.events.active:  # ``admit`` only for a slot waited for, or a retry's
                admitted(self.events, lane.name, info.name, waited_s=now - waited_from,
                         tokens=tokens, attempt=budget.attempts, emit=queued or retry)
            return Attempt(info, lane, permit, now)

    async def _next(self, call: CallState, att: Attempt, err: ProviderError) -> None:
        """After a failed attempt: settle it, then raise, or wait before the next."""
        overshoot = attempt_failed(att, err)
        call.failed(att, err)
        call.avoid = att.lane.name
        try:
            await self._decide(call, att.lane, err, overshoot)
        except ShoalError as exc:
            raise call.charged(exc) from None

    async def _decide(self, call: CallState, lane: Lane, err: ProviderError,
                      overshoot: bool) -> None:
        request, budget = call.request, call.budget
        if isinstance(err, BadRequest):
            raise err  # the request itself is wrong (incl. context overflow): never retried
        if isinstance(err, AuthError | QuotaExhausted | RetryDeclined):
            # Out for this call: a key or account this channel cannot serve with, or a
            # provider (or proxy) that said not to send this again (x-should-retry:
            # false). Another channel or fallback model may still answer.
            call.excluded.add(lane.name)
            if not budget.record_attempt(err) or not usable(call):
                raise err
            self.events.emit("failover", channel=lane.name, model=request.model,
                             error=type(err).__name__)
            return
        if overshoot:
            # A 429 provoked by our own adaptive probe: the limiter, now lowered, is the wait
            # (the retry goes out only when one of our calls finishes), so no extra sleep.
            # Every other 429 honours its Retry-After.
            if budget.next_delay(err, failover=True) is None:
                raise err
            self.events.emit("retry", channel=lane.name, model=request.model, delay_s=0.0,
                             error=type(err).__name__, attempt=budget.attempts,
                             reason="own_overshoot")
            return
        alternative = pick(call, self.clock.now())
        # Go elsewhere at once only to a lane this call has failed on less: bouncing
        # between lanes that all failed it would be a retry storm without backoff.
        failover = alternative is not None and (
            call.failures.get(alternative[1].name, 0) < call.failures.get(lane.name, 0))
        # A Retry-After binds the lane that sent it, not another one the call goes to next.
        delay = budget.next_delay(err, failover=failover, elsewhere=alternative is not None
                                  and alternative[1] is not lane)
        if delay is None:
            raise err
        if failover and alternative is not None:
            self.events.emit("failover", channel=lane.name, model=request.model,
                             to=alternative[1].name, error=type(err).__name__)
            return
        self.events.emit("retry", channel=lane.name, model=request.model, delay_s=delay,
                         error=type(err).__name__, attempt=budget.attempts)
        await self.clock.sleep(delay)

    def _budget(self, deadline_s: float | None) -> RetryBudget:
        policy = self.retry if deadline_s is None else self.retry.replace(deadline_s=deadline_s)
        return policy.budget(self.clock)

    async def _behind_burst(self, model: str) -> None:
        """Yield once when a new call would queue anyway (every lane of its model at its
        limit), so that in a burst the calls that took a free slot get their bodies on
        the wire before 200 others validate and queue (docs/DECISIONS.md)."""
        chain = self._chains.get(model)
        if chain and all(lane.limiter.retry_in() != 0.0 for lane in chain[0][1]):
            await asyncio.sleep(0)

    def _call(self, request: ChatRequest, deadline_s: float | None) -> CallState:
        validate_request(request)  # what no provider accepts fails here, before any request
        return CallState(request, self._chain(request.model), self._budget(deadline_s))

    def _deadline(self, call: CallState, att: Attempt | None, where: str) -> DeadlineExceeded:
        return deadline_error(call, None if att is None else att.lane.name, where)

    # -- public calls -------------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, deadline_s: float | None = None
                       ) -> ChatResponse:
        """One logical call: the normalized, priced answer, or one shoal error.

        ``deadline_s`` (default: the retry policy's) bounds everything: waiting for
        capacity, backoff, and the request in flight, which is cancelled when it passes.
        """
        if self.events.active:  # call_start/call_end (traffic/call_events.py)
            return await observed_complete(self.events, self.clock, request,
                                           self._complete(request, deadline_s))
        return await self._complete(request, deadline_s)

    async def _complete(self, request: ChatRequest, deadline_s: float | None
                        ) -> ChatResponse:
        await self._behind_burst(request.model)
        call = self._call(request, deadline_s)
        while True:
            att = await self._admit(call, prepare=True)
            try:
                provider = att.lane.ready_provider or await att.lane.provider()
                outside = provider_scope()  # the call's note out of the HTTP client's timers
                try:
                    async with clock_timeout(self.clock, call.budget.remaining()):
                        # The slot goes to the next call once the answer is read, not parsed.
                        response = await provider.send(
                            call.prepared_for(att.info, att.lane, provider),
                            received=att.hand_off)
                finally:
                    if outside is not None:
                        leave(outside)
            except ProviderError as err:
                await self._next(call, att, err)
                continue
            except TimeoutError:
                attempt_abandoned(att)
                raise call.charged(self._deadline(call, att, "with the request in flight")
                                   ) from None
            except BaseException:
                attempt_abandoned(att)
                raise
            return attempt_succeeded(self.clock, request, att, call, response)

    def stream(self, request: ChatRequest, *, deadline_s: float | None = None
               ) -> AsyncIterator[StreamEvent]:
        """Stream one logical call; fails over only before its first token (text, tool
        call or reasoning) reaches the caller. After that a broken stream raises
        ``StreamInterrupted`` (the provider's error as its cause). ``deadline_s`` bounds
        the whole stream, the wait for every event included."""
        if self.events.active:  # call_start/call_end (traffic/call_events.py)
            return observed_stream(self.events, self.clock, request,
                                   self._stream(request, deadline_s))
        return self._stream(request, deadline_s)

    async def _stream(self, request: ChatRequest, deadline_s: float | None
                      ) -> AsyncIterator[StreamEvent]:
        await self._behind_burst(request.model)
        call = self._call(request, deadline_s)
        while True:
            att = await self._admit(call)
            held: list[StreamEvent] = []
            it: AsyncIterator[StreamEvent] | None = None
            try:
                provider = att.lane.ready_provider or await att.lane.provider()
                it = provider.stream(with_cache_settings(request, att.info, att.lane.channel),
                                     model=att.lane.channel.wire_model(att.info))
                while True:  # hold events until the first token: failover stays possible
                    event = await self._event(call, it)
                    if event is None:
                        break
                    held.append(event)
                    if isinstance(event, _FIRST_TOKEN):
                        break
            except ProviderError as err:
                await _aclose(it)
                await self._next(call, att, err)
                continue
            except BaseException:
                attempt_abandoned(att)
                await _aclose(it)  # cancelled or past the deadline: give the connection back
                raise
            async for event in self._finish_stream(call, att, it, held):
                yield event
            return

    async def _event(self, call: CallState, it: AsyncIterator[StreamEvent]
                     ) -> StreamEvent | None:
        """The stream's next event within the call's deadline; None at its end."""
        try:
            async with clock_timeout(self.clock, call.budget.remaining()):
                return await anext(it)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise call.charged(self._deadline(call, None, "while streaming")) from None

    async def _finish_stream(self, call: CallState, att: Attempt,
                             it: AsyncIterator[StreamEvent], held: list[StreamEvent]
                             ) -> AsyncIterator[StreamEvent]:
        request, finished = call.request, False
        try:
            pending = list(held)
            while True:
                event = pending.pop(0) if pending else await self._event(call, it)
                if event is None:
                    raise StreamInterrupted(
                        "the stream ended without its end marker", provider=att.lane.name)
                if isinstance(event, StreamEnd):
                    finished = True
                    yield StreamEnd(attempt_succeeded(self.clock, request, att, call,
                                                      event.response))
                    return
                yield event
        except ProviderError as err:
            # After the first token the caller has partial output: no failover, surface it.
            finished = True
            attempt_failed(att, err)
            call.failed(att, err)
            if not isinstance(err, StreamInterrupted):  # adapters wrap; a custom one may not
                cut = StreamInterrupted(f"the stream broke after its first token: {err}",
                                        provider=err.provider, status=err.status)
                cut.usage = err.usage
                raise call.charged(cut) from err
            raise call.charged(err)  # noqa: B904 - err is the answer, with its own cause
        finally:
            if not finished:  # the caller stopped early, was cancelled, or the deadline
                attempt_abandoned(att)
            await _aclose(it)
    async def reset_channel(self, name: str) -> None:
        """Re-enable a channel by hand: close its breaker (e.g. one opened for an hour by
        a rejected key) and rebuild its adapter with the key as it is now."""
        await self.lane(name).refresh_key(force=True)

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
