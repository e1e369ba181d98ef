"""The harness of tests/chaos/test_gateway_storm.py: the gateway in front of the storm,
called through the official SDKs, unmodified.

Upstreams as bench/storm_bench.py has them (its ``channels`` and ``router_config``,
imported from bench/ as tests/chaos/test_storm.py does): three simulators in their own
processes serve one model, ``c0`` (OpenAI wire) and ``c1`` (Anthropic wire) in
``--scenario storm`` (20% 5xx, 10% 429 in five Retry-After forms, 5% hangs, 2% cut
streams, 2% malformed bodies), ``c2`` (OpenAI wire) in quota. The gateway runs in this
process as tests/integration's gateway fixtures run it (a real aiohttp server on a free
port of 127.0.0.1, handler cancellation on) over a Router with default settings, only
the channels' read timeout lowered. Virtual keys live in a SQLite store
(:class:`shoal.gateway.keys.StoreKeys`).

Each call is one :class:`Outcome`: what the SDK returned or raised, and every breach of
the gateway's documented behaviour seen on the way (docs/gateway.md, "Errors").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from shoal.config import Config
from shoal.gateway.key_store import open_key_store
from shoal.gateway.keys import StoreKeys
from shoal.gateway.server import GatewayServer
from shoal.gateway.settings import GatewaySettings
from shoal.sim import SimProcess
from shoal.traffic.router import Router

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import storm_bench

MODEL, PRICE_IN, PRICE_OUT = storm_bench.MODEL, storm_bench.PRICE_IN, storm_bench.PRICE_OUT
storm_channels = storm_bench.channels  # c0 OpenAI + c1 Anthropic in the storm, c2 in quota
UPSTREAM_KEY = "sk-storm-upstream-9d41c7e05b2a8f36e1d4"
MAX_TOKENS = 32
OPENAI_ROUTE, ANTHROPIC_ROUTE = "/v1/chat/completions", "/v1/messages"
# What docs/gateway.md ("Errors") gives a caller once the Router gave up on an upstream
# storm: 429 (rate-limited), 529 (overloaded), 502 (5xx, quota), 503 (breakers), 504.
STORM_STATUSES = frozenset({429, 502, 503, 504, 529})
OPENAI_ENVELOPE = {"message", "type", "param", "code"}


def price(input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * PRICE_IN + output_tokens * PRICE_OUT) / 1e6


# -- upstreams, config, gateway -----------------------------------------------------------


def storm_config(sims: list[SimProcess], read_timeout_s: float) -> Config:
    """storm_bench's Router config, with an upstream key long enough to be looked for."""
    return storm_bench.router_config(sims, read_timeout_s, api_key=UPSTREAM_KEY)


# -- one call through an SDK ------------------------------------------------------------


@dataclass
class Outcome:
    """One SDK call: what it got, and what it should not have got (``problems``)."""

    sdk: str  # "openai" | "anthropic"
    stream: bool
    key: str  # which virtual key ("storm" | "budget")
    ok: bool = False
    error: str | None = None  # the SDK exception's class name
    status: int | None = None  # HTTP status of the answer (200 for a stream that broke)
    after_first_byte: bool = False  # a stream that failed after its 200 and first events
    input_tokens: int = 0  # usage of a whole answer, as the SDK returned it
    output_tokens: int = 0
    quota: bool = False  # refused for the key's budget (429 insufficient_quota)
    problems: list[str] = field(default_factory=list)

    @property
    def route(self) -> str:
        return OPENAI_ROUTE if self.sdk == "openai" else ANTHROPIC_ROUTE

    @property
    def usd(self) -> float:
        return price(self.input_tokens, self.output_tokens)


def _no_secret(outcome: Outcome, text: str, where: str) -> None:
    if UPSTREAM_KEY in text or UPSTREAM_KEY[-12:] in text:
        outcome.problems.append(f"the upstream key in {where}")


def check_status_error(outcome: Outcome, exc: BaseException) -> None:
    """A refusal before any byte of an answer: the SDK's status error, the documented
    status, a JSON body in the caller's envelope, no traceback, no upstream key."""
    is_openai = outcome.sdk == "openai"
    status_cls = openai.APIStatusError if is_openai else anthropic.APIStatusError
    if not isinstance(exc, status_cls):
        outcome.problems.append(f"not a status error: {type(exc).__name__}: {exc}")
        return
    response = exc.response
    outcome.status = response.status_code
    text = response.text
    _no_secret(outcome, text + json.dumps(dict(response.headers)), "an error answer")
    if "Traceback" in text or "internal gateway error" in text:
        outcome.problems.append(f"a gateway bug answered: {text[:300]}")
    if response.status_code not in STORM_STATUSES:
        outcome.problems.append(f"status {response.status_code}: {text[:300]}")
    if not response.headers.get("content-type", "").startswith("application/json"):
        outcome.problems.append(f"content-type {response.headers.get('content-type')!r}")
    try:
        body = json.loads(text)
    except ValueError:
        outcome.problems.append(f"not a JSON body: {text[:300]!r}")
        return
    if is_openai:
        good = (isinstance(body, dict) and set(body) == {"error"}
                and isinstance(body["error"], dict) and set(body["error"]) == OPENAI_ENVELOPE
                and isinstance(body["error"]["message"], str) and body["error"]["message"])
    else:
        good = (isinstance(body, dict) and body.get("type") == "error"
                and isinstance(body.get("error"), dict)
                and set(body["error"]) == {"type", "message"}
                and isinstance(body["error"]["message"], str) and body["error"]["message"])
    if not good:
        outcome.problems.append(f"not the {outcome.sdk} envelope: {text[:300]}")
        return
    error = body["error"]
    outcome.quota = response.status_code == 429 and (
        error.get("code") == "insufficient_quota" or "out of budget" in error["message"])
    if outcome.quota:  # the key's budget: retrying cannot help, and the SDKs are told so
        if response.headers.get("x-should-retry") != "false":
            outcome.problems.append(f"a budget refusal without x-should-retry: false: {text}")
    elif response.status_code in (429, 503) and "retry-after" not in response.headers:
        outcome.problems.append(f"{response.status_code} without retry-after: {text[:200]}")


def check_mid_stream_error(outcome: Outcome, exc: BaseException) -> None:
    """A stream that broke after its first byte: the SDK raised its API error from the
    protocol's error event (never a connection error, never a clean end)."""
    outcome.status = 200
    base = openai.APIError if outcome.sdk == "openai" else anthropic.APIError
    conn = (openai.APIConnectionError if outcome.sdk == "openai"
            else anthropic.APIConnectionError)
    if not isinstance(exc, base) or isinstance(exc, conn):
        outcome.problems.append(f"mid-stream: {type(exc).__name__}: {exc}")
        return
    _no_secret(outcome, str(exc) + json.dumps(exc.body, default=str), "a stream's error event")
    body = exc.body  # OpenAI: the event's "error" object; Anthropic: the whole event
    if outcome.sdk == "openai":
        good = isinstance(body, dict) and set(body) == OPENAI_ENVELOPE and bool(body["message"])
    else:
        good = (isinstance(body, dict) and body.get("type") == "error"
                and isinstance(body.get("error"), dict)
                and set(body["error"]) == {"type", "message"} and bool(body["error"]["message"]))
    if not good:
        outcome.problems.append(f"a mid-stream error event not in the {outcome.sdk} envelope: "
                                f"{body!r:.300}")


def refused(out: Outcome, exc: BaseException) -> Outcome:
    """``out`` for a call its SDK raised for before any byte of an answer."""
    out.error = type(exc).__name__
    check_status_error(out, exc)
    return out


def broken(out: Outcome, exc: BaseException) -> None:
    """``out`` for a stream its SDK raised for after its first byte."""
    out.error = type(exc).__name__
    out.after_first_byte = True
    check_mid_stream_error(out, exc)


def _user(i: int) -> str:
    return f"storm question {i}: what binds when agents share a provider?"


async def openai_call(client: openai.AsyncOpenAI, i: int, *, stream: bool, key: str
                      ) -> Outcome:
    out = Outcome("openai", stream, key)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": _user(i)}]
    if not stream:
        try:
            answer = await client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=MAX_TOKENS)
        except Exception as exc:
            return refused(out, exc)
        out.status = 200
        _no_secret(out, answer.model_dump_json(), "an answer")
        if not answer.choices or answer.choices[0].finish_reason is None:
            out.problems.append(f"an answer without its finish reason: {answer}")
        if answer.usage is None:
            out.problems.append("an answer without usage")
        else:
            out.input_tokens = answer.usage.prompt_tokens
            out.output_tokens = answer.usage.completion_tokens
        out.ok = not out.problems
        return out
    try:
        chunks = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=MAX_TOKENS, stream=True,
            stream_options={"include_usage": True})
    except Exception as exc:
        return refused(out, exc)
    finish: str | None = None
    try:
        async for chunk in chunks:
            _no_secret(out, chunk.model_dump_json(), "a stream chunk")
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
            if chunk.usage is not None:
                out.input_tokens = chunk.usage.prompt_tokens
                out.output_tokens = chunk.usage.completion_tokens
    except Exception as exc:
        broken(out, exc)
        return out
    out.status = 200
    if finish is None:
        out.problems.append("a stream ended cleanly without a finish reason (truncated)")
    if out.input_tokens == 0:
        out.problems.append("a whole stream without its usage chunk")
    out.ok = not out.problems
    return out


async def anthropic_call(client: anthropic.AsyncAnthropic, i: int, *, stream: bool, key: str
                         ) -> Outcome:
    out = Outcome("anthropic", stream, key)
    messages: list[MessageParam] = [{"role": "user", "content": _user(i)}]
    if not stream:
        try:
            message = await client.messages.create(model=MODEL, max_tokens=MAX_TOKENS,
                                                   messages=messages)
        except Exception as exc:
            return refused(out, exc)
        out.status = 200
        _no_secret(out, message.model_dump_json(), "an answer")
        if message.stop_reason is None:
            out.problems.append(f"an answer without its stop reason: {message}")
        out.input_tokens = message.usage.input_tokens
        out.output_tokens = message.usage.output_tokens
        out.ok = not out.problems
        return out
    try:
        events = await client.messages.create(model=MODEL, max_tokens=MAX_TOKENS,
                                              messages=messages, stream=True)
    except Exception as exc:
        return refused(out, exc)
    stop_reason: str | None = None
    stopped = False
    try:
        async for event in events:
            _no_secret(out, event.model_dump_json(), "a stream event")
            if event.type == "message_start":
                out.input_tokens = event.message.usage.input_tokens
            elif event.type == "message_delta":
                stop_reason = event.delta.stop_reason or stop_reason
                out.output_tokens = event.usage.output_tokens
                if event.usage.input_tokens is not None:
                    out.input_tokens = event.usage.input_tokens  # the real count
            elif event.type == "message_stop":
                stopped = True
    except Exception as exc:
        broken(out, exc)
        return out
    out.status = 200
    if not stopped or stop_reason is None:
        out.problems.append("a stream ended cleanly without message_stop or its stop "
                            "reason (truncated)")
    out.ok = not out.problems
    return out


# -- a whole run ------------------------------------------------------------------------


@dataclass
class StormOptions:
    per_kind: int = 80  # storm-phase calls of each kind: openai/anthropic x complete/stream
    concurrency: int = 24
    seed: int = 1
    read_timeout_s: float = 1.5  # the channels' (storm_bench lowers it the same way)
    request_timeout_s: float = 25.0  # each call's deadline in the Router
    client_timeout_s: float = 40.0  # longer than any deadline: the SDKs never give up first
    budget_usd: float = 0.004  # the small key's budget, ~8 calls' worst case
    budget_workers: int = 6
    budget_cap: int = 30  # calls per budget worker at most, should the budget never stop it
    tight_per_kind: int = 20  # calls of each kind through a gateway with a tight deadline
    tight_timeout_s: float = 1.0  # its request_timeout_s: the Router gives up, callers see it


@dataclass
class Scrape:
    """What a gateway said about itself once its callers were done."""

    health: int
    ready: int
    metrics_text: str
    families: dict[str, list[tuple[str, dict[str, str], float]]]  # family -> samples

    def samples(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(lab, value) for family in self.families.values()
                for sample_name, lab, value in family
                if sample_name == name and all(lab.get(k) == v for k, v in labels.items())]

    def total(self, name: str, **labels: str) -> float:
        return sum(value for _, value in self.samples(name, **labels))


@dataclass
class KeySpend:
    """A virtual key's recorded spend (the store's ``total`` row)."""

    key_id: str
    budget_usd: float | None
    usd: float
    input_tokens: int
    output_tokens: int
    requests: int


@dataclass
class StormRun:
    outcomes: list[Outcome]  # the storm phase: key "storm", the default deadline
    budget_outcomes: list[Outcome]  # the budget phase: key "budget", same gateway
    tight_outcomes: list[Outcome]  # the other gateway: a 1 s deadline, no keys
    scrape: Scrape  # the main gateway after the storm and budget phases
    tight_scrape: Scrape  # the tight gateway after its phase
    storm_key: KeySpend
    budget_key: KeySpend
    faults: Counter[str]  # the simulators' faults during the storm phase
    storm_billed_usd: float  # what the simulators billed during the storm phase
    budget_billed_usd: float  # ... during the budget phase
    budget_one_call_usd: float  # the dearest request billed then
    one_call_worst_usd: float  # one call's worst case at admission (prompt + max_tokens)
    seconds: dict[str, float] = field(default_factory=dict)  # per phase

    @property
    def main(self) -> list[Outcome]:
        """Every call through the main gateway."""
        return self.outcomes + self.budget_outcomes

    @property
    def everything(self) -> list[Outcome]:
        return self.outcomes + self.budget_outcomes + self.tight_outcomes


def _billed(records: list[dict[str, Any]]) -> list[float]:
    return [price(int(r["prompt_tokens"]), int(r["completion_tokens"]))
            for r in records if r["status"] == 200]


def _parse(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    return {family.name: [(s.name, dict(s.labels), float(s.value)) for s in family.samples]
            for family in text_string_to_metric_families(text)}


async def scrape(server: GatewayServer) -> Scrape:
    """/health, /ready and /metrics, once every settlement ran and nothing is in flight
    (a streamed handler still closes the Router's stream after its last byte: polled for
    up to 5 s; the test asserts what the last scrape says)."""
    await server.gateway.settled()
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/health") as r:
            health = r.status
        async with http.get(server.url + "/ready") as r:
            ready = r.status
        text = ""
        for _ in range(100):
            async with http.get(server.url + "/metrics") as r:
                text = await r.text()
            if not any(v for _, _, v in _parse(text).get("shoal_gateway_in_flight", [])):
                break
            await asyncio.sleep(0.05)
    await server.gateway.settled()
    return Scrape(health, ready, text, _parse(text))


async def _key_spend(keys: StoreKeys, key_id: str, budget: float | None) -> KeySpend:
    spend = await keys.store.spend(key_id, "total")
    return KeySpend(key_id, budget, spend.usd, spend.input_tokens, spend.output_tokens,
                    spend.requests)


Job = Callable[[], Awaitable[Outcome]]


async def _pool(jobs: list[Job], concurrency: int) -> list[Outcome]:
    sem = asyncio.Semaphore(concurrency)

    async def one(job: Job) -> Outcome:
        async with sem:
            return await job()

    return list(await asyncio.gather(*(one(job) for job in jobs)))


def _mixed(oa: openai.AsyncOpenAI, an: anthropic.AsyncAnthropic, per_kind: int, first: int,
           key: str, seed: int) -> list[Job]:
    """``per_kind`` calls of each kind, shuffled (seeded)."""
    jobs: list[Job] = []
    for i in range(per_kind):
        n = first + 4 * i
        jobs += [
            functools.partial(openai_call, oa, n, stream=False, key=key),
            functools.partial(openai_call, oa, n + 1, stream=True, key=key),
            functools.partial(anthropic_call, an, n + 2, stream=False, key=key),
            functools.partial(anthropic_call, an, n + 3, stream=True, key=key),
        ]
    random.Random(seed).shuffle(jobs)
    return jobs


async def _records(sims: list[SimProcess]) -> tuple[list[dict[str, Any]], Counter[str]]:
    records: list[dict[str, Any]] = []
    faults: Counter[str] = Counter()
    for sim in sims:
        records += await asyncio.to_thread(sim.request_log)
        faults.update((await asyncio.to_thread(sim.stats))["faults"])
    return records, faults


async def run_storm(opts: StormOptions, sims: list[SimProcess], store_url: str) -> StormRun:
    """Three phases over the same storming simulators:

    1. *storm*: ``4 x per_kind`` calls (both SDKs, stream and not, interleaved) with one
       virtual key that has room to spare, through a gateway with the default deadline;
    2. *budget*: a few workers share a key with a small budget, each until the gateway
       refuses it for the budget (or ``budget_cap`` calls);
    3. *tight*: another gateway over the same channels whose deadline
       (``request_timeout_s``) is shorter than a hang, so callers do see the Router give
       up, on both SDKs, before and after a stream's first byte.
    """
    loop = asyncio.get_running_loop()
    seconds: dict[str, float] = {}
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_key_store(store_url))
        storm_rec, storm_secret = await store.create("storm", budget_usd=100.0)
        budget_rec, budget_secret = await store.create("budget", budget_usd=opts.budget_usd)
        keys = StoreKeys(store, cache_s=60)

        def clients(url: str, secret: str
                    ) -> tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic]:
            oa = openai.AsyncOpenAI(base_url=url + "/v1", api_key=secret, max_retries=0,
                                    timeout=opts.client_timeout_s)
            an = anthropic.AsyncAnthropic(base_url=url, api_key=secret, max_retries=0,
                                          timeout=opts.client_timeout_s)
            stack.push_async_callback(oa.close)
            stack.push_async_callback(an.close)
            return oa, an

        # 1. the storm
        router = Router(storm_config(sims, opts.read_timeout_s))
        gw = await stack.enter_async_context(GatewayServer(router, keys, GatewaySettings(
            port=0, access_log=False, request_timeout_s=opts.request_timeout_s)))
        oa, an = clients(gw.url, storm_secret)
        for sim in sims:
            await asyncio.to_thread(sim.reset)
        start = loop.time()
        outcomes = await _pool(_mixed(oa, an, opts.per_kind, 0, "storm", opts.seed),
                               opts.concurrency)
        seconds["storm"] = loop.time() - start
        await gw.gateway.settled()
        records, faults = await _records(sims)
        storm_billed = sum(_billed(records))

        # 2. a small budget
        for sim in sims:
            await asyncio.to_thread(sim.reset)
        boa, ban = clients(gw.url, budget_secret)
        budget_outcomes: list[Outcome] = []

        async def worker(w: int) -> None:
            for n in range(opts.budget_cap):
                i = 100_000 + w * 1000 + n
                stream = bool((w + n) % 2)
                got = await (openai_call(boa, i, stream=stream, key="budget") if n % 2 else
                             anthropic_call(ban, i, stream=stream, key="budget"))
                budget_outcomes.append(got)
                if got.quota:
                    return

        start = loop.time()
        await asyncio.gather(*(worker(w) for w in range(opts.budget_workers)))
        seconds["budget"] = loop.time() - start
        await gw.gateway.settled()
        records, _ = await _records(sims)
        billed = _billed(records)
        main_scrape = await scrape(gw)
        storm_key = await _key_spend(keys, storm_rec.id, storm_rec.budget_usd)
        budget_key = await _key_spend(keys, budget_rec.id, budget_rec.budget_usd)
        one_prompt = max((o.input_tokens for o in budget_outcomes if o.ok), default=0)

        # 3. a deadline shorter than a hang, on a second gateway (no keys)
        tight_router = Router(storm_config(sims, opts.read_timeout_s))
        tight = await stack.enter_async_context(GatewayServer(tight_router, None, GatewaySettings(
            port=0, access_log=False, request_timeout_s=opts.tight_timeout_s)))
        toa, tan = clients(tight.url, "sk-anything")
        start = loop.time()
        tight_outcomes = await _pool(
            _mixed(toa, tan, opts.tight_per_kind, 200_000, "none", opts.seed + 1),
            opts.concurrency)
        seconds["tight"] = loop.time() - start
        tight_scrape = await scrape(tight)
    return StormRun(
        outcomes=outcomes, budget_outcomes=budget_outcomes, tight_outcomes=tight_outcomes,
        scrape=main_scrape, tight_scrape=tight_scrape, storm_key=storm_key,
        budget_key=budget_key, faults=faults, storm_billed_usd=storm_billed,
        budget_billed_usd=sum(billed), budget_one_call_usd=max(billed, default=0.0),
        one_call_worst_usd=price(one_prompt, MAX_TOKENS), seconds=seconds)


# -- one scripted fault, for what the storm turned up ------------------------------------


@dataclass
class Charged:
    """One call through a one-channel gateway with a scripted fault: what the caller got,
    what its key was charged, what the simulator billed."""

    outcome: Outcome
    key_input_tokens: int
    key_output_tokens: int
    key_usd: float
    billed_input_tokens: int
    billed_output_tokens: int

    @property
    def billed_usd(self) -> float:
        return price(self.billed_input_tokens, self.billed_output_tokens)


async def charged_for(faults: list[str], *, protocol: str, stream: bool, store_url: str
                      ) -> Charged:
    """One OpenAI-SDK call with a virtual key through a gateway whose model has one
    channel (``protocol``) on an in-process simulator scripted with ``faults``."""
    from shoal.sim import SimConfig, SimServer

    async with SimServer(SimConfig()) as sim, open_key_store(store_url) as store:
        base_url = (sim.base_url("openai") if protocol == "openai"
                    else sim.base_url("anthropic", protocol="anthropic"))
        config = Config.from_dict({
            "channels": {"c": {"protocol": protocol, "provider": protocol, "base_url": base_url,
                               "api_key": UPSTREAM_KEY}},
            "models": {MODEL: {"channels": ["c"], "input": PRICE_IN, "output": PRICE_OUT}},
        })
        record, secret = await store.create("one", budget_usd=1.0)
        keys = StoreKeys(store, cache_s=60)
        settings = GatewaySettings(port=0, access_log=False)
        async with GatewayServer(Router(config), keys, settings) as gw:
            client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=secret,
                                        max_retries=0, timeout=30)
            try:
                sim.script(faults)
                outcome = await openai_call(client, 0, stream=stream, key="one")
            finally:
                await client.close()
            await gw.gateway.settled()
        spent = await store.spend(record.id, "total")
        billed = sim.stats(log=False)
    return Charged(outcome, spent.input_tokens, spent.output_tokens, spent.usd,
                   billed.billed_prompt_tokens, billed.billed_completion_tokens)


# -- figures ----------------------------------------------------------------------------


def _kinds(outcomes: list[Outcome]) -> list[str]:
    lines = []
    for sdk in ("openai", "anthropic"):
        for stream in (False, True):
            these = [o for o in outcomes if o.sdk == sdk and o.stream == stream]
            if not these:
                continue
            ok = sum(o.ok for o in these)
            errors = Counter(f"{o.error}/{o.status}" for o in these if not o.ok)
            after = sum(o.after_first_byte for o in these if not o.ok)
            kind = "stream" if stream else "complete"
            line = (f"    {sdk:9} {kind:8} {ok}/{len(these)} ok ({ok / len(these):.1%}); "
                    f"failures {dict(errors)}")
            if stream:
                line += f"; broke after the first byte {after}, before {len(these) - ok - after}"
            lines.append(line)
    return lines


def describe(run: StormRun) -> str:
    """The run's figures, for assertion messages and the report."""
    seen = sum(o.usd for o in run.outcomes if o.ok)
    problems = Counter(p[:160] for o in run.everything for p in o.problems)
    budget_errors = Counter(f"{o.error}/{o.status}" for o in run.budget_outcomes)
    return "\n".join([
        f"storm phase: {len(run.outcomes)} calls in {run.seconds.get('storm', 0):.1f}s; faults "
        f"at the simulators: {dict(sorted(run.faults.items()))}",
        *_kinds(run.outcomes),
        f"  storm key: spend ${run.storm_key.usd:.6f} for {run.storm_key.requests} requests; "
        f"answers' usage priced ${seen:.6f}; simulators billed ${run.storm_billed_usd:.6f}",
        f"budget phase: {len(run.budget_outcomes)} calls in "
        f"{run.seconds.get('budget', 0):.1f}s: {dict(budget_errors)}; key spend "
        f"${run.budget_key.usd:.6f} of ${run.budget_key.budget_usd}; simulators billed "
        f"${run.budget_billed_usd:.6f}; dearest request ${run.budget_one_call_usd:.6f}; one "
        f"call's worst case ${run.one_call_worst_usd:.6f}",
        f"tight phase: {len(run.tight_outcomes)} calls in {run.seconds.get('tight', 0):.1f}s",
        *_kinds(run.tight_outcomes),
        f"problems: {sum(problems.values())} {problems.most_common(6)}",
    ])
