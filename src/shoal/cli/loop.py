"""Run a coroutine on uvloop when it is installed (shoal's CLI and simulator do), with the
collector tuned for a long-running process."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from shoal.gc_tune import tune_gc

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``main`` to completion on a new loop (uvloop when installed), the collector tuned
    for a long-running process first (:func:`shoal.gc_tune.tune_gc`, once per process)."""
    tune_gc()
    try:
        import uvloop
    except ImportError:  # Windows, or installed without it
        return asyncio.run(main)
    return uvloop.run(main)
