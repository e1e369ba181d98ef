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
import time
from collections.abc import Callable, Mapping
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, NamedTuple
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
    "Routes",
    "Subscriber",
    "clean_text",
    "scope_fields",
    "scope_texts",
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


# ``Event(...)`` is a Python-level ``__new__`` (namedtuple's); the tuple's own ``__new__``
# makes the same value without that frame (two events per model call).
_event: Callable[[type[Event], tuple[str, float, str, str, Mapping[str, object]]], Event] = (
    tuple.__new__)


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


def scope_texts(where: Scope) -> tuple[str, str, str]:
    """``where``'s run_id, step and agent as events carry them (:func:`clean_text`),
    remembered for the last scope asked about: the concurrent model calls of a step (or
    of a program outside any run) share one scope, and each asks at its start and end.
    A scope holding a model call is not remembered (it would keep the call alive)."""
    last = _LastScope.entry  # one tuple, swapped whole: safe from any thread
    version = registry_version()
    if last[0] is where and last[1] is version:
        return last[2]
    texts = (clean_text(where.run_id), clean_text(where.step), clean_text(where.agent))
    if where.call is None:
        _LastScope.entry = (where, version, texts)
    return texts


class _LastScope:
    entry: ClassVar[tuple[Scope | None, object, tuple[str, str, str]]] = (
        None, None, ("", "", ""))


def clean_text(text: str) -> str:
    """``text`` as events carry it: :func:`shoal.secrets.redact` applied (remembered for
    repeated texts). A text shorter than the shortest secret is returned as is."""
    if len(text) < MIN_SECRET_CHARS:
        return text
    cache = _Texts.cache  # _texts(), inlined: this runs for most call_end events
    if _Texts.version is not registry_version() or len(cache) > _Texts.MAX:
        cache = _texts()
    return cache.get(text) or _redact_new(cache, text)


Subscriber = Callable[[Event], None]
# Per kind, the subscriber's own handler for it (None: that kind is not delivered to it).
Routes = Mapping[str, "Subscriber | None"]


class _Sub(NamedTuple):
    """One subscription: ``callback`` gets every event, except those of a kind in
    ``kinds``, which go to ``kinds[kind]`` (or nowhere when that is None)."""

    callback: Subscriber | None
    kinds: Routes | None

    def handler(self, kind: str) -> Subscriber | None:
        return self.callback if self.kinds is None else self.kinds.get(kind, self.callback)


class EventBus:
    """Synchronous fan-out of :class:`Event` values to subscribers.

    A subscriber that raises is logged and skipped: observing a call never breaks it.
    Each event goes to its subscribers in the order they subscribed; the handlers an
    event kind reaches are worked out once per kind (and again after a subscription
    changes), so a subscriber that names its handler per kind (``kinds=``) costs no
    dispatch of its own, and none at all for the kinds it ignores.
    """

    __slots__ = ("__weakref__", "_active", "_clock", "_now", "_routes", "_subscribers")

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else RealClock()
        # the real clock's time read straight (its now() is time.monotonic(): one frame
        # fewer per event)
        self._now: Callable[[], float] = (
            time.monotonic if type(self._clock) is RealClock else self._clock.now)
        self._subscribers: tuple[_Sub, ...] = _Everywhere.subscribers
        self._active = bool(self._subscribers)
        self._routes: dict[str, tuple[Subscriber, ...]] = {}
        _Everywhere.buses.add(self)

    if TYPE_CHECKING:
        @property
        def active(self) -> bool:
            """True when at least one subscriber listens."""
    else:  # read by the Router on every call: a getter with no Python frame
        active = property(attrgetter("_active"),
                          doc="True when at least one subscriber listens.")

    def subscribe(self, callback: Subscriber | None = None, *,
                  kinds: Routes | None = None) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns an unsubscribe.

        ``kinds``: a handler per event kind instead (None: not delivered); ``callback``
        then gets the kinds not named (none when it is None)."""
        if callback is None and kinds is None:
            raise TypeError("subscribe() needs a callback or kinds")
        sub = _Sub(callback, None if kinds is None else dict(kinds))
        self._add(sub)

        def unsubscribe() -> None:
            self._drop(sub)

        return unsubscribe

    def _add(self, sub: _Sub) -> None:
        self._subscribers = (*self._subscribers, sub)
        self._routes = {}
        self._active = True

    def _drop(self, sub: _Sub) -> None:
        subs = tuple(s for s in self._subscribers if s is not sub)
        if len(subs) != len(self._subscribers):
            self._subscribers, self._routes = subs, {}
            self._active = bool(subs)

    def _route(self, kind: str) -> tuple[Subscriber, ...]:
        """The handlers an event of ``kind`` goes to, in subscription order (cached)."""
        route = tuple(h for h in (s.handler(kind) for s in self._subscribers) if h is not None)
        self._routes[kind] = route
        return route

    def emit(self, kind: str, *, channel: str = "", model: str = "", **data: object) -> None:
        """Build an :class:`Event` and deliver it; does nothing when nobody subscribed."""
        if self._subscribers:  # ``data`` is this call's own dict: cleaned in place
            self._send(kind, data, channel, model)

    def publish(
        self, kind: str, data: Mapping[str, object], *, channel: str = "", model: str = ""
    ) -> None:
        """Like :meth:`emit`, with ``data`` as a mapping (for keys such as ``from``)."""
        if self._subscribers:
            self._send(kind, dict(data), channel, model)

    def _send(self, kind: str, data: dict[str, object], channel: str, model: str) -> None:
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
        route = self._routes.get(kind)
        _deliver(self._route(kind) if route is None else route,
                 _event(Event, (kind, self._now(), channel, model, data)))

    def publish_clean(self, kind: str, data: dict[str, object], *, channel: str = "",
                      model: str = "") -> None:
        """Deliver ``data`` as it is (not copied), without the scope's fields: for shoal's
        own emitters that build the whole record and pass each of its strings through
        :func:`clean_text` themselves (``call_start``/``call_end``, twice per model call:
        the delivery loop is inlined)."""
        if self._subscribers:
            route = self._routes.get(kind)
            if route is None:
                route = self._route(kind)
            event = _event(Event, (kind, self._now(), channel, model, data))
            for callback in route:
                try:
                    callback(event)
                except Exception:
                    _log.exception("event subscriber %r failed on %s", callback, kind)


def _deliver(subscribers: tuple[Subscriber, ...], event: Event) -> None:
    """Hand ``event`` to each subscriber; one that raises is logged and skipped."""
    for callback in subscribers:
        try:
            callback(event)
        except Exception:
            _log.exception("event subscriber %r failed on %s", callback, event.kind)


class _Everywhere:
    """The subscriptions every bus starts with, and every bus alive (weakly)."""

    subscribers: ClassVar[tuple[_Sub, ...]] = ()
    buses: ClassVar[WeakSet[EventBus]] = WeakSet()


def subscribe_all(callback: Subscriber | None = None, *,
                  kinds: Routes | None = None) -> Callable[[], None]:
    """Subscribe ``callback`` (and ``kinds``, as :meth:`EventBus.subscribe` takes them) to
    every :class:`EventBus` of the process, those that exist and those made later;
    returns an unsubscribe that detaches it from all of them."""
    if callback is None and kinds is None:
        raise TypeError("subscribe_all() needs a callback or kinds")
    sub = _Sub(callback, None if kinds is None else dict(kinds))
    _Everywhere.subscribers = (*_Everywhere.subscribers, sub)
    for bus in list(_Everywhere.buses):
        bus._add(sub)

    def unsubscribe() -> None:
        _Everywhere.subscribers = tuple(
            s for s in _Everywhere.subscribers if s is not sub)
        for bus in list(_Everywhere.buses):
            bus._drop(sub)

    return unsubscribe
