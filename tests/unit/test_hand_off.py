"""The slot handed over as an answer is read (traffic/call.py ``Attempt.hand_off``): the
reader learns whether a queued call took it, so it lets that call send first."""

from __future__ import annotations

import asyncio

from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.observe.events import EventBus
from shoal.traffic.call import Attempt
from shoal.traffic.lane import build_lane


def attempt_on_cap_one() -> Attempt:
    cfg = Config.from_dict({
        "channels": {"c": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                           "api_key": "sk-test", "max_concurrency": 1}},
        "models": {"m": {"channels": ["c"]}}})
    lane = build_lane(cfg.channels["c"], clock=VirtualClock(), events=EventBus())
    permit = lane.limiter.try_acquire()
    assert permit is not None
    lane.pending += 1
    return Attempt(cfg.model("m"), lane, permit, 0.0)


async def test_hand_off_says_a_queued_call_took_the_slot() -> None:
    att = attempt_on_cap_one()
    limiter = att.lane.limiter
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    assert limiter.waiting == 1
    assert att.hand_off() is True
    granted = await waiter
    assert limiter.in_flight == 1 and limiter.waiting == 0
    assert att.lane.pending == 1  # the attempt itself is still being read and booked
    att.hand_off()  # idempotent: the permit is already back
    assert limiter.in_flight == 1
    granted.release()


async def test_hand_off_with_nobody_queued_says_no() -> None:
    att = attempt_on_cap_one()
    assert att.hand_off() is False
    assert att.lane.limiter.in_flight == 0
