"""Run `shoal sim` in its own OS process for benchmarks (so its CPU is not the client's).

Only 127.0.0.1, free ports, stopped by PID on exit.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class SimProc:
    proc: subprocess.Popen[str]
    url: str

    def _call(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="GET" if data is None
                                     else "POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def stats(self) -> dict[str, Any]:
        return dict(self._call("/_sim/stats?log=0"))

    def reset(self) -> None:
        self._call("/_sim/reset", {})

    def configure(self, **changes: Any) -> None:
        self._call("/_sim/config", changes)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_sim(*args: str) -> SimProc:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.sim", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"shoal sim did not start: {line!r} {err[-2000:]}")
    return SimProc(proc, line.strip().rsplit(" ", 1)[-1])


@contextlib.contextmanager
def sims(*specs: tuple[str, ...]) -> Iterator[list[SimProc]]:
    started: list[SimProc] = []
    try:
        for spec in specs:
            started.append(start_sim(*spec))
        yield started
    finally:
        for s in started:
            s.stop()
