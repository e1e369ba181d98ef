"""Providers' own error codes and retry advice, through the Router against the simulator's
provider styles over HTTP (the ``code:<code>`` and ``<status>:no_retry`` faults).

* Zhipu business codes with their HTTP status (docs.z.ai/api-reference/api-code): content
  safety 1301 and unknown model 1211 are the request's fault (never retried); the day's
  limit 1304 and the plan caps 1308/1310 are quota (no retry on that channel), the caps
  with the reset time their message names as ``retry_after`` (Beijing time).
* MiniMax ``base_resp`` codes inside an HTTP 200, whole or to a stream request
  (platform.minimax.io errorcode): each the error it names.
* OpenAI's 429 ``slow_down`` is a rate limit (retried); ``x-should-retry: false``, the
  header both SDKs obey, stops shoal retrying what it would retry (``RetryDeclined``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import (
    AuthError,
    BadRequest,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    RetryDeclined,
)
from shoal.sim import SimConfig, SimServer
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message, StreamEnd

# Retry-After capped near zero: the simulator's 1 s waits would only slow the tests down.
FAST = RetryPolicy(attempts=3, backoff=Backoff(base=0.01, cap=0.02), deadline_s=20,
                   max_retry_after_s=0.01)
ASK = ChatRequest("m", [Message.user("what limits bind a shared provider?")])


@pytest.fixture
async def clock() -> VirtualClock:
    return VirtualClock()  # one wall clock for the simulator and the Router


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(seed=2), clock=clock) as s:
        yield s


def router(sim: SimServer, style: str, clock: VirtualClock | None = None) -> Router:
    protocol = "anthropic" if style == "anthropic" else "openai"
    return Router(Config.from_dict({
        "channels": {"ch": {"protocol": protocol, "api_key": "sk-test", "provider": style,
                            "base_url": sim.base_url(style, protocol=protocol)}},
        "models": {"m": {"channels": ["ch"]}},
    }), retry=FAST, clock=clock)


async def outcome(r: Router, *, stream: bool) -> str:
    """"ok" once an answer came, whole or streamed; the error propagates."""
    if stream:
        events = [e async for e in r.stream(ASK)]
        assert isinstance(events[-1], StreamEnd)
    else:
        await r.complete(ASK)
    return "ok"


# -- Zhipu -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "cls"),
    [
        ("1301", 400, BadRequest),  # content safety: the same prompt is refused again
        ("1211", 400, BadRequest),  # unknown model: fix the channel's wire name
        ("1304", 429, QuotaExhausted),  # the day's call limit
        ("1113", 429, QuotaExhausted),  # arrears
    ],
)
async def test_zhipu_codes_are_the_errors_they_name(
        sim: SimServer, clock: VirtualClock, code: str, status: int,
        cls: type[ProviderError]) -> None:
    sim.script([f"code:{code}", "ok"])
    async with router(sim, "zhipu", clock) as r:
        with pytest.raises(cls) as caught:
            await r.complete(ASK)
    err = caught.value
    assert type(err) is cls and (err.status, err.code) == (status, code)
    assert sim.stats().total_requests == 1  # none is retried on the channel


@pytest.mark.parametrize(("code", "reset_s"), [("1308", 3600.0), ("1310", 3 * 86400.0)])
async def test_zhipu_plan_caps_wait_for_the_reset_they_name(
        sim: SimServer, clock: VirtualClock, code: str, reset_s: float) -> None:
    sim.script([f"code:{code}"])
    async with router(sim, "zhipu", clock) as r:
        with pytest.raises(QuotaExhausted) as caught:
            await r.complete(ASK)
    assert "will reset at" in str(caught.value)
    # The breaker keeps the channel shut until then (at most its auth cool-down).
    assert caught.value.retry_after == reset_s


# -- MiniMax: base_resp inside an HTTP 200 ---------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("1004", AuthError), ("2049", AuthError),
        ("1008", QuotaExhausted), ("2056", QuotaExhausted),  # balance; the plan's usage
        ("2013", BadRequest), ("1026", BadRequest), ("1027", BadRequest),  # params, safety
    ],
)
async def test_minimax_final_codes_are_not_retried(
        sim: SimServer, code: str, cls: type[ProviderError], stream: bool) -> None:
    sim.script([f"code:{code}", "ok"])
    async with router(sim, "minimax") as r:
        with pytest.raises(cls) as caught:
            await outcome(r, stream=stream)
    assert type(caught.value) is cls
    assert (caught.value.status, caught.value.code) == (200, code)
    assert sim.stats().total_requests == 1


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("1002", RateLimited), ("1039", RateLimited), ("1041", RateLimited),  # rate, TPM, conns
        ("1000", ProviderUnavailable), ("1013", ProviderUnavailable),  # unknown, internal
        ("1024", ProviderUnavailable), ("1033", ProviderUnavailable),
        ("1001", ProviderTimeout),
    ],
)
async def test_minimax_passing_codes_are_retried(
        sim: SimServer, code: str, cls: type[ProviderError], stream: bool) -> None:
    sim.script([f"code:{code}", f"code:{code}", f"code:{code}"])
    async with router(sim, "minimax") as r:
        with pytest.raises(cls) as caught:
            await outcome(r, stream=stream)
        assert type(caught.value) is cls and caught.value.code == code
        sim.script([f"code:{code}", "ok"])
        assert await outcome(r, stream=stream) == "ok"
    assert sim.stats().total_requests == 3 + 2


# -- OpenAI: slow_down and x-should-retry ----------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_slow_down_is_a_rate_limit(sim: SimServer, stream: bool) -> None:
    sim.script(["code:slow_down", "ok"])
    async with router(sim, "openai") as r:
        assert await outcome(r, stream=stream) == "ok"
    assert [q.status for q in sim.stats().requests] == [429, 200]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("status", "cause"), [("503", ProviderUnavailable),
                                                ("429", RateLimited),
                                                ("408", ProviderTimeout)])
async def test_x_should_retry_false_is_not_retried(
        sim: SimServer, status: str, cause: type[ProviderError], stream: bool) -> None:
    sim.script([f"{status}:no_retry"])
    async with router(sim, "openai") as r:
        with pytest.raises(RetryDeclined) as caught:
            await outcome(r, stream=stream)
        err = caught.value
        assert err.status == int(status) and not err.retryable
        assert type(err.original) is cause and "x-should-retry: false" in str(err)
        sim.script([status, "ok"])  # the same error without the header: retried
        assert await outcome(r, stream=stream) == "ok"
    assert [q.status for q in sim.stats().requests] == [int(status), int(status), 200]


async def test_x_should_retry_false_keeps_a_final_error_as_it_is(sim: SimServer) -> None:
    sim.script(["401:no_retry", "400:no_retry"])  # what shoal never retries stays itself
    async with router(sim, "openai") as r:
        with pytest.raises(AuthError):
            await r.complete(ASK)
    async with router(sim, "openai") as r:
        with pytest.raises(BadRequest) as caught:
            await r.complete(ASK)
    assert type(caught.value) is BadRequest


async def test_anthropic_429_says_retry_and_is_retried(sim: SimServer) -> None:
    sim.script(["429", "ok"])  # Anthropic's 429 carries x-should-retry: true
    async with router(sim, "anthropic") as r:
        answer = await r.complete(ASK)
    assert answer.text
    assert [q.status for q in sim.stats().requests] == [429, 200]


async def test_a_code_the_style_lacks_is_a_clear_400(sim: SimServer) -> None:
    sim.script(["code:1301"])  # Zhipu's, sent to the DeepSeek style
    async with router(sim, "deepseek") as r:
        with pytest.raises(BadRequest, match=r"no business error code '1301'.*it has: none"):
            await r.complete(ASK)


async def test_the_gateway_passes_no_retry_on_to_the_callers_sdk() -> None:
    """An upstream 503 with ``x-should-retry: false``: shoal does not retry it, and the
    gateway's answer says the same to the caller's SDK, which then does not retry either
    (max_retries=2 here): one upstream request in all."""
    import openai
    from gateway_fixtures import OPENAI_MODEL, gateway, sim_config
    from sim_fixtures import running

    async with running() as sim, gateway(sim_config(sim)) as gw:
        sim.script(["503:no_retry"])
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-anything",
                                    max_retries=2, timeout=30)
        async with client:
            with pytest.raises(openai.APIStatusError) as caught:
                await client.chat.completions.create(
                    model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}])
        upstream = len(sim.stats().requests)
    assert caught.value.response.headers.get("x-should-retry") == "false"
    assert caught.value.status_code == 502
    assert upstream == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_x_should_retry_false_fails_over_to_another_channel(
        sim: SimServer, stream: bool) -> None:
    """Not sent again to the channel that declined, but the model's other channel may
    answer: the declining lane is out for this call, as after an auth or quota error."""
    sim.script(["503:no_retry", "ok"])
    config = Config.from_dict({
        "channels": {name: {"protocol": "openai", "api_key": "sk-test", "provider": "openai",
                            "base_url": sim.base_url("openai")} for name in ("a", "b")},
        "models": {"m": {"channels": ["a", "b"]}},
    })
    async with Router(config, retry=FAST) as r:
        assert await outcome(r, stream=stream) == "ok"
    assert [q.status for q in sim.stats().requests] == [503, 200]
