"""The flow the scale tests run on Dask workers (importable by them: by reference).

Three steps, each one model turn tagged ``{run_id}/{step}`` (sent as ``x-shoal-tag``,
so the simulator's log tells which item's step every request was). An input starting
with ``fail`` fails its first step while ``$SHOAL_SCALE_FAIL`` is set (before any model
call), so a test can fail items and then resume them with the same definition; one starting
with ``boom`` always fails.
"""

from __future__ import annotations

import os

from shoal import Agent, Flow
from shoal.flows.context import StepContext

MODEL = "sim-fast"
WRITER = Agent("writer", model=MODEL, instructions="Write one short line.", max_tokens=8)


async def _turn(ctx: StepContext, text: str) -> None:
    agent = WRITER.clone(metadata={"tag": f"{ctx.run_id}/{ctx.step}"})
    await ctx.run_agent(agent, text)


async def draft(input: str, ctx: StepContext) -> str:
    if input.startswith("fail") and os.environ.get("SHOAL_SCALE_FAIL"):
        raise ValueError(f"cannot draft {input!r}")
    if input.startswith("boom"):
        raise ValueError(f"{input!r} always fails")
    await _turn(ctx, f"draft {input}")
    return f"{input}:draft"


async def review(draft: str, ctx: StepContext) -> str:
    await _turn(ctx, f"review {draft}")
    return f"{draft}:review"


async def final(review: str, ctx: StepContext) -> str:
    await _turn(ctx, f"final {review}")
    return f"{review}:final"


def three_steps() -> Flow:
    flow = Flow("three-steps")
    flow.add(draft)
    flow.add(review, after=draft)
    flow.add(final, after=review)
    return flow


def sim_config(sim_url: str, redis_url: str, channel: str, *, cap: int | None = 5,
               lease_s: float = 2.0) -> str:
    """A shoal.toml: the one model through a Redis-shared channel on the simulator."""
    limit = "" if cap is None else f"max_concurrency = {cap}\n"
    return (
        f'redis_url = "{redis_url}"\n\n'
        f"[channels.{channel}]\n"
        'protocol = "openai"\nprovider = "openai"\n'
        f'base_url = "{sim_url}/v1"\napi_key = "sk-test"\nshared = true\n'
        f"{limit}lease_s = {lease_s}\n\n"
        f'[models."{MODEL}"]\nchannels = ["{channel}"]\n'
    )
