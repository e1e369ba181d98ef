"""One executor per run, for an agent run journaled without a flow
(``Runner(client, recorder=StoreRecorder(store))``, and every item of a batch of agents):
through the real Router against the simulator, on SQLite, Redis and PostgreSQL. The
simulator's request log (tagged with the agent's step) proves which calls were made.

- a second executor of the run while the first runs is refused (``RunBusy``) before any
  request, whether it comes while the first is in flight or races it from the start;
- a killed executor's lease is refused until it expires and taken over at its expiry
  (virtual time);
- an executor whose lease another one took over stops before its next model call
  (renewal), and its journal writes are refused (fencing);
- the lease is released when the agent returns or fails, and the run's end recorded;
- a batch of agents run twice at once executes every item once, and both finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from shoal.agents import Agent, Runner
from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import LeaseLost, ProviderUnavailable, RunBusy
from shoal.flows.batch import Batch
from shoal.flows.journal import StoreRecorder
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


WRITER = Agent("writer", model="m", instructions="Write one line about the topic.")


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(models={"*": ModelProfile(latency_s=0.2)})) as server:
        yield server


async def failed_agent_run(sim: SimServer, store: Store, run_id: str = "a1") -> None:
    """An agent run journaled without a flow whose only turn failed (503 past retries)."""
    sim.script(["503", "503"])
    async with Router(sim_config(sim), retry=QUICK_RETRY) as router:
        with pytest.raises(ProviderUnavailable):
            await Runner(router, recorder=StoreRecorder(store)).run(WRITER, "tidal power",
                                                                   run_id=run_id)
    assert sim.tags() == ["writer", "writer"]
    run = await store.require_run(run_id)
    assert (run.flow, run.status) == ("agent", "failed")  # its end is recorded now
    assert await store.get_lease(run_id) is None
    sim.reset_stats()


async def test_a_second_executor_of_an_agent_run_is_refused_before_any_request(
    sim: SimServer, journal_url: str
) -> None:
    async with open_store(journal_url) as store, Router(sim_config(sim)) as router:
        await failed_agent_run(sim, store)

        def again() -> asyncio.Task[object]:
            runner = Runner(router, recorder=StoreRecorder(store))
            return asyncio.create_task(runner.run(WRITER, "tidal power", run_id="a1"))

        first = again()
        while sim.stats().in_flight == 0:  # the first executor is paying for the turn
            assert not first.done()
            await asyncio.sleep(0.005)
        lease = await store.get_lease("a1")
        assert lease is not None and lease.owner != FOREIGN  # held while it runs
        with pytest.raises(RunBusy) as busy:
            await again()
        assert sim.stats().total_requests == 1  # the first one's call; none of the second
        await first
        assert sim.tags() == ["writer"]  # the unfinished turn, once
        assert busy.value.owner == lease.owner and busy.value.run_id == "a1"
        message = " ".join(str(busy.value).split())
        assert "agent run 'a1'" in message and "is being executed by another process" in message
        assert "Nothing was run here and no model was called" in message
        # `shoal resume` rebuilds flows: the way to take an agent run over is named instead
        assert "StoreRecorder(store, force=True)" in message
        assert "shoal resume a1" not in message
        assert await store.get_lease("a1") is None  # released at the end
        assert (await store.require_run("a1")).status == "succeeded"


async def test_racing_executors_of_an_agent_run_one_runs_the_others_are_refused(
    sim: SimServer, journal_url: str
) -> None:
    async with open_store(journal_url) as store, Router(sim_config(sim)) as router:
        await failed_agent_run(sim, store)
        outcomes = await asyncio.gather(
            *(Runner(router, recorder=StoreRecorder(store)).run(WRITER, "tidal power",
                                                                 run_id="a1")
              for _ in range(3)), return_exceptions=True)
        busy = [o for o in outcomes if isinstance(o, RunBusy)]
        done = [o for o in outcomes if not isinstance(o, BaseException)]
        assert (len(done), len(busy)) == (1, 2), outcomes
        assert sim.tags() == ["writer"]
        assert await store.get_lease("a1") is None


async def test_a_killed_executors_lease_on_an_agent_run_is_taken_over_at_its_expiry(
    sim: SimServer, journal_url: str
) -> None:
    clock = VirtualClock(wall_start=1_750_000_000.0)
    async with open_store(journal_url, clock=clock) as store, \
            Router(sim_config(sim)) as router:
        await failed_agent_run(sim, store)
        await store.take_lease("a1", FOREIGN, 30.0)  # taken on another machine, then killed

        async def run() -> object:
            recorder = StoreRecorder(store, clock=clock)
            return await Runner(router, clock=clock, recorder=recorder).run(
                WRITER, "tidal power", run_id="a1")

        for wait in (0.0, 29.999):
            await clock.advance(wait)
            with pytest.raises(RunBusy) as busy:
                await run()
            assert (busy.value.owner, busy.value.expires_at) == (FOREIGN, 1_750_000_030.0)
            assert "deadbeef@elsewhere (pid 4242) holds its lease until 2025-06-15 " \
                   "15:07:10 UTC" in str(busy.value)
        assert sim.stats().total_requests == 0
        await clock.advance(0.001)  # its lease has lapsed
        await run()
        assert sim.tags() == ["writer"]
        assert await store.get_lease("a1") is None


def gated_agent(gate: asyncio.Event, entered: asyncio.Event) -> Agent[str]:
    async def lookup(query: str) -> str:
        """Look the facts up."""
        entered.set()
        await gate.wait()  # the test takes the run over while the tool runs
        return f"facts about {query}"

    return Agent("researcher", model="m", tools=[lookup], instructions="Look it up first.")


async def _until(entered: asyncio.Event, run: asyncio.Task[object]) -> None:
    """Until the agent is inside its tool (its first turn journaled)."""
    waiter = asyncio.ensure_future(entered.wait())
    await asyncio.wait({waiter, run}, return_when=asyncio.FIRST_COMPLETED)
    assert not run.done(), run
    waiter.cancel()


async def test_renewal_finding_a_takeover_stops_an_agent_before_its_next_model_call(
    sim: SimServer, journal_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shoal.flows.lease")
    clock = VirtualClock()
    gate, entered = asyncio.Event(), asyncio.Event()
    async with open_store(journal_url, clock=clock) as store, \
            Router(sim_config(sim)) as router:
        recorder = StoreRecorder(store, clock=clock, lease_s=30.0)
        run = asyncio.create_task(Runner(router, clock=clock, recorder=recorder).run(
            gated_agent(gate, entered), "tidal power", run_id="g1"))
        await _until(entered, run)
        lease = await store.get_lease("g1")
        assert lease is not None and lease.owner == recorder.leases.owner  # its lease
        await store.take_lease("g1", FOREIGN, 30.0, force=True)  # taken over meanwhile
        await clock.advance(10.0)  # lease_s / 3: the renewal runs and finds FOREIGN
        while "was taken over by deadbeef@elsewhere" not in caplog.text:
            await asyncio.sleep(0.005)
        gate.set()
        with pytest.raises(LeaseLost) as lost:
            await run
        assert lost.value.owner == FOREIGN
        assert sim.tags() == ["researcher"]  # turn 0 only: turn 1 was never asked
        assert await store.get_step("g1", "researcher/turn/0") is not None
        assert await store.get_step("g1", "researcher/turn/1") is None
        assert (await store.require_run("g1")).status == "running"  # FOREIGN's run now
        assert (await store.get_lease("g1")).owner == FOREIGN  # type: ignore[union-attr]


async def test_an_agent_executor_stalled_past_its_lease_cannot_write_once_taken_over(
    journal_url: str
) -> None:
    """The executor's clock stands still (it is frozen) while its call is in flight; the
    store's moves on past the lease, another executor takes the run over the ordinary
    way, and the frozen one's journal write of the answer is refused by the store."""
    executor_clock, store_clock = VirtualClock(), VirtualClock()
    profile = ModelProfile(latency_s=1.0)  # room to take the run over mid-call
    async with SimServer(SimConfig(models={"*": profile})) as sim, \
            open_store(journal_url, clock=store_clock) as store, \
            Router(sim_config(sim)) as router:
        recorder = StoreRecorder(store, clock=executor_clock, lease_s=30.0)
        run = asyncio.create_task(Runner(router, clock=executor_clock, recorder=recorder)
                                  .run(WRITER, "tidal power", run_id="s1"))
        while sim.stats().in_flight == 0:
            assert not run.done()
            await asyncio.sleep(0.005)
        lease = await store.get_lease("s1")
        assert lease is not None and lease.owner == recorder.leases.owner
        await store_clock.advance(30.0)
        assert (await store.take_lease("s1", FOREIGN, 30.0)).owner == FOREIGN  # not forced
        with pytest.raises(LeaseLost) as lost:
            await run
        assert lost.value.owner == FOREIGN
        assert sim.tags() == ["writer"]  # the call in flight when it stalled; no other
        assert await store.get_step("s1", "writer/turn/0") is None  # its write refused
        assert (await store.require_run("s1")).status == "running"
        assert (await store.get_lease("s1")).owner == FOREIGN  # type: ignore[union-attr]


async def test_a_batch_of_agents_run_twice_at_once_executes_each_item_once(
    sim: SimServer, journal_url: str
) -> None:
    items = ["tidal power", "offshore wind", "geothermal"]
    async with open_store(journal_url) as store, Router(sim_config(sim)) as router:
        async def one_batch() -> list[str]:
            batch = Batch(WRITER, client=router, run_id="docs", concurrency=3,
                          recorder=StoreRecorder(store))
            result = await batch.run(items)
            return [f"{i.status} {i.error or ''}".strip() for i in result.items]

        first, second = await asyncio.gather(one_batch(), one_batch())
        assert first == second == ["succeeded"] * 3
        for i in range(3):
            assert await store.get_lease(f"docs-{i}") is None
            assert (await store.require_run(f"docs-{i}")).status == "succeeded"
    assert Counter(sim.tags()) == {"writer": 3}  # every item paid once, nothing twice
