"""A channel's Retry-After binds that channel, not the next attempt on another one.

Found with the independent provider (tests/chaos/test_independent_storm.py): with a 20 s
Retry-After on some 429s, complete calls' p99 latency went from ~1 s to ~26 s. A call
that failed once on each of two channels, the second time with ``429 Retry-After: 20``,
waits those 20 s and then sends its next attempt to the OTHER channel, which asked for no
wait: ``Router._decide`` (src/shoal/traffic/router.py, the ``failover``/``delay`` lines)
takes the delay from ``budget.next_delay(err)`` — the failed lane's Retry-After — while
``pick`` (src/shoal/traffic/call.py, ``call.avoid``) sends the next attempt elsewhere on
the tie. Now the wait before an attempt on another lane is the backoff.
"""

from __future__ import annotations

from test_router_storm import Scripted, answer, make_router  # its scripted providers

from shoal.clock import VirtualClock
from shoal.errors import ProviderUnavailable, RateLimited
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.types import ChatRequest, Message


async def test_retry_after_of_one_channel_does_not_delay_an_attempt_on_another() -> None:
    clock = VirtualClock()
    c0 = Scripted(clock, lambda k: ProviderUnavailable("502", status=502) if k == 0
                  else answer())
    c1 = Scripted(clock, lambda k: RateLimited("429", status=429, retry_after=20.0) if k == 0
                  else answer())
    retry = RetryPolicy(backoff=Backoff(base=0.1, cap=1.0, jitter=False))
    async with make_router(clock, {"c0": c0, "c1": c1}, retry=retry) as router:
        resp = await clock.run(router.complete(
            ChatRequest(model="m", messages=[Message.user("hi")])))
    assert resp.text == "ok"
    assert (c0.calls, c1.calls) == (2, 1)  # c0, then c1 (429, wait 20 s), then c0 again
    # c0 asked for no wait: its second attempt may wait the backoff (1 s cap), not c1's 20 s
    assert clock.now() <= 1.0 + 1e-9


async def test_a_retry_on_the_same_channel_still_waits_its_retry_after() -> None:
    clock = VirtualClock()
    only = Scripted(clock, lambda k: RateLimited("429", status=429, retry_after=5.0) if k == 0
                    else answer())
    retry = RetryPolicy(backoff=Backoff(base=0.1, cap=1.0, jitter=False))
    async with make_router(clock, {"c0": only}, retry=retry) as router:
        resp = await clock.run(router.complete(
            ChatRequest(model="m", messages=[Message.user("hi")])))
    assert resp.text == "ok" and only.calls == 2
    assert clock.now() >= 5.0  # the channel that asked for 5 s got them
