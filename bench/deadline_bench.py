"""A hung provider and ``deadline_s=2``: how long until the caller has its answer?

A simulator that accepts every request and never answers (``Faults(hang_rate=1.0)``)
sits behind a channel with the default read timeout (300 s). Each case asks with a
2-second deadline and measures, on the wall clock, until ``DeadlineExceeded`` reaches
the caller: ``Router.complete``, ``Router.stream``, and an ``Agent`` run
(``call_deadline_s=2``). It also reads the simulator's in-flight count afterwards: the
hung request must have been cancelled (the connection closed), not left running.

Target (issue 8): every case ≤ 2.2 s, and the simulator sees 0 in flight after.

    python bench/deadline_bench.py
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from shoal import Agent, Runner
from shoal.config import Config
from shoal.errors import DeadlineExceeded
from shoal.sim import Faults, SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

DEADLINE_S = 2.0
TARGET_S = 2.2


def _config(url: str) -> Config:
    return Config.from_dict({
        "channels": {"hung": {"protocol": "openai", "base_url": url + "/v1",
                              "api_key": "sk-bench", "max_concurrency": 4}},
        "models": {"m": {"channels": ["hung"], "input": 1.0, "output": 2.0}},
    })


def _request() -> ChatRequest:
    return ChatRequest(model="m", messages=[Message.user("are you there?")], max_tokens=16)


async def _complete(router: Router) -> None:
    await router.complete(_request(), deadline_s=DEADLINE_S)


async def _stream(router: Router) -> None:
    async for _ in router.stream(_request(), deadline_s=DEADLINE_S):
        pass


async def _agent(router: Router) -> None:
    agent = Agent("waiter", model="m", instructions="Answer briefly.",
                  call_deadline_s=DEADLINE_S)
    await Runner(router).run(agent, "are you there?")


async def measure(name: str, case: Callable[[Router], Awaitable[None]]) -> tuple[float, int]:
    async with SimServer(SimConfig(faults=Faults(hang_rate=1.0, hang_max_s=60))) as sim:
        async with Router(_config(sim.url)) as router:
            started = time.perf_counter()
            try:
                await case(router)
            except DeadlineExceeded:
                elapsed = time.perf_counter() - started
            else:
                raise SystemExit(f"{name}: a hung provider answered?")
        await asyncio.sleep(0.2)  # let the server notice the closed connection
        return elapsed, sim.stats().in_flight


async def main() -> int:
    worst = 0.0
    print(f"hung provider, read timeout 300 s, deadline_s={DEADLINE_S:g}")
    for name, case in (("complete", _complete), ("stream", _stream), ("agent", _agent)):
        elapsed, left = await measure(name, case)
        worst = max(worst, elapsed)
        verdict = "ok" if elapsed <= TARGET_S and left == 0 else "MISSED"
        print(f"  {name:9s} DeadlineExceeded after {elapsed:.3f} s "
              f"(target ≤ {TARGET_S:g} s); simulator in flight after: {left}  {verdict}")
    return 0 if worst <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
