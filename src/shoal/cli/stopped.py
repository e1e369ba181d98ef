"""What ``shoal run`` and ``shoal resume`` print when a single run stops before its end:
stopped with Ctrl-C (:func:`print_interrupted`), or its store failed in the middle
(:func:`print_store_failed`). Either way the user sees the steps as they stood, from the
run's in-memory progress (the store may be the part that is gone), what the journal
holds, and the command that continues the run. A batch stopped with Ctrl-C:
:mod:`shoal.cli.batch_stop`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.cli.common import plain
from shoal.stores import shown_url, store_option

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.flows.progress import RunProgress

__all__ = ["print_interrupted", "print_store_failed"]

_SAVED = ("succeeded", "replayed")


def print_interrupted(console: Console, progress: RunProgress, *, flow: str,
                      run_id: str | None, store: str | None) -> None:
    """After Ctrl-C: the steps as they stood (a running step shows ``interrupted``) and,
    for a run journaled in ``store`` (a URL), the ``shoal resume`` command continuing it,
    as a failed run prints them."""
    from rich.markup import escape

    for step in progress.steps.values():
        if step.status == "running":
            step.status = "interrupted"
    title = " · ".join([flow, *([f"run {run_id}"] if run_id else []), "interrupted"])
    console.print(progress.table(escape(title)))
    if store is not None and run_id is not None:
        console.print(plain(f"interrupted: journaled as run {run_id} in {shown_url(store)}; "
                            f"continue with: shoal resume {run_id}{store_option(store)}"),
                      soft_wrap=True)  # one line: the command copies whole
    else:
        console.print(plain("interrupted; the run was not journaled: with --store "
                            "sqlite:///.shoal/runs.db, `shoal resume` continues a run"),
                      soft_wrap=True)


def print_store_failed(console: Console, progress: RunProgress, *, flow: str, run_id: str,
                       store: str) -> dict[str, Any]:
    """The store failed in the middle of run ``run_id`` (its error is printed after): the
    steps as they stood — ``succeeded`` / ``replayed`` were saved in the journal before
    that, ``not saved`` finished (or paid for a model turn) but the store did not take
    it, ``interrupted`` were running when the run stopped, ``not run`` never started —
    and the ``shoal resume`` command for when the store is back. Returns what ``--json``
    adds to the failure (the run id, the steps, ``not_saved``); nothing is printed, and
    ``{}`` returned, when the store failed before any step began (the error says it)."""
    from rich.markup import escape

    if all(step.status == "waiting" for step in progress.steps.values()):
        return {}
    renamed = {"running": "interrupted", "waiting": "not run"}
    for step in progress.steps.values():
        step.status = renamed.get(step.status, step.status)
    console.print(progress.table(escape(f"{flow} · run {run_id} · store failed")))

    def named(*statuses: str) -> list[str]:
        return [s.name for s in progress.steps.values() if s.status in statuses]

    parts = [f"saved in its journal before that: {', '.join(named(*_SAVED)) or 'none'}"]
    if named("not saved"):
        parts.append(f"not saved: {', '.join(named('not saved'))} (it finished, but its "
                     "result was not written: a resume runs it again)")
    if named("interrupted"):
        parts.append(f"stopped before it finished: {', '.join(named('interrupted'))} (its "
                     "journaled model turns replay, the rest runs again)")
    if named("not run"):
        parts.append(f"not run: {', '.join(named('not run'))}")
    console.print(plain("the store failed during the run: " + "; ".join(parts)),
                  soft_wrap=True)
    console.print(plain(f"once the store is back, continue with: shoal resume {run_id}"
                        f"{store_option(store)}"), soft_wrap=True)
    return {"run_id": run_id, "not_saved": named("not saved"),
            "steps": [{"step": s.name, "status": s.status, "model": s.model,
                       "turns": s.turns, "tokens": s.tokens, "cost_usd": s.cost_usd}
                      for s in progress.steps.values()],
            "tokens": progress.tokens, "cost_usd": progress.cost_usd}
