"""The storm of issue 8 through an INDEPENDENT fake provider (tests/chaos/
independent_provider.py: written from PROVIDERS.md, importing nothing from shoal),
not through shoal's own simulator, which agrees with shoal's assumptions.

Three servers in their own processes serve one model: ``c0`` (OpenAI wire, storm),
``c1`` (Anthropic wire, storm), ``c2`` (OpenAI wire, quota: every request refused with
``insufficient_quota``). The Router keeps its defaults; only the read timeout is lowered
(2.5 s, as bench/storm_bench.py does) so a hang costs seconds. 600 ``complete`` + 600
``stream`` logical calls and 60 agent runs (a tool turn, then the answer) share a pool
of 100 concurrent calls, each under a watchdog.

Targets (issue 8), and how they are asserted at this N:

- complete success >= 99.9%. At N = 600 the target allows 0.6 failures, so it cannot be
  shown statistically: asserting 0 failures would fail 45% of the runs of a Router that
  meets 99.9% exactly (Poisson, mean 0.6). We assert at most 1 failure: that passes such
  a Router 88% of the time and a 10x worse one (1%, mean 6) only 1.7% of the time, so it
  catches a real regression without proving the third nine. Agent runs (60, two calls
  each: mean 0.12 failures at 99.9% per call, P(>= 2) = 0.7%) are held to at most 1 too.
  A success must also be intact: the server's words (no U+FFFD from a split UTF-8
  character), one output token per word, and the usage the server billed (it ends the
  answer's id in it) — see ``garbled``.
- stream failures only StreamInterrupted after the first token (none before it);
- 0 lost calls (each returns or raises within the watchdog);
- 0 duplicate complete answers per tag (server-side count of answers sent in full), and
  no agent tag with more than its two answers;
- requests ÷ logical calls <= 1.1 × 1/(1−p), p the measured per-attempt failure rate
  (requests the servers did not answer in full ÷ requests, logical calls only).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from independent_provider import WORDS  # the words its answers are made of

import storm_bench  # agent runs and the watchdog, shared with the bench
from shoal.agents import Runner
from shoal.config import Config
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEnd, TextDelta

SERVER = Path(__file__).with_name("independent_provider.py")
MODEL = storm_bench.MODEL
CALLS = 1200  # logical calls: even i complete, odd i stream
AGENTS = 60
CONCURRENCY = 100
READ_TIMEOUT_S = 2.5
WATCHDOG_S = 60.0


class ProviderProcess:
    """One independent_provider.py in its own process, ended by its PID."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"independent provider did not start: {line!r}")
        self.url = line

    def control(self, path: str, method: str = "GET") -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, method=method,
                                     data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@contextlib.contextmanager
def providers(*specs: tuple[str, ...]) -> Iterator[list[ProviderProcess]]:
    started: list[ProviderProcess] = []
    try:
        for spec in specs:
            started.append(ProviderProcess(*spec))
        yield started
    finally:
        for p in started:
            p.stop()


def garbled(resp: ChatResponse, streamed: str | None = None) -> str | None:
    """What is wrong with an answer the Router returned as a success, or None: its words
    must be the server's (no U+FFFD from a split UTF-8 character, no word lost or doubled),
    one output token per word, its usage the one the server billed (the server ends the
    answer's id in it), and a stream's deltas must add up to its final text."""
    words = resp.text.split(" ")
    if streamed is not None and streamed != resp.text:
        return f"deltas {streamed!r} != final text {resp.text!r}"
    if not set(words) <= set(WORDS):
        return f"text {resp.text!r} is not the server's words"
    billed = resp.id.rsplit("_", 2)[-2:]  # the server's id ends in the usage it billed
    usage = [str(resp.usage.input_tokens), str(resp.usage.output_tokens)]
    if billed != usage or len(words) != resp.usage.output_tokens:
        return f"usage {usage}, but billed {billed} for {len(words)} words (id {resp.id!r})"
    return None


def request(i: int) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=[Message.user(f"question {i}")], max_tokens=32,
                       metadata={"tag": f"call-{i}"})


async def one_complete(router: Router, i: int) -> storm_bench.Outcome:
    start = time.perf_counter()
    try:
        resp = await router.complete(request(i))
    except Exception as exc:
        return storm_bench.Outcome("complete", False, time.perf_counter() - start,
                                   type(exc).__name__)
    bad = garbled(resp)
    return storm_bench.Outcome("complete", bad is None, time.perf_counter() - start,
                               None if bad is None else f"Garbled: {bad}")


async def one_stream(router: Router, i: int) -> storm_bench.Outcome:
    start = time.perf_counter()
    text: list[str] = []
    try:
        async for event in router.stream(request(i)):
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, StreamEnd):
                bad = garbled(event.response, "".join(text))
                return storm_bench.Outcome("stream", bad is None, time.perf_counter() - start,
                                           None if bad is None else f"Garbled: {bad}",
                                           after_first_token=True)
    except Exception as exc:
        return storm_bench.Outcome("stream", False, time.perf_counter() - start,
                                   type(exc).__name__, after_first_token=bool(text))
    return storm_bench.Outcome("stream", False, time.perf_counter() - start, "NoStreamEnd",
                               after_first_token=bool(text))


def config(servers: list[ProviderProcess]) -> Config:
    base = {"api_key": "sk-indep", "read_timeout": READ_TIMEOUT_S}
    chans = {
        "c0": {**base, "protocol": "openai", "provider": "openai",
               "base_url": servers[0].url + "/v1"},
        "c1": {**base, "protocol": "anthropic", "provider": "anthropic",
               "base_url": servers[1].url},
        "c2": {**base, "protocol": "openai", "provider": "openai",
               "base_url": servers[2].url + "/v1"},
    }
    return Config.from_dict({"channels": chans, "models": {MODEL: {
        "channels": list(chans), "input": storm_bench.PRICE_IN,
        "output": storm_bench.PRICE_OUT}}})


async def run_pool(servers: list[ProviderProcess]) -> tuple[list[storm_bench.Outcome], float]:
    for s in servers:
        s.control("/_reset", "POST")
    sem = asyncio.Semaphore(CONCURRENCY)
    jobs: list[tuple[str, Callable[[], Awaitable[storm_bench.Outcome]]]] = []
    async with Router(config(servers)) as router:
        runner = Runner(router)
        every = CALLS // AGENTS
        for i in range(CALLS):
            one = one_complete if i % 2 == 0 else one_stream
            jobs.append(("complete" if i % 2 == 0 else "stream",
                         functools.partial(one, router, i)))
            if i % every == every - 1:
                jobs.append(("agent", functools.partial(storm_bench.one_agent, runner,
                                                        i // every)))

        async def job(kind: str, make: Callable[[], Awaitable[storm_bench.Outcome]]
                      ) -> storm_bench.Outcome:
            async with sem:
                return await storm_bench.watched(kind, make, WATCHDOG_S)

        start = time.perf_counter()
        outcomes = await asyncio.gather(*(job(k, m) for k, m in jobs))
        return list(outcomes), time.perf_counter() - start


def summary(outcomes: list[storm_bench.Outcome], stats: list[dict[str, Any]],
            seconds: float) -> dict[str, Any]:
    kinds: dict[str, list[storm_bench.Outcome]] = {"complete": [], "stream": [], "agent": []}
    for o in outcomes:
        kinds[o.kind].append(o)
    requests = complete = duplicates = 0
    faults: Counter[str] = Counter()
    for s in stats:
        faults.update(s["faults"])
        for tag, n in s["requests_by_tag"].items():
            if tag.startswith("call-"):
                requests += n
    answers: Counter[str] = Counter()
    for s in stats:
        answers.update({t: n for t, n in s["complete_by_tag"].items() if t.startswith("call-")})
    complete = sum(answers.values())
    duplicates = sum(n - 1 for n in answers.values() if n > 1)
    turns: Counter[str] = Counter()  # an agent run here is two turns: a tool call, an answer
    for s in stats:
        turns.update({t: n for t, n in s["complete_by_tag"].items() if t.startswith("agent-")})
    p = 1 - complete / requests if requests else 0.0
    failed_streams = [o for o in kinds["stream"] if not o.ok]
    return {
        "seconds": round(seconds, 1),
        "success": {k: sum(o.ok for o in v) / len(v) for k, v in kinds.items()},
        "failures": {k: sum(not o.ok for o in v) for k, v in kinds.items()},
        "errors": {k: dict(Counter(o.error for o in v if o.error)) for k, v in kinds.items()},
        "stream_before_first": sum(not o.after_first_token for o in failed_streams),
        "stream_after_not_interrupted": sum(
            o.after_first_token and o.error != "StreamInterrupted" for o in failed_streams),
        "lost": sum(o.lost for o in outcomes),
        "duplicates": duplicates,
        "agent_extra_answers": sum(n - 2 for n in turns.values() if n > 2),
        "latency_p50_p99_s": {k: (round(storm_bench.pct([o.seconds for o in v], 0.5), 2),
                                  round(storm_bench.pct([o.seconds for o in v], 0.99), 2))
                              for k, v in kinds.items()},
        "requests": requests,
        "requests_per_call": requests / (len(kinds["complete"]) + len(kinds["stream"])),
        "p": p,
        "bound": 1.1 / (1 - p),
        "faults": dict(faults),
    }


async def test_the_router_survives_an_independent_storm() -> None:
    storm = ("--faults", "storm", "--keepalive", "0.5")  # idle connections close quickly
    with providers((*storm, "--seed", "11"), (*storm, "--seed", "12"),
                   ("--faults", "quota", "--seed", "13")) as servers:
        outcomes, seconds = await run_pool(servers)
        stats = [s.control("/_stats") for s in servers]
    f = summary(outcomes, stats, seconds)
    report = json.dumps(f, indent=1, default=str)
    print(report)
    kinds = set(f["faults"])
    assert {"500", "502", "503", "529", "429", "hang", "cut", "malformed", "stream_error",
            "quota"} <= kinds, report
    assert f["lost"] == 0, report
    assert f["failures"]["complete"] <= 1, report
    assert f["failures"]["agent"] <= 1, report
    assert f["stream_before_first"] == 0, report
    assert f["stream_after_not_interrupted"] == 0, report
    assert f["duplicates"] == 0, report
    assert f["agent_extra_answers"] == 0, report
    assert f["requests_per_call"] <= f["bound"], report
