"""Live progress of a single run on the terminal: a table of steps (state, turns, tokens,
cost, time) redrawn as the run goes; one plain line per step change when stdout is not
a terminal (a pipe, a log file, CI)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from shoal.flows.progress import RunProgress, StepProgress

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.flows.flow import Flow

__all__ = ["live_progress"]


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
