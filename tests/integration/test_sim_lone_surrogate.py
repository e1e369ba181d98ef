"""A lone surrogate (``"\\ud800"``) is valid JSON: real servers' decoders take it
(replacing it), and the gateway accepts it on purpose (shoal/fastjson.py). The simulator
answered it with a 500 (its word bank hashed the prompt with a strict UTF-8 encode), so
the gateway answered a caller's valid request with a 502."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from shoal.sim import SimConfig, SimServer

BODY = (b'{"model":"%s","max_tokens":8,'
        b'"messages":[{"role":"user","content":"half a pair: \\ud800 here"}]}')


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig()) as s:
        yield s


@pytest.mark.parametrize(("path", "model"), [("/v1/chat/completions", b"gpt-4o"),
                                             ("/v1/messages", b"claude-sonnet-4-6")])
async def test_a_lone_surrogate_in_a_prompt_is_answered(sim: SimServer, path: str,
                                                        model: bytes) -> None:
    headers = {"content-type": "application/json", "authorization": "Bearer sk-test",
               "x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as session, session.post(
            sim.url + path, data=BODY % model, headers=headers) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert body.get("choices") or body.get("content")
