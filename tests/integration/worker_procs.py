"""Helpers for tests that drive worker subprocesses line by line."""

from __future__ import annotations

import asyncio


async def read_line(proc: asyncio.subprocess.Process, timeout: float = 60.0) -> str:
    """The worker's next stdout line; its stderr in the failure when it ended early."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        assert proc.stderr is not None
        err = await proc.stderr.read()
        raise AssertionError(f"worker ended early: {err.decode()[-2000:]}")
    return line.decode().strip()
