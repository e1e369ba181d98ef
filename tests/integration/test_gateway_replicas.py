"""Two `shoal gateway` processes behind one Redis and one PostgreSQL store (issue 10's
must-show): a cap-5 upstream never sees more than 5 calls in flight, and a key with a
$1 budget hammered through both replicas ends with spend <= $1 + one call."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from shoal.gateway.key_store import open_key_store
from shoal.sim.process import SimProcess

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

OUTPUT_TOKENS = 1500  # gpt-4o: $10 per million output tokens, so ~$0.015 a call
CALL_USD = OUTPUT_TOKENS * 10.0 / 1e6
SHOAL = [sys.executable, "-c", "from shoal.cli.main import main; main()"]


async def _start_gateway(config: Path, store: str) -> tuple[asyncio.subprocess.Process, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SHOAL_STORE": store}
    proc = await asyncio.create_subprocess_exec(
        *SHOAL, "gateway", "--config", str(config), "--host", "127.0.0.1", "--port", "0",
        "--no-access-log", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env)
    assert proc.stdout is not None and proc.stderr is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    if "listening on" not in line:
        proc.kill()
        err = (await proc.stderr.read()).decode()
        raise AssertionError(f"shoal gateway did not start: {line!r} {err[-2000:]}")
    url = line.split("listening on ", 1)[1].split()[0]
    assert "virtual keys" in line
    return proc, url


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (the gateway drains and settles every grant), then SIGKILL after 30 s."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _hammer(url: str, secret: str, tally: Counter[str]) -> None:
    """One client: call until the budget refuses five times in a row."""
    refusals = 0
    body = {"model": "gpt-4o", "max_tokens": OUTPUT_TOKENS,
            "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {secret}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(60):
            async with http.post(url + "/v1/chat/completions", json=body,
                                 headers=headers) as resp:
                payload = await resp.json()
            if resp.status == 200:
                refusals = 0
                tally[url] += 1
                continue
            code = payload.get("error", {}).get("code")
            tally[f"{resp.status} {code}"] += 1
            assert (resp.status, code) == (429, "insufficient_quota"), payload
            refusals += 1
            if refusals == 5:
                return
            await asyncio.sleep(0.02)


async def test_two_replicas_share_the_channel_cap_and_the_key_budget(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    channel = f"sim-{uuid.uuid4().hex[:8]}"  # its own shared-limiter key in Redis
    async with open_key_store(pg_url) as store:
        record, secret = await store.create("hammer", budget_usd=1.0)
    gateways: list[asyncio.subprocess.Process] = []
    urls: list[str] = []
    with SimProcess("--cap", "5", "--latency", "0.03", "--output-tokens",
                    str(OUTPUT_TOKENS)) as sim:
        config = tmp_path / "shoal.toml"
        config.write_text(
            f'redis_url = "{redis_url}"\n\n[channels.{channel}]\nprotocol = "openai"\n'
            f'base_url = "{sim.url}/v1"\napi_key = "sk-sim-upstream-key-0123"\n'
            'max_concurrency = 5\nshared = true\n\n'
            f'[models."gpt-4o"]\nchannels = ["{channel}"]\n')
        try:
            for _ in range(2):
                proc, url = await _start_gateway(config, pg_url)
                gateways.append(proc)
                urls.append(url)
            tally: Counter[str] = Counter()
            await asyncio.gather(*(_hammer(url, secret, tally)
                                   for url in urls for _ in range(12)))
        finally:
            for proc in gateways:
                await _stop(proc)
        stats = sim.stats()
    async with open_key_store(pg_url) as store:
        spend = await store.spend(record.id, "total")
    answered = sum(n for k, n in tally.items() if k.startswith("http"))
    print(f"replicas: {dict(tally)}; spend ${spend.usd:.4f} in {spend.requests} calls; "
          f"sim max in flight {stats['max_in_flight']}, 429s {stats['rate_limited']}")
    assert stats["max_in_flight"] <= 5, stats
    assert stats["rate_limited"] == 0, stats
    assert all(tally[u] > 0 for u in urls), tally  # both replicas served calls
    assert spend.usd <= 1.0 + CALL_USD * 1.01, (spend, tally)
    assert spend.usd > 1.0 - 3 * CALL_USD, (spend, tally)  # the budget stopped them
    assert spend.requests == answered, (spend, tally)
