"""The content pipeline: Researcher (cheap, fast) → Analyzer (strongest) → Writer.

    python examples/content_pipeline.py "open-weight LLM economics"          # offline model
    python examples/content_pipeline.py "open-weight LLM economics" --sim    # simulator
    DEEPSEEK_API_KEY=... ANTHROPIC_API_KEY=... OPENAI_API_KEY=... \\
        python examples/content_pipeline.py "open-weight LLM economics"      # real providers

The pipeline itself lives in ``shoal.examples_builtin`` (``shoal demo`` runs it too).
"""

from __future__ import annotations

import argparse
import asyncio

from _common import add_model_args, models_for, router_from_args

from shoal.examples_builtin import render_pipeline_result, run_content_pipeline

# With keys: each step on the model that suits it; without, the default (offline) model.
WANTED = {"researcher": "deepseek-chat", "analyzer": "claude-opus-4-6", "writer": "gpt-4o"}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("topic", nargs="?", default="open-weight LLM economics")
    parser.add_argument("--run-id", default=None)
    add_model_args(parser)
    args = parser.parse_args()
    async with router_from_args(args) as router:
        models = models_for(router, WANTED)
        result = await run_content_pipeline(args.topic, router=router, models=models,
                                            run_id=args.run_id)
    render_pipeline_result(result)


if __name__ == "__main__":
    asyncio.run(main())
