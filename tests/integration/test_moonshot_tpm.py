"""Moonshot counts prompt + ``max_tokens`` against its TPM limit, not the tokens the
answer used (PROVIDERS.md, Moonshot/Kimi). shoal's limiter, set to the same TPM, must
then keep a finished call's reservation at that count: settling it down to the tokens
used let the next calls in, and the provider answered them 429."""

from __future__ import annotations

import asyncio

from shoal.config import Config
from shoal.errors import DeadlineExceeded
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.traffic.retry import RetryPolicy
from shoal.traffic.router import Router
from shoal.types import ChatRequest, Message

MODEL = "kimi-k2-0905-preview"


async def test_a_moonshot_channel_keeps_prompt_plus_max_tokens_in_its_window() -> None:
    async with SimServer(SimConfig(tpm=1000, models={"*": ModelProfile(output_tokens=8)})
                         ) as sim:
        cfg = Config.from_dict({
            "channels": {"kimi": {"protocol": "openai", "api_key": "sk-test",
                                  "provider": "moonshot", "tpm": 1000,
                                  "base_url": sim.base_url("moonshot")}},
            "models": {MODEL: {"channels": ["kimi"]}}})
        async with Router(cfg, retry=RetryPolicy(attempts=1)) as router:
            def ask(i: int) -> ChatRequest:
                return ChatRequest(model=MODEL, messages=[Message.user(f"q{i}")],
                                   max_tokens=300)

            first = [await router.complete(ask(i)) for i in range(3)]  # ~930 of 1000
            assert all(r.usage.output_tokens == 8 for r in first)  # used far less
            # A fourth fits only once the window moves on: it waits (here, past its
            # deadline) instead of drawing the provider's 429.
            try:
                await asyncio.wait_for(router.complete(ask(3), deadline_s=0.5), 5)
                raised: BaseException | None = None
            except DeadlineExceeded as exc:
                raised = exc
        stats = sim.stats()
    assert isinstance(raised, DeadlineExceeded) and "capacity" in str(raised)
    assert stats.rate_limited == 0
    assert [r.status for r in stats.requests] == [200, 200, 200]
