"""A real ``shoal gateway`` process over a real ``shoal sim`` process, with real virtual
keys made by ``shoal keys create`` in a SQLite store: what the bad-input and fuzzing
tests talk to over HTTP, as any caller would.

Models: ``gpt-test`` (OpenAI-protocol channel), ``claude-test`` (Anthropic-protocol
channel) and ``gpt-slow`` (OpenAI protocol, 200 tokens at 20 tokens/s: a stream long
enough to walk away from). Both processes are stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

UPSTREAM_KEY = "sk-upstream-9c1e5a7f3b2d8e4a6c0f1b3d5e7a9c2e"
MAX_BODY = 65536
SHOAL = [sys.executable, "-c", "from shoal.cli.main import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Gateway:
    url: str
    key: str  # an active virtual key
    revoked_key: str
    upstream_key: str
    log: Path

    def secrets(self) -> tuple[str, ...]:
        return (self.key, self.revoked_key, self.upstream_key)


def _shoal(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run([*SHOAL, *args], capture_output=True, text=True, check=True,
                         timeout=60, env=env)
    return out.stdout.strip()


def _wait_health(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Until ``url`` answers anything below 500."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not healthy within {timeout_s} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _config(sim_port: int) -> str:
    sim = f"http://127.0.0.1:{sim_port}"
    return f"""
[channels.oa]
protocol = "openai"
provider = "openai"
base_url = "{sim}/style/openai/v1"
api_key = "{UPSTREAM_KEY}"

[channels.an]
protocol = "anthropic"
provider = "anthropic"
base_url = "{sim}/style/anthropic"
api_key = "{UPSTREAM_KEY}"

[models.gpt-test]
channels = ["oa"]
wire_name = "gpt-4o-mini"
input = 1.0
output = 2.0

[models.gpt-slow]
channels = ["oa"]
wire_name = "gpt-4o"
input = 1.0
output = 2.0

[models.claude-test]
channels = ["an"]
wire_name = "claude-sonnet-4-6"
input = 3.0
output = 15.0

[gateway]
max_body_bytes = {MAX_BODY}
access_log = true
"""


@contextlib.contextmanager
def running_gateway(tmp: Path) -> Iterator[Gateway]:
    env: dict[str, Any] = {**os.environ, "SHOAL_STORE": f"sqlite:///{tmp}/keys.db"}
    env.pop("SHOAL_CONFIG", None)
    (tmp / "sim.toml").write_text('[models."gpt-4o"]\ntokens_per_s = 20\noutput_tokens = 200\n')
    sim_port, gw_port = free_port(), free_port()
    sim = subprocess.Popen(
        [*SHOAL, "sim", "--port", str(sim_port), "--config", str(tmp / "sim.toml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    gw: subprocess.Popen[bytes] | None = None
    log = tmp / "gateway.log"
    try:
        _wait_health(f"http://127.0.0.1:{sim_port}/", sim)
        key = _shoal("keys", "create", "--name", "fuzz", env=env)
        revoked = _shoal("keys", "create", "--name", "gone", env=env)
        _shoal("keys", "revoke", "gone", env=env)
        (tmp / "shoal.toml").write_text(_config(sim_port))
        with log.open("wb") as sink:
            gw = subprocess.Popen(
                [*SHOAL, "gateway", "--config", str(tmp / "shoal.toml"), "--host",
                 "127.0.0.1", "--port", str(gw_port)], stdout=sink, stderr=sink, env=env)
        url = f"http://127.0.0.1:{gw_port}"
        _wait_health(url + "/health", gw)
        yield Gateway(url, key, revoked, UPSTREAM_KEY, log)
    finally:
        if gw is not None:
            _stop(gw)
        _stop(sim)


# -- what every error answer must be ---------------------------------------------------------


def check_envelope(route: str, resp: httpx.Response) -> dict[str, Any]:
    """The body of an error answer, checked to be its route's protocol envelope."""
    body = resp.json()
    assert isinstance(body, dict), body
    if route.startswith("/v1/messages"):
        assert body.get("type") == "error", body
        err = body.get("error")
        assert isinstance(err, dict), body
        assert isinstance(err.get("type"), str), body
        assert isinstance(err.get("message"), str), body
        assert err["message"], body
    else:
        err = body.get("error")
        assert isinstance(err, dict), body
        assert isinstance(err.get("message"), str), body
        assert err["message"], body
        assert isinstance(err.get("type"), str), body
    return err


def check_no_secret(gw: Gateway, resp: httpx.Response) -> None:
    text = resp.text + "".join(f"{k}: {v}\n" for k, v in resp.headers.items())
    for secret in gw.secrets():
        assert secret not in text, f"a secret leaked into a {resp.status_code} answer"
