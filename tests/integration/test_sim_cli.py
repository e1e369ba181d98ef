"""``shoal sim`` / ``python -m shoal.sim``: a real process, its one startup line, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import typer
from typer.testing import CliRunner

from shoal.cli import sim_cmd

PREFIX = "shoal sim listening on "


@contextmanager
def sim_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.sim", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(PREFIX), (line, proc.stderr.read() if proc.stderr else "")
        yield proc, line[len(PREFIX) :].strip()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


def test_serves_with_flags_and_stops_on_sigterm() -> None:
    with sim_process("--cap", "2", "--style", "zhipu", "--latency", "0", "--seed", "5") as (
        proc,
        url,
    ):
        assert url.startswith("http://127.0.0.1:")
        body = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
        config = httpx.get(url + "/_sim/config", timeout=10).json()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"]
    assert (config["max_concurrency"], config["style"], config["seed"]) == (2, "zhipu", 5)


def test_scenario_file_then_flags_override_it(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(
        'rpm = 60\n[faults]\nerror_rate = 1.0\nerror_status = 503\n[models."*"]\nlatency_s = 0\n'
    )
    with sim_process("--config", str(scenario), "--error-status", "529") as (_, url):
        body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(url + "/v1/messages", json=body, timeout=10)
        config = httpx.get(url + "/_sim/config", timeout=10).json()
    assert r.status_code == 529
    assert r.json()["error"]["type"] == "overloaded_error"
    assert config["rpm"] == 60


def test_bad_settings_exit_2_with_a_message() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.sim", "--port", "0", "--error-rate", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "Faults.error_rate must be between 0 and 1" in proc.stderr


def test_register_adds_a_sim_subcommand() -> None:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """A root so `sim` stays a subcommand."""

    sim_cmd.register(app)
    result = CliRunner().invoke(app, ["sim", "--help"])
    assert result.exit_code == 0
    assert "--cap" in result.output
    assert "--config" in result.output
