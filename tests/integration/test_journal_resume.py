"""Resume correctness: a journaled result is valid only for the inputs it was computed
from (stale dependents re-run, transitively); a flow run as ``python flow.py`` resumes
through ``shoal resume``; a corrupt idempotent-effect record stops the run."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shoal.agents import Agent, StepFailed, tool
from shoal.agents.recorder import MemoryRecorder
from shoal.agents.testing import ScriptedClient, call, reply
from shoal.errors import CorruptRecord, ProviderUnavailable
from shoal.flows.effects import idempotent
from shoal.flows.flow import Flow
from shoal.flows.resume import plan, resume, run_durable
from shoal.stores import open_store
from shoal.types import ChatRequest

ROOT = Path(__file__).resolve().parents[2]


def who(req: ChatRequest) -> str:
    return req.messages[0].content.split(".")[0]


def saw(req: ChatRequest) -> str:
    """What an agent was given: the '## Output of' sections of its input, compacted."""
    text = req.messages[-1].content
    return "|".join(line for line in text.splitlines() if line.startswith("<") or
                    line == "(no output)")


def pipeline() -> Flow:
    """researcher -> analyzer (continue on failure) -> writer -> editor; notes after
    researcher only."""
    flow = Flow("report")
    flow.add(Agent("researcher", model="m", instructions="researcher. Find facts."))
    flow.add(Agent("analyzer", model="m", instructions="analyzer. Analyse."),
             after="researcher", on_failure="continue")
    flow.add(Agent("notes", model="m", instructions="notes. Take notes."), after="researcher")
    flow.add(Agent("writer", model="m", instructions="writer. Write it."), after="analyzer")
    flow.add(Agent("editor", model="m", instructions="editor. Edit it."), after="writer")
    return flow


def answer(req: ChatRequest) -> object:
    name = who(req)
    return reply(f"<{name} of {saw(req)}>" if name != "researcher" else "<facts>")


def analyzer_down(req: ChatRequest) -> object:
    if who(req) == "analyzer":
        return ProviderUnavailable("the analyzer's provider is down", status=503)
    return answer(req)


async def test_a_resume_reruns_the_dependents_of_a_step_whose_output_changed(
    journal_url: str,
) -> None:
    flow = pipeline()
    first = ScriptedClient(handler=analyzer_down)
    partial = await run_durable(flow, "topic", store=journal_url, run_id="r1", client=first)
    assert partial.status == "partial"
    assert partial.steps["analyzer"].status == "failed"
    assert partial["editor"] == "<editor of <writer of (no output)>>"  # built on None
    told = await plan(journal_url, "r1")
    assert (told.replay, told.redo) == (["researcher", "notes", "writer", "editor"],
                                        ["analyzer"])
    assert told.stale_if_changed == ["writer", "editor"]

    second = ScriptedClient(handler=answer)
    result = await resume("r1", flow, store=journal_url, client=second)
    # analyzer ran again; writer and editor saw other inputs, so they ran again too;
    # researcher and notes replay (their inputs did not change).
    assert sorted(who(r) for r in second.requests) == ["analyzer", "editor", "writer"]
    assert result.status == "succeeded"
    assert {n: s.status for n, s in result.steps.items()} == {
        "researcher": "replayed", "analyzer": "succeeded", "notes": "replayed",
        "writer": "succeeded", "editor": "succeeded"}
    assert result["editor"] == "<editor of <writer of <analyzer of <facts>>>>"

    third = ScriptedClient(handler=answer)
    again = await resume("r1", flow, store=journal_url, client=third)
    assert third.calls == 0  # everything journaled now fits its inputs
    assert again.output == result.output


async def test_a_dependent_whose_inputs_came_out_the_same_replays(journal_url: str) -> None:
    """A failed step that reruns to the same output it is replaced by: nothing stale."""
    flow = Flow("same")
    flow.add(Agent("a", model="m", instructions="a. A."), on_failure="fallback",
             default="<a>")
    flow.add(Agent("b", model="m", instructions="b. B."), after="a")
    calls: list[str] = []

    def flaky(req: ChatRequest) -> object:
        calls.append(who(req))
        if who(req) == "a" and calls.count("a") == 1:
            return ProviderUnavailable("down", status=503)
        return reply(f"<{who(req)}>")

    client = ScriptedClient(handler=flaky)
    await run_durable(flow, "t", store=journal_url, run_id="r1", client=client)
    assert calls == ["a", "b"]
    await resume("r1", flow, store=journal_url, client=client)
    assert calls == ["a", "b", "a"]  # a reran to "<a>", the fallback b already saw


async def test_stale_turns_of_a_rerun_step_are_not_replayed(tmp_path: Path) -> None:
    """The writer of the first run made a tool call (turn 0) from the stale input; its
    rerun must ask the model again rather than replay that turn."""
    looked: list[str] = []

    @tool
    def lookup(q: str) -> str:
        """Look up."""
        looked.append(q)
        return "found"

    flow = Flow("tools")
    flow.add(Agent("analyzer", model="m", instructions="analyzer. A."), on_failure="continue")
    flow.add(Agent("writer", model="m", instructions="writer. W.", tools=[lookup]),
             after="analyzer")
    db = f"sqlite:///{tmp_path / 'runs.db'}"

    def first_run(req: ChatRequest) -> object:
        if who(req) == "analyzer":
            return ProviderUnavailable("down", status=503)
        if req.messages[-1].role == "tool":
            return reply("report on nothing")
        return call("lookup", q="stale")

    await run_durable(flow, "t", store=db, run_id="r1", client=ScriptedClient(handler=first_run))
    assert looked == ["stale"]

    def second_run(req: ChatRequest) -> object:
        if who(req) == "analyzer":
            return reply("<analysis>")
        return reply(f"report on {saw(req)}")

    second = ScriptedClient(handler=second_run)
    result = await resume("r1", flow, store=db, client=second)
    assert [who(r) for r in second.requests] == ["analyzer", "writer"]
    assert looked == ["stale"]  # the stale turn 0 (and its tool call) was not replayed
    assert result.output == "report on <analysis>"


async def test_a_map_whose_list_changed_reruns_only_the_new_items(tmp_path: Path) -> None:
    attempts: list[str] = []
    shouted: list[str] = []

    def pick() -> str:
        attempts.append("pick")
        if len(attempts) == 1:
            raise RuntimeError("not yet")
        return "b"

    def split(pick: str | None) -> list[str]:
        return ["a"] if pick is None else ["a", pick]

    def shout(item: str) -> str:
        shouted.append(item)
        return item.upper()

    flow = Flow("fan")
    flow.add(pick, on_failure="continue")
    flow.add(split, after=pick)
    flow.map(shout, over=split)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    first = await run_durable(flow, None, store=db, run_id="r1", client=ScriptedClient([]))
    assert first.output == ["A"] and shouted == ["a"]
    result = await resume("r1", flow, store=db, client=ScriptedClient([]))
    assert result.output == ["A", "B"]
    assert shouted == ["a", "b"]  # item 0 ("a") replayed: its item did not change
    assert [i.status for i in result.steps["shout"].items] == ["replayed", "succeeded"]


async def test_the_memory_recorder_also_reruns_stale_dependents() -> None:
    flow = pipeline()
    recorder = MemoryRecorder()
    await flow.run("topic", run_id="r1", client=ScriptedClient(handler=analyzer_down),
                   recorder=recorder)
    second = ScriptedClient(handler=answer)
    result = await flow.run("topic", run_id="r1", client=second, recorder=recorder)
    assert sorted(who(r) for r in second.requests) == ["analyzer", "editor", "writer"]
    assert result["editor"] == "<editor of <writer of <analyzer of <facts>>>>"


# -- a flow started as `python flow.py`, resumed by `shoal resume` -----------------------

FLOW_PY = '''
import asyncio, os, sys

from shoal.flows.flow import Flow
from shoal.flows.resume import run_durable


def fetch(input: str) -> str:
    return input.upper()


def publish(fetch: str) -> str:
    if os.environ.get("PUBLISH_DOWN") == "1":
        raise RuntimeError("the publisher is down")
    return f"published {fetch}"


flow = Flow("pub")
flow.add(fetch)
flow.add(publish, after=fetch)

if __name__ == "__main__":
    asyncio.run(run_durable(flow, "hello", store=sys.argv[1], run_id="r1",
                            meta={"target": __file__ + ":flow"}))
'''


def test_a_flow_run_as_a_script_resumes_through_the_cli(tmp_path: Path) -> None:
    script = tmp_path / "pubflow.py"
    script.write_text(textwrap.dedent(FLOW_PY))
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {"PATH": "/usr/bin:/bin", "PUBLISH_DOWN": "1", "HOME": str(tmp_path)}
    first = subprocess.run([sys.executable, str(script), db], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 1 and "the publisher is down" in first.stderr

    env["PUBLISH_DOWN"] = "0"
    out = tmp_path / "out.json"
    shoal = str(Path(sys.executable).parent / "shoal")
    second = subprocess.run([shoal, "resume", "r1", "--store", db, "--json", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    assert "changed" not in second.stdout + second.stderr
    assert second.returncode == 0, second.stderr
    import json

    doc = json.loads(out.read_text())
    assert doc["output"] == "published HELLO"
    assert [s["status"] for s in doc["steps"]] == ["replayed", "succeeded"]


# -- a corrupt idempotent-effect record ------------------------------------------------


async def test_a_corrupt_effect_record_stops_the_run_naming_it(tmp_path: Path) -> None:
    charged: list[int] = []

    @tool
    @idempotent(key="charge:{order}")
    def charge(order: int) -> str:
        """Charge an order."""
        charged.append(order)
        return f"charged {order}"

    flow = Flow("shop")
    # "continue" would let a plain failure through: corruption stops the run anyway.
    flow.add(Agent("clerk", model="m", instructions="clerk. C.", tools=[charge]),
             on_failure="continue")
    flow.add(Agent("after", model="m", instructions="after. A."), after="clerk")
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    first = ScriptedClient([call("charge", order=7), ProviderUnavailable("down", status=503),
                            reply("after")])
    await run_durable(flow, "go", store=db, run_id="r1", client=first)
    assert charged == [7]

    raw = sqlite3.connect(tmp_path / "runs.db")
    with raw:
        raw.execute("UPDATE effects SET payload = replace(payload, 'charged 7', 'charged 9')")
    raw.close()

    second = ScriptedClient(handler=lambda req: reply("the model must never see this"))
    with pytest.raises(CorruptRecord) as info:
        await resume("r1", flow, store=db, client=second)
    assert "effect 'charge:7'" in str(info.value)
    assert second.calls == 0  # the replayed turn's tool call hit the record: no model call
    assert charged == [7]  # the side effect was not repeated
    async with open_store(db) as s:
        run = await s.require_run("r1")
    assert run.status == "failed" and "charge:7" in (run.error or "")


async def test_progress_watches_a_journaled_run_without_changing_it(tmp_path: Path) -> None:
    from shoal.flows.progress import RunProgress

    sent: list[str] = []

    @tool
    @idempotent(key="mail:{to}")
    def mail(to: str) -> str:
        """Send mail."""
        sent.append(to)
        return "sent"

    flow = Flow("post")
    flow.add(Agent("clerk", model="m", instructions="clerk. C.", tools=[mail]))
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    first = ScriptedClient([call("mail", to="a@x"), ProviderUnavailable("down", status=503)])
    watching = RunProgress(flow)
    with pytest.raises(StepFailed):
        await run_durable(flow, "go", store=db, run_id="r1", client=first, progress=watching)
    assert watching.steps["clerk"].status == "running" and watching.steps["clerk"].turns == 1

    again = RunProgress(flow)
    result = await resume("r1", flow, store=db, client=ScriptedClient([reply("done")]),
                          progress=again)
    assert sent == ["a@x"]  # the effect journal is reached through the watcher
    assert result.output == "done"
    clerk = again.steps["clerk"]
    assert (clerk.status, clerk.turns) == ("succeeded", 2)  # one replayed, one new
    assert clerk.tokens == result.usage.total_tokens


async def test_a_step_failed_by_the_store_is_not_retried_or_fallen_back() -> None:
    """StepFailed is never raised for a journal failure: the store error itself is."""
    from shoal.errors import StoreUnavailable

    flow = Flow("f")

    def boom() -> str:
        raise StoreUnavailable("the store is gone")

    flow.add(boom, on_failure="fallback", default="x", retries=3)
    with pytest.raises(StoreUnavailable):
        await flow.run(None, client=ScriptedClient([]))
    flow2 = Flow("g")
    flow2.add(lambda: 1 / 0, name="div")
    with pytest.raises(StepFailed):  # an ordinary failure still fails as a step
        await flow2.run(None, client=ScriptedClient([]))
