"""No key leaks, end to end: a provider answering 401 with a body that echoes the key
(Gemini- and Zhipu-shaped, and one of no known shape) through the real Router; what the
error shows, what the SQLite journal holds on disk, what `shoal show` / `shoal runs
--json` print in a fresh process without the keys, and what a tool error sends the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from shoal.agents import Agent, tool
from shoal.config import Config
from shoal.errors import AuthError, StepFailed
from shoal.flows.flow import Flow
from shoal.flows.resume import run_durable
from shoal.secrets import forget_secret, register_secret
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

KEYS = {
    "GEMINI_LIKE_KEY": "AIzaSyB7x2Qk9LmN4pR1sT8uV3wX6yZ0aC5dEgH",
    "ZHIPU_LIKE_KEY": "9e1c4b7a2d5f8e0b3c6a9d2f5e8b1c4a.Zx7Cv2Bn5Mq8Wr1T",
    "ODD_SHAPED_KEY": "corp_gw~Lk38fQ2zR9vN7",  # no shape rule matches: value registry only
}
TOOL_SECRET = "db-pass~Hq42Lw98Xz17"  # a user's own secret, registered by hand


class FakeProvider:
    """OpenAI-compatible endpoints: /rej answers 401 echoing the bearer key (as some
    gateways do); /ok asks for the `search` tool once, then answers."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.url = ""

    async def rejected(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        body = {"error": {"message": f"API key not valid: {key}. Please pass a valid API key "
                                     f"(see https://x/doc?key={key})",
                          "type": "invalid_request_error", "code": "invalid_api_key"}}
        return web.json_response(body, status=401)

    async def ok(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        answered = any(m.get("role") == "tool" for m in body["messages"])
        message: dict[str, Any] = (
            {"role": "assistant", "content": "done"} if answered else
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "search", "arguments": '{"query": "q"}'}}]}
        )
        return web.json_response({
            "id": "x", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "stop" if answered else "tool_calls"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider()
    app = web.Application()
    app.router.add_post("/rej/v1/chat/completions", fake.rejected)
    app.router.add_post("/ok/v1/chat/completions", fake.ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for env, value in KEYS.items():
        monkeypatch.setenv(env, value)
    return KEYS


def config(fake: FakeProvider) -> Config:
    channels = {
        env.lower(): {"protocol": "openai", "base_url": f"{fake.url}/rej/v1",
                      "api_key_env": env}
        for env in KEYS
    }
    channels["good"] = {"protocol": "openai", "base_url": f"{fake.url}/ok/v1",
                        "api_key_env": "ZHIPU_LIKE_KEY"}
    models = {f"m-{name}": {"channels": [name]} for name in channels}
    return Config.from_dict({"channels": channels, "models": models})


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [k for k in (*KEYS.values(), TOOL_SECRET) if k.encode() in data]


async def test_a_401_echoing_the_key_shows_no_key(
    provider: FakeProvider, keys: dict[str, str]
) -> None:
    async with Router(config(provider)) as router:
        for env in keys:
            with pytest.raises(AuthError) as exc:
                await router.complete(ChatRequest(model=f"m-{env.lower()}",
                                                  messages=[Message.user("hi")]))
            err = exc.value
            assert err.status == 401 and "***" in err.body
            assert env in str(err)  # the message names the variable, not the key
            assert leaks(str(err)) == [] and leaks(repr(err)) == [] and leaks(err.body) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}  # a fresh shell: no keys
    return subprocess.run(
        [sys.executable, "-c", "from shoal.cli.main import main; main()", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )


async def test_the_journal_and_the_cli_hold_no_key(
    provider: FakeProvider, keys: dict[str, str], tmp_path: Path
) -> None:
    register_secret(TOOL_SECRET)

    @tool(retries=0)
    def search(query: str) -> str:
        """Search the corporate index."""
        raise ConnectionRefusedError(
            f"postgres://app:{TOOL_SECRET}@db/idx refused (token {KEYS['ZHIPU_LIKE_KEY']})")

    def connect(finder: str) -> dict[str, str]:  # a result that holds a registered secret
        return {"found": finder, "dsn": f"postgres://app:{TOOL_SECRET}@db/idx"}

    flow = Flow("leaky")
    flow.add(Agent("finder", model="m-good", tools=[search], instructions="Find it."))
    flow.add(connect, after="finder")
    for env in keys:
        flow.add(Agent(f"ask_{env.lower()}", model=f"m-{env.lower()}"),
                 after="finder", on_failure="continue")
    flow.add(Agent("last", model="m-gemini_like_key"), after=["finder", "connect"])
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    try:
        async with Router(config(provider)) as router:
            with pytest.raises(StepFailed):
                await run_durable(flow, "find it", store=store, run_id="leak-1", client=router)
    finally:
        forget_secret(TOOL_SECRET)

    # The tool error went back to the model, without the secrets in it.
    tool_turns = [m for b in provider.bodies for m in b["messages"] if m["role"] == "tool"]
    assert tool_turns and "ConnectionRefusedError" in tool_turns[0]["content"]
    assert leaks(json.dumps(provider.bodies)) == []

    files = list(tmp_path.glob("runs.db*"))
    assert files
    for path in files:
        assert leaks(path.read_bytes()) == [], path

    shown = _cli("show", "leak-1", "--store", store, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    statuses = {s["step"]: s["status"] for s in doc["steps"]}
    assert statuses["connect"] == "succeeded" and statuses["last"] == "failed"
    errors = [s["error"] or "" for s in doc["steps"]]
    assert any("AuthError" in e and "***" in e for e in errors), errors
    listed = _cli("runs", "--store", store, "--json")
    assert listed.returncode == 0 and "leak-1" in listed.stdout
    table = _cli("show", "leak-1", "--store", store)
    for out in (shown.stdout, listed.stdout, table.stdout, table.stderr):
        assert leaks(out) == []
