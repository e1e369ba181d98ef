"""The quick-start pipeline (``shoal demo "TOPIC"``): Researcher → Analyzer → Writer.

Plain-text outputs throughout, so it runs on any model — including the weak offline
model (``smollm2-135m``), whose answers are short and often off the point: the demo
shows the machinery (steps, limits, tokens, cost), not the prose. A step that fails
does not sink the run: the researcher and analyzer continue without output, and the
writer falls back to a note saying what went wrong (the run then counts as failed: it
made no report).

``examples/content_pipeline.py`` reuses this definition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.agents.agent import Agent
from shoal.flows.flow import Flow

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.agents.client import ModelClient
    from shoal.agents.recorder import RunRecorder
    from shoal.flows.flow import FlowResult

__all__ = [
    "PIPELINE_STEPS",
    "content_pipeline",
    "render_pipeline_result",
    "run_content_pipeline",
]

PIPELINE_STEPS = ("researcher", "analyzer", "writer")

_INSTRUCTIONS = {
    "researcher": "You are a researcher. List the five most important facts about the "
    "topic, one short line each.",
    "analyzer": "You are an analyst. From the research notes, name the main trends, "
    "risks and open questions in a few short lines.",
    "writer": "You are a writer. Using the analysis, write a short, clear report of "
    "about one paragraph.",
}


def content_pipeline(
    models: dict[str, str] | None = None,
    *,
    max_tokens: int = 300,
    budget_usd: float | None = 0.50,
) -> Flow:
    """The pipeline as a :class:`Flow`. ``models`` maps step name → model; a step not in
    it uses the configuration's default model (the offline model when no key is set)."""
    models = models or {}
    unknown = set(models) - set(PIPELINE_STEPS)
    if unknown:
        from shoal.errors import ConfigError

        raise ConfigError(f"unknown pipeline steps {sorted(unknown)}; "
                          f"the steps are {', '.join(PIPELINE_STEPS)}")
    # No temperature: each model keeps its own (OpenAI reasoning models and Claude 5
    # refuse one); the offline model's default is 0.3 (shoal.providers.profiles).
    agents = {
        name: Agent(name, model=models.get(name), instructions=_INSTRUCTIONS[name],
                    max_tokens=max_tokens, max_turns=2)
        for name in PIPELINE_STEPS
    }
    flow = Flow("content-pipeline", budget_usd=budget_usd)
    flow.add(agents["researcher"], on_failure="continue", retries=1)
    flow.add(agents["analyzer"], after="researcher", on_failure="continue", retries=1)
    flow.add(agents["writer"], after="analyzer", on_failure="fallback", retries=1,
             default=lambda exc: f"(no report: the writer failed with {type(exc).__name__}: "
                                 f"{exc})")
    return flow


async def run_content_pipeline(
    topic: str,
    *,
    router: ModelClient,
    models: dict[str, str] | None = None,
    run_id: str | None = None,
    recorder: RunRecorder | None = None,
) -> FlowResult:
    """Run the pipeline on ``topic`` through ``router``; the result's ``output`` is the
    writer's text and ``table()`` the per-step summary. ``recorder``: a journal, or a
    :meth:`RunProgress.watch <shoal.flows.progress.RunProgress.watch>` to follow it live.

    The report is the job: when the writer failed (its output is then the note saying
    why), the result's ``status`` is ``"failed"``, whatever the steps before it did."""
    result = await content_pipeline(models).run(topic, client=router, run_id=run_id,
                                                recorder=recorder)
    if result.steps["writer"].status not in ("succeeded", "replayed"):
        result.status = "failed"  # no report: `shoal demo` exits 1
    return result


def render_pipeline_result(result: FlowResult, console: Console | None = None, *,
                           journaled: bool = True) -> None:
    """Print the final text, then the table of steps (step, model, status, latency,
    tokens in/out, cost). ``journaled=False``: the run was kept nowhere, so the table
    names no run id to look up (it says where runs are kept instead)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel

    out = console or Console()
    text = result.output if isinstance(result.output, str) else str(result.output)
    out.print(Panel(escape(text.strip() or "(empty answer)"), title="report", expand=False))
    if journaled:
        out.print(result.table())
    else:
        out.print(result.table(title=escape(
            f"{result.flow} · {result.status} · not journaled (`shoal run` keeps runs)")))


def __getattr__(name: str) -> Any:
    if name == "config_for_sim":  # moved: its public home is shoal.sim.config_for_sim
        from shoal.sim.router_config import config_for_sim

        return config_for_sim
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
