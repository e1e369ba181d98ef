"""Researcher → Analyzer → Writer with shoal (compare: openai_agents_pipeline.py).

    shoal sim --port 8100 &            # or real keys and no --base-url
    python examples/vs_openai_agents/shoal_pipeline.py "open-weight LLM economics" \\
        --base-url http://127.0.0.1:8100
"""

import asyncio

from pydantic import BaseModel

from shoal.agents import Agent
from shoal.flows.flow import Flow


class Findings(BaseModel):
    points: list[str]


researcher = Agent("researcher", model="deepseek-chat", output_type=Findings,
                   instructions="Collect the key facts about the topic.")
analyzer = Agent("analyzer", model="claude-opus-4-6",
                 instructions="Analyse the findings: trends, risks, open questions.")
writer = Agent("writer", model="gpt-4o", instructions="Write a crisp report.")

flow = Flow("report", budget_usd=0.50)
flow.add(researcher)
flow.add(analyzer, after=researcher)
flow.add(writer, after=analyzer)


async def main(topic: str) -> None:
    result = await flow.run(topic, run_id="rep-001")
    print(result.output, result.usage, result.cost_usd)


# --- harness: point every model at a simulator (not part of the line count) ---------

if __name__ == "__main__":
    import argparse

    from shoal.examples_builtin import config_for_sim
    from shoal.traffic.router import Router

    parser = argparse.ArgumentParser()
    parser.add_argument("topic")
    parser.add_argument("--base-url", help="a running `shoal sim` (default: real providers)")
    parser.add_argument("--cap", type=int, default=None, help="the provider's known cap")
    parser.add_argument("--parallel", type=int, default=1, help="pipelines at once")
    args = parser.parse_args()

    async def against_sim(url: str) -> None:
        async with Router(config_for_sim(url, max_concurrency=args.cap)) as router:
            flow.client = router
            outcomes = await asyncio.gather(
                *(main(f"{args.topic} #{i}") for i in range(args.parallel)),
                return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        print(f"pipelines ok {len(outcomes) - len(failed)}, failed {len(failed)}",
              *{type(f).__name__ for f in failed})

    asyncio.run(against_sim(args.base_url) if args.base_url else main(args.topic))
