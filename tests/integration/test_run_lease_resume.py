"""One executor per run: resumes through the real Router against the simulator, on
SQLite, Redis and PostgreSQL. The simulator's request log (tagged with each step) proves
which calls were made, and how many times.

- a second resumer while the first runs is refused (``RunBusy``) before any request,
  whether it comes while the first is in flight or races it from the start;
- a killed executor's lease (taken and never renewed) is refused until it expires, and
  taken over at its expiry (virtual time);
- an executor whose lease another one took over stops before its next step
  (``LeaseLost``): noticed by its renewal, or refused by the store when it writes;
- the lease is released when the run succeeds, fails or is cancelled;
- a batch run twice at once executes every item once, and both finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from shoal.agents import Agent, StepFailed
from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import LeaseLost, RunBusy
from shoal.flows.batch import Batch
from shoal.flows.flow import Flow
from shoal.flows.journal import StoreRecorder
from shoal.flows.resume import plan, resume, run_durable
from shoal.sim import ModelProfile, SimConfig, SimServer
from shoal.stores import Store, open_store
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router

QUICK_RETRY = RetryPolicy(attempts=2, backoff=Backoff(base=0.01, jitter=False))
FOREIGN = "deadbeef@elsewhere:4242:cafef00d"  # an executor on another machine


def sim_config(sim: SimServer) -> Config:
    return Config.from_dict({
        "channels": {"sim": {"protocol": "openai", "base_url": sim.url + "/v1",
                             "api_key": "sk-test", "provider": "openai",
                             "max_concurrency": 8}},
        "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}},
    })


def pipeline() -> Flow:
    flow = Flow("report")
    flow.add(Agent("researcher", model="m", instructions="Collect the key facts."))
    flow.add(Agent("analyzer", model="m", instructions="Analyse the findings."),
             after="researcher")
    flow.add(Agent("writer", model="m", instructions="Write a crisp report."), after="analyzer")
    return flow


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(models={"*": ModelProfile(latency_s=0.2)})) as server:
        yield server


async def failed_run(sim: SimServer, store: Store | str, run_id: str = "rep-001") -> None:
    """researcher journaled; analyzer failed past its retries (503 twice); writer not run."""
    sim.script(["ok", "503", "503"])
    async with Router(sim_config(sim), retry=QUICK_RETRY) as router:
        with pytest.raises(StepFailed):
            await run_durable(pipeline(), "open-weight LLM economics", store=store,
                              run_id=run_id, client=router)
    assert sim.tags() == ["researcher", "analyzer", "analyzer"]
    sim.reset_stats()


async def test_a_second_resumer_is_refused_before_any_request(
    sim: SimServer, journal_url: str
) -> None:
    await failed_run(sim, journal_url)
    async with Router(sim_config(sim)) as router:
        first = asyncio.create_task(resume("rep-001", pipeline(), store=journal_url,
                                           client=router))
        while sim.stats().in_flight == 0:  # the first resumer is paying for the analyzer
            assert not first.done()
            await asyncio.sleep(0.005)
        with pytest.raises(RunBusy) as busy:
            await resume("rep-001", pipeline(), store=journal_url, client=router)
        assert sim.stats().total_requests == 1  # the first one's call; none of the second
        result = await first
    assert sim.tags() == ["analyzer", "writer"]  # the unfinished steps, once each
    assert result.status == "succeeded"
    message = str(busy.value)
    assert "run 'rep-001'" in message and "is being executed by another process" in message
    assert "holds its lease until" in message and "UTC" in message
    assert "Nothing was run here and no model was called" in message
    assert "`shoal resume rep-001 --force`" in message
    assert busy.value.run_id == "rep-001" and busy.value.owner
    async with open_store(journal_url) as store:
        assert await store.get_lease("rep-001") is None  # released at the end
    assert (await plan(journal_url, "rep-001")).run.status == "succeeded"


async def test_racing_resumers_one_runs_the_other_is_refused(
    sim: SimServer, journal_url: str
) -> None:
    await failed_run(sim, journal_url)
    async with Router(sim_config(sim)) as router:
        outcomes = await asyncio.gather(
            *(resume("rep-001", pipeline(), store=journal_url, client=router)
              for _ in range(3)), return_exceptions=True)
    busy = [o for o in outcomes if isinstance(o, RunBusy)]
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    assert (len(done), len(busy)) == (1, 2), outcomes
    assert done[0].status == "succeeded"
    assert sim.tags() == ["analyzer", "writer"]


async def test_a_killed_executors_lease_is_taken_over_at_its_expiry_and_not_before(
    sim: SimServer, journal_url: str
) -> None:
    clock = VirtualClock(wall_start=1_750_000_000.0)
    async with open_store(journal_url, clock=clock) as store:
        await failed_run(sim, store)
        # An executor on another machine took the run and was killed: never renewed.
        await store.take_lease("rep-001", FOREIGN, 30.0)
        async with Router(sim_config(sim)) as router:
            for wait in (0.0, 29.999):
                await clock.advance(wait)
                with pytest.raises(RunBusy) as busy:
                    await resume("rep-001", pipeline(), store=store, client=router)
                assert busy.value.owner == FOREIGN
                assert busy.value.expires_at == 1_750_000_030.0
                assert "deadbeef@elsewhere (pid 4242) holds its lease until 2025-06-15 " \
                       "15:07:10 UTC" in str(busy.value)
            assert sim.stats().total_requests == 0
            await clock.advance(0.001)  # its lease has lapsed
            result = await resume("rep-001", pipeline(), store=store, client=router)
        assert result.status == "succeeded"
        assert sim.tags() == ["analyzer", "writer"]
        assert await store.get_lease("rep-001") is None


async def test_the_lease_is_released_when_the_run_succeeds_fails_or_is_cancelled(
    sim: SimServer, journal_url: str
) -> None:
    async with open_store(journal_url) as store, Router(sim_config(sim)) as router:
        await failed_run(sim, store, "failed")
        assert await store.get_lease("failed") is None
        await run_durable(pipeline(), "x", store=store, run_id="ok", client=router)
        assert await store.get_lease("ok") is None
        task = asyncio.create_task(run_durable(pipeline(), "y", store=store, run_id="cut",
                                               client=router))
        while sim.stats().in_flight == 0:
            await asyncio.sleep(0.005)
        lease = await store.get_lease("cut")
        assert lease is not None and lease.live(store._clock.wall())  # held while it runs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.get_lease("cut") is None
        assert (await store.require_run("cut")).status == "cancelled"


def gated_flow(gate: asyncio.Event) -> Flow:
    async def prepare(input: str) -> str:
        await gate.wait()  # the test takes the run over while this step runs
        return input.upper()

    flow = Flow("gated")
    flow.add(prepare)
    flow.add(Agent("writer", model="m", instructions="Write it."), after="prepare")
    return flow


async def test_renewal_finding_a_takeover_stops_the_run_before_its_next_step(
    sim: SimServer, journal_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shoal.flows.lease")
    clock = VirtualClock()
    gate = asyncio.Event()
    async with open_store(journal_url, clock=clock) as store, \
            Router(sim_config(sim)) as router:
        run = asyncio.create_task(run_durable(gated_flow(gate), "topic", store=store,
                                              run_id="g1", client=router, clock=clock,
                                              lease_s=30.0))
        await _gated(store, "g1")
        lease = await store.get_lease("g1")
        assert lease is not None
        ours = lease.owner
        await store.take_lease("g1", FOREIGN, 30.0, force=True)  # taken over meanwhile
        await clock.advance(10.0)  # lease_s / 3: the renewal runs and finds FOREIGN
        while "was taken over by deadbeef@elsewhere" not in caplog.text:
            await asyncio.sleep(0.005)
        gate.set()
        with pytest.raises(LeaseLost) as lost:
            await run
        assert lost.value.owner == FOREIGN and ours != FOREIGN
        assert "stopped before starting another step or model call" in str(lost.value)
        assert sim.stats().total_requests == 0  # the writer never called the model
        step = await store.get_step("g1", "prepare")
        assert step is not None and step.status == "running"  # its result was not written
        assert await store.get_step("g1", "writer") is None
        assert (await store.require_run("g1")).status == "running"  # FOREIGN's run now
        assert (await store.get_lease("g1")).owner == FOREIGN  # type: ignore[union-attr]


async def test_an_executor_stalled_past_its_lease_cannot_write_once_taken_over(
    sim: SimServer, journal_url: str
) -> None:
    """The executor's clock stands still (it is frozen); the store's moves on past the
    lease, another executor takes the run over the ordinary way, and the frozen one's
    next write is refused by the store itself."""
    executor_clock, store_clock = VirtualClock(), VirtualClock()
    gate = asyncio.Event()
    async with open_store(journal_url, clock=store_clock) as store, \
            Router(sim_config(sim)) as router:
        run = asyncio.create_task(run_durable(gated_flow(gate), "topic", store=store,
                                              run_id="s1", client=router,
                                              clock=executor_clock, lease_s=30.0))
        await _gated(store, "s1")
        await store_clock.advance(30.0)
        assert (await store.take_lease("s1", FOREIGN, 30.0)).owner == FOREIGN  # not forced
        gate.set()
        with pytest.raises(LeaseLost) as lost:
            await run
        assert lost.value.owner == FOREIGN
        assert sim.stats().total_requests == 0
        step = await store.get_step("s1", "prepare")
        assert step is not None and step.status == "running"
        assert (await store.get_lease("s1")).owner == FOREIGN  # type: ignore[union-attr]


async def _gated(store: Store, run_id: str) -> None:
    """Until the run's first step is journaled as running (it waits at its gate)."""
    while await store.get_run(run_id) is None or await store.get_step(run_id, "prepare") \
            is None:
        await asyncio.sleep(0.005)


async def test_a_batch_run_twice_at_once_executes_each_item_once(
    sim: SimServer, journal_url: str
) -> None:
    items = ["tidal power", "offshore wind", "geothermal"]
    async with open_store(journal_url) as store, Router(sim_config(sim)) as router:
        async def one_batch() -> list[str]:
            batch = Batch(pipeline(), client=router, run_id="docs", concurrency=3,
                          recorder=StoreRecorder(store, flow=pipeline()))
            result = await batch.run(items)
            return [f"{i.status} {i.error or ''}".strip() for i in result.items]

        first, second = await asyncio.gather(one_batch(), one_batch())
        assert first == second == ["succeeded"] * 3
        for i in range(3):
            assert await store.get_lease(f"docs-{i}") is None
    # every (item, step) paid once: 3 items x 3 steps, nothing twice
    assert Counter(sim.tags()) == {"researcher": 3, "analyzer": 3, "writer": 3}
