"""The gateway in production: a client that leaves frees its channel slot at once,
SIGTERM drains an in-flight stream (a real ``shoal gateway`` process), health, readiness,
metrics and the access log, cache_control passed through, no keys off loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from gateway_fixtures import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    anthropic_client,
    fake_keys,
    gateway,
    openai_client,
    sim_config,
)

from shoal.errors import ConfigError
from shoal.gateway.server import GatewayServer
from shoal.gateway.settings import GatewaySettings
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.router import Router

USER: list[Any] = [{"role": "user", "content": "hello"}]
SLOW = ModelProfile(tokens_per_s=20, output_tokens=100)  # a 5-second stream


async def first_chunk(response: aiohttp.ClientResponse) -> bytes:
    while True:
        line = await response.content.readline()
        if line.startswith(b"data: {"):
            return line


async def test_disconnect_mid_stream_frees_the_slot_at_once() -> None:
    keys = fake_keys()
    async with SimServer(SimConfig(max_concurrency=1, models={"*": SLOW})) as sim, \
            gateway(sim_config(sim, channel={"max_concurrency": 1}), keys=keys) as gw:
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                gw.url + "/v1/chat/completions", headers={"Authorization": "Bearer sk-good"},
                json={"model": OPENAI_MODEL, "messages": USER, "stream": True})
            assert b'"role":"assistant"' in await first_chunk(response)
            await first_chunk(response)
            response.close()  # the client goes away mid-stream
        async with openai_client(gw, "sk-good") as client:
            # The next call on the cap-1 channel runs at once: the cut stream would hold
            # the slot for ~5 s more, this call needs 0.1 s.
            answer = await asyncio.wait_for(client.chat.completions.create(
                model=OPENAI_MODEL, messages=USER, max_tokens=2), timeout=3)
        await gw.gateway.settled()
        stats = sim.stats()
    assert answer.choices[0].finish_reason == "length"
    assert stats.rate_limited == 0  # upstream never saw two at once
    cut = stats.requests[0]
    assert cut.stream and cut.completion_tokens < 100  # the upstream stream was cut short
    assert [k for k, _, _ in keys.settled] == ["k-good", "k-good"]
    usage, cost = keys.settled[0][1], keys.settled[0][2]
    assert usage.input_tokens > 0 and usage.output_tokens >= 1 and cost > 0


async def test_health_ready_metrics_and_access_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shoal.gateway.access")
    async with SimServer(SimConfig()) as sim, gateway(sim_config(sim)) as gw:
        async with openai_client(gw) as client:
            await client.chat.completions.create(model=OPENAI_MODEL, messages=[
                {"role": "user", "content": "a secret plan"}])
        async with aiohttp.ClientSession() as session:
            health = await (await session.get(gw.url + "/health")).json()
            ready = await session.get(gw.url + "/ready")
            metrics = await (await session.get(gw.url + "/metrics")).text()
    assert health == {"status": "ok"} and ready.status == 200
    labels = ('key="anonymous",model="gpt-test",route="/v1/chat/completions"')
    assert f'shoal_gateway_requests_total{{{labels},status="200"}} 1.0' in metrics
    assert f"shoal_gateway_request_duration_seconds_count{{{labels}}} 1.0" in metrics
    assert 'shoal_gateway_in_flight{route="/v1/chat/completions"} 0.0' in metrics
    assert 'shoal_gateway_tokens_total{key="anonymous",kind="output",model="gpt-test"}' in metrics
    assert 'shoal_channel_requests_total{channel="oa",outcome="ok"} 1.0' in metrics  # Router's
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "shoal.gateway.access"]
    assert len(lines) == 1
    line = lines[0]
    assert line["route"] == "/v1/chat/completions" and line["status"] == 200
    assert line["model"] == OPENAI_MODEL and line["key"] == "anonymous"
    assert line["output_tokens"] == 20 and line["cost_usd"] > 0
    assert "secret plan" not in caplog.text


async def test_cache_control_reaches_an_anthropic_channel() -> None:
    system = [{"type": "text", "text": "Policy. " * 800, "cache_control": {"type": "ephemeral"}}]
    async with SimServer(SimConfig()) as sim, gateway(sim_config(sim)) as gw, \
            anthropic_client(gw) as client:
        first = await client.messages.create(model=ANTHROPIC_MODEL, max_tokens=20,
                                             system=system, messages=USER)  # type: ignore[arg-type]
        second = await client.messages.create(model=ANTHROPIC_MODEL, max_tokens=20,
                                              system=system, messages=USER)  # type: ignore[arg-type]
    assert (first.usage.cache_creation_input_tokens or 0) > 1000
    assert (second.usage.cache_read_input_tokens or 0) == first.usage.cache_creation_input_tokens


async def test_no_keys_refuses_a_public_address() -> None:
    router = Router(sim_config_dummy())
    with pytest.raises(ConfigError, match=r"refusing to serve on 0\.0\.0\.0 without virtual keys"):
        GatewayServer(router, None, GatewaySettings(host="0.0.0.0", port=0))
    await router.aclose()


def sim_config_dummy() -> Any:
    from shoal.config import Config

    return Config.from_dict({})


def gateway_process(config: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SHOAL_STORE", None)
    return subprocess.Popen(
        [sys.executable, "-c", "from shoal.cli.main import main; main()", "gateway",
         "--config", str(config), "--store", f"sqlite:///{config.parent}/k.db",
         *(args or ("--port", "0"))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=config.parent)


@contextlib.asynccontextmanager
async def openai_client_at(url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-any", max_retries=0)
    try:
        yield client
    finally:
        await client.close()


async def test_sigterm_drains_an_in_flight_stream(tmp_path: Path) -> None:
    """With a real virtual key in a SQLite store: the stream finishes during the drain
    and its spend is in the store once the process has exited."""
    from shoal.gateway.key_store import open_key_store

    store_url = f"sqlite:///{tmp_path}/k.db"
    async with open_key_store(store_url) as store:
        record, secret = await store.create("team-a", budget_usd=10.0)
    async with SimServer(SimConfig(models={"*": ModelProfile(tokens_per_s=20,
                                                             output_tokens=30)})) as sim:
        config = tmp_path / "shoal.toml"
        config.write_text(
            f'[channels.oa]\nprotocol = "openai"\nbase_url = "{sim.base_url("openai")}"\n'
            f'api_key = "sk-sim"\nprovider = "openai"\n\n[models.gpt-test]\nchannels = ["oa"]\n'
            'wire_name = "gpt-4o-mini"\ninput = 1.0\noutput = 2.0\n\n[gateway]\n'
            'drain_timeout_s = 20\n')
        proc = gateway_process(config)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
            assert "shoal gateway listening on http://127.0.0.1:" in line, line
            url = line.split("listening on ", 1)[1].split()[0]
            async with aiohttp.ClientSession() as session:
                response = await session.post(
                    url + "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                    json={"model": OPENAI_MODEL, "messages": USER, "stream": True})
                head = await first_chunk(response)
                proc.send_signal(signal.SIGTERM)  # mid-stream: ~1.5 s of it left
                rest = await response.content.read()

                async def refused() -> bool:
                    try:
                        async with aiohttp.ClientSession() as fresh:
                            await fresh.get(url + "/health")
                    except aiohttp.ClientConnectionError:
                        return True
                    return False

                closed = await refused()
            code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    text = "".join(json.loads(chunk[6:])["choices"][0]["delta"].get("content") or ""
                   for chunk in (head + rest).decode().split("\n\n")
                   if chunk.startswith("data: {"))
    assert len(text.split()) == 30  # the whole answer arrived
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert closed  # no new connections once draining began
    assert code == 0, stderr
    assert "shoal gateway draining" in stderr and "shoal gateway stopped" in stderr
    access = [json.loads(x) for x in stderr.splitlines() if x.startswith("{")]
    assert [(a["route"], a["status"], a["stream"], a["key"]) for a in access] == [
        ("/v1/chat/completions", 200, True, record.id)]
    assert secret not in stderr
    async with open_key_store(store_url) as store:
        spent = await store.spend(record.id, "total")
    assert spent.requests == 1 and spent.output_tokens == 30 and spent.usd > 0


@pytest.mark.redis
async def test_workers_share_the_port(tmp_path: Path, redis_url: str) -> None:
    """Two workers (with the redis_url several workers need) on one port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with SimServer(SimConfig()) as sim:
        config = tmp_path / "shoal.toml"
        config.write_text(
            f'redis_url = "{redis_url}"\n\n'
            f'[channels.oa]\nprotocol = "openai"\nbase_url = "{sim.base_url("openai")}"\n'
            f'api_key = "sk-sim"\nprovider = "openai"\n\n[models.gpt-test]\nchannels = ["oa"]\n'
            f'wire_name = "gpt-4o-mini"\n\n[gateway]\nworkers = 2\nport = {port}\n'
            "access_log = false\n")
        proc = gateway_process(config, "--port", str(port))
        try:
            assert proc.stdout is not None
            lines = [await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
                     for _ in range(2)]
            pids = {line.split("(pid ", 1)[1].split(",")[0] for line in lines}
            assert len(pids) == 2 and all(f":{port} " in line for line in lines), lines
            async with openai_client_at(f"http://127.0.0.1:{port}") as client:
                answers = await asyncio.gather(*(client.chat.completions.create(
                    model=OPENAI_MODEL, messages=USER) for _ in range(8)))
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(a.choices[0].message.content for a in answers)
    assert code == 0
