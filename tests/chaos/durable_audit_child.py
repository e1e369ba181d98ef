"""The process the durability audit SIGKILLs at exact points (test_durable_audit.py).

    python durable_audit_child.py SIM_URL STORE_URL RUN_ID OUT.json EFFECTS.log
        [--resume] [--kill-after-record ID] [--kill-after-effect] [--kill-in-tool NAME]
        [--budget USD] [--variant NAME]

The flow, one step at a time (``max_concurrency=1``, so nothing else is in flight when
the process kills itself):

    split (function: 4 topics)  ->  research (map, one agent per topic)
    payer    (agent; tool ``refund``, @idempotent(key="refund:{order_id}"))
    notifier (agent; tool ``notify``, a plain tool)
    charger  (agent; tool ``charge``, @idempotent with the call's place as its key)
    writer   (agent, after all of them)

Every tool appends one line to EFFECTS.log (``os.write`` on an O_APPEND file: a
SIGKILL right after it cannot lose it), so a side effect is counted outside the
process. Requests are tagged ``<step>#<turn>``. The kill points are exact: the process
SIGKILLs itself right after the store confirmed a chosen record (``--kill-after-record
payer/turn/0``) or an effect, or inside a tool right after its side effect. On success
OUT.json holds the outputs, usage, cost and which steps replayed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Any

from kill_child import TurnTagged  # tags each request <step>#<turn>

from shoal.agents import Agent, tool
from shoal.config import Config
from shoal.flows.effects import effect_key, idempotent
from shoal.flows.flow import Flow
from shoal.flows.resume import resume, run_durable
from shoal.stores import open_store
from shoal.stores.records import EffectRecord, StepRecord
from shoal.traffic.router import Router

INPUT = "refund the customer, notify them, charge the fee, then report"
EFFECTS = Path(os.environ.get("AUDIT_EFFECTS", "effects.log"))
KILL_IN_TOOL = os.environ.get("AUDIT_KILL_IN_TOOL", "")


def _effect(line: str, name: str) -> None:
    fd = os.open(EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    if name == KILL_IN_TOOL:  # the effect happened; its record not yet
        os.kill(os.getpid(), signal.SIGKILL)


@tool
@idempotent(key="refund:{order_id}")
async def refund(order_id: str, amount: float) -> str:
    """Refund an order."""
    _effect(f"refund {effect_key()}", "refund")
    return f"refunded order {order_id}"


@tool
def notify(message: str) -> str:
    """Notify the customer."""
    _effect("notify", "notify")
    return "notified"


@tool
@idempotent
async def charge(amount: int) -> str:
    """Charge the fee."""
    _effect(f"charge {effect_key()}", "charge")
    return f"charged {amount}"


def split(input: str) -> list[str]:
    return [f"topic {i}: {input[:20]}" for i in range(4)]


def build_flow(variant: str = "base", budget: float | None = None) -> Flow:
    flow = Flow("audit", max_concurrency=1, budget_usd=budget)
    flow.add(split)
    flow.map(Agent("research", model="m", instructions="Three facts about the topic.",
                   max_tokens=32), over=split)
    flow.add(Agent("payer", model="m", instructions="Refund the order.", tools=[refund],
                   max_tokens=32))
    flow.add(Agent("notifier", model="m", instructions="Tell the customer.", tools=[notify],
                   max_tokens=32))
    flow.add(Agent("charger", model="m", instructions="Charge the fee.", tools=[charge],
                   max_tokens=32))
    last = ["research", "payer", "notifier", "charger"]
    if variant == "extra-step":
        flow.add(Agent("reviewer", model="m", instructions="Review.", max_tokens=32),
                 after=last)
        last = ["reviewer"]
    flow.add(Agent("writer", model="m", instructions="Write the report.", max_tokens=32),
             after=last)
    return flow


def config(sim_url: str) -> Config:
    return Config.from_dict({
        "channels": {"sim": {"protocol": "openai", "base_url": sim_url + "/v1",
                             "api_key": "sk-test", "provider": "openai"}},
        "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}},
    })


def arm(store: Any, record: str | None, after_effect: bool) -> None:
    """SIGKILL this process right after the store confirms ``record`` (or any effect)."""
    complete, put_effect = store.complete_step, store.put_effect

    async def complete_step(run_id: str, step: StepRecord) -> StepRecord:
        done: StepRecord = await complete(run_id, step)
        if step.step_id == record:
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    async def put(effect: EffectRecord) -> EffectRecord:
        done: EffectRecord = await put_effect(effect)
        if after_effect:
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    store.complete_step, store.put_effect = complete_step, put


async def main(a: argparse.Namespace) -> None:
    flow = build_flow(a.variant, a.budget)
    async with Router(config(a.sim)) as router, open_store(a.store) as store:
        arm(store, a.kill_after_record, a.kill_after_effect)
        client = TurnTagged(router)
        if a.resume:
            result = await resume(a.run_id, flow, store=store, client=client,
                                  allow_changed=a.allow_changed)
        else:
            result = await run_durable(flow, INPUT, store=store, run_id=a.run_id,
                                       client=client)
        run = await store.require_run(a.run_id)
    doc: dict[str, Any] = {
        "status": result.status, "outputs": result.outputs,
        "usage": dataclasses.asdict(result.usage), "cost_usd": result.cost_usd,
        "replayed": sorted(n for n, s in result.steps.items() if s.status == "replayed"),
        "run_tokens": run.tokens, "run_cost_usd": run.cost_usd,
    }
    Path(a.out).write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for name in ("sim", "store", "run_id", "out"):
        p.add_argument(name)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--allow-changed", action="store_true")
    p.add_argument("--kill-after-record")
    p.add_argument("--kill-after-effect", action="store_true")
    p.add_argument("--budget", type=float)
    p.add_argument("--variant", default="base")
    asyncio.run(main(p.parse_args()))
