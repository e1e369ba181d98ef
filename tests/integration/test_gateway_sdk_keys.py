"""The official SDKs with real virtual keys (StoreKeys over a key store) through the
gateway: a key's calls answer; over budget, rate-limited and revoked keys surface as the
SDKs' own error classes; spend is recorded."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
from gateway_fixtures import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    anthropic_client,
    gateway,
    openai_client,
    sim_config,
)

from shoal.gateway.key_store import open_key_store
from shoal.gateway.keys import StoreKeys
from shoal.sim import SimConfig, SimServer

USER: list[Any] = [{"role": "user", "content": "hello"}]


async def test_sdks_with_virtual_keys() -> None:
    async with SimServer(SimConfig()) as sim, open_key_store("memory://") as store:
        team, team_secret = await store.create("team-a", budget_usd=5.0)
        _, broke_secret = await store.create("broke", budget_usd=0.000001)
        _, slow_secret = await store.create("slow", rpm=1)
        _, gone_secret = await store.create("gone")
        await store.revoke((await store.find("gone")).id)  # type: ignore[union-attr]
        keys = StoreKeys(store, cache_s=0)
        async with gateway(sim_config(sim), keys=keys) as gw:
            async with openai_client(gw, team_secret) as oa, \
                    anthropic_client(gw, team_secret) as an:
                answer = await oa.chat.completions.create(model=ANTHROPIC_MODEL,
                                                          messages=USER)
                message = await an.messages.create(model=OPENAI_MODEL, max_tokens=50,
                                                   messages=USER)
            for make, mod in ((openai_client, openai), (anthropic_client, anthropic)):
                async def ask(secret: str, make: Any = make, mod: Any = mod) -> Any:
                    async with make(gw, secret) as client:
                        if mod is openai:
                            return await client.chat.completions.create(
                                model=OPENAI_MODEL, messages=USER)
                        return await client.messages.create(model=OPENAI_MODEL,
                                                            max_tokens=50, messages=USER)

                with pytest.raises(mod.RateLimitError) as budget:
                    await ask(broke_secret)
                with pytest.raises(mod.AuthenticationError):
                    await ask(gone_secret)
                with pytest.raises(mod.AuthenticationError):
                    await ask("sk-shoal-not-a-key")
                if mod is openai:
                    assert budget.value.code == "insufficient_quota"
                    assert await ask(slow_secret)
                with pytest.raises(mod.RateLimitError) as limited:
                    await ask(slow_secret)  # rpm=1: the second call in the minute
                assert int(limited.value.response.headers["retry-after"]) >= 1
            await gw.gateway.settled()
        spent = await store.spend(team.id, "total")
    assert answer.choices[0].message.content and message.content
    assert sim.stats().total_requests == 3  # team-a twice, slow once: refusals cost nothing
    assert spent.requests == 2 and spent.usd > 0
