"""An outside-in durability audit: a journaled flow (durable_audit_child.py) in its own
process against the simulator in another, SIGKILLed at exact points — right after a
turn's journal write (before its tool calls and before its step completes), inside a
tool right after its side effect, right after an effect record, after some map items,
while a request is in flight — on SQLite, Redis and PostgreSQL, then resumed.

Proven at each point, against an uninterrupted reference run: the simulator sees no
request for a journaled turn again (requests are tagged ``<step>#<turn>``); the final
outputs, usage and cost equal the reference's (nothing double-counted, a budget that
fits the reference fits the resumed run); an idempotent tool's effect (counted in a
file outside the process) happens once, except in the documented window between an
effect and its record, where the repeat carries the same idempotency key; a plain tool
of a replayed turn runs again, as documented."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.sim import SimProcess
from shoal.stores import open_store

CHILD = Path(__file__).with_name("durable_audit_child.py")
REQUESTS = 11  # research x4, payer x2, notifier x2, charger x2, writer x1
pytestmark = pytest.mark.timeout(120)


class Sim(SimProcess):
    def tag_counts(self) -> Counter[str]:
        return Counter(str(r["tag"]) for r in self.request_log())

    def total(self) -> int:
        return int(self.stats()["total_requests"])


@pytest.fixture(scope="module")
def sim() -> Iterator[Sim]:
    s = Sim("--seed", "11")
    try:
        yield s
    finally:
        s.stop()


class Run:
    """One run id of the child flow on one store, its effects counted in a file."""

    def __init__(self, sim: Sim, store: str, tmp: Path, run_id: str = "audit-1") -> None:
        self.sim, self.store, self.run_id = sim, store, run_id
        self.out, self.effects = tmp / f"{run_id}.json", tmp / f"{run_id}.effects"

    def start(self, *extra: str, resume: bool = False, kill_in_tool: str = ""
              ) -> subprocess.Popen[str]:
        args = [sys.executable, str(CHILD), self.sim.url, self.store, self.run_id,
                str(self.out), *extra, *(["--resume"] if resume else [])]
        env = {**os.environ, "AUDIT_EFFECTS": str(self.effects),
               "AUDIT_KILL_IN_TOOL": kill_in_tool}
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)

    def killed(self, *extra: str, resume: bool = False, kill_in_tool: str = "") -> None:
        """Run until the child SIGKILLs itself at its kill point."""
        proc = self.start(*extra, resume=resume, kill_in_tool=kill_in_tool)
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL, err[-3000:]

    def finish(self, *extra: str, resume: bool = True) -> dict[str, Any]:
        proc = self.start(*extra, resume=resume)
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err[-3000:]
        return dict(json.loads(self.out.read_text()))

    def journaled(self) -> set[str]:
        """The turns committed to the journal, as ``<step>#<turn>`` tags."""

        async def read() -> set[str]:
            async with open_store(self.store) as s:
                steps = await s.get_steps(self.run_id)
            return {f"{r.meta['step']}#{r.meta['turn']}" for r in steps
                    if r.meta.get("kind") == "turn" and r.status == "succeeded"}

        return asyncio.run(read())

    def effect_lines(self) -> list[str]:
        return self.effects.read_text().splitlines() if self.effects.exists() else []


@pytest.fixture(scope="module")
def reference(sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ref")
    sim.reset()
    run = Run(sim, f"sqlite:///{tmp / 'ref.db'}", tmp, "ref")
    doc = run.finish(resume=False)
    doc["tags"] = sim.tag_counts()
    doc["effects"] = run.effect_lines()
    assert doc["status"] == "succeeded"
    assert sum(doc["tags"].values()) == REQUESTS, doc["tags"]
    assert all(n == 1 for n in doc["tags"].values())
    return doc


def asked_once(first: Counter[str], journaled: set[str], second: Counter[str],
               ref: dict[str, Any]) -> None:
    """No journaled turn asked again; every turn asked; the only repeat (at most one:
    the flow runs one step at a time) was in flight at the kill."""
    assert not journaled & set(second), (journaled, second)
    assert set(first + second) == set(ref["tags"])
    repeated = first + second - ref["tags"]
    assert sum(repeated.values()) <= 1 and not set(repeated) & journaled, repeated


def same_result(final: dict[str, Any], ref: dict[str, Any]) -> None:
    assert final["status"] == "succeeded"
    assert final["outputs"] == ref["outputs"]
    assert final["usage"] == ref["usage"]  # replayed work counted once, not twice
    assert final["cost_usd"] == pytest.approx(ref["cost_usd"])


def kinds(lines: list[str]) -> Counter[str]:
    return Counter(line.split()[0] for line in lines)


@pytest.mark.parametrize(("point", "before"), [
    ("payer/turn/0", "payer#0"),      # a tool-call turn journaled, its tool not yet run
    ("writer/turn/0", "writer#0"),    # the last turn journaled, its step not completed
    ("research/1", "research/1#0"),   # two of four map items done
    ("charger", "charger#1"),         # a whole step with an effect completed
])
def test_kill_after_a_journal_write_then_resume_asks_nothing_twice(
    sim: Sim, reference: dict[str, Any], tmp_path: Path, point: str, before: str,
) -> None:
    sim.reset()
    run = Run(sim, f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)
    started = time.monotonic()
    run.killed("--kill-after-record", point)
    first, journaled = sim.tag_counts(), run.journaled()
    assert first[before] == 1 and before in journaled
    sim.reset()
    final = run.finish()
    second = sim.tag_counts()
    took = time.monotonic() - started
    same_result(final, reference)
    asked_once(first, journaled, second, reference)
    assert final["run_tokens"] == reference["run_tokens"]  # the run's totals: not doubled
    assert final["run_cost_usd"] == pytest.approx(reference["run_cost_usd"])
    assert kinds(run.effect_lines()) == kinds(reference["effects"])  # every effect once
    print(f"{point}: {sum(first.values())} requests before the kill, "
          f"{sum(second.values())} after; {took:.2f}s")


@pytest.mark.parametrize("tool", ["refund", "charge"])
def test_kill_between_an_effect_and_its_record_repeats_it_with_the_same_key(
    sim: Sim, reference: dict[str, Any], tmp_path: Path, tool: str,
) -> None:
    """The documented window: the effect ran, its record was not written. The resume
    runs it again, under the same idempotency key (so an API given effect_key() can
    refuse the repeat); nothing else repeats."""
    sim.reset()
    run = Run(sim, f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)
    run.killed(kill_in_tool=tool)
    first, journaled = sim.tag_counts(), run.journaled()
    sim.reset()
    final = run.finish()
    same_result(final, reference)
    asked_once(first, journaled, sim.tag_counts(), reference)
    effects = [line for line in run.effect_lines() if line.startswith(tool)]
    assert len(effects) == 2 and effects[0] == effects[1], effects
    assert effects[0].split()[1] != "None"


def test_kill_after_an_effect_record_never_repeats_it(
    sim: Sim, reference: dict[str, Any], tmp_path: Path,
) -> None:
    sim.reset()
    run = Run(sim, f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)
    run.killed("--kill-after-effect")  # the first effect: payer's refund
    assert run.effect_lines() == [e for e in reference["effects"] if e.startswith("refund")]
    first, journaled = sim.tag_counts(), run.journaled()
    sim.reset()
    final = run.finish()
    same_result(final, reference)
    asked_once(first, journaled, sim.tag_counts(), reference)
    assert kinds(run.effect_lines()) == kinds(reference["effects"])


def test_a_plain_tool_of_a_replayed_turn_runs_again_as_documented(
    sim: Sim, reference: dict[str, Any], tmp_path: Path,
) -> None:
    """durable.md: a resumed agent re-runs the tool calls of its replayed turns; only
    @idempotent tools are protected. Killed after the notifier's last turn was journaled
    (its step not completed), the resume asks the model nothing for it but runs
    ``notify`` a second time."""
    sim.reset()
    run = Run(sim, f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)
    run.killed("--kill-after-record", "notifier/turn/1")
    first = sim.tag_counts()
    sim.reset()
    final = run.finish()
    same_result(final, reference)
    assert first["notifier#1"] == 1 and not set(first) & set(sim.tag_counts())
    effects = kinds(run.effect_lines())
    assert effects["notify"] == 2 and effects["refund"] == 1 and effects["charge"] == 1


def test_a_budget_that_fits_the_run_fits_its_resume(
    sim: Sim, reference: dict[str, Any], tmp_path: Path,
) -> None:
    """Replayed turns count toward the budget once: the reference's cost plus 5% is
    enough for a run killed half way and resumed under the same budget."""
    budget = str(reference["cost_usd"] * 1.05)
    sim.reset()
    run = Run(sim, f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)
    run.killed("--budget", budget, "--kill-after-record", "charger/turn/0")
    final = run.finish("--budget", budget)
    same_result(final, reference)


def test_each_store_resumes_a_killed_run_asking_nothing_twice(
    sim: Sim, reference: dict[str, Any], tmp_path: Path, journal_url: str,
) -> None:
    """SQLite file, Redis, PostgreSQL: killed after a tool-call turn was journaled (its
    idempotent tool not yet run), resumed in a new process."""
    sim.reset()
    run = Run(sim, journal_url, tmp_path)
    run.killed("--kill-after-record", "charger/turn/0")
    first, journaled = sim.tag_counts(), run.journaled()
    assert "charger#0" in journaled
    sim.reset()
    started = time.monotonic()
    final = run.finish()
    took = time.monotonic() - started
    same_result(final, reference)
    asked_once(first, journaled, sim.tag_counts(), reference)
    assert final["run_tokens"] == reference["run_tokens"]
    assert kinds(run.effect_lines()) == kinds(reference["effects"])
    kind = journal_url.split(":", maxsplit=1)[0]
    print(f"{kind}: {sum(first.values())} requests before the kill, "
          f"{sum(sim.tag_counts().values())} after; resume {took:.2f}s")


def test_kill_while_a_request_is_in_flight_repeats_only_that_request(
    reference: dict[str, Any], tmp_path: Path,
) -> None:
    slow = Sim("--seed", "11", "--latency", "0.25")
    try:
        run = Run(slow, f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)
        proc = run.start()
        try:
            deadline = time.monotonic() + 20
            while slow.total() < 5 and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.05)  # the 5th request is in flight (0.25 s at the simulator)
            assert slow.stats()["in_flight"] == 1
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        first, journaled = slow.tag_counts(), run.journaled()
        assert len(journaled) == 4
        slow.reset()
        final = run.finish()
        second = slow.tag_counts()
    finally:
        slow.stop()
    same_result(final, reference)
    asked_once(first, journaled, second, reference)
    assert sum((first + second - reference["tags"]).values()) == 1  # the one in flight


def test_a_changed_flow_is_refused_before_any_call_then_allowed_on_request(
    sim: Sim, reference: dict[str, Any], tmp_path: Path,
) -> None:
    sim.reset()
    run = Run(sim, f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)
    run.killed("--kill-after-record", "charger")
    first = sim.tag_counts()
    sim.reset()
    proc = run.start("--variant", "extra-step", resume=True)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "ConfigError: flow 'audit' changed since run 'audit-1' started" in err
    assert "step 'writer' changed, step 'reviewer' added" in err
    assert sum(sim.tag_counts().values()) == 0  # refused before anything ran
    final = run.finish("--variant", "extra-step", "--allow-changed")
    second = sim.tag_counts()
    assert final["status"] == "succeeded"
    assert not set(first) & set(second)  # journaled steps replayed as recorded
    assert set(second) == set(reference["tags"]) - set(first) | {"reviewer#0"}
    assert kinds(run.effect_lines()) == kinds(reference["effects"])


def test_two_processes_resuming_one_run_at_once_end_consistent(
    reference: dict[str, Any], tmp_path: Path,
) -> None:
    """durable.md: one executor drives a run at a time (the run lease). Two processes
    resuming it at once: one runs its unfinished steps, the other is refused with
    RunBusy before any request (the child lets it escape: exit 1); every unfinished
    turn is asked once, the result is the reference's, and a third resume asks the
    model nothing.

    The simulator answers each request after 0.4 s, so the resume that takes the run is
    still executing it when the other starts, however fast the call path is (with an
    instant simulator, one resume could finish before the other process had started,
    and both exited 0)."""
    slow = Sim("--seed", "11", "--latency", "0.4")
    try:
        run = Run(slow, f"sqlite:///{tmp_path / 'runs.db'}", tmp_path)
        run.killed("--kill-after-record", "research/1")
        slow.reset()
        procs = [run.start(resume=True) for _ in range(2)]
        errs: list[str] = []
        try:
            for proc in procs:
                _, err = proc.communicate(timeout=60)
                errs.append(err)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        codes = sorted(proc.returncode for proc in procs)
        assert codes == [0, 1], errs
        assert "RunBusy" in errs[[proc.returncode for proc in procs].index(1)]
        both = slow.tag_counts()
        assert max(both.values()) == 1  # each unfinished turn asked once, by one process
        slow.reset()
        final = run.finish()
        assert sum(slow.tag_counts().values()) == 0
    finally:
        slow.stop()
    same_result(final, reference)
    print(f"two resumes at once: {sum(both.values())} requests, one process refused")
