"""The must-show: a Dask scheduler and 3 workers, each in its own network namespace
(veth pairs on a bridge, made by this test and removed after it), running a 3-step flow
over 500 items against one cap-5 simulator on the host's bridge address, with Redis
(a test-owned redis-server) and PostgreSQL (through a forwarder) on that address too.

Redis is a test-owned ``redis-server`` on the bridge address when the binary exists
(else a forwarder to 127.0.0.1:6379, like PostgreSQL's).

- every item succeeds; the simulator never had more than 5 requests in flight (0 429s);
  its busy span against the cap bound (items x steps x latency / cap; the goal is
  1.15 x), read from the simulator's own request log, is printed (``makespan_ratio``)
  and asserted only against a gross-regression bound (1.5 x);
- a second batch, one worker SIGKILLed mid-run: every item still completes, every
  journaled turn was sent to the simulator, once, except the calls in flight on the
  killed worker at the kill (sent again: at-least-once, at most the cap of them);
- a third batch, the scheduler SIGKILLed mid-run: the client gets the unfinished items
  back failed ("shoal resume ..."); with a new scheduler and two workers, a resume
  completes every item, calling no model for the items that had finished.

Namespaces need root and iproute2. Without them the test skips (CI=true: it fails) —
unless namespaces merely cannot be made here, where every role runs on 127.0.0.1
instead and the printed figures say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from netns_hosts import Hosts, can_make_namespaces

from conftest import drop_pg_schema, require_service

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
sys.path.insert(0, str(INTEGRATION))

from scale_flows import sim_config, three_steps  # noqa: E402 - after the path it lives on

from shoal.flows.batch import Batch, BatchResult  # noqa: E402
from shoal.flows.flow import Flow  # noqa: E402
from shoal.scale import DaskExecutor  # noqa: E402
from shoal.scale.batch_ids import batch_items  # noqa: E402
from shoal.sim import SimProcess  # noqa: E402
from shoal.stores import open_store  # noqa: E402

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(300)]

CAP, LATENCY, STEPS = 5, 0.05, 3
ITEMS = int(os.environ.get("SHOAL_SCALE_ITEMS", "500"))
KILL_ITEMS = int(os.environ.get("SHOAL_SCALE_KILL_ITEMS", "300"))
WORKERS = ("w1", "w2", "w3")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_DSN = os.environ.get("SHOAL_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

# A TCP forwarder: LISTEN_HOST LISTEN_PORT -> TO_HOST TO_PORT (PostgreSQL listens on
# 127.0.0.1 only; the namespaces reach it through the host's bridge address).
FORWARD = r"""
import asyncio, sys

async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        w.close()

async def handle(r, w):
    try:
        ur, uw = await asyncio.open_connection(sys.argv[3], int(sys.argv[4]))
    except OSError:
        w.close()
        return
    await asyncio.gather(pipe(r, uw), pipe(ur, w))

async def main():
    server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout:g}s")


@dataclass
class Cluster:
    hosts: Hosts
    scheduler: str
    sim: SimProcess
    redis_url: str
    store_url: str
    config: str
    env: dict[str, str]
    logs: dict[str, Any]
    procs: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)

    def start(self, role: str) -> None:
        """Start the scheduler (``sched``) or a worker in its namespace."""
        addr = self.hosts.addr(role)
        if role == "sched":
            argv = ["distributed.cli.dask_scheduler", "--host", addr, "--port",
                    self.scheduler.rsplit(":", 1)[1], "--no-dashboard"]
        else:  # no nanny: a killed worker stays dead
            argv = ["distributed.cli.dask_worker", self.scheduler, "--host", addr, "--name",
                    role, "--nthreads", "4", "--no-nanny", "--no-dashboard",
                    "--death-timeout", "60"]
        self.procs[role] = self.hosts.popen(role, [sys.executable, "-m", *argv], env=self.env,
                                            stdout=self.logs[role], stderr=self.logs[role])

    def kill(self, role: str) -> None:
        proc = self.procs[role]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    reason = can_make_namespaces()
    if reason is not None and not IN_CI:
        pytest.skip(f"no network namespaces: {reason} (under CI=true the test runs with "
                    "every role on 127.0.0.1 instead)")
    require_service("Redis", "127.0.0.1", 6379, "redis-server --bind 127.0.0.1")
    hosts = Hosts(["sched", *WORKERS])  # on 127.0.0.1 where namespaces cannot be made
    with hosts:
        svc = hosts.service_addr
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(INTEGRATION), *filter(None, [os.environ.get("PYTHONPATH")])])}
        logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("sched", *WORKERS)}
        # PostgreSQL listens on 127.0.0.1 only: a forwarder on the bridge address. Redis:
        # a test-owned server there (every limiter hand-over is a Redis round trip; a
        # forwarder would add its hop to each), else a forwarder to 127.0.0.1:6379.
        redis_port, pg_port = free_port(svc), free_port(svc)
        ends = [(pg_port, 5432)]
        procs: list[subprocess.Popen[Any]] = []
        if shutil.which("redis-server"):
            procs.append(subprocess.Popen(
                ["redis-server", "--bind", svc, "--port", str(redis_port), "--save", "",
                 "--appendonly", "no", "--protected-mode", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        else:
            ends.append((redis_port, 6379))
        forwards = [subprocess.Popen(
            [sys.executable, "-c", FORWARD, svc, str(port), "127.0.0.1", str(to)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for port, to in ends]
        procs += forwards
        try:
            for forward in forwards:
                assert forward.stdout is not None
                assert forward.stdout.readline().strip() == "ready"
            wait_port(svc, redis_port)
            with SimProcess("--cap", str(CAP), "--latency", str(LATENCY), "--host", svc) as sim:
                sched_addr = f"tcp://{hosts.addr('sched')}:{free_port('127.0.0.1')}"
                schema = f"netns_{uuid.uuid4().hex[:10]}"
                redis_url = f"redis://{svc}:{redis_port}/0"
                config = tmp_path / "shoal.toml"
                config.write_text(sim_config(sim.url, redis_url, f"c{uuid.uuid4().hex[:8]}",
                                             cap=CAP, lease_s=2.0))
                cluster = Cluster(
                    hosts, sched_addr, sim, redis_url,
                    f"postgresql://postgres@{svc}:{pg_port}/test?schema={schema}",
                    str(config), env, logs)
                for role in ("sched", *WORKERS):
                    cluster.start(role)
                yield cluster
                _drop_schema(schema)
        finally:
            hosts.stop_all()
            for proc in procs:
                proc.kill()
                proc.wait(10)
            for log in logs.values():
                log.close()
    assert hosts.leftovers() == [], "teardown left namespaces or links behind"


def _drop_schema(schema: str) -> None:
    asyncio.run(drop_pg_schema(PG_DSN, schema))


async def batch_under_way(cluster: Cluster, flow: Flow, executor: DaskExecutor, prefix: str,
                          requests: int) -> tuple[str, asyncio.Future[BatchResult]]:
    """A batch of KILL_ITEMS started on a fresh simulator, once it has seen ``requests``
    calls (the moment a scenario kills something)."""
    cluster.sim.reset()
    batch_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    run = asyncio.ensure_future(Batch(flow, run_id=batch_id).run(
        [f"doc{i}" for i in range(KILL_ITEMS)], executor=executor))
    while cluster.sim.stats()["total_requests"] < requests:
        assert not run.done(), run
        await asyncio.sleep(0.05)
    return batch_id, run


async def wait_for_workers(address: str, n: int, timeout: float = 90.0) -> None:
    from distributed import Client

    async with Client(  # type: ignore[no-untyped-call]
            address, asynchronous=True, timeout=timeout) as client:
        await client.wait_for_workers(n, timeout=timeout)


def busy_span(requests: list[dict[str, Any]]) -> float:
    return float(max(r["end"] for r in requests) - min(r["start"] for r in requests))


async def test_500_items_on_3_namespaced_workers_then_one_is_killed(cluster: Cluster) -> None:
    await wait_for_workers(cluster.scheduler, len(WORKERS))
    flow = three_steps()
    executor = DaskExecutor(cluster.scheduler, store=cluster.store_url, config=cluster.config,
                            chunk_size=10, items_per_worker=20)
    figures: dict[str, Any] = {"isolated": cluster.hosts.isolated,
                               "why_not_isolated": cluster.hosts.why_not}

    # Warm-up: each worker builds its Router, connects to Redis and opens its store pool
    # once (kept for later tasks); the figures below are of a warm cluster.
    await Batch(flow, run_id=f"nw-{uuid.uuid4().hex[:8]}").run(
        [f"warm{i}" for i in range(12)], executor=DaskExecutor(
            cluster.scheduler, store=cluster.store_url, config=cluster.config, chunk_size=1))

    # 1. 500 items through the cap: never more than 5 at the simulator, kept busy.
    cluster.sim.reset()
    started = time.monotonic()
    result = await Batch(flow, run_id=f"ns-{uuid.uuid4().hex[:8]}").run(
        [f"doc{i}" for i in range(ITEMS)], executor=executor)
    wall = time.monotonic() - started
    stats = cluster.sim.stats(log=True)
    bound = ITEMS * STEPS * LATENCY / CAP
    span = busy_span(stats["requests"])
    figures.update(items=ITEMS, cap_bound_s=bound, makespan_s=round(span, 2),
                   makespan_ratio=round(span / bound, 3), client_wall_s=round(wall, 2),
                   max_in_flight=stats["max_in_flight"], requests=stats["total_requests"],
                   mean_call_s=round(sum(r["end"] - r["start"] for r in stats["requests"])
                                     / max(1, len(stats["requests"])), 4))
    print("scale-netns figures:", json.dumps(figures))
    assert [i.status for i in result.items] == ["succeeded"] * ITEMS
    assert stats["max_in_flight"] <= CAP
    assert stats["rate_limited"] == 0
    assert stats["total_requests"] == ITEMS * STEPS
    # The goal (<= 1.15 x the bound) is read from the printed figures: wall-clock
    # ratios are not asserted (a loaded machine is not a regression). This bound only
    # catches a gross one: a serialized cluster or a stalled worker.
    assert span <= 1.5 * bound, figures

    # 2. One worker SIGKILLed once a third of the calls are done: every item completes.
    batch_id, run = await batch_under_way(cluster, flow, executor, "nk",
                                          KILL_ITEMS * STEPS // 3)
    cluster.kill("w2")
    killed = await asyncio.wait_for(run, 180)
    log = cluster.sim.request_log()
    assert [i.status for i in killed.items] == ["succeeded"] * KILL_ITEMS

    tags = Counter(r["tag"] for r in log)
    journaled = set()
    async with open_store(cluster.store_url) as store:
        rows = await batch_items(store, await store.require_run(batch_id))
        for i in range(KILL_ITEMS):
            for step in await store.get_steps(f"{batch_id}-{i}"):
                if step.meta.get("kind") == "turn" and step.status == "succeeded":
                    journaled.add(f"{batch_id}-{i}/{step.step_id.split('/')[0]}")
    repeated = {t: n for t, n in tags.items() if n > 1}
    figures.update(kill_items=KILL_ITEMS, kill_requests=len(log),
                   journaled_turns=len(journaled), repeated_calls=len(repeated))
    print("scale-netns figures:", json.dumps(figures))
    assert [r.status for r in rows] == ["succeeded"] * KILL_ITEMS
    assert len(journaled) == KILL_ITEMS * STEPS
    assert set(tags) == journaled  # every journaled turn was sent, nothing else was
    # Once each, but for the calls in flight on the killed worker (at-least-once there).
    assert all(n == 2 for n in repeated.values()), repeated
    assert len(repeated) <= CAP

    # 3. The scheduler SIGKILLed mid-batch: the client's batch fails; once a scheduler
    # and workers are back, a resume runs only the items with no outcome.
    batch_id, run = await batch_under_way(cluster, flow, executor, "nd",
                                          KILL_ITEMS * STEPS // 2)
    cluster.kill("sched")
    try:  # the chunks in flight come back failed (or, per Dask version, the run raises)
        lost = await asyncio.wait_for(run, 120)
    except (Exception, asyncio.CancelledError):
        lost = None
    if lost is not None:
        assert lost.failed
        assert all(f"shoal resume {batch_id}" in (i.error or "") for i in lost.failed)
    survivors = await asyncio.to_thread(_wait_exit, [cluster.procs[w] for w in WORKERS], 30.0)
    for w in WORKERS:  # a worker that outlived its scheduler stops here
        cluster.kill(w)
    before = Counter(r["tag"] for r in cluster.sim.request_log())
    async with open_store(cluster.store_url) as store:
        rows = await batch_items(store, await store.require_run(batch_id))
    done_before = {r.run_id for r in rows if r.status == "succeeded"}
    for role in ("sched", "w1", "w3"):
        cluster.start(role)
    await wait_for_workers(cluster.scheduler, 2)
    resumed = await executor.resume(batch_id, flow)
    after = Counter(r["tag"] for r in cluster.sim.request_log()) - before
    total = before + after
    figures.update(sched_kill_items=KILL_ITEMS, done_before_resume=len(done_before),
                   workers_outliving_scheduler=survivors, resume_requests=sum(after.values()),
                   sched_kill_repeated_calls=sum(1 for n in total.values() if n > 1))
    print("scale-netns figures:", json.dumps(figures))
    assert [i.status for i in resumed.items] == ["succeeded"] * KILL_ITEMS
    assert 0 < len(done_before) < KILL_ITEMS
    assert not {t.split("/")[0] for t in after} & done_before  # finished items: no call
    assert len(total) == KILL_ITEMS * STEPS
    assert figures["sched_kill_repeated_calls"] <= CAP


def _wait_exit(procs: list[subprocess.Popen[Any]], timeout: float) -> int:
    """How many of ``procs`` are still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
    return sum(p.poll() is None for p in procs)
