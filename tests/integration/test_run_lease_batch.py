"""`shoal resume BATCH_ID` and the run lease of its items: ``--force`` takes over an item
another process holds, ``--lease-s`` is the length of the items' leases, and the
``RunBusy`` of an item names the command that takes it over (the batch's resume). A
batch's items are journaled by the executor, so the command passes both on with
:func:`shoal.flows.lease.lease_options`; a cluster's workers cannot see that, so asking
for them there is refused rather than ignored.

The command runs through its entry point (in this process, or as a ``shoal`` process)
against the simulator in its own process; the library path on SQLite, Redis and
PostgreSQL against the simulator in this one. Every test checks which requests were
sent, and how many times."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from sim_cli_kit import invoke, runs_cli, write_sim_toml

from shoal.agents import Agent
from shoal.cli.common import EXIT_BUSY, EXIT_USAGE
from shoal.cli.run_cmd import load_target
from shoal.cli.runs_cmd import journal_meta
from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import ConfigError
from shoal.flows.batch import Batch
from shoal.flows.journal import StoreRecorder
from shoal.flows.lease import lease_options
from shoal.scale import LocalExecutor
from shoal.scale.batch_ids import batch_items
from shoal.sim import ModelProfile, SimConfig, SimProcess, SimServer
from shoal.stores import open_store
from shoal.traffic.retry import Backoff, RetryPolicy
from shoal.traffic.router import Router

FLOW_MODULE = textwrap.dedent("""
    from shoal.agents import Agent
    from shoal.flows.flow import Flow

    flow = Flow("report")
    flow.add(Agent("researcher", model="m", instructions="Collect the key facts."))
    flow.add(Agent("writer", model="m", instructions="Write a report."), after="researcher")
""")
FOREIGN = "deadbeef@elsewhere:4242:cafef00d"  # an executor on another machine
SHOAL = str(Path(sys.executable).parent / "shoal")


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    s = SimProcess("--latency", "0.3")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def cli() -> typer.Typer:
    return runs_cli()


def failed_batch(sim: SimProcess, tmp_path: Path, *, holder: str | None = FOREIGN) -> str:
    """Batch ``B`` of one item whose writer's key was refused: researcher journaled in
    ``B-0``, the writer to redo; then ``holder`` (on another machine) holds ``B-0``."""
    (tmp_path / "flowmod.py").write_text(FLOW_MODULE)
    toml = write_sim_toml(sim.url, tmp_path / "shoal.toml")
    target = f"{tmp_path / 'flowmod.py'}:flow"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    sim.script(["ok", "401"])

    async def first_run() -> None:
        async with Router(Config.load(toml)) as router:
            result = await LocalExecutor(store=store, client=router).run(
                Batch(load_target(target), run_id="B"), ["open-weight LLM economics"],
                meta=journal_meta(target, config=toml))
        assert [i.status for i in result.items] == ["failed"]
        if holder is not None:
            async with open_store(store) as s:
                await s.take_lease("B-0", holder, 600.0)

    asyncio.run(first_run())
    assert sim.tags() == ["researcher", "writer"]
    sim.reset()
    return store


async def _item_states(store: str) -> tuple[list[str], Any, str]:
    async with open_store(store) as s:
        record = await s.require_run("B")
        rows = await batch_items(s, record)
        return [r.status for r in rows], await s.get_lease("B-0"), record.status


def test_an_item_another_machine_holds_is_taken_over_by_resume_batch_force(
    sim: SimProcess, cli: typer.Typer, tmp_path: Path
) -> None:
    store = failed_batch(sim, tmp_path)
    # The item on its own: refused, naming the command that takes an item over.
    refused = invoke(cli, "resume", "B-0", "--store", store, "--no-progress")
    assert refused.exit_code == EXIT_BUSY, refused.stdout
    err = " ".join(refused.stderr.split())
    assert "run 'B-0' (an item of batch 'B')" in err
    assert "deadbeef@elsewhere (pid 4242) holds its lease until" in err
    assert "`shoal resume B --force`" in err and "shoal resume B-0 --force" not in err
    assert sim.tags() == []  # refused before any request

    # That command, as a process of its own: it takes the item over and finishes it.
    forced = subprocess.run([SHOAL, "resume", "B", "--store", store, "--force",
                             "--no-progress"], check=False, capture_output=True, text=True,
                            timeout=120)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert sim.tags() == ["writer"]  # the unfinished step, once
    statuses, lease, status = asyncio.run(_item_states(store))
    assert (statuses, lease, status) == (["succeeded"], None, "succeeded")


def test_resume_batch_lease_s_is_the_length_of_its_items_leases(
    sim: SimProcess, tmp_path: Path
) -> None:
    store = failed_batch(sim, tmp_path, holder=None)
    proc = subprocess.Popen([SHOAL, "resume", "B", "--store", store, "--lease-s", "12",
                             "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not sim.stats()["in_flight"]:  # the item's writer is being paid for
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        _, lease, _ = asyncio.run(_item_states(store))
        seen = time.time()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert lease is not None and f":{proc.pid}:" in lease.owner  # the item's, held by it
    # Taken (or renewed) before it was read, for 12 s: it cannot end later than 12 s on.
    # A 30 s lease (the default) ends at least 20 s on: it is renewed every 10 s.
    assert lease.expires_at <= seen + 12.0
    assert sim.tags() == ["writer"]


def test_force_or_lease_s_for_a_batch_on_a_cluster_is_refused_not_ignored(
    sim: SimProcess, cli: typer.Typer, tmp_path: Path
) -> None:
    store = failed_batch(sim, tmp_path)
    for options in (["--force"], ["--lease-s", "12"]):
        out = invoke(cli, "resume", "B", "--store", store, "--no-progress", "--cluster",
                     "tcp://127.0.0.1:9", *options)
        assert out.exit_code == EXIT_USAGE, out.stdout
        err = " ".join(out.stderr.split())
        assert "runs its items on the cluster tcp://127.0.0.1:9" in err
        assert f"{options[0]}" in err and "would not reach them" in err
        assert "shoal resume B --cluster local" in err
    assert sim.tags() == []


def test_lease_s_for_a_new_batch_on_a_cluster_is_refused_not_ignored(
    sim: SimProcess, tmp_path: Path
) -> None:
    """`shoal run` of a batch passes --lease-s to its items as resume does (items run
    here); asked for on a cluster, whose workers cannot see it, it is refused first."""
    failed_batch(sim, tmp_path, holder=None)  # writes the flow module and shoal.toml
    out = subprocess.run(
        [SHOAL, "run", f"{tmp_path / 'flowmod.py'}:flow", "one", "two", "-c",
         str(tmp_path / "shoal.toml"), "--store", f"sqlite:///{tmp_path / 'new.db'}",
         "--cluster", "tcp://127.0.0.1:9", "--lease-s", "12", "--no-progress"],
        check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == EXIT_USAGE, out.stderr[-3000:]
    err = " ".join(out.stderr.split())
    assert "--lease-s/$SHOAL_LEASE_S would not reach them" in err
    assert "shoal run ... without --cluster" in err
    assert sim.tags() == []


# -- the library: lease_options around a batch's resume, on every store ----------------

QUICK_RETRY = RetryPolicy(attempts=2, backoff=Backoff(base=0.01, jitter=False))
WRITER = Agent("writer", model="m", instructions="Write one line about the topic.")


def sim_config(sim: SimServer) -> Config:
    return Config.from_dict({
        "channels": {"sim": {"protocol": "openai", "base_url": sim.url + "/v1",
                             "api_key": "sk-test", "provider": "openai"}},
        "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}},
    })


@pytest.fixture
async def local_sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(models={"*": ModelProfile(latency_s=0.05)})) as server:
        yield server


async def test_a_batch_resume_waits_for_a_held_item_until_lease_options_force_it(
    local_sim: SimServer, journal_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shoal.flows.batch")
    sim = local_sim
    sim.script(["503", "503"])
    async with Router(sim_config(sim), retry=QUICK_RETRY) as router:
        first = await LocalExecutor(store=journal_url, client=router).run(
            Batch(WRITER, run_id="B"), ["tidal power"])
    assert [i.status for i in first.items] == ["failed"]
    async with open_store(journal_url) as store:
        await store.take_lease("B-0", FOREIGN, 600.0)  # an agent item, held elsewhere
    sim.reset_stats()

    async with Router(sim_config(sim)) as router:
        executor = LocalExecutor(store=journal_url, client=router)
        waiting = asyncio.create_task(executor.resume("B", WRITER))

        async def told() -> None:
            while "is being executed by another process" not in caplog.text:
                assert not waiting.done(), waiting
                await asyncio.sleep(0.005)

        await asyncio.wait_for(told(), 60)  # it waits for the holder, and says why
        message = " ".join(caplog.text.split())
        assert "run 'B-0' (an item of batch 'B')" in message
        assert "`shoal resume B --force`" in message and "Waiting for it." in message
        assert sim.stats().total_requests == 0
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

        with lease_options(force=True):
            resumed = await executor.resume("B", WRITER)
    assert [i.status for i in resumed.items] == ["succeeded"]
    assert [r.tag for r in sim.stats().requests] == ["writer"]  # the item, once
    async with open_store(journal_url) as store:
        assert await store.get_lease("B-0") is None
        assert (await store.require_run("B-0")).status == "succeeded"
        assert (await store.require_run("B")).status == "succeeded"


async def test_lease_options_set_every_journal_opened_in_the_block(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        def leases() -> tuple[bool, float]:
            made = StoreRecorder(store, clock=VirtualClock(), lease_s=45.0).leases
            return made.force, made.lease_s

        assert leases() == (False, 45.0)  # outside a block: the journal's own
        with lease_options(force=True):
            assert leases() == (True, 45.0)
            with lease_options(lease_s=12.0):  # nested: adds to the outer block
                assert leases() == (True, 12.0)

                async def in_a_task() -> tuple[bool, float]:
                    return leases()

                assert await asyncio.create_task(in_a_task()) == (True, 12.0)
            assert leases() == (True, 45.0)
        assert leases() == (False, 45.0)
        with pytest.raises(ConfigError, match="lease_s must be a positive number"), \
                lease_options(lease_s=0):
            pass
