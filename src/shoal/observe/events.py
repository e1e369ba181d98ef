"""Events: what the traffic layer tells the observability layer, as plain values.

Every admission, wait, retry, failover, breaker transition and adaptive limit change
is an :class:`Event` emitted on an :class:`EventBus`. Subscribers (metrics, tracing,
reports, tests) receive them synchronously, in emission order. Emitting with nobody
subscribed costs one attribute check, so the hot path can always emit; a caller that
would build expensive fields first checks :attr:`EventBus.active`.

Kinds used across shoal (``data`` keys in brackets):

``admit``        a limiter granted a slot [tokens, in_flight, waited_s]
``wait``         a call queued for capacity [tokens, in_flight, queued]
``retry``        a call will be retried after a delay [attempt, delay_s, error]
``failover``     a call moves to another channel or fallback model [from, to, error]
``breaker``      a circuit breaker changed state [from, to, error]
``limit_change`` adaptive concurrency moved a channel's cap [from, to, reason]
``settle``       a permit's token reservation was corrected [reserved, actual]

``channel`` and ``model`` name where it happened (empty when not applicable); ``at``
is the emitting clock's monotonic time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from shoal.clock import Clock, RealClock
from shoal.secrets import redact

__all__ = [
    "ADMIT",
    "BREAKER",
    "FAILOVER",
    "KINDS",
    "LIMIT_CHANGE",
    "RETRY",
    "SETTLE",
    "WAIT",
    "Event",
    "EventBus",
    "Subscriber",
]

ADMIT = "admit"
WAIT = "wait"
RETRY = "retry"
FAILOVER = "failover"
BREAKER = "breaker"
LIMIT_CHANGE = "limit_change"
SETTLE = "settle"
KINDS = frozenset({ADMIT, WAIT, RETRY, FAILOVER, BREAKER, LIMIT_CHANGE, SETTLE})

_EMPTY: Mapping[str, object] = MappingProxyType({})
_log = logging.getLogger("shoal.events")


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened: its kind, when (monotonic seconds), where, and details."""

    kind: str
    at: float
    channel: str = ""
    model: str = ""
    data: Mapping[str, object] = field(default_factory=lambda: _EMPTY)


Subscriber = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out of :class:`Event` values to subscribers.

    A subscriber that raises is logged and skipped: observing a call never breaks it.
    """

    __slots__ = ("_clock", "_subscribers")

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else RealClock()
        self._subscribers: tuple[Subscriber, ...] = ()

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
        if self._subscribers:
            self.publish(kind, data, channel=channel, model=model)

    def publish(
        self, kind: str, data: Mapping[str, object], *, channel: str = "", model: str = ""
    ) -> None:
        """Like :meth:`emit`, with ``data`` as a mapping (for keys such as ``from``)."""
        subscribers = self._subscribers
        if not subscribers:
            return
        # Error texts in events never carry a key (subscribers export them).
        clean = {k: redact(v) if isinstance(v, str) else v for k, v in data.items()}
        event = Event(kind, self._clock.now(), channel, model, MappingProxyType(clean))
        for callback in subscribers:
            try:
                callback(event)
            except Exception:
                _log.exception("event subscriber %r failed on %s", callback, kind)
