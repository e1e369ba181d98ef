"""A document-analysis swarm: metadata, entity and sentiment agents read the document in
parallel; a summary agent waits for all three.

    python examples/document_swarm.py examples/docs/03-port-strike.txt --sim
    python examples/document_swarm.py examples/docs/03-port-strike.txt   # offline or keys

Structured outputs are validated (and re-asked); a weak model that cannot produce the
JSON falls back to an "unknown" value instead of sinking the run.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Literal

from _common import add_model_args, models_for, router_from_args
from pydantic import BaseModel
from rich.console import Console

from shoal.agents import Agent
from shoal.flows.flow import Flow

WANTED = {"metadata": "gpt-4o-mini", "entities": "deepseek-chat", "sentiment": "gpt-4o-mini",
          "summary": "claude-sonnet-4-6"}


class Metadata(BaseModel):
    title: str
    language: str
    doc_type: str


class Entities(BaseModel):
    people: list[str]
    organizations: list[str]
    places: list[str]


class Sentiment(BaseModel):
    label: Literal["positive", "neutral", "negative"]
    score: float


def build(models: dict[str, str]) -> Flow:
    flow = Flow("document-swarm", budget_usd=0.10)
    specs: list[tuple[str, type[BaseModel], str, BaseModel]] = [
        ("metadata", Metadata, "Give the document's title, language and type.",
         Metadata(title="unknown", language="unknown", doc_type="unknown")),
        ("entities", Entities, "List the people, organizations and places it names.",
         Entities(people=[], organizations=[], places=[])),
        ("sentiment", Sentiment, "Judge the document's overall sentiment.",
         Sentiment(label="neutral", score=0.0)),
    ]
    for name, output_type, instructions, fallback in specs:
        agent = Agent(name, model=models[name], output_type=output_type,
                      instructions=instructions, max_tokens=300)
        flow.add(agent, on_failure="fallback", default=fallback)
    summary = Agent("summary", model=models["summary"], max_tokens=300,
                    instructions="Summarise the document in three sentences, using the "
                    "metadata, entities and sentiment found by the other agents.")
    flow.add(summary, after=["metadata", "entities", "sentiment"])
    return flow


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("document", type=Path, nargs="?",
                        default=Path(__file__).parent / "docs" / "03-port-strike.txt")
    add_model_args(parser)
    args = parser.parse_args()
    text = args.document.read_text("utf-8")
    console = Console()
    async with router_from_args(args) as router:
        result = await build(models_for(router, WANTED)).run(text, client=router)
    for name in ("metadata", "entities", "sentiment"):
        console.print(f"[b]{name}[/b]: {result[name]!r}")
    console.print(f"[b]summary[/b]: {result.output}")
    console.print(result.table())


if __name__ == "__main__":
    asyncio.run(main())
