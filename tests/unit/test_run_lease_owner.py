"""Lease owner ids, and when a holder is known to be dead: a process of this machine
whose pid is gone (or a zombie), or an executor of this process whose run ended.
Anything else — another machine, a live process — is left to the lease's expiry."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.clock import RealClock
from shoal.errors import LeaseLost, RunBusy, RunError, StoreError
from shoal.flows.lease import RunLeases, holder_gone, new_owner
from shoal.stores import RunRecord, open_store
from shoal.stores.leases import LeaseMode, allows, describe_owner, parse_owner


def _node() -> str:
    parsed = parse_owner(new_owner())
    assert parsed is not None
    return parsed[3]


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"),
                                reason="a dead holder is recognised on Linux only")


def test_an_owner_id_names_nonce_host_pid_and_node() -> None:
    owner = new_owner()
    parsed = parse_owner(owner)
    assert parsed is not None
    nonce, host, pid, _ = parsed
    assert len(nonce) == 8 and host and pid == os.getpid()
    assert owner != new_owner()  # a fresh nonce per executor
    assert describe_owner(owner) == f"{nonce}@{host} (pid {pid})"
    assert parse_owner("not an owner") is None
    assert describe_owner("not an owner") == "'not an owner'"


@needs_proc
def test_a_dead_process_of_this_machine_is_gone_a_live_one_is_not() -> None:
    node = _node()
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()  # reaped: the pid no longer exists
    assert holder_gone("r", f"00000000@h:{dead_pid.pid}:{node}")

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not holder_gone("r", f"00000000@h:{live.pid}:{node}")
    finally:
        live.kill()
    deadline = time.monotonic() + 10
    while not holder_gone("r", f"00000000@h:{live.pid}:{node}"):  # killed, not reaped yet
        assert time.monotonic() < deadline, "a zombie holds no lease"
        time.sleep(0.01)
    assert live.poll() is not None  # reaped after we judged it: it was a zombie
    # pid 1 exists and is not ours to signal, or is ours: alive either way
    assert not holder_gone("r", f"00000000@h:1:{node}")


def test_another_machine_or_an_unknown_owner_is_never_judged_dead() -> None:
    assert not holder_gone("r", "00000000@elsewhere:999999:ffffffff")
    assert not holder_gone("r", "00000000@elsewhere:999999:")
    assert not holder_gone("r", "something else")


async def test_an_executor_of_this_process_is_gone_once_its_run_ended(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        await store.create_run(RunRecord("r", "flow"))
        await store.create_run(RunRecord("other", "flow"))
        leases = RunLeases(store, lease_s=30.0, clock=RealClock())
        await leases.take("r")
        assert leases.held == ["r"]
        with pytest.raises(RunBusy):  # one executor running one run twice at once: no
            await leases.take("r")
        assert leases.held == ["r"]
        assert not holder_gone("r", leases.owner)  # executing r
        assert holder_gone("other", leases.owner)  # not executing other
        with pytest.raises(RunBusy, match="is being executed by another process"):
            await RunLeases(store, lease_s=30.0, clock=RealClock()).take("r")
        await leases.release("r")
        assert holder_gone("r", leases.owner)
        assert await store.get_lease("r") is None


def test_the_lease_rule() -> None:
    def by_a(mode: LeaseMode, holder: str | None, until: float | None,
             replacing: str | None = None) -> bool:
        return allows(mode, holder, until, owner="a", now=100.0, replacing=replacing)

    assert by_a("take", None, None)
    assert by_a("take", "a", 200.0)  # its own
    assert not by_a("take", "b", 100.5)  # live
    assert by_a("take", "b", 100.0)  # lapsed at its expiry exactly
    assert by_a("take", "b", 200.0, replacing="b")  # a dead holder, named
    assert not by_a("take", "b", 200.0, replacing="c")
    assert by_a("force", "b", 200.0)
    assert by_a("renew", "a", 50.0) and not by_a("renew", "b", 200.0)
    assert not by_a("renew", None, None)  # released: never renewed back
    assert by_a("release", "a", 200.0) and not by_a("release", "b", 200.0)
    assert not by_a("read", None, None)


def test_the_errors_sit_under_store_errors_and_survive_pickling() -> None:
    busy = RunBusy("busy", run_id="r1", owner="o", expires_at=12.5)
    lost = LeaseLost("lost", run_id="r1", owner="n", expires_at=3.0)
    assert isinstance(busy, StoreError) and isinstance(busy, RunError)
    assert isinstance(lost, RunBusy)
    for exc in (busy, lost):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
        assert (back.run_id, back.owner, back.expires_at) == (exc.run_id, exc.owner,
                                                              exc.expires_at)
