"""``shoal gateway --workers N``: several workers need ``redis_url`` (a virtual key's
limits are enforced across workers only through Redis, keys created after the start
included), and are refused at start without it, keys or none; a channel's limits that
Redis does not share (no ``shared = true``) are split over the workers (their sum holds
at the provider) or refused at start when too small to split."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from pathlib import Path

import openai
import pytest
from test_gateway_production import gateway_process

from shoal.gateway.key_store import open_key_store
from shoal.sim import ModelProfile, SimConfig, SimServer


def _config(path: Path, base_url: str, port: int, cap: int | None,
            redis_url: str | None = None) -> Path:
    config = path / "shoal.toml"
    top = f'redis_url = "{redis_url}"\n\n' if redis_url else ""
    limit = f"max_concurrency = {cap}\n" if cap is not None else ""
    config.write_text(
        f'{top}[channels.oa]\nprotocol = "openai"\nbase_url = "{base_url}"\n'
        f'api_key = "sk-sim"\nprovider = "openai"\n{limit}\n'
        '[models.gpt-test]\nchannels = ["oa"]\nwire_name = "gpt-4o-mini"\n\n'
        f"[gateway]\nworkers = 2\nport = {port}\naccess_log = false\n")
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _stop(proc: subprocess.Popen[str], *, signal_it: bool = True) -> tuple[int, str]:
    """SIGTERM ``proc`` (or, with ``signal_it=False``, let it exit by itself); its exit
    code and standard error."""
    if signal_it and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    return code, proc.stderr.read()


@pytest.mark.redis
async def test_two_workers_split_an_unshared_cap(tmp_path: Path, redis_url: str) -> None:
    """A cap-2 channel behind 2 workers: the provider never sees more than 2 in flight
    (each worker would otherwise admit 2), and the start-up line says how it split."""
    port = _free_port()
    slow = SimConfig(models={"*": ModelProfile(latency_s=0.3)})
    async with SimServer(slow) as sim:
        proc = gateway_process(_config(tmp_path, sim.base_url("openai"), port, 2, redis_url),
                               "--port", str(port))
        try:
            await _listening(proc, 2)
            # One client per call: separate connections, which the kernel spreads over
            # both workers.
            clients = [openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                                          api_key="sk-any", max_retries=0) for _ in range(12)]
            try:
                answers = await asyncio.gather(*(c.chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": "hi"}])
                    for c in clients))
            finally:
                await asyncio.gather(*(c.close() for c in clients))
        finally:
            code, stderr = await _stop(proc)
        stats = sim.stats()
    assert all(a.choices[0].message.content for a in answers)
    assert stats.total_requests == 12 and stats.rate_limited == 0
    assert stats.max_in_flight <= 2, stats.max_in_flight
    assert code == 0, stderr
    assert "channel limits split per worker" in stderr
    assert "oa (max_concurrency 2 → 1+1)" in stderr


async def _listening(proc: subprocess.Popen[str], workers: int) -> None:
    assert proc.stdout is not None
    for _ in range(workers):
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert "listening on" in line, line


async def test_a_cap_smaller_than_the_workers_is_refused(tmp_path: Path) -> None:
    port = _free_port()
    # redis_url set (never reached: the process stops before any worker starts)
    proc = gateway_process(_config(tmp_path, "http://127.0.0.1:9/v1", port, 1,
                                   "redis://127.0.0.1:6379/0"), "--port", str(port))
    code, stderr = await _stop(proc, signal_it=False)
    assert code != 0
    assert "too small to split: oa.max_concurrency = 1" in stderr, stderr
    assert "shared = true" in stderr and "Traceback" not in stderr


async def test_two_workers_without_redis_are_refused_keys_or_none(tmp_path: Path) -> None:
    """No key exists yet, and the gateway would still serve keys created later (it
    looks for them while it runs): each worker would enforce them on its own (2× a
    key's rpm, tpm and concurrency). Refused before any worker starts, saying what is
    wrong and the two ways out."""
    port = _free_port()
    proc = gateway_process(_config(tmp_path, "http://127.0.0.1:9/v1", port, 8),
                           "--port", str(port))
    code, stderr = await _stop(proc, signal_it=False)
    assert code != 0
    assert "--workers 2 needs redis_url in shoal.toml" in stderr, stderr
    assert "keys created while the gateway runs" in stderr
    assert "or run --workers 1" in stderr and "Traceback" not in stderr
    assert "listening on" not in (proc.stdout.read() if proc.stdout else "")


async def test_virtual_keys_on_two_workers_need_redis(tmp_path: Path) -> None:
    """Each worker would enforce every key's rpm on its own: refused before any
    worker starts, saying what to set."""
    async with open_key_store(f"sqlite:///{tmp_path}/k.db") as store:
        await store.create("team-a", rpm=10)
    port = _free_port()
    proc = gateway_process(_config(tmp_path, "http://127.0.0.1:9/v1", port, 8),
                           "--host", "127.0.0.1", "--port", str(port))
    code, stderr = await _stop(proc, signal_it=False)
    assert code != 0
    assert "--workers 2 needs redis_url" in stderr, stderr
    assert "(2× the limit)" in stderr and "Traceback" not in stderr


@pytest.mark.redis
async def test_a_key_created_after_the_start_is_one_limit_across_workers(
        tmp_path: Path, redis_url: str) -> None:
    """Two workers with redis_url start without keys; a key created while they run
    (rpm 2) is asked for by both within a second, and its rpm holds across them: 2 of
    8 calls on separate connections (spread over both workers) are served, not 2 per
    worker."""
    port = _free_port()
    async with SimServer(SimConfig()) as sim:
        proc = gateway_process(_config(tmp_path, sim.base_url("openai"), port, None,
                                       redis_url), "--port", str(port))
        try:
            await _listening(proc, 2)
            async with open_key_store(f"sqlite:///{tmp_path}/k.db") as store:
                _, secret = await store.create("team-a", rpm=2)
            clients = [openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                                          api_key=secret, max_retries=0) for _ in range(8)]
            try:
                await _until_keys_are_asked_for(port)
                results = await asyncio.gather(*(c.chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": "hi"}])
                    for c in clients), return_exceptions=True)
            finally:
                await asyncio.gather(*(c.close() for c in clients))
        finally:
            code, stderr = await _stop(proc)
    served = [r for r in results if not isinstance(r, BaseException)]
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(served) == 2 and len(limited) == 6, results
    assert code == 0, stderr


async def _until_keys_are_asked_for(port: int) -> None:
    """Until both workers refuse a call without a key (each looks once a second)."""
    refused = 0
    for _ in range(100):
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                                    api_key="sk-no-key", max_retries=0)
        try:
            await client.models.list()
            refused = 0
        except openai.AuthenticationError:
            refused += 1
            if refused >= 8:  # eight new connections in a row, over both workers
                return
        finally:
            await client.close()
        await asyncio.sleep(0.1)
    raise AssertionError("the workers never asked for the new key")
