"""`shoal show RUN_ID --html`: the run report of a real failed run against the simulator,
read back from the file the command wrote (through the installed console script)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from report_runs import BACKOFF_S, LEAKED, REFUSAL, RUN_ID, TOPIC, failed_run, large_run

from shoal.config import Config
from shoal.flows.journal import StoreRecorder
from shoal.observe.report import render, write_report
from shoal.observe.report_data import gather, layers
from shoal.stores import open_store
from shoal.stores.records import RunRecord, StepRecord
from shoal.types import ChatResponse, Usage

DATA = re.compile(r'<script type="application/json" id="shoal-data">(.*?)</script>', re.S)


def shoal(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The `shoal` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("shoal")
    cmd = [str(script)] if script.exists() else [
        sys.executable, "-c", "from shoal.cli.main import main; main()"]
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_CONFIG", "SHOAL_STORE")}
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def payload(html: str) -> dict[str, Any]:
    found = DATA.search(html)
    assert found, "no data block in the report"
    data: dict[str, Any] = json.loads(found.group(1))
    for table in ("steps", "calls"):  # rows under column names -> dicts
        data[table] = [dict(zip(data[table]["keys"], row, strict=True))
                       for row in data[table]["rows"]]
    return data


def assert_self_contained(html: str) -> None:
    """Nothing fetched: no external script, stylesheet, image, font or frame; the only
    URL is the SVG namespace; a CSP forbids fetching anyway."""
    assert "default-src 'none'" in html
    for bad in ("<link", "<iframe", "src=", "@import"):
        assert bad not in html, bad
    assert not re.search(r"url\((?!#)", html)  # url(#arrow): a marker in the same SVG
    assert set(re.findall(r"https?://[^\s\"'<>)]+", html)) <= {"http://www.w3.org/2000/svg"}


async def test_show_html_writes_the_report_of_a_failed_run(tmp_path: Path) -> None:
    run = await failed_run(tmp_path)
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    done = shoal("show", RUN_ID, "--store", run.store_url, "--html", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"wrote the report of run {RUN_ID} to {out}" in done.stdout
    html = out.read_text("utf-8")
    assert_self_contained(html)
    data = payload(html)

    # the graph: every step, coloured by status, with its edges and layers
    nodes = {n["name"]: n for n in data["nodes"]}
    assert {n: v["status"] for n, v in nodes.items()} == {
        "researcher": "succeeded", "analyzer": "succeeded", "critic": "succeeded",
        "publish": "failed", "announcer": "not_run"}
    assert nodes["publish"]["after"] == ["analyzer", "critic"]
    assert [nodes[n]["layer"] for n in ("researcher", "analyzer", "critic", "publish",
                                        "announcer")] == [0, 1, 1, 2, 3]

    # what a resume would do: the same plan `shoal show --json` prints
    shown = shoal("show", RUN_ID, "--store", run.store_url, "--json", cwd=tmp_path)
    plan = json.loads(shown.stdout)
    assert plan["redo"] == ["publish", "announcer"]
    assert {n: v["resume"] for n, v in nodes.items()} == {
        "researcher": "replay", "analyzer": "replay", "critic": "replay",
        "publish": "redo", "announcer": "redo"}
    assert 'id="resume-redo">Runs again (2): <code>publish</code>, <code>announcer</code>' \
        in html

    # the timeline: each model call with its limiter wait, retries and provider time
    calls = {c["step"]: c for c in data["calls"]}
    assert sorted(calls) == ["analyzer", "critic", "researcher"]
    assert all(c["timed"] and c["latency"] > 0 for c in calls.values())
    assert calls["researcher"]["attempts"] == 2  # the scripted 503, then the answer
    # the failed attempt and its backoff (a loop timer may fire a hair early: 10% slack)
    assert calls["researcher"]["retry"] >= BACKOFF_S * 0.9
    assert calls["analyzer"]["attempts"] == calls["critic"]["attempts"] == 1
    assert calls["analyzer"]["retry"] == calls["critic"]["retry"] == 0
    # one channel slot: whichever of analyzer and critic came second queued for it
    waits = sorted(c["queue"] for c in (calls["analyzer"], calls["critic"]))
    assert waits[1] > 0
    for c in calls.values():  # a call's parts end where it ended, after it started
        assert c["start"] <= c["end"] - c["queue"] - c["retry"] - c["latency"] + 1e-3
    assert {s["id"]: s["status"] for s in data["steps"]} == {
        n: v["status"] for n, v in nodes.items()}

    # tokens and cost: the table's total is the run's bill
    async with open_store(run.store_url) as store:
        record = await store.require_run(RUN_ID)
    assert sum(c["cost"] for c in data["calls"]) == pytest.approx(record.cost_usd, abs=1e-5)
    assert f"<td class=n>${record.cost_usd:.6f}</td>" in html
    for agent in ("researcher", "analyzer", "critic"):
        assert f'<tr data-agent="{agent}" data-model="m">' in html

    # errors: escaped, redacted, there
    assert 'id="errors" data-count="1"' in html
    assert "the publisher refused &lt;b&gt;it&lt;/b&gt; &amp; said &lt;/script&gt;" in html
    assert REFUSAL not in html and "<b>it</b>" not in html and "alert(1)</script>" not in html
    assert LEAKED not in html
    assert "&lt;i&gt;open-weight&lt;/i&gt;" in html and TOPIC not in html
    assert html.count("<script") == 2  # the data block and the drawing script, no more

    nowhere = tmp_path / "no" / "such" / "dir" / "r.html"
    refused = shoal("show", RUN_ID, "--store", run.store_url, "--html", str(nowhere),
                    cwd=tmp_path)
    assert refused.returncode == 2
    assert f"cannot write the report to {nowhere}" in refused.stderr


async def test_cached_tokens_and_what_caching_saved(tmp_path: Path) -> None:
    """A Claude turn that read 8,000 prompt tokens from the cache and wrote 2,000: saved
    = 10,000 at $3/M - (8,000 reads at $0.30/M + 2,000 writes at $3.75/M) = $0.0201."""
    async with open_store("memory://") as store:
        journal = StoreRecorder(store)
        await journal.run_started("c1", "writer", "hi")
        assert await journal.replay_step("c1", "writer") is None
        usage = Usage(10_000, 100, cached_input_tokens=8_000, cache_write_tokens=2_000)
        claude = Config.from_dict({}).model("claude-sonnet-4-6")
        await journal.turn_done("c1", "writer", 0, ChatResponse(
            "done", [], "stop", usage, "anthropic", "claude-sonnet-4-6", latency_s=0.4,
            cost_usd=claude.cost(usage)))
        await journal.run_finished("c1", "succeeded", None)
        data = await gather(store, "c1", prices=Config.from_dict({}))
        path = await write_report(store, "c1", tmp_path / "c1.html",
                                  prices=Config.from_dict({}))
    (row,) = data.usage
    assert (row.agent, row.model, row.usage.cached_input_tokens) == (
        "writer", "claude-sonnet-4-6", 8_000)
    assert row.saved_usd == pytest.approx(0.0201)
    assert data.saved_usd == pytest.approx(0.0201)
    html = path.read_text("utf-8")
    assert "<td class=n>8,000</td><td class=n>2,000</td>" in html
    assert '<div class="kpi" data-kpi="saved by caching"><span>saved by caching</span>' \
           "<b>$0.020100</b>" in html


async def test_turns_journaled_before_the_router_timings_still_render() -> None:
    old_turn = {"text": "a", "tool_calls": [], "finish_reason": "stop",
                "usage": {"input_tokens": 10, "output_tokens": 5, "cached_input_tokens": 0,
                          "reasoning_tokens": 0, "cache_write_tokens": 0},
                "provider": "openai", "model": "gpt-4o", "latency_s": 0.7,
                "raw_finish_reason": "stop", "reasoning": None, "id": "x", "cost_usd": 0.0001,
                "channel": "openai", "reasoning_parts": []}
    async with open_store("memory://") as store:
        await store.create_run(RunRecord("old", flow="agent"))
        await store.complete_step("old", StepRecord(
            "writer/turn/0", "succeeded", result=old_turn, started_at=100.0,
            finished_at=100.7, tokens=15, cost_usd=0.0001,
            meta={"kind": "turn", "step": "writer", "turn": 0}))
        await store.update_run("old", status="succeeded")
        data = await gather(store, "old", prices=Config.from_dict({}))
    (call,) = data.calls
    assert (call.timed, call.queue_s, call.retry_s, call.attempts, call.latency_s) == (
        False, 0.0, 0.0, 1, 0.7)
    html = render(data)
    assert "1 call(s) were journaled without the Router&#x27;s timings" in html
    assert payload(html)["nodes"][0]["name"] == "writer"


async def test_a_500_step_run_makes_a_report_well_under_a_megabyte() -> None:
    async with open_store("memory://") as store:
        await large_run(store, steps=500)
        data = await gather(store, "big", prices=Config.from_dict({}))
    html = render(data)
    assert_self_contained(html)
    size = len(html.encode())
    print(f"500 steps, 1000 model calls: {size:,} bytes")
    assert size < 1_000_000
    assert len(data.nodes) == 500 and len(data.calls) == 1000
    assert max(n.layer for n in data.nodes) == 49
    assert data.nodes[-1].status == "failed"
    assert data.cached_tokens == 500 * 1000
    assert "<details>" in html  # the step table starts folded


def test_show_html_names_an_unknown_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    missing = shoal("show", "nope", "--store", url, "--html", "r.html", cwd=tmp_path)
    assert missing.returncode == 2
    assert "nope" in missing.stderr
    assert not (tmp_path / "r.html").exists()


def test_layers_of_a_long_chain_a_diamond_and_a_corrupt_cycle() -> None:
    chain = {f"s{i}": (f"s{i - 1}",) if i else () for i in range(5000)}
    assert layers(chain)["s4999"] == 4999  # no recursion limit
    backwards = {f"s{i}": (f"s{i + 1}",) if i < 4999 else () for i in range(5000)}
    assert layers(backwards)["s0"] == 4999  # dependencies named after their dependants
    diamond = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ("d", "a")}
    assert layers(diamond) == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 3}
    assert sorted(layers({"a": ("b",), "b": ("a",)}).values()) == [0, 1]
