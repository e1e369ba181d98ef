"""Per-channel retry budget: retries a channel may receive, relative to its successes.

The idea of Finagle's ``RetryBudget`` and Envoy's retry budgets: a per-call attempt cap
alone lets a failing channel receive ``attempts ×`` its normal load (a retry storm);
a budget that earns retries from successes keeps the extra load proportional to what
the channel actually serves, while a small floor keeps a cold or failing channel
reachable for the retries that find out it recovered.

:class:`ChannelRetryBudget` is a token bucket, one per channel:

* every success :meth:`~ChannelRetryBudget.deposit`\\ s ``ratio`` tokens;
* the bucket also refills at ``min_per_s`` tokens per second (the floor);
* it never holds more than ``cap`` tokens (a long healthy spell cannot be banked
  into a burst of retries when the channel dies), nor fewer than 0;
* :meth:`~ChannelRetryBudget.try_withdraw` takes one token before a retry is sent to
  the channel, or says no.

Over any interval of length T the channel receives at most
``cap + min_per_s × T + ratio × (successes in T)`` retries. With the defaults (ratio 1,
floor 10/s, cap 100) a channel failing 39% of attempts — which needs
p/(1-p) ≈ 0.64 retries per success — is fully served; a dead channel gets at most
100 retries at once, then 10 per second.

Pure logic over an injected :class:`~shoal.clock.Clock`: no locks, no awaits (the
event loop serialises calls), exact in virtual time. One process's view: routers in
separate processes each hold their own budget.
"""

from __future__ import annotations

import math

from shoal.clock import Clock, RealClock
from shoal.errors import ConfigError

__all__ = ["ChannelRetryBudget"]

_EPSILON = 1e-9


def _check(name: str, value: float, *, minimum: float) -> None:
    if not (math.isfinite(value) and value >= minimum):
        raise ConfigError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")


class ChannelRetryBudget:
    """Retry tokens of ONE channel (see the module docstring).

    ``deposit()`` on each success of the channel; ``try_withdraw()`` before sending a
    retry to it (a first attempt needs no token); ``refund()`` when a withdrawn retry was
    never sent. A new budget starts full (``cap`` tokens).
    """

    __slots__ = (
        "_balance", "_clock", "_last", "cap", "denied", "deposits", "min_per_s", "name",
        "ratio", "withdrawn",
    )

    def __init__(
        self,
        name: str = "",
        *,
        ratio: float = 1.0,
        min_per_s: float = 10.0,
        cap: float = 100.0,
        clock: Clock | None = None,
    ) -> None:
        _check("ratio (retry tokens earned per success)", ratio, minimum=0.0)
        _check("min_per_s (retries per second always allowed)", min_per_s, minimum=0.0)
        _check("cap (most retry tokens banked; at least one retry)", cap, minimum=1.0)
        self.name = name
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.cap = cap
        self._clock: Clock = clock if clock is not None else RealClock()
        self._last = self._clock.now()
        self._balance = cap
        self.deposits = 0  # successes seen
        self.withdrawn = 0  # retries granted (net of refunds)
        self.denied = 0  # retries refused

    def __repr__(self) -> str:
        return (f"ChannelRetryBudget({self.name!r}, balance={self.balance:.2f}/{self.cap:g}, "
                f"withdrawn={self.withdrawn}, denied={self.denied})")

    def _refill(self) -> float:
        now = self._clock.now()
        if now > self._last:  # a clock that stood still or stepped back adds nothing
            self._balance = min(self.cap, self._balance + (now - self._last) * self.min_per_s)
            self._last = now
        return now

    @property
    def balance(self) -> float:
        """Tokens available now, in [0, cap]; a retry needs a whole one."""
        self._refill()
        return self._balance

    def deposit(self) -> None:
        """A call to this channel succeeded: earn ``ratio`` retry tokens."""
        self._refill()
        self.deposits += 1
        self._balance = min(self.cap, self._balance + self.ratio)

    def try_withdraw(self) -> bool:
        """Take one token for a retry to this channel; False (and nothing taken) when the
        budget is spent — send the retry elsewhere, wait, or give up."""
        self._refill()
        if self._balance >= 1.0 - _EPSILON:  # refill arithmetic may land a hair under 1
            self._balance = max(0.0, self._balance - 1.0)
            self.withdrawn += 1
            return True
        self.denied += 1
        return False

    def refund(self) -> None:
        """Give back a token whose retry was never sent (e.g. the deadline passed first)."""
        self._refill()
        if self.withdrawn > 0:
            self.withdrawn -= 1
        self._balance = min(self.cap, self._balance + 1.0)

    def next_token_at(self, now: float | None = None) -> float | None:
        """The clock time at which a retry token will be available without further
        successes: ``now`` when one is; ``None`` when only a success can bring one
        (``min_per_s`` is 0)."""
        current = self._refill()
        now = current if now is None else now
        missing = 1.0 - self._balance
        if missing <= 0:
            return now
        if self.min_per_s == 0:
            return None
        return max(now, current + missing / self.min_per_s)
