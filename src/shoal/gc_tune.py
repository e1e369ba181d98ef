"""The garbage collector tuned for a long-running asyncio process (the CLI, the gateway).

CPython's full collection scans every tracked object. After start-up that is mostly
what imports built (modules, classes, functions: ~55,000 objects for shoal with aiohttp),
none of which will ever be garbage, and one full collection of them took ~27-29 ms on a
2-core machine: a pause that lands on whichever call is running (one delayed the first
requests of a 200-call burst at a cap of 3 by 29 ms, ~0.9% of that run's makespan).
:func:`tune_gc` collects once, moves what is alive into the permanent generation
(``gc.freeze``: full collections then scan what was made since, ~2 ms), and collects
the youngest generation less often (:data:`GC_THRESHOLD`). Python's documentation gives
the same advice for servers that fork; the pause argument holds for any long-lived
process.

It runs once per process: once anything is frozen a later call does nothing (a second
freeze would pin what the process made in between, which may become garbage that no
collection then frees).
A library user's own program can call it after its imports.
"""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLD", "freeze_built", "tune_gc"]

# The generation thresholds (CPython's default: 700, 10, 10). With 700, calls in flight keep
# the youngest generation full: at 64 gateway connections a young collection ran every ~10
# requests, an older one (~1 ms, the requests in flight scanned again) every ~110, ~34 µs
# of CPU per request in all (docs/DECISIONS.md, gateway server stack). 7,000 still
# collects the cycles that accumulate (a few thousand objects at most), a few times a
# minute under load.
GC_THRESHOLD = (7000, 10, 10)



def tune_gc() -> bool:
    """Freeze what is alive and raise the young threshold, unless something in this
    process froze objects already (this function, or the program itself); True when
    this call did it."""
    if gc.get_freeze_count():
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    return True


def freeze_built() -> None:
    """Collect, then freeze what is alive now, whatever was frozen before: for a server
    once it is built and listening (its config, Router, app and pools live as long as
    the process, and were made after the event loop's start-up freeze). Also applies
    :data:`GC_THRESHOLD`. Call it once, at that point: what it freezes is never freed."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
