"""``shoal run --metrics-port``: the run's metrics are scraped over HTTP while it runs
(by one of its own tools); ``--metrics-push`` sends them to a Pushgateway at the end."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from shoal.cli.main import _register, app

FLOW = '''
import os
import urllib.request

from shoal import Agent, Flow
from shoal.agents import tool

SCRAPES: list[str] = []


@tool
def look() -> str:
    """Look at the process's own metrics."""
    with urllib.request.urlopen(os.environ["SHOAL_TEST_METRICS_URL"], timeout=10) as resp:
        SCRAPES.append(resp.read().decode())
    return "looked"


flow = Flow("watched")
flow.add(Agent("watcher", model="gpt-4o-mini", tools=[look]))
flow.add(Agent("writer", model="gpt-4o-mini"), after="watcher")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_port_serves_the_run_while_it_runs(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("SHOAL_TEST_METRICS_URL", f"http://127.0.0.1:{port}/metrics")
    (tmp_path / "watched_flow.py").write_text(FLOW)
    _register()
    result = CliRunner().invoke(app, ["run", f"{tmp_path / 'watched_flow.py'}:flow", "go",
                                      "--sim", "--metrics-port", str(port), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"metrics on http://127.0.0.1:{port}/metrics" in result.output
    [text] = sys.modules["watched_flow"].SCRAPES
    got = series(text)
    assert got["shoal_running", (("what", "tool"),)] == 1  # scraped from inside the tool
    assert got["shoal_running", (("what", "step"),)] == 1
    assert got["shoal_channel_limit", (("channel", "sim"),)] == 64
    assert got["shoal_model_calls_total", (("agent", "watcher"), ("model", "gpt-4o-mini"),
                                           ("status", "ok"))] == 1  # its first turn


async def test_metrics_push_sends_the_run_to_a_pushgateway(tmp_path: Path) -> None:
    bodies: list[tuple[str, bytes]] = []

    async def accept(request: web.Request) -> web.Response:
        bodies.append((request.path, await request.read()))
        return web.Response()

    gateway = web.Application()
    gateway.router.add_route("*", "/metrics/{tail:.*}", accept)
    runner = web.AppRunner(gateway)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    spec = Path(__file__).resolve().parents[2] / "examples" / "report_flow.toml"
    _register()
    try:
        result = await asyncio.to_thread(CliRunner().invoke, app, [
            "run", str(spec), "topic", "--sim", "--metrics-push", url, "--no-progress"])
    finally:
        await runner.cleanup()
    assert result.exit_code == 0, result.output
    [(path, body)] = bodies
    assert path == "/metrics/job/shoal_run"
    got = series(body.decode())
    assert got["shoal_steps_total", (("status", "succeeded"),)] == 3
    assert got["shoal_runs_total", (("flow", "report"), ("status", "succeeded"))] == 1


def test_alerts_of_the_config_are_evaluated_during_the_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "shoal.toml"
    config.write_text("[alerts]\ninterval_s = 60\ntokens_per_task = 10\n")
    spec = Path(__file__).resolve().parents[2] / "examples" / "report_flow.toml"
    _register()
    caplog.set_level("WARNING", logger="shoal.alerts")
    result = CliRunner().invoke(app, ["run", str(spec), "topic", "--sim", "--config",
                                      str(config), "--no-progress"])
    assert result.exit_code == 0, result.output
    fired = sorted(r.getMessage().split(" [")[0] for r in caplog.records
                   if r.name == "shoal.alerts")
    assert len(fired) == 3  # every step of the three used more than 10 tokens
    assert all(line.startswith("alert tokens_per_task:") for line in fired)


def test_shoal_batch_takes_the_metrics_options_too() -> None:
    _register()
    result = CliRunner().invoke(app, ["batch", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--metrics-port" in result.output and "--metrics-push" in result.output
