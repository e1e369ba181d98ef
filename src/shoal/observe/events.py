"""Events: what the traffic layer tells the observability layer, as plain values.

Every admission, wait, retry, failover, breaker transition and adaptive limit change
is an :class:`Event` emitted on an :class:`EventBus`. Subscribers (metrics, tracing,
reports, tests) receive them synchronously, in emission order. Emitting with nobody
subscribed costs one attribute check, so the hot path can always emit; a caller that
would build expensive fields first checks :attr:`EventBus.active`.

Kinds used across shoal (``data`` keys in brackets):

``admit``        a limiter granted a slot the attempt waited for: it queued (after a
                 ``wait``), or it is a retry, or the limiter is shared (a Redis round
                 trip) [tokens, waited_s, attempt]. A first attempt that finds a slot
                 free emits none (``call_end`` has ``attempts`` and ``queue_s``): one
                 event fewer per call on the hot path
``wait``         a call queued for capacity [tokens, in_flight, queued]
``retry``        a call will be retried after a delay [attempt, delay_s, error]
``failover``     a call moves to another channel or fallback model [from, to, error]
                 (from the Router: ``channel`` is the lane left, ``to`` the next lane;
                 from an agent falling back to its next model: ``from``/``to`` models)
``breaker``      a circuit breaker changed state [from, to, error]
``limit_change`` adaptive concurrency moved a channel's cap [from, to, reason]
``settle``       a permit's token reservation was corrected [reserved, actual] (channels
                 with a ``tpm`` limit: elsewhere nothing is reserved)

Run, step, agent and tool kinds (issue 11; emitted by flows, agents and the Router):

``run_start``    [run_id, flow]
``run_end``      [run_id, flow, status ("succeeded"|"partial"|"failed"|"cancelled"), error,
                  duration_s, cost_usd, + the token keys]   (batch items of an agent or
                  function are runs too: ``flow`` is the batch's description)
``step_start``   [run_id, step, agent]   (when the step is ready: a wait for a concurrency
                  slot is inside the step)
``step_end``     [run_id, step, agent, status ("succeeded"|"failed"|"replayed"|"fallback"|
                  "cancelled"), error, duration_s, cost_usd, + the token keys]
                  (a map item is a step ``"name/i"`` inside step ``"name"``)
``agent_start``  [run_id, step, agent, model]              (one agent invocation: invoke_agent)
``agent_end``    [run_id, step, agent, model, turns, status, error, duration_s, cost_usd, + tokens]
``tool_start``   [run_id, step, agent, tool, call_id]
``tool_end``     [run_id, step, agent, tool, call_id, status, error, duration_s]
``call_start``   [run_id, step, agent, turn, call_id, stream]   (one logical Router call: chat
                  {model}; in an agent, its turn: ``turn`` is the turn's number, else None)
``call_end``     [run_id, step, agent, turn, call_id, stream, request_model (the model as
                  asked: the event's ``model`` is the catalog model that answered), provider,
                  served_model, status,
                  error_type, attempts, duration_s, ttft_s, queue_s, cost_usd,
                  wasted_cost_usd, + tokens]
``guard``        [run_id, step, agent, guard, decision ("allow"|"trip"|"nudge"), detail]
                 (guard: a guardrail's name, "loop" or "max_turns")
``budget``       [run_id, step, agent, decision ("reserve"|"refuse"|"settle"), amount_usd, tokens]
``journal``      [run_id, step, what ("step"|"turn"|"run"), turn]

The token keys are ``input_tokens``, ``output_tokens``, ``cached_input_tokens``,
``cache_write_tokens``, ``reasoning_tokens``. ``run_id``/``step``/``agent`` come from
:mod:`shoal.observe.context` (a ContextVar the flow and the runner set), so Router events
inside a step carry them too; empty strings outside a run. Every event emitted during a
model call also carries that call's ``call_id`` (retry, failover, admit, wait, breaker...),
so an exporter can attach it to the right call; ``call_end``'s ``status`` is "ok" or
"error", ``error_type`` the shoal error's class name (empty when ok), ``ttft_s`` the time
to the first token (streams; None for ``complete``), ``queue_s`` the time spent waiting
for capacity, ``duration_s`` the whole logical call (every attempt and wait).

:func:`subscribe_all` subscribes a callback to every bus of the process, present and
future (what ``shoal.observe.tracing()`` does when given no bus).

``channel`` and ``model`` name where it happened (empty when not applicable); ``at``
is the emitting clock's monotonic time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import ClassVar, NamedTuple
from weakref import WeakSet

from shoal.clock import Clock, RealClock
from shoal.observe.context import CallNote, Scope, current
from shoal.secrets import MIN_SECRET_CHARS, redact, registry_version

__all__ = [
    "ADMIT",
    "AGENT_END",
    "AGENT_START",
    "BREAKER",
    "BUDGET",
    "CALL_END",
    "CALL_START",
    "FAILOVER",
    "GUARD",
    "JOURNAL",
    "KINDS",
    "LIMIT_CHANGE",
    "RETRY",
    "RUN_END",
    "RUN_START",
    "SETTLE",
    "STEP_END",
    "STEP_START",
    "TOOL_END",
    "TOOL_START",
    "WAIT",
    "Event",
    "EventBus",
    "Subscriber",
    "clean_text",
    "scope_fields",
    "subscribe_all",
]

ADMIT = "admit"
WAIT = "wait"
RETRY = "retry"
FAILOVER = "failover"
BREAKER = "breaker"
LIMIT_CHANGE = "limit_change"
SETTLE = "settle"
RUN_START = "run_start"
RUN_END = "run_end"
STEP_START = "step_start"
STEP_END = "step_end"
AGENT_START = "agent_start"
AGENT_END = "agent_end"
TOOL_START = "tool_start"
TOOL_END = "tool_end"
CALL_START = "call_start"
CALL_END = "call_end"
GUARD = "guard"
BUDGET = "budget"
JOURNAL = "journal"
KINDS = frozenset({ADMIT, WAIT, RETRY, FAILOVER, BREAKER, LIMIT_CHANGE, SETTLE,
                   RUN_START, RUN_END, STEP_START, STEP_END, AGENT_START, AGENT_END,
                   TOOL_START, TOOL_END, CALL_START, CALL_END, GUARD, BUDGET, JOURNAL})

_EMPTY: Mapping[str, object] = MappingProxyType({})
_log = logging.getLogger("shoal.events")


class Event(NamedTuple):
    """One thing that happened: its kind, when (monotonic seconds), where, and details.

    Immutable (a named tuple: the cheapest value to build on the hot path). ``data`` is
    the event's own dict, typed read-only: every subscriber sees the same one, so none
    may change it (a subscriber that wants to edit copies it). It is not wrapped in a
    ``MappingProxyType``: on the overhead bench with metrics, traces and an event
    stream on, the proxies cost ~12 µs per call (slower lookups by every exporter, and
    one more GC-tracked object per event kept by a subscriber). Every string in it has
    been through :func:`shoal.secrets.redact`."""

    kind: str
    at: float
    channel: str = ""
    model: str = ""
    data: Mapping[str, object] = _EMPTY


class _Texts:
    """Redacted texts by their original, for the current set of registered secrets: an
    event's strings (ids, step and agent names, models) repeat on every call, and
    redacting one costs a regex pass per key shape."""

    cache: ClassVar[dict[str, str]] = {}
    version: ClassVar[object] = None
    MAX: ClassVar[int] = 4096  # entries; then the cache starts over
    LONG: ClassVar[int] = 512  # longer texts (error messages) are redacted, not kept


def _texts() -> dict[str, str]:
    """The cache of redacted texts, emptied when a secret was registered or forgotten."""
    version = registry_version()
    if version is not _Texts.version or len(_Texts.cache) > _Texts.MAX:
        _Texts.cache, _Texts.version = {}, version
    return _Texts.cache


def _redact_new(cache: dict[str, str], text: str) -> str:
    clean = redact(text)
    if len(text) <= _Texts.LONG:
        cache[text] = clean
    return clean


def scope_fields(where: Scope, note: CallNote | None = None) -> dict[str, object]:
    """What events add from the scope: run_id, step, agent (redacted) and the model
    call's call_id; kept on the call's note (``note``, else the scope's) for its events."""
    if note is None:
        note = where.call
    version = registry_version()
    if note is not None:
        if note.tags is not None and note.tags[0] is version:
            return note.tags[1]
        call_id = note.call_id
    else:
        call_id = where.call_id
    fields: dict[str, object] = {"run_id": clean_text(where.run_id),
                                 "step": clean_text(where.step),
                                 "agent": clean_text(where.agent)}
    if call_id:
        fields["call_id"] = call_id
    if note is not None:
        note.tags = (version, fields)
    return fields


def clean_text(text: str) -> str:
    """``text`` as events carry it: :func:`shoal.secrets.redact` applied (remembered for
    repeated texts). A text shorter than the shortest secret is returned as is."""
    if len(text) < MIN_SECRET_CHARS:
        return text
    cache = _texts()
    return cache.get(text) or _redact_new(cache, text)


Subscriber = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out of :class:`Event` values to subscribers.

    A subscriber that raises is logged and skipped: observing a call never breaks it.
    """

    __slots__ = ("__weakref__", "_clock", "_now", "_subscribers")

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else RealClock()
        self._now = self._clock.now
        self._subscribers: tuple[Subscriber, ...] = _Everywhere.subscribers
        _Everywhere.buses.add(self)

    @property
    def active(self) -> bool:
        """True when at least one subscriber listens."""
        return bool(self._subscribers)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns an unsubscribe."""
        self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            subs = list(self._subscribers)
            if callback in subs:
                subs.remove(callback)
                self._subscribers = tuple(subs)

        return unsubscribe

    def emit(self, kind: str, *, channel: str = "", model: str = "", **data: object) -> None:
        """Build an :class:`Event` and deliver it; does nothing when nobody subscribed."""
        subscribers = self._subscribers
        if subscribers:  # ``data`` is this call's own dict: cleaned in place
            self._send(subscribers, kind, data, channel, model)

    def publish(
        self, kind: str, data: Mapping[str, object], *, channel: str = "", model: str = ""
    ) -> None:
        """Like :meth:`emit`, with ``data`` as a mapping (for keys such as ``from``)."""
        subscribers = self._subscribers
        if subscribers:
            self._send(subscribers, kind, dict(data), channel, model)

    def _send(self, subscribers: tuple[Subscriber, ...], kind: str, data: dict[str, object],
              channel: str, model: str) -> None:
        # No string in an event carries a key (subscribers export them). A text shorter
        # than the shortest secret (ids, statuses, model names) cannot hold one.
        cache = _texts()
        for k, v in data.items():
            if isinstance(v, str) and len(v) >= MIN_SECRET_CHARS:
                data[k] = cache.get(v) or _redact_new(cache, v)  # same keys: safe
        where = current()
        if where.run_id or where.call_id:  # the run/step/agent/call this happened in
            for k, v in scope_fields(where).items():
                if k not in data:
                    data[k] = v
        _deliver(subscribers, Event(kind, self._now(), channel, model, data))

    def publish_clean(self, kind: str, data: dict[str, object], *, channel: str = "",
                      model: str = "") -> None:
        """Deliver ``data`` as it is (not copied), without the scope's fields: for shoal's
        own emitters that build the whole record and pass each of its strings through
        :func:`clean_text` themselves (``call_start``/``call_end``)."""
        subscribers = self._subscribers
        if subscribers:
            _deliver(subscribers, Event(kind, self._now(), channel, model, data))


def _deliver(subscribers: tuple[Subscriber, ...], event: Event) -> None:
    """Hand ``event`` to each subscriber; one that raises is logged and skipped."""
    for callback in subscribers:
        try:
            callback(event)
        except Exception:
            _log.exception("event subscriber %r failed on %s", callback, event.kind)


class _Everywhere:
    """The subscribers every bus starts with, and every bus alive (weakly)."""

    subscribers: ClassVar[tuple[Subscriber, ...]] = ()
    buses: ClassVar[WeakSet[EventBus]] = WeakSet()


def subscribe_all(callback: Subscriber) -> Callable[[], None]:
    """Subscribe ``callback`` to every :class:`EventBus` of the process, those that exist
    and those made later; returns an unsubscribe that detaches it from all of them."""
    _Everywhere.subscribers = (*_Everywhere.subscribers, callback)
    for bus in list(_Everywhere.buses):
        bus.subscribe(callback)

    def unsubscribe() -> None:
        _Everywhere.subscribers = tuple(
            c for c in _Everywhere.subscribers if c is not callback)
        for bus in list(_Everywhere.buses):
            bus._subscribers = tuple(c for c in bus._subscribers if c is not callback)

    return unsubscribe
