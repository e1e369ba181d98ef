"""Run a coroutine on uvloop when it is installed (shoal's CLI and simulator do)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # Windows, or installed without it
        return asyncio.run(main)
    return uvloop.run(main)
