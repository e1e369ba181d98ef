"""Researcher → Analyzer → Writer with the OpenAI Agents SDK (compare: shoal_pipeline.py).

Runs in a venv with `pip install openai-agents` (it pins openai 3.x):

    shoal sim --port 8100 &
    python examples/vs_openai_agents/openai_agents_pipeline.py "open-weight LLM economics" \\
        --base-url http://127.0.0.1:8100
"""

import asyncio
import os

from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from openai import AsyncOpenAI
from pydantic import BaseModel

set_tracing_disabled(True)  # tracing uploads to OpenAI by default


class Findings(BaseModel):
    points: list[str]


def model(name: str, base_url: str, key_env: str) -> OpenAIChatCompletionsModel:
    client = AsyncOpenAI(base_url=base_url, api_key=os.environ[key_env])
    return OpenAIChatCompletionsModel(model=name, openai_client=client)


def build(deepseek: str, anthropic: str, openai: str) -> list[Agent]:
    researcher = Agent(name="researcher", output_type=Findings,
                       instructions="Collect the key facts about the topic.",
                       model=model("deepseek-chat", deepseek, "DEEPSEEK_API_KEY"))
    analyzer = Agent(name="analyzer",
                     instructions="Analyse the findings: trends, risks, open questions.",
                     model=model("claude-opus-4-6", anthropic, "ANTHROPIC_API_KEY"))
    writer = Agent(name="writer", instructions="Write a crisp report.",
                   model=model("gpt-4o", openai, "OPENAI_API_KEY"))
    return [researcher, analyzer, writer]


async def main(topic: str, agents: list[Agent]) -> None:
    researcher, analyzer, writer = agents
    found = await Runner.run(researcher, topic)
    analysis = await Runner.run(analyzer, found.final_output.model_dump_json())
    report = await Runner.run(writer, str(analysis.final_output))
    runs = (found, analysis, report)
    tokens = sum(r.context_wrapper.usage.total_tokens for r in runs)
    print(report.final_output, tokens)


# --- harness: point every model at a simulator (not part of the line count) ---------

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("topic")
    parser.add_argument("--base-url", help="a running `shoal sim` (default: real providers)")
    parser.add_argument("--parallel", type=int, default=1, help="pipelines at once")
    args = parser.parse_args()
    urls = ["https://api.deepseek.com/v1", "https://api.anthropic.com/v1/",
            "https://api.openai.com/v1"]
    if args.base_url:
        urls = [args.base_url + "/v1"] * 3
        for key in ("DEEPSEEK_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
            os.environ.setdefault(key, "sk-sim")

    async def many() -> None:
        agents = build(*urls)
        outcomes = await asyncio.gather(
            *(main(f"{args.topic} #{i}", agents) for i in range(args.parallel)),
            return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        print(f"pipelines ok {len(outcomes) - len(failed)}, failed {len(failed)}",
              *{type(f).__name__ for f in failed})

    asyncio.run(many())
