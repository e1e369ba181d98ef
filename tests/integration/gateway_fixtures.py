"""Helpers for the gateway's tests: a simulator upstream, the gateway over it, SDK clients.

The gateway runs in-process on a free port (a real aiohttp server, handler cancellation
on, as ``shoal gateway`` runs it); its upstream is shoal's simulator over real HTTP:
``gpt-test`` is served by an OpenAI-protocol channel, ``claude-test`` by an
Anthropic-protocol one, so each SDK can call a model of the other protocol.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import anthropic
import openai
from aiohttp import web

from shoal.config import Config
from shoal.gateway.keys_api import (
    KeyBudgetExceeded,
    KeyGrant,
    KeyLimited,
    KeyModelDenied,
    KeyRejected,
    VirtualKey,
)
from shoal.gateway.server import GatewayServer
from shoal.gateway.settings import GatewaySettings
from shoal.sim import SimConfig, SimServer
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router
from shoal.types import Usage

OPENAI_MODEL = "gpt-test"  # served over the OpenAI protocol
ANTHROPIC_MODEL = "claude-test"  # served over the Anthropic protocol
UPSTREAM_KEY = "sk-upstream-4f9a1c7e2b8d6e0a3c5f7b9d1e2a4c6f"
FAST_RETRY = RetryPolicy(attempts=3, backoff=Backoff(base=0.01, cap=0.02),
                         max_retry_after_s=0.02, deadline_s=20)


class Upstream(Protocol):
    """Where channels point: the simulator, or a :class:`Recorder` in front of it."""

    def base_url(self, style: str | None = None, *, protocol: str = "openai") -> str: ...


@dataclass
class Recorder:
    """Real HTTP between the gateway and the simulator that keeps the JSON body of every
    request passing through: what the gateway sent upstream. Answers are the
    simulator's, relayed byte for byte (streams as they come)."""

    sim: SimServer
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def base_url(self, style: str | None = None, *, protocol: str = "openai") -> str:
        return self.url + self.sim.base_url(style, protocol=protocol)[len(self.sim.url):]


_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection",
                  "accept-encoding"})


@asynccontextmanager
async def recording(sim: SimServer) -> AsyncIterator[Recorder]:
    """A :class:`Recorder` in front of ``sim`` on a free port."""
    rec = Recorder(sim)
    session = aiohttp.ClientSession()

    async def relay(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        rec.bodies.append(json.loads(raw))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with session.post(sim.url + request.path_qs, data=raw, headers=headers) as up:
            out = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items()
                if k.lower() not in _HOP and k.lower() != "content-encoding"})
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    app = web.Application()
    app.router.add_post("/{tail:.*}", relay)
    try:
        async with serving(app) as rec.url:
            yield rec
    finally:
        await session.close()


# A weather tool in both protocols' shapes (the translation audit's tests).
WEATHER_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}},
                                  "required": ["city"]}
WEATHER_TOOLS_OA: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER_SCHEMA}}]
WEATHER_TOOLS_AN: list[Any] = [{"name": "get_weather", "description": "Weather for a city",
                                "input_schema": WEATHER_SCHEMA}]


@asynccontextmanager
async def recorded_gateway(sim_cfg: SimConfig | None = None
                           ) -> AsyncIterator[tuple[SimServer, Recorder, GatewayServer]]:
    """A simulator, a :class:`Recorder` in front of it and the gateway over that."""
    async with SimServer(sim_cfg or SimConfig()) as sim, recording(sim) as rec, \
            gateway(sim_config(rec)) as gw:
        yield sim, rec, gw


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on a free port of 127.0.0.1: its ``http://127.0.0.1:PORT``."""
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def sim_config(sim: Upstream, *, channel: dict[str, Any] | None = None,
               upstream_key: str = UPSTREAM_KEY,
               models: dict[str, dict[str, Any]] | None = None) -> Config:
    """``channel``: settings added to both channels; ``models``: settings added to (or
    replacing those of) each named model."""
    extra = channel or {}
    more = models or {}
    config: dict[str, Any] = {
        "channels": {
            "oa": {"protocol": "openai", "base_url": sim.base_url("openai"),
                   "api_key": upstream_key, "provider": "openai", **extra},
            "an": {"protocol": "anthropic",
                   "base_url": sim.base_url("anthropic", protocol="anthropic"),
                   "api_key": upstream_key, "provider": "anthropic", **extra},
        },
        "models": {
            OPENAI_MODEL: {"channels": ["oa"], "wire_name": "gpt-4o-mini", "input": 1.0,
                           "output": 2.0, "fallbacks": []},
            ANTHROPIC_MODEL: {"channels": ["an"], "wire_name": "claude-sonnet-4-20250514",
                              "input": 3.0, "output": 15.0, "fallbacks": []},
        },
    }
    for name, settings in more.items():
        config["models"][name] = {**config["models"][name], **settings}
    return Config.from_dict(config)


@asynccontextmanager
async def gateway(config: Config, *, keys: Any = None, retry: RetryPolicy = FAST_RETRY,
                  **settings: Any) -> AsyncIterator[GatewayServer]:
    router = Router(config, retry=retry)
    server = GatewayServer(router, keys, GatewaySettings(**{"port": 0, **settings}))
    async with server:
        yield server


@asynccontextmanager
async def openai_client(server: GatewayServer, key: str = "sk-anything"
                        ) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0,
                                timeout=30)
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def anthropic_client(server: GatewayServer, key: str = "sk-anything"
                           ) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=server.url, api_key=key, max_retries=0,
                                      timeout=30)
    try:
        yield client
    finally:
        await client.close()


@dataclass
class FakeKeys:
    """A KeyService at the seam: secrets map to keys or to the error to raise."""

    keys: dict[str, VirtualKey] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    over_budget: set[str] = field(default_factory=set)
    limited: set[str] = field(default_factory=set)
    settled: list[tuple[str, Usage, float]] = field(default_factory=list)
    admitted: list[tuple[str, int, float]] = field(default_factory=list)

    @property
    def required(self) -> bool:
        return True

    async def authenticate(self, presented: str | None) -> VirtualKey:
        if presented is None:
            raise KeyRejected("no API key: send Authorization: Bearer <key>", reason="missing")
        if presented in self.revoked:
            raise KeyRejected("this key was revoked", reason="revoked")
        key = self.keys.get(presented)
        if key is None:
            raise KeyRejected("unknown API key", reason="invalid")
        return key

    def check_model(self, key: VirtualKey, model: str) -> None:
        if key.models and model not in key.models:
            raise KeyModelDenied(f"key {key.name!r} may not use {model!r}")

    async def admit(self, key: VirtualKey, *, model: str, tokens: int,
                    max_cost_usd: float) -> KeyGrant:
        if key.id in self.over_budget:
            raise KeyBudgetExceeded(f"key {key.name!r} is over its budget of $1.00")
        if key.id in self.limited:
            raise KeyLimited(f"key {key.name!r} is at its rpm limit", retry_after_s=7.5)
        self.admitted.append((key.id, tokens, max_cost_usd))
        return KeyGrant(key, model, max_cost_usd, tokens)

    async def settle(self, grant: KeyGrant, *, usage: Usage, cost_usd: float) -> None:
        if not grant.settled:
            grant.settled = True
            self.settled.append((grant.key.id, usage, cost_usd))

    async def aclose(self) -> None:
        return None


def fake_keys() -> FakeKeys:
    names = ("good", "broke", "busy", "narrow")
    keys = FakeKeys({f"sk-{n}": VirtualKey(id=f"k-{n}", name=n) for n in names})
    keys.keys["sk-narrow"] = VirtualKey(id="k-narrow", name="narrow", models=(OPENAI_MODEL,))
    keys.revoked.add("sk-revoked")
    keys.over_budget.add("k-broke")
    keys.limited.add("k-busy")
    return keys
