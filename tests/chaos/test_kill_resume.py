"""kill -9 and resume: a 30-step journaled flow (kill_child.py) against the simulator,
each in its own process. The flow's process is SIGKILLed at 10 seeded random points
(after 1-3 new requests reached the simulator, plus 0-60 ms) and resumed each time.

Proven: the final outputs equal an uninterrupted run's, and every model turn that was
journaled before a kill reached the simulator exactly once in the process that
journaled it and never again in the processes after (requests are tagged
``<step>#<turn>``). The only repeated requests are the ones in flight at a kill."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.sim import SimProcess
from shoal.stores import open_store

CHILD = Path(__file__).with_name("kill_child.py")
KILLS = 10
SEED = 20240605
TURNS = 40  # 30 steps, 10 of them with a tool round trip


class Sim(SimProcess):
    def total(self) -> int:
        return int(self.stats()["total_requests"])


@pytest.fixture
def sim() -> Iterator[Sim]:
    s = Sim("--latency", "0.05", "--jitter", "0.05", "--seed", "7")
    try:
        yield s
    finally:
        s.stop()


def child(sim: Sim, store: str, run_id: str, out: Path, *, again: bool
          ) -> subprocess.Popen[str]:
    args = [sys.executable, str(CHILD), sim.url, store, run_id, str(out)]
    return subprocess.Popen(args + (["--resume"] if again else []),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]


def journaled_turns(store: str, run_id: str) -> set[str]:
    """Turns committed to the journal, as ``<step>#<turn>`` tags."""

    async def read() -> set[str]:
        async with open_store(store) as s:
            if await s.get_run(run_id) is None:
                return set()
            steps = await s.get_steps(run_id)
        return {f"{r.meta['step']}#{r.meta['turn']}" for r in steps
                if r.meta.get("kind") == "turn" and r.status == "succeeded"}

    return asyncio.run(read())


@pytest.mark.timeout(120)  # bounded: ~15 s here
def test_sigkill_at_ten_random_points_then_resume(sim: Sim, tmp_path: Path) -> None:
    rng = random.Random(SEED)

    reference = tmp_path / "reference.json"
    finish(child(sim, f"sqlite:///{tmp_path / 'ref.db'}", "ref", reference, again=False))
    expected = json.loads(reference.read_text())
    assert expected["status"] == "succeeded" and len(expected["outputs"]) == 30
    reference_log = sim.request_log()
    assert len(reference_log) == TURNS
    sim.reset()

    store = f"sqlite:///{tmp_path / 'runs.db'}"
    out = tmp_path / "out.json"
    journaled: list[set[str]] = []  # after each kill: the turns committed to the journal
    segments: list[Counter[str]] = []  # each process's requests, by tag
    seen = 0
    history: list[tuple[int, float, int]] = []
    for i in range(KILLS):
        new_requests, delay = rng.randint(1, 5), rng.uniform(0.0, 0.1)
        baseline = sim.total()
        proc = child(sim, store, "chaos-1", out, again=i > 0)
        while sim.total() < baseline + new_requests and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(delay)
        assert proc.poll() is None, f"kill {i}: the run finished before its kill point"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        log = sim.request_log()
        segments.append(Counter(r["tag"] for r in log[seen:]))
        seen = len(log)
        now = journaled_turns(store, "chaos-1")
        assert now >= (journaled[-1] if journaled else set())  # no commit is ever lost
        journaled.append(now)
        history.append((new_requests, round(delay, 3), len(now)))
    assert not out.exists()
    assert 0 < len(journaled[-1]) < TURNS, history

    finish(child(sim, store, "chaos-1", out, again=True))
    final = json.loads(out.read_text())
    log = sim.request_log()
    segments.append(Counter(r["tag"] for r in log[seen:]))

    assert final["status"] == "succeeded"
    assert final["outputs"] == expected["outputs"]
    assert {r["tag"] for r in log} == {r["tag"] for r in reference_log}  # every turn, no other
    previous: set[str] = set()
    for i, now in enumerate(journaled):
        for tag in now - previous:  # committed by process i before its kill:
            assert segments[i][tag] == 1, (i, tag, history)  # asked once there,
            assert all(seg[tag] == 0 for seg in segments[i + 1:]), (i, tag, history)  # never again
        previous = now
    lost = sum(n for i, seg in enumerate(segments[:-1]) for t, n in seg.items()
               if t not in journaled[i])
    assert len(log) == TURNS + lost  # every other request was work in flight at a kill
    assert lost <= 3 * KILLS  # at most the flow's concurrency per kill
    assert set(final["replayed"]) <= {t.split("#")[0] for t in journaled[-1]}
    print(f"kills (new requests, delay s, turns journaled): {history}; lost: {lost}")
