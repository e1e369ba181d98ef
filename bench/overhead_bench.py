"""Per-call cost of shoal's call path vs the fastest raw client, same process, one run.

A zero-latency server (bench/http_clients.py --serve, its own process) answers every
POST with the same chat.completion. In THIS process, one after another and in
alternating rounds (best round kept, to damp a noisy machine), 50 concurrent
workers make N calls through:

- raw aiohttp: one ClientSession posting the same JSON body, ``json.loads`` of the answer;
- shoal's adapter: ``OpenAICompatProvider.complete`` (build the wire request, map the
  answer into a normalized ``ChatResponse``);
- shoal's Router: ``Router.complete`` (limiter, breaker, retry budget, pricing) over
  that adapter, with a concurrency cap of 100 (so it admits all 50 workers);
- the official ``openai`` SDK (``AsyncOpenAI``, max_retries=0), for scale.

Printed: calls/second, client CPU per call, and ratios to raw aiohttp. Targets:
adapter ≥ 0.8 (issue 2) and Router ≥ 0.7 (issue 3) of raw aiohttp's calls/second.

``--prompt-words N``: every call of every client sends a fresh user message of N words
(a call number, then the same N words of English): what a batch over distinct documents
or a gateway sends, where nothing caches a prompt's token count. The default is the
short fixed prompt of bench/http_clients.py.

    python bench/overhead_bench.py [--calls 3000] [--rounds 3] [--prompt-words 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_clients import REQUEST_BODY, _drive
from shoal.config import Config
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

Poster = Callable[[], Awaitable[None]]


def request(user: str | None = None) -> ChatRequest:
    msgs = REQUEST_BODY["messages"]
    return ChatRequest(
        model="bench-model",
        messages=[Message.system(msgs[0]["content"]),
                  Message.user(msgs[1]["content"] if user is None else user)],
        max_tokens=REQUEST_BODY["max_tokens"], temperature=REQUEST_BODY["temperature"],
    )


def prose(words: int) -> str:
    """``words`` words of English-like text (this file's docstring, repeated)."""
    vocab = (__doc__ or "").split()
    return " ".join(vocab[i % len(vocab)] for i in range(words))


async def measure(url: str, calls: int, concurrency: int, rounds: int,
                  clients: list[str], prompt_words: int = 0) -> dict[str, dict[str, float]]:
    import aiohttp
    import openai

    text, numbers = prose(prompt_words), itertools.count()

    def fresh() -> str:  # a user message no cache has seen
        return f"{next(numbers)} {text}"

    def body_of(user: str) -> dict[str, Any]:
        return {**REQUEST_BODY, "messages": [REQUEST_BODY["messages"][0],
                                             {"role": "user", "content": user}]}

    body = json.dumps(REQUEST_BODY).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    adapter = OpenAICompatProvider(base_url=url + "/v1", api_key="sk-bench", provider="bench")
    cfg = Config.from_dict({
        "channels": {"bench": {"protocol": "openai", "base_url": url + "/v1",
                               "api_key": "sk-bench", "provider": "generic",
                               "max_concurrency": 100}},
        "models": {"bench-model": {"channels": ["bench"], "input": 1.0, "output": 1.0}},
    })
    router = Router(cfg)
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-bench", max_retries=0)
    req = request()

    async def raw() -> None:
        data = json.dumps(body_of(fresh())).encode() if prompt_words else body
        async with session.post(url + "/v1/chat/completions", data=data,
                                headers=headers) as resp:
            json.loads(await resp.read())

    async def via_adapter() -> None:
        await adapter.complete(request(fresh()) if prompt_words else req, model="gpt-4o-mini")

    async def via_router() -> None:
        await router.complete(request(fresh()) if prompt_words else req)

    async def via_sdk() -> None:
        await sdk.chat.completions.create(**(body_of(fresh()) if prompt_words
                                             else REQUEST_BODY))

    posters: dict[str, Poster] = {"raw aiohttp": raw, "shoal adapter": via_adapter,
                                  "shoal Router": via_router, "openai SDK": via_sdk}
    best: dict[str, dict[str, float]] = {}
    try:
        for _ in range(rounds):
            for name in clients:
                r = await _drive(posters[name], calls, concurrency, warmup=200)
                cps = r["calls"] / r["wall_s"]
                if name not in best or cps > best[name]["cps"]:
                    best[name] = {"cps": cps, "cpu_us": 1e6 * r["cpu_s"] / r["calls"]}
    finally:
        await session.close()
        await adapter.aclose()
        await router.aclose()
        await sdk.close()
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-sdk", action="store_true")
    p.add_argument("--prompt-words", type=int, default=0,
                   help="a fresh user message of this many words per call (0: the short one)")
    args = p.parse_args()
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "http_clients.py"),
                               "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}"
        clients = ["raw aiohttp", "shoal adapter", "shoal Router"]
        if not args.no_sdk:
            clients.append("openai SDK")
        best = asyncio.run(measure(url, args.calls, args.concurrency, args.rounds, clients,
                                   args.prompt_words))
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=10)
    base = best["raw aiohttp"]
    targets: dict[str, Any] = {"shoal adapter": 0.8, "shoal Router": 0.7}
    prompt = (f"a fresh {args.prompt_words}-word prompt per call" if args.prompt_words
              else "the short prompt")
    print(f"{args.calls} calls x {args.rounds} rounds, {args.concurrency} concurrent, "
          f"{prompt}, zero-latency server in its own process (best round kept)")
    print(f"{'client':15} {'calls/s':>9} {'CPU/call':>10} {'ratio':>7} {'target':>7}")
    ok = True
    for name, r in best.items():
        ratio = r["cps"] / base["cps"]
        target = targets.get(name)
        verdict = ""
        if target is not None:
            verdict = "PASS" if ratio >= target else "FAIL"
            ok &= ratio >= target
        print(f"{name:15} {r['cps']:9.0f} {r['cpu_us']:8.0f}us {ratio:7.2f} "
              f"{'' if target is None else f'>={target}':>7} {verdict}")
    print("targets met" if ok else "targets MISSED")


if __name__ == "__main__":
    main()
