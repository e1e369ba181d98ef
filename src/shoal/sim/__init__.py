"""A simulated LLM provider speaking the OpenAI Chat Completions and Anthropic Messages
wire protocols over real HTTP: for shoal's tests and benchmarks, and for running
pipelines offline. See docs/simulator.md.

    from shoal.sim import SimConfig, ModelProfile, Faults, SimServer

    async with SimServer(SimConfig(max_concurrency=3)) as sim:
        client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="sk-test")
        router = Router(config_for_sim(sim.url))   # every catalog model, offline
"""

from __future__ import annotations

from shoal.sim.config import FAULT_NAMES, Faults, ModelProfile, SimConfig
from shoal.sim.process import SimProcess
from shoal.sim.router_config import config_for_sim
from shoal.sim.server import SimServer
from shoal.sim.stats import RequestRecord, SimStats

__all__ = [
    "FAULT_NAMES",
    "Faults",
    "ModelProfile",
    "RequestRecord",
    "SimConfig",
    "SimProcess",
    "SimServer",
    "SimStats",
    "config_for_sim",
]
