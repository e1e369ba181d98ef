"""What one attempt's end teaches its channel: the slot released (or settled), the
breaker's verdict, adaptive concurrency's lesson, the retry budget's deposit.

Kept apart from the Router, which decides what to do next; these only record what
happened, in the order the policies need (a lowered cap before the slot is freed, a
raised one before it too, so the limiter hands the slot on at the right level).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.errors import (
    Overloaded,
    ProviderError,
    RateLimited,
    RetryDeclined,
    StreamInterrupted,
)
from shoal.tokens import count_text, estimate_prompt_tokens, output_bound

if TYPE_CHECKING:
    from shoal.clock import Clock
    from shoal.traffic.call import Attempt, CallState
    from shoal.types import ChatRequest, ChatResponse

__all__ = ["attempt_abandoned", "attempt_failed", "attempt_succeeded"]


def attempt_failed(att: Attempt, err: ProviderError) -> bool:
    """Release the slot and teach the channel's policies; True when the error was our
    own overshoot (adaptive concurrency admitted the call above the cap it now holds)."""
    lane, permit = att.lane, att.permit
    if isinstance(err, RetryDeclined) and err.original is not None:
        err = err.original  # what the channel's policies learn from is the error itself
    if isinstance(err, StreamInterrupted) and isinstance(err.__cause__, Overloaded):
        err = err.__cause__  # overloaded mid-stream: the overload rule, not ill health
    if isinstance(err, Overloaded):
        # The provider is overloaded, not our cap: back off multiplicatively, keep
        # the learned ceiling; it is not ill health either (no breaker verdict).
        att.release()
        lane.breaker.abandon(started_at=att.started)
        if lane.adaptive is not None:
            lane.adaptive.on_overload(att.started)
        return False
    if isinstance(err, RateLimited):
        # Backpressure, not ill health: it teaches adaptive concurrency, not the breaker.
        # Lower the cap *before* freeing the slot, or the limiter would hand the slot
        # to the next waiter at the old, too-high level (a second 429).
        overshoot = (lane.adaptive.on_rate_limited(permit.in_flight)
                     if lane.adaptive is not None else False)
        att.release()
        lane.breaker.abandon(started_at=att.started)
        return overshoot
    att.release()
    # Ill health (5xx, timeouts, broken answers) is the breaker's to judge. It does not
    # lower concurrency: in a storm of random 5xx that would starve a channel that
    # serves 80% of its calls (the provider says "overloaded" when it means it).
    lane.breaker.record_failure(err, started_at=att.started)
    return False


def attempt_abandoned(att: Attempt) -> None:
    """The attempt ended without a verdict on the channel (deadline, cancellation)."""
    att.release()
    att.lane.breaker.abandon(started_at=att.started)


def attempt_succeeded(clock: Clock, request: ChatRequest, att: Attempt, call: CallState,
                      response: ChatResponse) -> ChatResponse:
    """Settle, release and price a good answer; teach the channel's policies."""
    info, lane, permit = att.info, att.lane, att.permit
    usage = response.usage
    if usage.total_tokens == 0 and (response.text or response.tool_calls):
        # Some servers (llama.cpp) send no usage in streams: estimate it rather than
        # let budgets and TPM see a free call.
        usage.input_tokens = estimate_prompt_tokens(request, info.encoding)
        usage.output_tokens = count_text(
            response.text + "".join(c.arguments for c in response.tool_calls),
            info.encoding)
    counted = usage.input_tokens + usage.output_tokens
    if permit.tokens and lane.tpm_counts_max_tokens:
        # What the provider's own window counted (PROVIDERS.md, Moonshot): settling to
        # the tokens used would let the next calls in and draw its 429s.
        counted = max(counted, usage.input_tokens + output_bound(request, info))
    permit.settle(counted)
    if lane.adaptive is not None:  # before the release: a raised cap admits at once
        lane.adaptive.on_success(response.latency_s, permit.in_flight)
    att.release()
    lane.breaker.record_success(started_at=att.started)
    lane.retry_budget.deposit()
    response.cost_usd = info.cost(usage)
    if not response.served_model:
        response.served_model = response.model
    response.model = info.name
    response.channel = lane.name
    if call.wasted is not None:
        response.wasted = call.wasted
        response.wasted_cost_usd = call.wasted_usd
    response.queue_s, response.attempts = call.queue_s, call.budget.attempts + 1
    response.call_s = clock.now() - call.budget.started
    return response
