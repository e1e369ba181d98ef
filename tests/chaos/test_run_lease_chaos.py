"""The run lease against real processes: the 30-step journaled flow of kill_child.py
(lease_child.py runs it under a lease of a given length) against the simulator, each in
its own process, journaling to SQLite.

- SIGKILL: the killed executor's lease outlives it in the store, and a resume on the
  same machine takes the run over at once (the holder's pid is gone), replaying every
  turn the dead process journaled without asking the simulator again;
- SIGSTOP (a process frozen past its lease, as a stalled VM or a debugger would leave
  it), on Redis and PostgreSQL: while its lease is live a resume is refused before any
  request; once it lapsed a resume takes the run over and finishes it; woken up, the
  frozen process stops with ``LeaseLost`` (exit 3) without sending one more request,
  and the run stays finished. (Not on SQLite: a process frozen inside a write
  transaction keeps the file's write lock, so nothing can write there until it wakes.)
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shoal.errors import RunBusy
from shoal.flows.resume import plan, resume
from shoal.sim import SimProcess
from shoal.stores import open_store
from shoal.stores.leases import parse_owner
from shoal.traffic.router import Router

sys.path.insert(0, str(Path(__file__).parent))
from kill_child import TurnTagged, build_flow, config

CHILD = Path(__file__).with_name("lease_child.py")
pytestmark = pytest.mark.timeout(120)


class Sim(SimProcess):
    def total(self) -> int:
        return int(self.stats()["total_requests"])


@pytest.fixture
def sim() -> Iterator[Sim]:
    s = Sim("--latency", "0.05", "--seed", "3")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("postgres", marks=pytest.mark.postgres)])
async def shared_store(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A Redis or PostgreSQL store URL of its own, cleaned up after the test."""
    from conftest import drop_pg_schema

    name = f"lease_{uuid.uuid4().hex[:12]}"
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        yield f"{url}?prefix={name}"
        import redis.asyncio as aioredis

        client = aioredis.from_url(url)
        keys = [k async for k in client.scan_iter(match=f"{name}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    yield f"{dsn}?schema={name}&pool_max=4"
    await drop_pg_schema(dsn, name)


def start(sim: Sim, store: str, out: Path, lease_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(CHILD), sim.url, store, "lease-1", str(out),
                             str(lease_s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def until_requests(sim: Sim, proc: subprocess.Popen[str], count: int) -> None:
    deadline = time.monotonic() + 30
    while sim.total() < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)


async def resume_here(sim: Sim, store: str, lease_s: float = 30.0) -> str:
    async with Router(config(sim.url)) as router:
        result = await resume("lease-1", build_flow(), store=store, client=TurnTagged(router),
                              lease_s=lease_s)
    return result.status


async def journaled(store: str) -> set[str]:
    async with open_store(store) as s:
        return {f"{r.meta['step']}#{r.meta['turn']}" for r in await s.get_steps("lease-1")
                if r.meta.get("kind") == "turn" and r.status == "succeeded"}


def test_a_sigkilled_executors_run_is_taken_over_at_once_on_its_machine(
    sim: Sim, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    proc = start(sim, store, tmp_path / "out.json", 30.0)
    until_requests(sim, proc, 6)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    async def lease_of_the_dead() -> tuple[str, float]:
        async with open_store(store) as s:
            lease = await s.get_lease("lease-1")
            assert lease is not None and lease.live(time.time())  # it outlived its process
            return lease.owner, lease.expires_at

    owner, _ = asyncio.run(lease_of_the_dead())
    parsed = parse_owner(owner)
    assert parsed is not None and parsed[2] == proc.pid
    done_before = asyncio.run(journaled(store))
    seen = len(sim.request_log())
    assert asyncio.run(resume_here(sim, store)) == "succeeded"  # no wait for the expiry
    asked_after = Counter(f"{r['tag']}" for r in sim.request_log()[seen:])
    assert not set(asked_after) & done_before  # what the dead process journaled: no call
    assert asyncio.run(plan(store, "lease-1")).lease is None


def test_a_frozen_executor_is_refused_to_then_taken_over_and_stops_when_woken(
    sim: Sim, tmp_path: Path, shared_store: str
) -> None:
    lease_s = 2.0
    store = shared_store
    frozen = start(sim, store, tmp_path / "frozen.json", lease_s)
    try:
        until_requests(sim, frozen, 4)
        frozen.send_signal(signal.SIGSTOP)
        # Its lease is live (renewed every lease_s/3 until a moment ago): refused.
        requests = sim.total()
        with pytest.raises(RunBusy, match=f"pid {frozen.pid}"):
            asyncio.run(resume_here(sim, store, lease_s))
        time.sleep(0.3)
        assert sim.total() == requests  # nothing asked for by the refused resume

        time.sleep(lease_s + 0.5)  # the frozen process's lease lapses
        assert asyncio.run(resume_here(sim, store, lease_s)) == "succeeded"
        requests = len(sim.request_log())

        frozen.send_signal(signal.SIGCONT)
        _, err = frozen.communicate(timeout=30)
    finally:
        if frozen.poll() is None:
            frozen.send_signal(signal.SIGCONT)
            frozen.kill()
            frozen.communicate()
    assert frozen.returncode == 3, err[-3000:]
    assert "LeaseLost" in err and "was taken over" in err
    assert "stopped before starting another step or model call" in err
    assert not (tmp_path / "frozen.json").exists()
    assert len(sim.request_log()) == requests  # woken, it asked for nothing more
    final = asyncio.run(plan(store, "lease-1"))
    assert final.run.status == "succeeded" and final.redo == []  # left as the resume left it
    assert final.lease is None
    print(json.dumps({"requests": requests}))
