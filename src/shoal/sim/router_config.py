"""A shoal configuration that points every catalog model at a running simulator.

    from shoal import Router
    from shoal.sim import SimConfig, SimServer, config_for_sim

    async with SimServer(SimConfig()) as sim, Router(config_for_sim(sim.url)) as router:
        ...  # any model name of the catalog answers from the simulator, at catalog prices
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.config import Config

__all__ = ["config_for_sim"]


def config_for_sim(base_url: str, *, max_concurrency: int | None = 64) -> Config:
    """A :class:`~shoal.config.Config` serving every catalog model from one simulator
    (``base_url`` is the server's root, e.g. ``sim.url``) through one OpenAI-protocol
    channel named ``sim``, at catalog prices: run any agent or flow offline, no keys.
    ``max_concurrency`` caps that channel (None: no cap)."""
    from shoal.config import Config

    catalog = Config.from_dict({})
    channel: dict[str, object] = {"protocol": "openai", "base_url": base_url.rstrip("/") + "/v1",
                                  "api_key": "sk-sim", "provider": "openai"}
    if max_concurrency is not None:
        channel["max_concurrency"] = max_concurrency
    return Config.from_dict({
        "channels": {"sim": channel},
        "models": {name: {"channels": ["sim"], "fallbacks": []} for name in catalog.models},
    })
