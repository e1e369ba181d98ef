"""``shoal gateway --workers N`` without Redis: limits that would multiply are split
over the workers (their sum holds at the provider) or refused at start."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from pathlib import Path

import openai
from test_gateway_production import gateway_process

from shoal.gateway.key_store import open_key_store
from shoal.sim import ModelProfile, SimConfig, SimServer


def _config(path: Path, base_url: str, port: int, cap: int) -> Path:
    config = path / "shoal.toml"
    config.write_text(
        f'[channels.oa]\nprotocol = "openai"\nbase_url = "{base_url}"\n'
        f'api_key = "sk-sim"\nprovider = "openai"\nmax_concurrency = {cap}\n\n'
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


async def test_two_workers_split_an_unshared_cap(tmp_path: Path) -> None:
    """A cap-2 channel behind 2 workers: the provider never sees more than 2 in flight
    (each worker would otherwise admit 2), and the start-up line says how it split."""
    port = _free_port()
    slow = SimConfig(models={"*": ModelProfile(latency_s=0.3)})
    async with SimServer(slow) as sim:
        proc = gateway_process(_config(tmp_path, sim.base_url("openai"), port, 2),
                               "--port", str(port))
        try:
            assert proc.stdout is not None
            for _ in range(2):
                line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
                assert "listening on" in line, line
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


async def test_a_cap_smaller_than_the_workers_is_refused(tmp_path: Path) -> None:
    port = _free_port()
    proc = gateway_process(_config(tmp_path, "http://127.0.0.1:9/v1", port, 1),
                           "--port", str(port))
    code, stderr = await _stop(proc, signal_it=False)
    assert code != 0
    assert "too small to split: oa.max_concurrency = 1" in stderr, stderr
    assert "shared = true" in stderr and "Traceback" not in stderr


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
    assert "--workers 2 with virtual keys needs redis_url" in stderr, stderr
    assert "listening on" not in (proc.stdout.read() if proc.stdout else "")
