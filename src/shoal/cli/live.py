"""Live progress of a single run on the terminal: a table of steps (state, turns, tokens,
cost, time) redrawn as the run goes; one plain line per step change when stdout is not
a terminal (a pipe, a log file, CI)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from shoal.flows.progress import RunProgress, StepProgress

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from shoal.config import Config
    from shoal.flows.flow import Flow
    from shoal.types import Usage

__all__ = ["cache_line", "live_progress", "print_cache_line", "run_prices", "spent_of"]


def run_prices(config: Path | str | None, *, sim: bool = False) -> Config:
    """The prices a run was made at: the catalog's under ``--sim`` (the simulator serves
    catalog models at catalog prices), else ``config``'s (the catalog's if it is unreadable:
    a footer must not fail a finished run)."""
    from shoal.config import Config
    from shoal.errors import ConfigError

    if not sim:
        with contextlib.suppress(ConfigError):
            return Config.load(config)
    return Config.from_dict({})


def spent_of(result: Any) -> list[tuple[str | None, Usage]]:
    """(model, usage) pairs of a finished run: a flow's steps, an agent's turns, or every
    item of a batch (each item's own run)."""
    if hasattr(result, "steps") and isinstance(result.steps, dict):  # FlowResult
        return [(s.model, s.usage) for s in result.steps.values()]
    if hasattr(result, "turns"):  # an agent's RunResult
        return [(t.model, t.usage) for t in result.turns]
    if hasattr(result, "items"):  # BatchResult: an item without detail counts unpriced
        return [pair for item in result.items
                for pair in (spent_of(item.detail) if item.detail is not None
                             else [(None, item.usage)])]
    return []


def print_cache_line(console: Console, config: Config,
                     spent: Iterable[tuple[str | None, Usage]]) -> None:
    """Print :func:`cache_line` under a run table (nothing when no prompt was spent)."""
    line = cache_line(config, spent)
    if line:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def cache_line(config: Config, spent: Iterable[tuple[str | None, Usage]]) -> str:
    """The footer of a run table: prompt tokens read from (and written to) the providers'
    caches, and the dollars caching saved at ``config``'s prices (:func:`shoal.pricing.
    savings_usd`); "" when no prompt tokens were spent. ``spent``: (model, usage) pairs."""
    from shoal.errors import ConfigError
    from shoal.pricing import savings_usd

    prompt = read = written = 0
    saved = 0.0
    for model, usage in spent:
        prompt += usage.input_tokens
        read += usage.cached_input_tokens
        written += usage.cache_write_tokens
        if model:  # a model no longer in the config: its tokens still count, unpriced
            with contextlib.suppress(ConfigError):
                saved += savings_usd(usage, config.model(model).price)
    if not prompt:
        return ""
    wrote = f", {written:,} written to it" if written else ""
    return (f"cache: {read:,} of {prompt:,} prompt tokens read from cache "
            f"({read / prompt:.0%}){wrote}; saved ${saved:.6f} by caching")


@contextlib.contextmanager
def live_progress(console: Console, flow: Flow | None = None, *, enabled: bool = True,
                  title: str | None = None) -> Iterator[RunProgress | None]:
    """A :class:`RunProgress` drawn on ``console`` while the block runs (None if not
    ``enabled``). The live table disappears at the end: print the run's own table then."""
    if not enabled:
        yield None
        return
    if not console.is_terminal:
        last: dict[str, str] = {}

        def printed(step: StepProgress) -> None:
            if last.get(step.name) != step.status:
                last[step.name] = step.status
                console.print(progress.line(step), markup=False, highlight=False)

        progress = RunProgress(flow, on_change=printed)
        yield progress
        return
    from rich.live import Live

    progress = RunProgress(flow)
    with Live(get_renderable=lambda: progress.table(title), console=console,
              refresh_per_second=8, transient=True):
        yield progress
