"""``shoal top``: one frame rendered from a real metrics endpoint (a Router's exporter
served over HTTP, calls made against the simulator); the CLI with ``--once``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from shoal.cli import top_cmd
from shoal.cli.main import _register, app
from shoal.config import Config
from shoal.observe.prometheus import PrometheusExporter
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, Router]]:
    """A metrics endpoint of a Router that made 5 calls; one is still in flight."""
    async with SimServer(SimConfig(models={"slow": ModelProfile(latency_s=30)})) as sim:
        cfg = Config.from_dict({
            "channels": {"sim": {"protocol": "openai", "base_url": sim.url + "/v1",
                                 "api_key": "sk-test", "provider": "openai",
                                 "max_concurrency": 8}},
            "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0},
                       "slow": {"channels": ["sim"]}}})
        async with Router(cfg) as router:
            exporter = PrometheusExporter(router.events, router=router)
            exporter.subscribe()
            port = exporter.serve(0)
            for _ in range(4):
                await router.complete(ChatRequest(model="m", messages=[Message.user("hi")]))
            hung = asyncio.create_task(router.complete(
                ChatRequest(model="slow", messages=[Message.user("wait")])))
            for _ in range(500):  # bounded: until the call holds its slot
                if router.lane("sim").limiter.in_flight:
                    break
                await asyncio.sleep(0.01)
            try:
                yield f"http://127.0.0.1:{port}/metrics", router
            finally:
                hung.cancel()
                exporter.close()


def text_of(renderable: object) -> str:
    console = Console(record=True, width=140, color_system=None)
    console.print(renderable)
    return console.export_text()


async def test_one_frame_from_a_real_endpoint(endpoint: tuple[str, Router]) -> None:
    url, _ = endpoint
    snap = await top_cmd.scrape(url, at=100.0)
    sim = snap.channels["sim"]
    assert (sim.in_flight, sim.limit, sim.queue, sim.breaker) == (1, 8, 0, 0)
    assert sim.requests == 4 and sim.rate_limited == 0
    assert snap.running["call"] == 1
    assert snap.calls["m"] == 4 and snap.tokens["m"] > 0
    frame = text_of(top_cmd.render(snap, url=url))
    row = next(line for line in frame.splitlines() if line.strip().startswith("sim "))
    assert row.split() == ["sim", "1", "8", "0", "0", "0", "4", "closed"]
    assert "calls 1 running" in frame
    # a minute after an empty scrape: per-minute figures are the totals
    frame = text_of(top_cmd.render(snap, top_cmd.parse("", at=40.0)))
    [all_row] = [line for line in frame.splitlines() if line.strip().startswith("all ")]
    tokens = f"{snap.total_tokens:,.1f}"
    assert all_row.split()[:3] == ["all", "4", tokens]


def test_shoal_top_once_prints_a_frame_and_explains_an_unreachable_endpoint(
        endpoint: tuple[str, Router]) -> None:
    url, _ = endpoint
    _register()
    runner = CliRunner()
    result = runner.invoke(app, ["top", "--url", url, "--once"])
    assert result.exit_code == 0, result.output
    assert "channels" in result.output and "sim" in result.output
    result = runner.invoke(app, ["top", "--url", "http://127.0.0.1:9/metrics", "--once"])
    assert result.exit_code == 2
    assert "cannot reach http://127.0.0.1:9/metrics" in result.output
    assert "--metrics-port" in result.output


async def test_shoal_top_into_a_pipe_prints_a_frame_per_scrape(
        endpoint: tuple[str, Router]) -> None:
    """Not a terminal (a pipe, a log file): each scrape is printed as it comes, where
    rich's live view would show nothing until the command is stopped."""
    url, _ = endpoint
    shoal = Path(sys.executable).parent / "shoal"
    proc = await asyncio.create_subprocess_exec(
        str(shoal), "top", "--url", url, "--interval", "0.2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    seen = ""
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):  # bounded: two frames, or the test fails
            while seen.count("channels") < 2:
                line = await proc.stdout.readline()
                assert line, f"shoal top ended early: {seen[-2000:]}"
                seen += line.decode()
    finally:
        proc.terminate()
        await proc.wait()
    assert seen.count(url) >= 2 and "sim" in seen
