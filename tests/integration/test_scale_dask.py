"""Batches on a real local Dask cluster (worker processes on 127.0.0.1): every item a
journaled run on PostgreSQL, the workers' Routers sharing the simulator's cap through
Redis. The results are the local batch's; per-item errors come back; the simulator
never has more than the cap in flight; a batch resumed runs only its unfinished items."""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from scale_flows import sim_config, three_steps

from conftest import drop_pg_schema
from shoal.config import Config
from shoal.flows.batch import Batch
from shoal.scale import DaskExecutor, LocalExecutor
from shoal.scale.batch_ids import batch_items
from shoal.sim import SimProcess
from shoal.stores import open_store
from shoal.traffic.router import Router

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

CAP = 5


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    with SimProcess("--cap", str(CAP), "--latency", "0.05") as s:
        yield s


@pytest.fixture
def store_url(pg_dsn: str) -> str:
    return f"{pg_dsn}?schema=scale_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def drop_schema(store_url: str) -> AsyncIterator[None]:
    yield
    dsn, _, schema = store_url.partition("?schema=")
    await drop_pg_schema(dsn, schema)


@pytest.fixture
def config_path(tmp_path: Path, sim: SimProcess, redis_url: str) -> str:
    path = tmp_path / "shoal.toml"
    path.write_text(sim_config(sim.url, redis_url, f"s{uuid.uuid4().hex[:10]}", cap=CAP))
    return str(path)


@pytest.fixture
def cluster_address() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address=None, worker_dashboard_address=None) as cluster:
        yield cluster.scheduler_address


INPUTS = [f"doc{i}" for i in range(10)] + ["fail-a"]


def outcome(result: Any) -> list[tuple[str, Any, str | None, str | None]]:
    return [(i.status, i.output, i.error_type, i.error) for i in result.items]


async def test_a_batch_on_a_dask_cluster_returns_the_local_batch_results(
    sim: SimProcess, config_path: str, store_url: str, drop_schema: None,
    cluster_address: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOAL_SCALE_FAIL", "1")  # the workers were started before: see below
    flow = three_steps()
    inputs = [*INPUTS, "boom-b"]
    async with Router(Config.load(config_path)) as router:
        local = await Batch(flow, client=router, run_id="b1").run(inputs)
    sim.reset()
    executor = DaskExecutor(cluster_address, store=store_url, config=config_path,
                            chunk_size=3, items_per_worker=8)
    remote = await Batch(flow, run_id="b1").run(inputs, executor=executor)
    stats = sim.stats(log=True)

    # The workers do not see $SHOAL_SCALE_FAIL (their environment is their own), so
    # "fail-a" succeeds there; every other item is the local batch's, in input order,
    # the error of "boom-b" included.
    assert outcome(local)[-2][0] == "failed"
    assert outcome(remote)[-2][0] == "succeeded"
    assert outcome(remote)[:-2] + outcome(remote)[-1:] == \
        outcome(local)[:-2] + outcome(local)[-1:]
    boom = remote.items[-1]
    assert boom.status == "failed" and "'boom-b' always fails" in (boom.error or "")
    assert [i.run_id for i in remote.items] == [f"b1-{i}" for i in range(len(inputs))]
    # One request per step of every item, never more than the cap at the provider.
    tags = Counter(r["tag"] for r in stats["requests"])
    assert set(tags.values()) == {1}
    assert len(tags) == 3 * len(INPUTS)
    assert stats["rate_limited"] == 0
    assert stats["max_in_flight"] <= CAP

    # The batch is in the store: every item succeeded, with its output.
    async with open_store(store_url) as store:
        rows = await batch_items(store, await store.require_run("b1"))
    assert [r.status for r in rows] == ["succeeded"] * len(INPUTS) + ["failed"]
    assert [r.output for r in rows] == [i.output for i in remote.items]
    assert rows[-1].error == boom.error

    # The same batch id again: every item replays from the journal, no model call.
    sim.reset()
    again = await Batch(flow, run_id="b1").run(inputs, executor=executor)
    assert outcome(again) == outcome(remote)
    assert sim.stats()["total_requests"] == 0


async def test_item_errors_come_back_and_a_resume_runs_only_the_unfinished_items(
    sim: SimProcess, config_path: str, store_url: str, drop_schema: None,
    cluster_address: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = three_steps()
    # In this process (a LocalExecutor) $SHOAL_SCALE_FAIL holds: "fail-a" fails.
    monkeypatch.setenv("SHOAL_SCALE_FAIL", "1")
    local = LocalExecutor(store=store_url, config=config_path, chunk_size=4)
    first = await Batch(flow, run_id="b2").run(INPUTS, executor=local)
    assert [i.status for i in first.items] == ["succeeded"] * 10 + ["failed"]
    failed = first.items[-1]
    assert failed.error_type == "StepFailed" or failed.error_type == "ValueError"
    assert "cannot draft 'fail-a'" in (failed.error or "")
    async with open_store(store_url) as store:
        record = await store.require_run("b2")
        assert record.status == "failed"
        rows = await batch_items(store, record)
    assert Counter(r.status for r in rows) == {"succeeded": 10, "failed": 1}

    # Resumed on the cluster (whose workers do not fail it): only "fail-a" runs.
    sim.reset()
    os.environ.pop("SHOAL_SCALE_FAIL")
    executor = DaskExecutor(cluster_address, store=store_url, config=config_path,
                            chunk_size=3)
    resumed = await executor.resume("b2", flow)
    tags = Counter(r["tag"] for r in sim.stats(log=True)["requests"])
    assert [i.status for i in resumed.items] == ["succeeded"] * len(INPUTS)
    assert resumed.items[-1].output == "fail-a:draft:review:final"
    assert sorted(tags) == [f"b2-10/{s}" for s in ("draft", "final", "review")]
    assert set(tags.values()) == {1}


def cli_app() -> Any:
    import typer

    from shoal.cli import run_cmd, runs_cmd

    app = typer.Typer()
    run_cmd.register(app)
    runs_cmd.register(app)
    return app


def invoke(*args: str) -> Any:
    from typer.testing import CliRunner

    return CliRunner().invoke(cli_app(), list(args), catch_exceptions=False)


def test_the_cli_runs_lists_and_resumes_a_batch_on_the_cluster(
    sim: SimProcess, config_path: str, store_url: str, drop_schema: None,
    cluster_address: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    # Here (no --cluster) with $SHOAL_SCALE_FAIL set: "fail-a" fails.
    monkeypatch.setenv("SHOAL_SCALE_FAIL", "1")
    out = invoke("batch", "scale_flows:three_steps", "doc0", "doc1", "fail-a",
                 "--store", store_url, "--config", config_path, "--run-id", "b3",
                 "--no-progress")
    assert out.exit_code == 1, out.output
    assert "shoal resume b3" in out.output
    listed = invoke("runs", "--batch", "b3", "--store", store_url, "--json")
    report = json.loads(listed.stdout)
    assert report["counts"] == {"succeeded": 2, "failed": 1}
    assert [f["name"] for f in report["failures"]] == ["arg2"]
    assert "cannot draft 'fail-a'" in report["failures"][0]["error"]

    # Resumed on the cluster (its workers never fail it): only the failed item runs.
    monkeypatch.delenv("SHOAL_SCALE_FAIL")
    sim.reset()
    out = invoke("resume", "b3", "--store", store_url, "--cluster", cluster_address,
                 "--no-progress")
    assert out.exit_code == 0, out.output
    tags = sorted(r["tag"] for r in sim.stats(log=True)["requests"])
    assert tags == [f"b3-2/{s}" for s in ("draft", "final", "review")]
    listed = invoke("runs", "--batch", "b3", "--store", store_url, "--json")
    assert json.loads(listed.stdout)["counts"] == {"succeeded": 3}

    # A new batch straight onto the cluster.
    out = invoke("run", "scale_flows:three_steps", "doc7", "doc8", "--store", store_url,
                 "--config", config_path, "--cluster", cluster_address, "--run-id", "b4",
                 "--no-progress")
    assert out.exit_code == 0, out.output
    assert "on " + cluster_address in out.output
    listed = invoke("runs", "--batch", "b4", "--store", store_url, "--json")
    assert json.loads(listed.stdout)["cluster"] == cluster_address


async def test_a_killed_client_s_batch_resumes_with_only_its_unfinished_items(
    sim: SimProcess, config_path: str, store_url: str, drop_schema: None,
    cluster_address: str,
) -> None:
    """The client (``shoal batch --cluster``) SIGKILLed mid-batch: Dask drops its tasks;
    ``shoal resume`` runs only the items with no outcome, replaying their journaled turns."""
    import asyncio
    import signal
    import sys

    n = 60
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("SHOAL_SCALE_FAIL", None)
    client = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "shoal"), "batch", "scale_flows:three_steps",
        *[f"doc{i}" for i in range(n)], "--store", store_url, "--config", config_path,
        "--cluster", cluster_address, "--run-id", "b5", "--no-progress",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while sim.stats()["total_requests"] < 5 * n // 2:  # 5 in 6 of the calls
            assert client.returncode is None, await client.stderr.read()  # type: ignore[union-attr]
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        client.send_signal(signal.SIGKILL)
        await client.wait()
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    async with open_store(store_url) as store:
        rows = await batch_items(store, await store.require_run("b5"))
    done_before = {r.index for r in rows if r.status == "succeeded"}
    assert 0 < len(done_before) < n

    await asyncio.sleep(1.0)  # the scheduler notices the client is gone, drops its tasks
    before = Counter(r["tag"] for r in sim.request_log())
    out = await asyncio.to_thread(invoke, "resume", "b5", "--store", store_url,
                                  "--no-progress")
    assert out.exit_code == 0, out.output
    after = Counter(r["tag"] for r in sim.request_log()) - before
    async with open_store(store_url) as store:
        rows = await batch_items(store, await store.require_run("b5"))
    assert [r.status for r in rows] == ["succeeded"] * n
    # The resume called no model for the items that had finished, and every call it made
    # was for a step the journal did not hold yet (or was in flight at the kill).
    assert not {t.split("/")[0] for t in after} & {f"b5-{i}" for i in done_before}
    total = before + after
    assert len(total) == 3 * n
    repeated = {t: c for t, c in total.items() if c > 1}
    assert len(repeated) <= CAP, repeated


def test_an_unreachable_scheduler_fails_before_the_batch_is_recorded(
    sim: SimProcess, config_path: str, store_url: str, drop_schema: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        nobody = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    out = invoke("batch", "scale_flows:three_steps", "doc0", "--store", store_url,
                 "--config", config_path, "--cluster", nobody, "--run-id", "b-down",
                 "--no-progress")
    assert out.exit_code == 2, out.output
    assert f"cannot reach the Dask scheduler at {nobody}" in out.output
    assert "no batch was recorded" in out.output
    listed = invoke("runs", "--batch", "b-down", "--store", store_url, "--json")
    assert listed.exit_code == 2 and "b-down" in listed.output  # no such batch
    assert sim.stats()["total_requests"] == 0
