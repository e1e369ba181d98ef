"""Five sub-topics researched at once: a planner splits the topic, a researcher fans out
over the sub-topics (at most five at a time), a writer combines what they found.

    python examples/topic_fanout.py "battery recycling" --sim
    python examples/topic_fanout.py "battery recycling"            # offline model or keys
"""

from __future__ import annotations

import argparse
import asyncio

from _common import add_model_args, models_for, router_from_args
from rich.console import Console

from shoal.agents import Agent
from shoal.flows.context import StepContext
from shoal.flows.flow import Flow

WANTED = {"planner": "deepseek-chat", "researcher": "deepseek-chat", "writer": "gpt-4o-mini"}


def sub_topics(planner: str, input: str) -> list[str]:
    """Five sub-topics from the planner's lines (padded with generic angles if the model
    gave fewer: a weak model's plan still yields five)."""
    lines = [ln.strip(" -*0123456789.\t") for ln in planner.splitlines()]
    found = [ln for ln in lines if len(ln) > 3][:5]
    generic = ["history", "economics", "technology", "regulation", "open questions"]
    found += [f"{input}: {g}" for g in generic[len(found):]]
    return found


def brief_input(ctx: StepContext) -> str:
    """The writer's input: each sub-topic with its research notes."""
    pairs = zip(ctx.deps["sub_topics"], ctx.deps["researcher"], strict=True)
    return "\n\n".join(f"## {topic}\n{notes}" for topic, notes in pairs)


def build(models: dict[str, str]) -> Flow:
    planner = Agent("planner", model=models["planner"], max_tokens=200,
                    instructions="Split the topic into exactly five sub-topics, one per line, "
                    "no numbering, no other text.")
    researcher = Agent("researcher", model=models["researcher"], max_tokens=250,
                       instructions="Give three key facts about this sub-topic, one per line.")
    writer = Agent("writer", model=models["writer"], max_tokens=400,
                   instructions="Combine the research notes into a short structured brief.")
    flow = Flow("topic-fanout", budget_usd=0.25)
    flow.add(planner)
    flow.add(sub_topics, after=planner)
    flow.map(researcher, over=sub_topics, concurrency=5, on_item_failure="fallback",
             default="(no notes: this sub-topic failed)")
    flow.add(writer, after=[sub_topics, researcher], input=brief_input)
    return flow


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("topic", nargs="?", default="battery recycling")
    add_model_args(parser)
    args = parser.parse_args()
    console = Console()
    async with router_from_args(args) as router:
        result = await build(models_for(router, WANTED)).run(args.topic, client=router)
    console.print(result.output)
    console.print(result.table())


if __name__ == "__main__":
    asyncio.run(main())
