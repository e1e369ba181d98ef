"""A batch over a folder of documents: one summary agent per file, a few at a time, every
file's error collected, a live progress bar (done, failed, running, tokens, dollars, ETA).

    python examples/batch_folder.py examples/docs --sim
    python examples/batch_folder.py examples/docs --json summaries.json    # offline or keys

The same with the CLI:  shoal run examples/batch_folder.py:summarizer -d examples/docs --sim
(``--sim``: against the simulator; drop it once a provider's key is set)
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from _common import add_model_args, models_for, router_from_args
from rich.console import Console

from shoal.agents import Agent
from shoal.flows.batch import Batch

summarizer = Agent("summarizer", model="gpt-4o-mini", max_tokens=200,
                   instructions="Summarise the document in two sentences.")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path(__file__).parent / "docs")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    add_model_args(parser)
    args = parser.parse_args()
    files = sorted(p for p in args.folder.glob("*.txt") if p.is_file())
    console = Console()
    async with router_from_args(args) as router:
        model = models_for(router, {"summarizer": "gpt-4o-mini"})["summarizer"]
        batch = Batch(summarizer.clone(model=model), concurrency=args.concurrency,
                      client=router, budget_usd=0.50, progress=True, console=console,
                      description=f"{len(files)} documents")
        result = await batch.run({p.name: p.read_text("utf-8") for p in files})  # rows by name
    console.print(result.table())
    if args.json:
        args.json.write_text(json.dumps([
            {"file": str(p), "status": i.status, "summary": i.output, "error": i.error,
             "cost_usd": i.cost_usd}
            for p, i in zip(files, result.items, strict=True)
        ], indent=2), "utf-8")
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    asyncio.run(main())
