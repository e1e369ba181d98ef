"""`shoal delete`, `shoal prune` and `shoal show` against a run an executor holds, and
what `shoal run` records for a resume from elsewhere: a newcomer's findings (a prune
beside a running `shoal run` deleted it; `shoal show` called a dead local holder's run
refused; a resume from another directory could not find the relative paths)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from sim_cli_kit import invoke, runs_cli

from shoal.cli.common import EXIT_BUSY
from shoal.cli.runs_cmd import journal_meta
from shoal.flows.lease import new_owner
from shoal.stores import RunRecord, open_store


async def _leased(url: str, run_id: str, owner: str) -> None:
    async with open_store(url) as store:
        await store.create_run(RunRecord(run_id, "flow"))
        await store.take_lease(run_id, owner, 3600.0)


def test_delete_refuses_a_run_being_executed_and_prune_keeps_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    asyncio.run(_leased(url, "live-1", new_owner()))  # this process: alive
    cli = runs_cli()
    refused = invoke(cli, "delete", "live-1", "--store", url)
    assert refused.exit_code == EXIT_BUSY
    assert "is being executed" in refused.output and "--force" in refused.output
    pruned = invoke(cli, "prune", "--older-than", "0s", "--store", url)
    assert pruned.exit_code == 0 and pruned.output.startswith("deleted 0 run(s)")
    forced = invoke(cli, "delete", "live-1", "--store", url, "--force")
    assert forced.exit_code == 0 and "deleted run live-1" in forced.output


def test_show_says_a_dead_local_holder_is_gone(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    nonce, rest = new_owner().split("@")
    host, _, node = rest.split(":")
    dead = f"{nonce}@{host}:{int(done.stdout)}:{node}"  # this machine, an ended process
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    asyncio.run(_leased(url, "orphan-1", dead))
    shown = invoke(runs_cli(), "show", "orphan-1", "--store", url)
    assert shown.exit_code == 0
    assert "is gone" in shown.output and "takes the run over now" in shown.output
    assert "refused" not in shown.output


def test_journal_meta_records_files_absolute(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "flow.toml").write_text("")
    (tmp_path / "flowmod.py").write_text("")
    (tmp_path / "shoal.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    meta = journal_meta("sub/flow.toml", config="shoal.toml")
    assert meta["target"] == str(tmp_path / "sub" / "flow.toml")
    assert meta["config"] == str(tmp_path / "shoal.toml")
    assert journal_meta("flowmod.py:flow")["target"] == f"{tmp_path / 'flowmod.py'}:flow"
    assert journal_meta("shoal.examples:flow")["target"] == "shoal.examples:flow"
