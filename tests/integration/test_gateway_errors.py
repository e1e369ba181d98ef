"""Every failure in the caller's protocol envelope with the right status: bad input
(4xx, never a 5xx, no upstream request), key refusals as the SDKs' own error classes,
the Router giving up (429 with retry-after), a stream cut after its first byte (an
error event, never a clean end); no upstream key in any answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from gateway_fixtures import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    UPSTREAM_KEY,
    anthropic_client,
    fake_keys,
    gateway,
    openai_client,
    sim_config,
)

from shoal.gateway.server import GatewayServer
from shoal.sim import SimConfig, SimServer

USER: list[Any] = [{"role": "user", "content": "hello"}]
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig()) as server:
        yield server


async def post(gw: GatewayServer, path: str, body: bytes | Any,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session, session.post(
            gw.url + path, data=data, headers={"Content-Type": "application/json",
                                               **(headers or {})}) as response:
        text = await response.text()
        return response.status, dict(response.headers), json.loads(text)


def openai_error(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def anthropic_error(body: Any) -> dict[str, Any]:
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return dict(body["error"])


BAD_BODIES: list[tuple[str, bytes | Any, str]] = [
    ("malformed JSON", b'{"model": "gpt-test", "messages": [', "not valid JSON"),
    ("empty body", b"", "empty"),
    ("not an object", [1, 2], "expected an object"),
    ("missing model", {"messages": USER, "max_tokens": 5}, "model is required"),
    ("messages wrong type", {"model": OPENAI_MODEL, "messages": "hi", "max_tokens": 5},
     "messages: expected an array"),
    ("content wrong type", {"model": OPENAI_MODEL, "max_tokens": 5,
                            "messages": [{"role": "user", "content": 7}]},
     "messages[0].content: expected a string or an array"),
    ("temperature wrong type", {"model": OPENAI_MODEL, "messages": USER, "max_tokens": 5,
                                "temperature": "hot"}, "temperature: expected a number"),
    ("temperature out of range", {"model": OPENAI_MODEL, "messages": USER, "max_tokens": 5,
                                  "temperature": 7}, "temperature must be a number from 0"),
    ("image content", {"model": OPENAI_MODEL, "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "image", "source": {}},
                                     {"type": "image_url", "image_url": {"url": "x"}}]}]},
     "is not supported by the gateway"),
]


@pytest.mark.parametrize(("case", "body", "says"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_input_is_a_400_in_each_envelope(sim: SimServer, case: str, body: Any,
                                                   says: str) -> None:
    async with gateway(sim_config(sim)) as gw:
        status, _, oa = await post(gw, CHAT, body)
        astatus, _, an = await post(gw, MESSAGES, body)
    assert status == 400 and astatus == 400
    assert says in openai_error(oa)["message"]
    assert openai_error(oa)["type"] == "invalid_request_error"
    assert says in anthropic_error(an)["message"]
    assert anthropic_error(an)["type"] == "invalid_request_error"
    assert sim.stats().total_requests == 0  # refused before any upstream request


async def test_anthropic_requires_max_tokens(sim: SimServer) -> None:
    async with gateway(sim_config(sim)) as gw:
        status, _, body = await post(gw, MESSAGES, {"model": ANTHROPIC_MODEL, "messages": USER})
    assert status == 400
    assert anthropic_error(body)["message"] == "max_tokens is required"


async def test_unknown_model_is_the_sdks_not_found(sim: SimServer) -> None:
    async with gateway(sim_config(sim)) as gw, openai_client(gw) as oa, \
            anthropic_client(gw) as an:
        with pytest.raises(openai.NotFoundError) as info:
            await oa.chat.completions.create(model="gpt-tset", messages=USER)
        with pytest.raises(anthropic.NotFoundError) as ainfo:
            await an.messages.create(model="nope", max_tokens=5, messages=USER)
    assert "gpt-tset" in info.value.message and "Did you mean: gpt-test" in info.value.message
    assert info.value.code == "model_not_found"
    assert "GET /v1/models" in ainfo.value.message


async def test_an_unknown_model_is_matched_only_against_models_served(sim: SimServer) -> None:
    """The catalog's gpt-4o-mini has no keyed channel here: the gateway does not serve it,
    so it is no suggestion for a typo of it."""
    async with gateway(sim_config(sim)) as gw, openai_client(gw) as oa:
        served = {m.id async for m in oa.models.list()}
        with pytest.raises(openai.NotFoundError) as info:
            await oa.chat.completions.create(model="gpt-4o-mni", messages=USER)
    assert "gpt-4o-mini" not in served
    said = info.value.message
    suggested = said.split("Did you mean: ", 1)[1].split("?")[0].split(", ") \
        if "Did you mean" in said else []
    assert "gpt-4o-mini" not in said and set(suggested) <= served


async def test_oversized_body_is_a_413(sim: SimServer) -> None:
    big = {"model": OPENAI_MODEL, "max_tokens": 5,
           "messages": [{"role": "user", "content": "x" * 5000}]}
    async with gateway(sim_config(sim), max_body_bytes=4096) as gw:
        status, _, oa = await post(gw, CHAT, big)
        astatus, _, an = await post(gw, MESSAGES, big)
    assert status == 413 and astatus == 413
    assert "over the gateway's limit of 4096 bytes" in openai_error(oa)["message"]
    assert anthropic_error(an)["type"] == "request_too_large"


async def test_unknown_route_is_an_envelope_404(sim: SimServer) -> None:
    async with gateway(sim_config(sim)) as gw:
        status, _, body = await post(gw, "/v1/completions", {"x": 1})
    assert status == 404
    assert "no route POST /v1/completions" in openai_error(body)["message"]


async def test_a_served_path_with_another_method_is_an_envelope_405(sim: SimServer) -> None:
    async with gateway(sim_config(sim)) as gw, aiohttp.ClientSession() as session:
        async with session.get(gw.url + CHAT) as response:
            status, body = response.status, await response.json()
        assert status == 405
        assert "no route GET /v1/chat/completions" in openai_error(body)["message"]
        async with session.put(gw.url + MESSAGES) as response:
            status, body = response.status, await response.json()
        assert status == 405
        assert anthropic_error(body)["type"] == "invalid_request_error"
        async with session.delete(gw.url + "/health") as response:
            assert response.status == 405
        async with session.get(gw.url + "/health") as response:  # still served
            assert response.status == 200


async def test_key_refusals_are_the_sdks_error_classes(sim: SimServer) -> None:
    keys = fake_keys()
    async with gateway(sim_config(sim), keys=keys) as gw:
        for make, mod in ((openai_client, openai), (anthropic_client, anthropic)):
            async def ask(key: str, model: str = OPENAI_MODEL, mod: Any = mod,
                          make: Any = make) -> Any:
                async with make(gw, key) as client:
                    if mod is openai:
                        return await client.chat.completions.create(model=model,
                                                                    messages=USER)
                    return await client.messages.create(model=model, max_tokens=5,
                                                        messages=USER)

            assert await ask("sk-good")
            with pytest.raises(mod.AuthenticationError):
                await ask("sk-revoked")
            with pytest.raises(mod.AuthenticationError):
                await ask("sk-wrong")
            with pytest.raises(mod.RateLimitError) as budget:
                await ask("sk-broke")
            with pytest.raises(mod.RateLimitError) as limited:
                await ask("sk-busy")
            with pytest.raises(mod.PermissionDeniedError):
                await ask("sk-narrow", ANTHROPIC_MODEL)
            assert await ask("sk-narrow", OPENAI_MODEL)
            assert limited.value.response.headers["retry-after"] == "8"
            assert budget.value.response.headers["x-should-retry"] == "false"
            if mod is openai:
                assert budget.value.code == "insufficient_quota"
                assert budget.value.type == "insufficient_quota"
            else:
                assert budget.value.body["error"]["type"] == "rate_limit_error"
            assert "over its budget" in budget.value.message
        async with openai_client(gw, "sk-narrow") as client:
            listed = [m.id async for m in client.models.list()]
    assert listed == [OPENAI_MODEL]
    assert sim.stats().total_requests == 4  # only the admitted calls went upstream
    await gw.gateway.settled()
    assert len(keys.settled) == len(keys.admitted) == 4
    assert all(cost > 0 for _, _, cost in keys.settled)


async def test_missing_key_is_401_with_either_header(sim: SimServer) -> None:
    keys = fake_keys()
    body = {"model": OPENAI_MODEL, "max_tokens": 5, "messages": USER}
    async with gateway(sim_config(sim), keys=keys) as gw:
        status, _, oa = await post(gw, CHAT, body)
        ok_bearer, _, _ = await post(gw, MESSAGES, body, {"Authorization": "Bearer sk-good"})
        ok_x, _, _ = await post(gw, CHAT, body, {"x-api-key": "sk-good"})
    assert status == 401 and openai_error(oa)["type"] == "authentication_error"
    assert ok_bearer == ok_x == 200


async def test_429_storm_surfaces_after_the_router_gave_up(sim: SimServer) -> None:
    sim.script(["429"] * 3)  # FAST_RETRY: three attempts, then the Router gives up
    async with gateway(sim_config(sim)) as gw, openai_client(gw) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model=OPENAI_MODEL, messages=USER)
        sim.script(["429"] * 2)  # two 429s, then an answer: the caller never sees them
        answer = await client.chat.completions.create(model=OPENAI_MODEL, messages=USER)
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert sim.stats().rate_limited == 5
    assert answer.choices[0].message.content


@pytest.mark.parametrize("model", [OPENAI_MODEL, ANTHROPIC_MODEL])
async def test_stream_cut_after_first_byte_is_an_error_not_an_end(sim: SimServer,
                                                                  model: str) -> None:
    keys = fake_keys()
    async with gateway(sim_config(sim), keys=keys) as gw:
        async with openai_client(gw, "sk-good") as oa:
            sim.script(["cut"])
            stream = await oa.chat.completions.create(model=model, messages=USER, stream=True)
            got: list[str] = []
            with pytest.raises(openai.APIError) as info:  # noqa: PT012 - raised mid-stream
                async for chunk in stream:
                    got.append(chunk.choices[0].delta.content or "")
        assert "".join(got)  # the first tokens did arrive
        assert "stream" in info.value.message
        async with anthropic_client(gw, "sk-good") as an:
            sim.script(["cut"])
            with pytest.raises(anthropic.APIError):  # noqa: PT012 - raised mid-stream
                async with an.messages.stream(model=model, max_tokens=100,
                                              messages=USER) as astream:
                    async for _ in astream.text_stream:
                        pass
        sim.script(["cut"])
        async with aiohttp.ClientSession() as session, session.post(
                gw.url + CHAT, json={"model": model, "messages": USER, "stream": True},
                headers={"Authorization": "Bearer sk-good"}) as response:
            raw = await response.read()
        await gw.gateway.settled()
    assert response.status == 200
    assert raw.rstrip().endswith(b"}") and b"[DONE]" not in raw
    assert b'data: {"error":{"message":' in raw
    assert len(keys.settled) == 3 and all(cost > 0 for _, _, cost in keys.settled)


async def test_upstream_key_never_reaches_the_caller(sim: SimServer,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    sim.configure(api_keys=["sk-some-other-key"])  # upstream rejects the gateway's key
    caplog.set_level("WARNING", logger="shoal.gateway")
    async with gateway(sim_config(sim)) as gw:
        bodies = [await post(gw, route, {"model": model, "max_tokens": 5, "messages": USER})
                  for route in (CHAT, MESSAGES) for model in (OPENAI_MODEL, ANTHROPIC_MODEL)]
        async with aiohttp.ClientSession() as session, session.get(
                gw.url + "/metrics") as response:
            metrics = await response.text()
    for status, headers, body in bodies:
        assert status in (502, 503)  # refused, then the channel's breaker is open
        assert UPSTREAM_KEY not in json.dumps(body) + json.dumps(headers)
        assert UPSTREAM_KEY[-8:] not in json.dumps(body)
    assert UPSTREAM_KEY not in metrics
    assert 'shoal_gateway_errors_total{key="anonymous",kind="api_error"' in metrics
    said = bodies[0][2]["error"]["message"]
    assert "upstream refused the gateway's channel (API key)" in said
    assert "$" not in said and "API_KEY" not in said  # which variable: the operator's log
    logged = [r.getMessage() for r in caplog.records if "upstream refused" in r.getMessage()]
    assert logged and "rejected" in logged[0] and UPSTREAM_KEY not in " ".join(logged)


async def test_request_timeout_is_the_routers_deadline() -> None:
    from shoal.sim import ModelProfile

    slow = SimConfig(models={"*": ModelProfile(latency_s=1.5)})
    async with SimServer(slow) as upstream, \
            gateway(sim_config(upstream), request_timeout_s=0.3) as gw:
        status, _, body = await post(gw, CHAT, {"model": OPENAI_MODEL, "messages": USER})
        astatus, _, abody = await post(gw, MESSAGES, {"model": ANTHROPIC_MODEL,
                                                      "max_tokens": 5, "messages": USER})
    assert status == 504 and astatus == 504
    assert "deadline (0.3s) passed" in openai_error(body)["message"]
    assert anthropic_error(abody)["type"] == "timeout_error"


ODD_BODIES: list[tuple[str, bytes]] = [
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000),
    ("NaN", b'{"model": "gpt-test", "max_tokens": NaN, "messages": []}'),
    ("huge float", b'{"model": "gpt-test", "max_tokens": 1e400, "messages": []}'),
    ("lone surrogate model", b'{"model": "\\ud800", "max_tokens": 5, '
                             b'"messages": [{"role": "user", "content": "hi"}]}'),
    ("not UTF-8", b'{"model": "\xff\xfe", "messages": []}'),
]


@pytest.mark.parametrize(("case", "body"), ODD_BODIES, ids=[c[0] for c in ODD_BODIES])
async def test_odd_bodies_are_4xx_never_500(sim: SimServer, case: str, body: bytes) -> None:
    async with gateway(sim_config(sim)) as gw:
        status, _, oa = await post(gw, CHAT, body)
        astatus, _, an = await post(gw, MESSAGES, body)
    assert 400 <= status < 500 and 400 <= astatus < 500, (oa, an)
    assert openai_error(oa)["message"] and anthropic_error(an)["message"]


async def test_model_without_a_keyed_channel_is_not_served(sim: SimServer) -> None:
    from shoal.config import Config

    config = Config.from_dict({
        "channels": {"nokey": {"protocol": "openai", "base_url": sim.base_url("openai"),
                               "api_key_env": "SHOAL_TEST_UNSET_KEY", "provider": "openai"}},
        "models": {"unkeyed": {"channels": ["nokey"]}}})
    async with gateway(config) as gw, openai_client(gw) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="unkeyed", messages=USER)
        listed = [m.id async for m in client.models.list()]
    assert "none of its channels has an API key" in info.value.message
    assert "unkeyed" not in listed
    assert sim.stats().total_requests == 0


async def test_a_field_out_of_range_is_named_in_the_envelope(sim: SimServer) -> None:
    """What shoal checks before any upstream request says which field, in the protocol's
    ``param`` (the SDK's ``err.param``), without internal ``| code=…`` suffixes."""
    async with gateway(sim_config(sim)) as gw, openai_client(gw) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=OPENAI_MODEL, messages=USER,
                                                 temperature=7)
        status, _, body = await post(gw, CHAT, {"model": OPENAI_MODEL, "messages": USER,
                                                "top_p": 3})
    err = caught.value
    assert err.status_code == 400 and err.param == "temperature"
    assert "temperature must be a number from 0 to 2" in err.message
    assert "| code=" not in err.message
    assert status == 400 and openai_error(body)["param"] == "top_p"
    assert sim.stats().total_requests == 0
