"""The state of one logical call through the Router, across all its attempts.

Kept apart from the Router so the routing rules (which lane next, when to wait) read on
their own: a call remembers which lanes failed it and how often (to try untried lanes
and the model's fallbacks before going back to a failed one), which lanes are out for
the call (auth, quota), and what the provider billed for answers it had to discard.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from shoal.errors import (
    CircuitOpen,
    ConfigError,
    DeadlineExceeded,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    RunError,
    ShoalError,
    StreamInterrupted,
)
from shoal.providers.caching import with_cache_settings
from shoal.tokens import count_text, estimate_prompt_tokens, output_bound
from shoal.traffic.lane import Lane
from shoal.types import ChatRequest, Usage

if TYPE_CHECKING:
    from shoal.config import ModelInfo
    from shoal.providers.base import Prepared, Provider
    from shoal.traffic.limits import Permit
    from shoal.traffic.retry import RetryBudget

__all__ = ["Attempt", "CallState", "billed_usage", "no_lane_error", "pick", "usable"]


def billed_usage(request: ChatRequest, info: ModelInfo, err: ProviderError) -> Usage | None:
    """What the provider billed for an answer shoal discarded, or None if nothing was.

    The provider's own count when the answer carried one. Otherwise, for a stream cut
    after output began or a malformed 200 body, the prompt estimate plus the most output
    the call could have produced (``max_tokens``, else the model's default): the
    provider bills what it generated, which shoal did not see, so the budget is charged
    the upper bound rather than run past its limit. A cut stream's count that is smaller
    than the text already received is a count from before the cut: its output is bounded
    the same way. Errors without an answer (5xx, 429, timeouts) are not billed.
    """
    partial = err.partial_output if isinstance(err, StreamInterrupted) else ""
    usage = err.usage
    if usage is not None and usage.total_tokens:
        if not partial:
            return usage
        seen = count_text(partial, info.encoding)
        if usage.output_tokens >= seen:
            return usage
        # A count from before the cut that the text already received exceeds (Anthropic's
        # message_start says 1 output token): its prompt is right, its output is not.
        return replace(usage, output_tokens=max(seen, output_bound(request, info)))
    if partial or (isinstance(err, MalformedResponse) and err.status == 200):
        bound = output_bound(request, info)
        output = max(count_text(partial, info.encoding), bound) if partial else bound
        return Usage(estimate_prompt_tokens(request, info.encoding), output)
    return None


@dataclass(slots=True)
class Attempt:
    """One admitted try: the model and lane chosen, the limiter permit held, and when."""

    info: ModelInfo
    lane: Lane
    permit: Permit
    started: float

    def release(self) -> None:
        """Give the limiter slot back; the caller judges the channel (breaker) separately."""
        self.permit.release()
        self.lane.pending -= 1

    def hand_off(self) -> bool:
        """Give the concurrency slot back as the answer is read (the permit only: the
        attempt is still pending); True when a queued call took it, so the reader can
        let that call send before finishing its own bookkeeping."""
        limiter = self.lane.limiter
        queued = limiter.waiting
        self.permit.release()
        return queued > 0 and limiter.waiting < queued


@dataclass(slots=True)
class CallState:
    """One logical call: its request, lanes (model, then fallbacks), and retry budget."""

    request: ChatRequest
    chain: list[tuple[ModelInfo, list[Lane]]]
    budget: RetryBudget
    excluded: set[str] = field(default_factory=set)  # lanes out for this call (auth, quota)
    failures: dict[str, int] = field(default_factory=dict)  # lane → failed attempts here
    avoid: str | None = None  # the lane that just failed: on a tie, prefer another
    last: BaseException | None = None
    wasted: Usage | None = None
    wasted_usd: float = 0.0
    queue_s: float = 0.0  # seconds spent waiting in lane limiters, all attempts
    # The request as built for one (lane, model): made while queueing, reused on retries.
    prepared: tuple[tuple[str, str], Prepared] | None = None

    def failed(self, att: Attempt, err: ProviderError) -> None:
        """Count a failed attempt on its lane and any billed, discarded answer."""
        name = att.lane.name
        self.failures[name] = self.failures.get(name, 0) + 1
        self.last = err
        billed = billed_usage(self.request, att.info, err)
        if billed is not None:
            self.wasted = billed if self.wasted is None else self.wasted + billed
            self.wasted_usd += att.info.cost(billed)

    def prepared_for(self, info: ModelInfo, lane: Lane, provider: Provider) -> Prepared:
        """The request built for ``lane`` and ``info``'s wire model: once per lane and
        model, kept here (a retry on the same lane sends the same body)."""
        key = (lane.name, info.name)
        kept = self.prepared
        if kept is not None and kept[0] == key:
            return kept[1]
        prepared = provider.prepare(with_cache_settings(self.request, info, lane.channel),
                                    model=lane.channel.wire_model(info))
        self.prepared = (key, prepared)
        return prepared

    def prepare_early(self, info: ModelInfo, lane: Lane) -> None:
        """Build the request while the call queues for ``lane``, so that once a slot frees
        only the wire is left: at a known cap, what runs between one answer and the next
        request paces every round (building and encoding were ~25 of ~60 µs there:
        docs/DECISIONS.md). A request that cannot be built is refused after admission,
        where the attempt's errors are handled."""
        provider = lane.ready_provider
        if provider is not None:
            with contextlib.suppress(ShoalError):
                self.prepared_for(info, lane, provider)

    def charged(self, exc: BaseException) -> BaseException:
        """``exc`` carrying this call's waste, so budgets can charge what was billed."""
        if isinstance(exc, RunError) and self.wasted is not None:
            exc.wasted_usage = self.wasted
            exc.wasted_cost_usd = self.wasted_usd
        return exc


def usable(call: CallState) -> list[Lane]:
    """The lanes this call may still use (keyed, not excluded for auth or quota)."""
    return [lane for _, lanes in call.chain for lane in lanes
            if lane.keyed and lane.name not in call.excluded]


def pick(call: CallState, now: float) -> tuple[ModelInfo, Lane] | None:
    """The lane for the next attempt, or None when every usable lane is refused now.

    First attempt: the first model in the chain with a healthy lane, least loaded
    first. After failures: the lane this call has failed on least (so the model's
    other channels, then its fallbacks, are tried before a failed lane is tried
    again), then model order, then load; on a tie the lane that just failed loses.
    """
    excluded, failures = call.excluded, call.failures
    if not failures:  # the hot path: stop at the first model with a healthy lane
        for info, lanes in call.chain:
            healthy = [lane for lane in lanes if lane.keyed and lane.name not in excluded
                       and lane.breaker.available(now)]
            if healthy:
                return info, min(healthy, key=Lane.load)
        return None
    best: tuple[tuple[int, int, bool, float], ModelInfo, Lane] | None = None
    for rank, (info, lanes) in enumerate(call.chain):
        for lane in lanes:
            if not lane.keyed or lane.name in excluded or not lane.breaker.available(now):
                continue
            key = (failures.get(lane.name, 0), rank, lane.name == call.avoid, lane.load())
            if best is None or key < best[0]:
                best = (key, info, lane)
    return None if best is None else (best[1], best[2])


def no_lane_error(call: CallState, now: float) -> ShoalError:
    """Why no lane can take the call before its deadline, as the error to raise."""
    last, lanes_all = call.last, [lane for _, lanes in call.chain for lane in lanes]
    if not any(lane.keyed for lane in lanes_all):
        envs = sorted({f"${lane.channel.api_key_env}" for lane in lanes_all
                       if lane.channel.api_key_env})
        return ConfigError(
            f"no API key for {call.request.model!r} or its fallbacks: set "
            f"{' or '.join(envs)} (or api_key in shoal.toml), or pick another "
            "model; with no keys at all, 'smollm2-135m' runs offline")
    if isinstance(last, ShoalError) and not usable(call):
        return last  # every lane is out for this call (auth, quota): that is the news
    reopen = [lane.breaker.next_allowed_at(now) for lane in lanes_all]
    reasons = "; ".join(str(lane.breaker.error()) for lane in lanes_all
                        if lane.keyed and not lane.breaker.available(now))
    after = f" after {_attempts(call.budget.attempts)}" if call.budget.attempts else ""
    exc = CircuitOpen(
        f"no channel for {call.request.model!r} can take the call before its deadline"
        f"{after}: {reasons or 'all channels are refused'}"
        # the last error, unless a breaker's reason above already says it
        + (f" (last error: {last})" if last is not None and str(last) not in reasons
           else ""),
        retry_at=min(reopen, default=None),
    )
    exc.__cause__ = last
    return exc



def deadline_error(call: CallState, lane: str | None, where: str) -> DeadlineExceeded:
    """The call's deadline passed ``where`` (on ``lane``). When earlier attempts failed
    (429s, 529s, 5xx…), the message says how many and with what: the request in flight
    at the deadline is rarely the story then, and "lower max_tokens" would not help."""
    budget, last = call.budget, call.last
    on = f" on {lane!r}" if lane is not None else ""
    head = (f"the call's deadline ({budget.policy.deadline_s:g}s) passed {where}{on} "
            f"for {call.request.model!r}")
    if last is None or isinstance(last, ProviderTimeout):
        return DeadlineExceeded(f"{head}; raise deadline_s or lower max_tokens",
                                last_error=last)
    said = str(last)
    said = said if len(said) <= 200 else said[:197] + "..."
    return DeadlineExceeded(
        f"{head}, after {_attempts(budget.attempts)}, the last "
        f"{type(last).__name__}: {said}; the provider kept failing: retry later, give "
        "the model another channel to fail over to, or raise deadline_s",
        last_error=last)


def _attempts(failed: int) -> str:
    return f"{failed} failed attempt{'' if failed == 1 else 's'}"
