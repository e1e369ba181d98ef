"""The process the kill test SIGKILLs: a 30-step journaled flow against the simulator.

    python kill_child.py SIM_URL STORE_URL RUN_ID OUT.json [--resume]

Ten layers of three agent steps, each layer after the whole previous one; every step
``sNN`` with ``NN % 3 == 1`` calls a tool first (two model turns). Requests are tagged
``<step>#<turn>`` (the turn = assistant messages already in the conversation), so the
simulator's log attributes every request to one model turn. On success the step
outputs are written to OUT.json.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from shoal.agents import Agent, tool
from shoal.config import Config, ModelInfo
from shoal.flows.flow import Flow
from shoal.flows.resume import resume, run_durable
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse

LAYERS = 10
WIDTH = 3
INPUT = "the economics of open-weight models"


@tool
def lookup(query: str) -> str:
    """Look up a fact."""
    return f"a fact about {query}"


def build_flow() -> Flow:
    flow = Flow("chaos30", max_concurrency=WIDTH)
    previous: list[str] = []
    for layer in range(LAYERS):
        current = []
        for j in range(WIDTH):
            n = layer * WIDTH + j
            name = f"s{n:02d}"
            tools = [lookup] if n % 3 == 1 else []
            flow.add(Agent(name, model="m", instructions=f"You are step {name}.", tools=tools,
                           max_tokens=64), after=previous)
            current.append(name)
        previous = current
    return flow


class TurnTagged:
    """A ModelClient around the Router that tags each request with its step and turn."""

    def __init__(self, inner: Router) -> None:
        self.inner = inner

    async def complete(self, request: ChatRequest, *, deadline_s: float | None = None
                       ) -> ChatResponse:
        turn = sum(1 for m in request.messages if m.role == "assistant")
        tag = f"{request.metadata.get('tag')}#{turn}"
        tagged = dataclasses.replace(request, metadata={**request.metadata, "tag": tag})
        return await self.inner.complete(tagged, deadline_s=deadline_s)

    def estimate_tokens(self, request: ChatRequest) -> int:
        return self.inner.estimate_tokens(request)

    def model_info(self, name: str) -> ModelInfo:
        return self.inner.model_info(name)


def config(sim_url: str) -> Config:
    return Config.from_dict({
        "channels": {"sim": {"protocol": "openai", "base_url": sim_url + "/v1",
                             "api_key": "sk-test", "provider": "openai",
                             "max_concurrency": WIDTH}},
        "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}},
    })


async def main(sim_url: str, store: str, run_id: str, out: Path, again: bool) -> None:
    flow = build_flow()
    async with Router(config(sim_url)) as router:
        client = TurnTagged(router)
        if again:
            result = await resume(run_id, flow, store=store, client=client)
        else:
            result = await run_durable(flow, INPUT, store=store, run_id=run_id, client=client)
    doc: dict[str, Any] = {
        "status": result.status, "outputs": result.outputs,
        "replayed": sorted(n for n, s in result.steps.items() if s.status == "replayed"),
    }
    out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0], args[1], args[2], Path(args[3]), "--resume" in args))
