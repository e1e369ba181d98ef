"""``call_start`` / ``call_end`` around one logical Router call, only while someone listens.

The Router hands a call here only when its bus is active, so with nothing subscribed
the hot path pays one attribute check. While the call runs, the observe scope holds
its :class:`~shoal.observe.context.CallNote`: every event emitted meanwhile (admit,
wait, retry, failover, breaker) carries the call's ``call_id``, and :func:`admitted`
counts its attempts and time queued for capacity.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextvars import Token
from time import monotonic
from typing import TYPE_CHECKING

from shoal.clock import RealClock
from shoal.errors import RunError
from shoal.observe.context import (
    CallNote,
    Scope,
    current,
    enter_call,
    leave,
    new_call_id,
    set_scope,
)
from shoal.observe.events import (
    ADMIT,
    CALL_END,
    CALL_START,
    EventBus,
    clean_text,
    scope_fields,
    scope_texts,
)
from shoal.secrets import MIN_SECRET_CHARS
from shoal.types import ChatResponse, ReasoningDelta, StreamEnd, StreamEvent, TextDelta

if TYPE_CHECKING:
    from shoal.clock import Clock
    from shoal.types import ChatRequest

__all__ = ["admitted", "observed_complete", "observed_stream", "provider_scope"]

_FIRST = (TextDelta, ReasoningDelta)


class _Note(CallNote):
    __slots__ = ("attempts", "outer", "stream")

    def __init__(self, call_id: str, request: ChatRequest, started: float,
                 stream: bool, outer: Scope) -> None:
        # CallNote's fields set here, not through super().__init__: one frame fewer on
        # every observed call (CallNote.__init__ says what each one is)
        self.call_id = call_id
        self.request = request
        self.response: ChatResponse | None = None
        self.started = started
        self.queue_s = 0.0
        self.ttft_s: float | None = None
        self.tags: tuple[object, dict[str, object]] | None = None
        self.attempts = 0
        self.stream = stream
        self.outer = outer  # the scope the call was made in (run, step, agent)


def admitted(bus: EventBus, channel: str, model: str, *, waited_s: float, tokens: int,
             attempt: int, emit: bool = True) -> None:
    """An attempt of the current call got its slot after ``waited_s`` in the limiter:
    counted on the call's note and, when ``emit`` (the attempt queued for its slot, is a
    retry, or went through a shared limiter), emitted as ``admit`` with the scope's
    fields the call's earlier events already cleaned (no second redaction pass). A first
    attempt admitted at once emits nothing: ``call_end`` has the attempts and queue time."""
    where = current()
    note = where.call
    if isinstance(note, _Note):
        note.attempts += 1
        note.queue_s += waited_s
    if not emit:
        return
    fields = (scope_fields(where, note) if isinstance(note, _Note)
              else scope_fields(where) if where.run_id or where.call_id else {})
    bus.publish_clean(ADMIT, {**fields, "waited_s": waited_s, "tokens": tokens,
                              "attempt": attempt},
                      channel=clean_text(channel), model=clean_text(model))


def provider_scope() -> Token[Scope] | None:
    """While the provider's HTTP request is in flight, make the scope the call was made
    in current again, without the call's note (:func:`leave` the token after). Timers
    that the HTTP client arms copy the current context and, once cancelled, stay in the
    loop's timer heap for a while (aiohttp's connect timeout, per request): with the
    note in the context they would keep each call's request and answer alive there.
    Nothing emits events from inside the provider, so none loses its call id."""
    note = current().call
    if isinstance(note, _Note):
        return set_scope(note.outer)
    return None


def _start(bus: EventBus, clock: Clock, request: ChatRequest, stream: bool) -> _Note:
    where = current()
    note = _Note(new_call_id(), request,
                 monotonic() if type(clock) is RealClock else clock.now(), stream, where)
    run_id, step, agent = scope_texts(where)
    bus.publish_clean(CALL_START, {"run_id": run_id, "step": step, "agent": agent,
                                   "call_id": note.call_id, "turn": where.turn,
                                   "stream": stream}, model=request.model)
    return note


def _end(bus: EventBus, clock: Clock, note: _Note,
         response: ChatResponse | None, error: BaseException | None) -> None:
    """Emit ``call_end`` (while the call's scope is still current)."""
    # the call's run/step/agent are its outer scope's (enter_call copies them)
    run_id, step, agent = scope_texts(note.outer)
    duration = (monotonic() if type(clock) is RealClock else clock.now()) - note.started
    if response is not None:  # texts shorter than any secret are kept as they are
        note.response = response
        note.attempts = attempts = response.attempts
        note.queue_s = queue_s = response.queue_s
        provider, served, usage = response.provider, response.served_model, response.usage
        bus.publish_clean(CALL_END, {
            "provider": provider if len(provider) < MIN_SECRET_CHARS else clean_text(provider),
            "served_model": served if len(served) < MIN_SECRET_CHARS else clean_text(served),
            "status": "ok", "error_type": "",
            "cost_usd": response.cost_usd, "wasted_cost_usd": response.wasted_cost_usd,
            "run_id": run_id, "step": step, "agent": agent, "call_id": note.call_id,
            "turn": current().turn, "stream": note.stream,
            "request_model": note.request.model, "attempts": attempts,
            "duration_s": duration, "ttft_s": note.ttft_s, "queue_s": queue_s,
            "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
        }, channel=response.channel, model=response.model)
        return
    wasted = error.wasted_cost_usd if isinstance(error, RunError) else 0.0
    bus.publish_clean(CALL_END, {
        "provider": clean_text(str(getattr(error, "provider", "") or "")),
        "served_model": "", "status": "error", "error_type": clean_text(type(error).__name__),
        "cost_usd": 0.0, "wasted_cost_usd": wasted,
        "run_id": run_id, "step": step, "agent": agent, "call_id": note.call_id,
        "turn": current().turn, "stream": note.stream, "request_model": note.request.model,
        "attempts": note.attempts, "duration_s": duration, "ttft_s": note.ttft_s,
        "queue_s": note.queue_s, "input_tokens": 0, "output_tokens": 0,
        "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
    }, channel="", model=note.request.model)


async def observed_complete(bus: EventBus, clock: Clock, request: ChatRequest,
                            call: Awaitable[ChatResponse]) -> ChatResponse:
    """Await the Router's ``call`` between ``call_start`` and ``call_end``."""
    note = _start(bus, clock, request, False)
    token = enter_call(note, note.outer)
    try:
        try:
            response = await call
        except BaseException as exc:
            _end(bus, clock, note, None, exc)
            raise
        _end(bus, clock, note, response, None)
        return response
    finally:
        leave(token)


async def observed_stream(bus: EventBus, clock: Clock, request: ChatRequest,
                          events: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    """Relay the Router's stream between ``call_start`` and ``call_end``. The call's
    scope is current only while the Router works, never while the caller holds an event
    (a scope set in a generator would otherwise leak into the caller between events)."""
    note = _start(bus, clock, request, True)
    ended = False
    try:
        while True:
            token = enter_call(note, current())
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
            except BaseException as exc:
                ended = True
                _end(bus, clock, note, None, exc)
                raise
            else:
                if note.ttft_s is None and isinstance(event, _FIRST):
                    note.ttft_s = clock.now() - note.started
                if isinstance(event, StreamEnd):
                    if note.ttft_s is None:
                        note.ttft_s = clock.now() - note.started
                    ended = True
                    _end(bus, clock, note, event.response, None)
            finally:
                leave(token)
            yield event
    finally:
        if not ended:  # the caller stopped reading (or was cancelled) mid-stream
            _end(bus, clock, note, None, asyncio.CancelledError())
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
