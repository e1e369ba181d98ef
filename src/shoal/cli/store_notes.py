"""What the library logs when a run's store fails, as ``shoal run`` / ``batch`` /
``resume`` say it: once a store has failed, each run that ends logs that its lease
could not be released (:mod:`shoal.flows.lease`) and each batch item that finishes that
its outcome was not recorded (:mod:`shoal.scale.batch_ids`), every record repeating
the store's whole error. Through Python's logging these came on stderr one per run, in
the middle of the command's output (before its table and stop message).

:func:`store_notes` holds those records back while the command runs and then prints
one line per kind in the CLI's style — ``warning: ...`` on stderr, naming the runs and
what follows for them — after the command's own output and before its ``error:`` line
(which carries the store's error). Any other record passes through untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from shoal.cli.common import plain

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["StoreNotes", "store_notes"]

# The loggers of the records held back; each such record carries ``store_note``: a
# ("lease", run_id, lapse_s) or ("outcome", batch_id, item index) tuple.
_LOGGERS = ("shoal.flows.lease", "shoal.scale")
_NAMED = 5  # runs or items named in a line; the rest counted


class StoreNotes(logging.Filter):
    """A logger filter that keeps the store-failure records (see the module) instead of
    letting them through, and tells them as :meth:`lines`."""

    def __init__(self) -> None:
        super().__init__()
        self.unreleased: list[str] = []  # runs whose lease the store did not release
        self.lapse_s = 0.0
        self.unrecorded: dict[str, list[int]] = {}  # batch -> items without an outcome

    def filter(self, record: logging.LogRecord) -> bool:
        note = getattr(record, "store_note", None)
        if not isinstance(note, tuple) or len(note) != 3:
            return True
        kind, name, value = note
        if kind == "lease" and isinstance(value, int | float):
            self.unreleased.append(str(name))
            self.lapse_s = max(self.lapse_s, float(value))
            return False
        if kind == "outcome" and isinstance(value, int):
            self.unrecorded.setdefault(str(name), []).append(value)
            return False
        return True

    def lines(self) -> list[str]:
        """One line per kind of record held back (none: nothing was)."""
        out: list[str] = []
        if self.unreleased:
            runs = sorted(set(self.unreleased))
            lapse = f"{self.lapse_s:g}s"
            if len(runs) == 1:
                out.append(f"run {runs[0]}'s lease could not be released (the store "
                           f"failed); it lapses within {lapse}, and a `shoal resume` on "
                           "this machine takes it over at once")
            else:
                out.append(f"the leases of {len(runs)} runs ({_some(runs)}) could not be "
                           f"released (the store failed); they lapse within {lapse}, and "
                           "a `shoal resume` on this machine takes them over at once")
        for batch, found in self.unrecorded.items():
            items = sorted(set(found))
            one = len(items) == 1
            which = (f"the outcome of item {items[0]} was" if one else
                     f"the outcomes of {len(items)} items ({_some(items)}) were")
            out.append(f"batch {batch}: {which} not recorded (the store failed); "
                       f"`shoal resume {batch}` runs {'it' if one else 'them'} again (what "
                       f"{'its journal holds' if one else 'their journals hold'} replays)")
        return out


def _some(names: list[str] | list[int]) -> str:
    shown = ", ".join(str(n) for n in names[:_NAMED])
    return shown + (f" and {len(names) - _NAMED} more" if len(names) > _NAMED else "")


@contextmanager
def store_notes(console: Console | None = None) -> Iterator[StoreNotes]:
    """Hold the store-failure records back while the block runs; then print their
    :meth:`~StoreNotes.lines` as ``warning:`` lines on ``console`` (default: stderr),
    whichever way the block ends."""
    from rich.console import Console

    notes = StoreNotes()
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    for logger in loggers:
        logger.addFilter(notes)
    try:
        yield notes
    finally:
        for logger in loggers:
            logger.removeFilter(notes)
        out = console or Console(stderr=True)
        for line in notes.lines():
            out.print(f"[yellow]warning:[/] {plain(line)}", highlight=False, soft_wrap=True)
