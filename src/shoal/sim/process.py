"""`shoal sim` in its own OS process, driven from synchronous code.

For benchmarks (the simulator's CPU must not be the client's), chaos tests (a process
that outlives the client being killed) and users' own test suites::

    with SimProcess("--cap", "3", "--latency", "0.05") as sim:
        client = openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test")
        ...
        print(sim.stats()["max_in_flight"])

It binds 127.0.0.1 on a free port and is stopped by PID (terminate, then kill).
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
import urllib.request
from types import TracebackType
from typing import Any

__all__ = ["SimProcess"]


class SimProcess:
    """A running `python -m shoal.sim` with ``args``; ``url`` is its base address."""

    def __init__(self, *args: str, start_timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "shoal.sim", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.url = self._await_url(start_timeout)

    def _await_url(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout)
        line = self.proc.stdout.readline() if ready else ""
        if "listening on" not in line:
            self.proc.kill()
            self.proc.wait()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.stop()
            raise RuntimeError(
                f"shoal sim did not start within {timeout:g}s: {line!r} {err[-2000:]}"
            )
        return line.strip().rsplit(" ", 1)[-1]

    def control(self, path: str, body: Any = None) -> Any:
        """GET ``path`` (or POST ``body`` as JSON) on the simulator; the decoded answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - the simulator's own http:// URL
            self.url + path, data=data, method="GET" if data is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - as above
            return json.loads(resp.read() or b"null")

    def stats(self, *, log: bool = False) -> dict[str, Any]:
        """Counters (``total_requests``, ``rate_limited``, ``max_in_flight``, ...); with
        ``log=True`` also ``requests``, the per-request log."""
        return dict(self.control("/_sim/stats" + ("" if log else "?log=0")))

    def request_log(self, *, settle_s: float = 10.0) -> list[dict[str, Any]]:
        """The per-request log once nothing is in flight (up to ``settle_s`` seconds)."""
        deadline = time.monotonic() + settle_s
        while self.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.stats(log=True)["requests"])

    def tags(self) -> list[str | None]:
        """The ``tag`` of each logged request, in arrival order (as received so far: use
        :meth:`request_log` to wait for requests in flight)."""
        return [r.get("tag") for r in self.stats(log=True)["requests"]]

    def reset(self) -> None:
        self.control("/_sim/reset", {})

    def configure(self, **changes: Any) -> None:
        self.control("/_sim/config", changes)

    def script(self, faults: list[str]) -> None:
        self.control("/_sim/script", faults)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
