"""Guards that stop runaway cost: token/dollar budgets and loop detection.

**Budget.** Before every model call the runner *reserves* the call's pre-call
estimate (prompt tokens + ``max_tokens``, priced from the catalog; the prompt at the
dearest way it can be billed, a cache write on Claude). If spent +
reserved + this call would pass a limit, the call is refused with
``BudgetExceeded`` and never sent. When the answer arrives the reservation is
settled with the real usage and cost. Because parallel calls reserve before they
send, a run shared by many agents cannot overspend by racing: the only overshoot
possible is a provider billing more than the estimate (more prompt tokens than
estimated; never more output than ``max_tokens``). Budgets nest: an agent's own
budget is a child of its flow's, and a reservation must fit in both.

**Loops.** :class:`LoopDetector` fingerprints each tool call (name + canonical
arguments) and each assistant state (text + calls). When one is seen ``max_repeats``
times, the policy decides: raise ``LoopDetected`` or nudge the model once to
summarise and stop (tools disabled for that turn), raising if it loops again.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from shoal.errors import BudgetExceeded, ConfigError
from shoal.providers.caching import estimate_cost, may_write_1h
from shoal.types import ChatResponse

__all__ = ["Budget", "LoopDetector", "LoopPolicy", "Reservation", "estimate_cost",
           "may_write_1h"]


class Reservation:
    """Capacity held in a budget (and its parents) for one call in flight."""

    __slots__ = ("_budgets", "_open", "tokens", "usd")

    def __init__(self, budgets: tuple[Budget, ...], tokens: int, usd: float) -> None:
        self._budgets = budgets
        self.tokens = tokens
        self.usd = usd
        self._open = True

    def settle(self, tokens: int, usd: float) -> None:
        """Replace the reservation with what the call really used. Idempotent."""
        if not self._open:
            return
        self._open = False
        for b in self._budgets:
            b.reserved_tokens -= self.tokens
            b.reserved_usd -= self.usd
            b.in_flight -= 1
            if b.in_flight == 0:  # nothing held: no float residue left behind
                b.reserved_usd = 0.0
            b.spent_tokens += tokens
            b.spent_usd += usd

    def cancel(self) -> None:
        """Release the reservation without charging (the call failed and was not billed)."""
        self.settle(0, 0.0)


class Budget:
    """A token and/or dollar limit for a run (or a part of one).

    Single-threaded asyncio makes ``reserve`` atomic: it neither awaits nor yields.
    """

    def __init__(
        self,
        *,
        max_tokens: int | None = None,
        max_usd: float | None = None,
        name: str = "run",
        parent: Budget | None = None,
    ) -> None:
        # "not > 0" rather than "<= 0": NaN compares false both ways, and a NaN budget
        # was accepted and never stopped a run
        if max_tokens is not None and not (math.isfinite(max_tokens) and max_tokens > 0):
            raise ConfigError(f"budget max_tokens must be a finite number > 0, got "
                              f"{max_tokens!r}")
        if max_usd is not None and not (math.isfinite(max_usd) and max_usd > 0):
            raise ConfigError(f"budget max_usd must be a finite number > 0, got {max_usd!r}")
        self.max_tokens = max_tokens
        self.max_usd = max_usd
        self.name = name
        self.parent = parent
        self.spent_tokens = 0
        self.spent_usd = 0.0
        self.reserved_tokens = 0
        self.reserved_usd = 0.0
        self.in_flight = 0  # open reservations
        chain: list[Budget] = []
        node: Budget | None = self
        while node is not None:
            chain.append(node)
            node = node.parent
        self._chain = tuple(chain)

    def __repr__(self) -> str:
        return (
            f"Budget({self.name!r}, tokens={self.spent_tokens}/{self.max_tokens}, "
            f"usd={self.spent_usd:.6f}/{self.max_usd})"
        )

    def child(
        self, *, max_tokens: int | None = None, max_usd: float | None = None, name: str = "agent"
    ) -> Budget:
        """A budget inside this one: a reservation must fit both."""
        return Budget(max_tokens=max_tokens, max_usd=max_usd, name=name, parent=self)

    @property
    def remaining_usd(self) -> float | None:
        if self.max_usd is None:
            return None
        return self.max_usd - self.spent_usd - self.reserved_usd

    @property
    def remaining_tokens(self) -> int | None:
        if self.max_tokens is None:
            return None
        return self.max_tokens - self.spent_tokens - self.reserved_tokens

    def reserve(self, tokens: int, usd: float, *, what: str = "the next call") -> Reservation:
        """Hold ``tokens``/``usd`` for a call, or raise ``BudgetExceeded`` without holding."""
        for b in self._chain:
            if b.max_tokens is not None and (
                b.spent_tokens + b.reserved_tokens + tokens > b.max_tokens
            ):
                raise BudgetExceeded(
                    f"{b.name} token budget of {b.max_tokens} would be exceeded by {what}: "
                    f"spent {b.spent_tokens} + in flight {b.reserved_tokens} + up to {tokens} "
                    "for this call. Raise the budget, lower max_tokens, or trim the context."
                )
            if b.max_usd is not None and b.spent_usd + b.reserved_usd + usd > b.max_usd + 1e-12:
                raise BudgetExceeded(
                    f"{b.name} budget of ${b.max_usd:.4f} would be exceeded by {what}: "
                    f"spent ${b.spent_usd:.4f} + in flight ${b.reserved_usd:.4f} + up to "
                    f"${usd:.4f} for this call. Raise budget_usd, lower max_tokens, or use "
                    "a cheaper model."
                )
        for b in self._chain:
            b.reserved_tokens += tokens
            b.reserved_usd += usd
            b.in_flight += 1
        return Reservation(self._chain, tokens, usd)

    def charge(self, tokens: int, usd: float) -> None:
        """Count spending that already happened (e.g. replayed from a journal), unchecked."""
        for b in self._chain:
            b.spent_tokens += tokens
            b.spent_usd += usd


@dataclass(frozen=True, slots=True)
class LoopPolicy:
    """When a run counts as looping, and what to do about it.

    ``max_repeats``: the same tool call (name + arguments) or the same assistant state
    seen this many times is a loop. ``on_loop``: ``"raise"`` → ``LoopDetected``;
    ``"nudge"`` → one more turn with tools off and ``nudge`` appended, then raise if the
    model still repeats itself.
    """

    max_repeats: int = 3
    on_loop: Literal["raise", "nudge"] = "raise"
    nudge: str = (
        "You are repeating yourself ({what}). Stop calling tools. Summarise what you have "
        "found so far and give your final answer now."
    )

    def __post_init__(self) -> None:
        if self.max_repeats < 2:
            raise ConfigError(f"LoopPolicy.max_repeats must be >= 2, got {self.max_repeats}")


def _fingerprint(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()


def _canonical_args(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments or "{}"), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return arguments.strip()


class LoopDetector:
    """Counts repeated tool calls and assistant states within one agent run."""

    __slots__ = ("_counts", "nudged", "policy")

    def __init__(self, policy: LoopPolicy) -> None:
        self.policy = policy
        self._counts: Counter[str] = Counter()
        self.nudged = False

    def observe(self, response: ChatResponse) -> str | None:
        """Record an answer; return a description of the loop if one is detected."""
        found: str | None = None
        for call in response.tool_calls:
            key = _fingerprint("call", call.name, _canonical_args(call.arguments))
            self._counts[key] += 1
            if self._counts[key] >= self.policy.max_repeats and found is None:
                found = (
                    f"tool call {call.name}({_canonical_args(call.arguments)[:200]}) "
                    f"repeated {self._counts[key]} times"
                )
        state = _fingerprint(
            "state",
            response.text.strip(),
            *(f"{c.name}:{_canonical_args(c.arguments)}" for c in response.tool_calls),
        )
        self._counts[state] += 1
        if found is None and self._counts[state] >= self.policy.max_repeats:
            found = f"the same answer repeated {self._counts[state]} times"
        return found
